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

bool Fail(NativeError *error, const std::string &what) {
  *error = IptcError(what, errno);
  return false;
}

}  // namespace

bool ApplyTransaction(struct xtc_handle *h, const Transaction &tx, NativeError *error) {
  // 1. The owners' rules in the built-in chains, deleted from the bottom up so numbers stay valid.
  std::set<std::string> owned;
  for (const std::string &o : tx.owners) owned.insert("iptlb:" + o);
  if (!owned.empty()) {
    for (const char *hook : kHooks) {
      std::vector<unsigned> doomed;
      unsigned n = 0;
      for (const struct ipt_entry *e = iptc_first_rule(hook, h); e; e = iptc_next_rule(e, h), n++) {
        if (owned.count(CommentOf(e))) doomed.push_back(n);
      }
      for (auto it = doomed.rbegin(); it != doomed.rend(); ++it) {
        if (!iptc_delete_num_entry(hook, *it, h)) return Fail(error, std::string("deleting rule ") + std::to_string(*it + 1) + " of " + hook);
      }
    }
  }
  // 2. Chains of deleted profiles.
  for (const std::string &c : tx.delete_chains) {
    const Label label(c);
    if (!iptc_is_chain(label.get(), h)) continue;
    if (!iptc_flush_entries(label.get(), h)) return Fail(error, "flushing chain " + c);
    if (!iptc_delete_chain(label.get(), h)) return Fail(error, "deleting chain " + c);
  }
  // 3. Chains created, or flushed and refilled.
  for (const Chain &c : tx.chains) {
    const Label label(c.name);
    if (iptc_is_chain(label.get(), h)) {
      if (!iptc_flush_entries(label.get(), h)) return Fail(error, "flushing chain " + c.name);
    } else if (!iptc_create_chain(label.get(), h)) {
      return Fail(error, "creating chain " + c.name);
    }
  }
  for (const Chain &c : tx.chains) {
    const Label label(c.name);
    for (size_t i = 0; i < c.rules.size(); i++) {
      std::string why;
      std::vector<uint8_t> entry = EncodeRule(c.rules[i], &why);
      if (entry.empty()) {
        *error = NativeError{"EKERNEL", EINVAL, "rule " + std::to_string(i + 1) + " of " + c.name + ": " + why};
        return false;
      }
      if (!iptc_append_entry(label.get(), reinterpret_cast<const struct ipt_entry *>(entry.data()), h)) {
        return Fail(error, "appending rule " + std::to_string(i + 1) + " to " + c.name);
      }
    }
  }
  // 4. Hook rules at the top, in order.
  std::map<std::string, unsigned> position;
  for (const HookRule &hr : tx.hook_rules) {
    std::string why;
    std::vector<uint8_t> entry = EncodeRule(hr.rule, &why);
    if (entry.empty()) {
      *error = NativeError{"EKERNEL", EINVAL, "rule of " + hr.owner + " in " + hr.chain + ": " + why};
      return false;
    }
    unsigned &pos = position[hr.chain];
    if (!iptc_insert_entry(Label(hr.chain).get(), reinterpret_cast<const struct ipt_entry *>(entry.data()), pos, h)) {
      return Fail(error, "inserting the rule of " + hr.owner + " at " + std::to_string(pos + 1) + " of " + hr.chain);
    }
    pos++;
  }
  return true;
}

}  // namespace iptlb
