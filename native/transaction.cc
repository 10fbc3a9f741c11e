#include "transaction.h"

#include <cerrno>
#include <map>
#include <set>

#include "iptc_handle.h"
#include "rule_decoder.h"
#include "rule_encoder.h"

namespace iptlb {
namespace {

// xt_chainlabel-sized (zero-padded), as libiptc reads them.
const xt_chainlabel kHooks[] = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"};

template <typename F>
bool Fail(NativeError *error, const std::string &what) {
  *error = XtError<F>(what, errno);
  return false;
}

}  // namespace

template <typename F>
bool ApplyTransaction(struct xtc_handle *h, const Transaction &tx, NativeError *error) {
  using Entry = typename F::Entry;
  // 1. The owners' rules in the built-in chains, deleted from the bottom up so numbers stay valid.
  std::set<std::string> owned;
  for (const std::string &o : tx.owners) owned.insert("iptlb:" + o);
  if (!owned.empty()) {
    for (const char *hook : kHooks) {
      std::vector<unsigned> doomed;
      unsigned n = 0;
      for (const Entry *e = F::FirstRule(hook, h); e; e = F::NextRule(e, h), n++) {
        if (owned.count(CommentOf<F>(e))) doomed.push_back(n);
      }
      for (auto it = doomed.rbegin(); it != doomed.rend(); ++it) {
        if (!F::DeleteNumEntry(hook, *it, h)) return Fail<F>(error, std::string("deleting rule ") + std::to_string(*it + 1) + " of " + hook);
      }
    }
  }
  // 2. Chains of deleted profiles.
  for (const std::string &c : tx.delete_chains) {
    const Label label(c);
    if (!F::IsChain(label.get(), h)) continue;
    if (!F::FlushEntries(label.get(), h)) return Fail<F>(error, "flushing chain " + c);
    if (!F::DeleteChain(label.get(), h)) return Fail<F>(error, "deleting chain " + c);
  }
  // 3. Chains created, or flushed and refilled.
  for (const Chain &c : tx.chains) {
    const Label label(c.name);
    if (F::IsChain(label.get(), h)) {
      if (!F::FlushEntries(label.get(), h)) return Fail<F>(error, "flushing chain " + c.name);
    } else if (!F::CreateChain(label.get(), h)) {
      return Fail<F>(error, "creating chain " + c.name);
    }
  }
  for (const Chain &c : tx.chains) {
    const Label label(c.name);
    for (size_t i = 0; i < c.rules.size(); i++) {
      std::string why;
      std::vector<uint8_t> entry = EncodeRule<F>(c.rules[i], &why);
      if (entry.empty()) {
        *error = NativeError{"EKERNEL", EINVAL, "rule " + std::to_string(i + 1) + " of " + c.name + ": " + why};
        return false;
      }
      if (!F::AppendEntry(label.get(), reinterpret_cast<const Entry *>(entry.data()), h)) {
        return Fail<F>(error, "appending rule " + std::to_string(i + 1) + " to " + c.name);
      }
    }
  }
  // 4. Hook rules at the top, in order.
  std::map<std::string, unsigned> position;
  for (const HookRule &hr : tx.hook_rules) {
    std::string why;
    std::vector<uint8_t> entry = EncodeRule<F>(hr.rule, &why);
    if (entry.empty()) {
      *error = NativeError{"EKERNEL", EINVAL, "rule of " + hr.owner + " in " + hr.chain + ": " + why};
      return false;
    }
    unsigned &pos = position[hr.chain];
    if (!F::InsertEntry(Label(hr.chain).get(), reinterpret_cast<const Entry *>(entry.data()), pos, h)) {
      return Fail<F>(error, "inserting the rule of " + hr.owner + " at " + std::to_string(pos + 1) + " of " + hr.chain);
    }
    pos++;
  }
  return true;
}

template bool ApplyTransaction<Ip4Tables>(struct xtc_handle *, const Transaction &, NativeError *);
template bool ApplyTransaction<Ip6Tables>(struct xtc_handle *, const Transaction &, NativeError *);

}  // namespace iptlb
