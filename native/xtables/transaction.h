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
  // In: the gate set's index, needed when a gate has to be inserted (`has_index` false: none may be).
  bool has_index = false;
  uint16_t set_index = 0;
  // Out: elements no remaining dispatch rule selects any more (delete them after the commit), and
  // whether any dispatch rule remains (if not, the set can be destroyed after the commit).
  std::vector<SetElement> stale;
  bool need_set = false;
};

// The elements of the transaction's OUTPUT/PREROUTING hook rules (add them before the commit).
std::vector<SetElement> GateElements(const Transaction &tx);

// `h` is a handle of F's library (tx.family is F's). Instantiated for Ip4Tables and Ip6Tables.
template <typename F>
// Throws NativeFailure (EKERNEL with the library's message, or EPERM) naming what failed.
void ApplyTransaction(struct xtc_handle *h, const Transaction &tx, GateWork *gate);

}  // namespace iptlb
