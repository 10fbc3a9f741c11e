#include "transaction.h"

#include <linux/netfilter/x_tables.h>
#include <linux/netfilter/xt_comment.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "rule_encoder.h"

namespace iptlb {
namespace {

const char *const kHooks[] = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"};

bool Fail(NativeError *error, const std::string &what) {
  int err = errno;
  *error = NativeError::FromErrno("EKERNEL", err, what + ": " + iptc_strerror(err) + " (errno " + std::to_string(err) + ")");
  return false;
}

}  // namespace

std::string CommentOf(const struct ipt_entry *e) {
  for (size_t off = sizeof(struct ipt_entry); off < e->target_offset;) {
    const auto *m = reinterpret_cast<const struct xt_entry_match *>(reinterpret_cast<const char *>(e) + off);
    if (m->u.match_size == 0) break;
    if (std::strcmp(m->u.user.name, "comment") == 0 && m->u.match_size >= XT_ALIGN(sizeof(*m)) + sizeof(struct xt_comment_info)) {
      const auto *c = reinterpret_cast<const struct xt_comment_info *>(m->data);
      return std::string(c->comment, strnlen(c->comment, sizeof(c->comment)));
    }
    off += m->u.match_size;
  }
  return "";
}

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
    if (!iptc_is_chain(c.c_str(), h)) continue;
    if (!iptc_flush_entries(c.c_str(), h)) return Fail(error, "flushing chain " + c);
    if (!iptc_delete_chain(c.c_str(), h)) return Fail(error, "deleting chain " + c);
  }
  // 3. Chains created, or flushed and refilled.
  for (const Chain &c : tx.chains) {
    if (iptc_is_chain(c.name.c_str(), h)) {
      if (!iptc_flush_entries(c.name.c_str(), h)) return Fail(error, "flushing chain " + c.name);
    } else if (!iptc_create_chain(c.name.c_str(), h)) {
      return Fail(error, "creating chain " + c.name);
    }
  }
  for (const Chain &c : tx.chains) {
    for (size_t i = 0; i < c.rules.size(); i++) {
      std::string why;
      std::vector<uint8_t> entry = EncodeRule(c.rules[i], &why);
      if (entry.empty()) {
        *error = NativeError{"EKERNEL", EINVAL, "rule " + std::to_string(i + 1) + " of " + c.name + ": " + why};
        return false;
      }
      if (!iptc_append_entry(c.name.c_str(), reinterpret_cast<const struct ipt_entry *>(entry.data()), h)) {
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
    if (!iptc_insert_entry(hr.chain.c_str(), reinterpret_cast<const struct ipt_entry *>(entry.data()), pos, h)) {
      return Fail(error, "inserting the rule of " + hr.owner + " at " + std::to_string(pos + 1) + " of " + hr.chain);
    }
    pos++;
  }
  return true;
}

}  // namespace iptlb
