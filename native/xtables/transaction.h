// Applies a Transaction to a libiptc or libip6tc handle (in memory; nothing reaches the kernel until commit):
// delete the owners' hook rules, drop stale chains, create or flush and refill chains, insert hook
// rules at the top.
#pragma once
#include <string>
#include <vector>

#include "errors.h"
#include "ipset.h"
#include "plan.h"
#include "xt_family.h"

namespace iptlb {

// The gate (src/gate.ts): OUTPUT/PREROUTING hook rules go into the dispatch chains IPTLB_OUTPUT /
// IPTLB_PREROUTING, reached from their hook through `-m set --match-set <set> dst,dst`.
struct GateWork {
  // The gate set's index, looked up (and the set created when there is none) when a gate has to be
  // inserted; `created`: it had to be created then (it holds none of the dispatch rules' elements).
  bool has_index = false;
  uint16_t set_index = 0;
  bool created = false;
  // Out: the elements of the transaction's dispatch rules (add them to the set before the commit;
  // all of them, also those the rules they replace selected: a commit, and `sync` above all, puts back
  // an element someone deleted by hand); elements no remaining dispatch rule selects any more (delete
  // them after the commit), and whether any dispatch rule remains (if not, the set can be destroyed
  // after the commit).
  std::vector<SetElement> adds;
  std::vector<SetElement> stale;
  bool need_set = false;
};

// The elements of the transaction's OUTPUT/PREROUTING hook rules.
std::vector<SetElement> GateElements(const Transaction &tx);

// The elements every rule of the dispatch chains in `h` selects (what a new set must be filled with).
template <typename F>
std::vector<SetElement> LiveGateElements(struct xtc_handle *h);

// A rule without any comment in a built-in chain that jumps to a profile chain the transaction deletes or
// refills (the original iptlb's jump), which the transaction deleted: the chain and the rule, for `--verbose`.
struct DeletedJump {
  std::string chain;
  Rule rule;
};

// `h` is a handle of F's library (tx.family is F's). Instantiated for Ip4Tables and Ip6Tables.
// `originals`, when given, receives the original iptlb's jumps the transaction deleted.
template <typename F>
// Throws NativeFailure (EKERNEL with the library's message, or EPERM) naming what failed.
void ApplyTransaction(struct xtc_handle *h, const Transaction &tx, GateWork *gate,
                      std::vector<DeletedJump> *originals = nullptr);

}  // namespace iptlb
