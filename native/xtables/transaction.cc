#include "transaction.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "iptc_handle.h"
#include "ip_text.h"
#include "rule_decoder.h"
#include "rule_encoder.h"

namespace iptlb {
namespace {

// xt_chainlabel-sized (zero-padded), as libiptc reads them.
const xt_chainlabel kHooks[] = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"};

const char *const kGated[] = {"OUTPUT", "PREROUTING"};

// Throws the failure of the library call just made (its errno) while doing `what`.
template <typename F>
[[noreturn]] void Fail(const std::string &what) {
  Throw(XtError<F>(what, errno));
}

bool IsGated(const std::string &hook) { return hook == "OUTPUT" || hook == "PREROUTING"; }

// A rule of a profile the change creates, found in the table: the hook it stands for (OUTPUT for
// one in IPTLB_OUTPUT), the chain it is in, whether it sits in the built-in chain itself.
struct HeldRule {
  std::string hook;
  std::string where;
  bool direct = false;
  Rule rule;
};
// Profile name -> its rules in the table.
using HeldRules = std::map<std::string, std::vector<HeldRule>>;

bool SameAddress(const Address &a, const Address &b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

// Whether two matches are the same, field by field for their kind (the decoder recognises exactly
// what the encoder writes: a match read back compares equal to the planned one it was written from).
bool SameMatch(const Match &a, const Match &b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Match::kTcp:
    case Match::kUdp:
    case Match::kSctp:
      return a.port == b.port;
    case Match::kStatistic:
      return a.probability == b.probability;
    case Match::kStatisticNth:
      return a.every == b.every && a.packet == b.packet;
    case Match::kRecentSet:
      return a.text == b.text;
    case Match::kRecentUpdate:
      return a.text == b.text && a.seconds == b.seconds;
    case Match::kComment:
      return a.text == b.text;
    case Match::kAddrtypeLocal:
      return true;
    case Match::kConntrackDnat:
      return SameAddress(a.addr, b.addr) && SameAddress(a.mask, b.mask) && a.port == b.port;
    case Match::kSetDstDst:
    case Match::kUnknown:
      return false;  // never planned in a profile's rule
  }
  return false;
}

bool SameTarget(const Target &a, const Target &b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Target::kDnat:
      return SameAddress(a.addr, b.addr) && a.port == b.port;
    case Target::kLog:
      return a.prefix == b.prefix && a.level == b.level;
    case Target::kReturn:
    case Target::kMasquerade:
      return true;
    case Target::kJump:
      return a.chain == b.chain;
    case Target::kUnknown:
      return false;
  }
  return false;
}

bool SameRule(const Rule &a, const Rule &b) {
  if (a.has_dst != b.has_dst || a.proto != b.proto || a.matches.size() != b.matches.size()) return false;
  if (a.has_dst && (!SameAddress(a.dst, b.dst) || !SameAddress(a.dmsk, b.dmsk))) return false;
  for (size_t i = 0; i < a.matches.size(); i++) {
    if (!SameMatch(a.matches[i], b.matches[i])) return false;
  }
  return SameTarget(a.target, b.target);
}

}  // namespace

std::vector<SetElement> GateElements(const Transaction &tx) {
  std::set<SetElement> out;
  for (const HookRule &hr : tx.hook_rules) {
    SetElement e;
    if (IsGated(hr.chain) && ElementOfRule(hr.rule, &e)) out.insert(e);
  }
  return {out.begin(), out.end()};
}

namespace {

// The owners' rules in the built-in chains (an older layout's, and POSTROUTING's) and in the
// dispatch chains, deleted from the bottom up so numbers stay valid.
// Returns the gate elements those dispatch rules selected.
//
// Also a rule without any comment in a built-in chain that jumps to a profile chain this change
// deletes or refills: the original iptlb's jump (`-I OUTPUT 1 -p tcp -d VIP --dport P -j
// IPTLB_NAT_<NAME>`, no comment). iptlb's chains are its own by name; left, such a jump keeps the
// chain from being deleted (EMLINK) and a replaced profile reachable by the old way too.
template <typename F>
std::set<SetElement> DeleteOwnedRules(struct xtc_handle *h, const Transaction &tx,
                                      const std::vector<SetElement> &planned, HeldRules *held,
                                      std::vector<DeletedJump> *originals) {
  using Entry = typename F::Entry;
  std::set<std::string> owned;
  for (const std::string &o : tx.owners) owned.insert("iptlb:" + o);
  // The profiles this change creates: their rules, if the table has any, are read on the way (the
  // walk that deletes the owners' rules reads every comment anyway), for RefuseHeld.
  std::set<std::string> created;
  for (const Created &c : tx.created) created.insert("iptlb:" + c.name);
  std::set<std::string> targets(tx.delete_chains.begin(), tx.delete_chains.end());
  for (const Chain &c : tx.chains) targets.insert(c.name);
  // (A removal of everything, as migrate's, names no owner: the original's jumps still go.)
  if (owned.empty() && targets.empty()) return {};
  // With tx.exclusive, the addresses the dispatch rules of the profiles this change replaces or
  // deletes that the state file holds (owners not created) may select: planned, or in tx.was.
  const std::vector<SetElement> *allowed = &planned;
  std::vector<SetElement> with_was;
  if (tx.exclusive && !tx.was.empty()) {
    with_was = planned;
    for (const Rule &r : tx.was) {
      SetElement el;
      if (ElementOfRule(r, &el)) with_was.push_back(el);
    }
    std::sort(with_was.begin(), with_was.end());
    allowed = &with_was;
  }
  const char *table = F::kFamily == Family::kIpv6 ? "the ip6tables nat table" : "the nat table";
  std::set<SetElement> removed;
  static const xt_chainlabel kAll[] = {"PREROUTING",  "INPUT",        "OUTPUT",
                                       "POSTROUTING", "IPTLB_OUTPUT", "IPTLB_PREROUTING"};
  for (const char *hook : kAll) {
    const bool dispatch = hook[0] == 'I' && hook[1] == 'P';
    if (dispatch && !F::IsChain(hook, h)) continue;
    std::vector<unsigned> doomed;
    unsigned n = 0;
    for (const Entry *e = F::FirstRule(hook, h); e; e = F::NextRule(e, h), n++) {
      const std::string comment = CommentOf<F>(e);
      if (!owned.count(comment)) {
        // Without any comment (another tool's comment makes it that tool's), to one of iptlb's chains.
        const char *t = dispatch || !comment.empty() ? nullptr : F::GetTarget(e, h);
        if (!t || !IsProfileChain(t) || !targets.count(t)) continue;
        if (originals) originals->push_back({hook, DecodeRule<F>(e, h).rule});
      }
      doomed.push_back(n);
      if (created.count(comment)) {
        HeldRule r;
        r.hook = dispatch ? hook + 6 : hook;
        r.where = hook;
        r.direct = !dispatch && IsGated(hook);
        r.rule = DecodeRule<F>(e, h).rule;
        (*held)[comment.substr(6)].push_back(std::move(r));
      }
      SetElement el;
      if (!dispatch || !ElementOfRule(DecodeRule<F>(e, h).rule, &el)) continue;
      removed.insert(el);
      // A held profile's rule at an address neither planned nor the state file's: another state
      // file's profile of its name.
      if (tx.exclusive && !created.count(comment) && !std::binary_search(allowed->begin(), allowed->end(), el))
        Throw(NativeError{"ECONFLICT", EEXIST,
                          "name: profile " + comment.substr(6) + ": " + table +
                              " holds a profile of that name at another address than this state file's (rule " +
                              comment + " in " + hook + ")"});
    }
    for (auto it = doomed.rbegin(); it != doomed.rend(); ++it) {
      if (!F::DeleteNumEntry(hook, *it, h))
        Fail<F>(std::string("deleting rule ") + std::to_string(*it + 1) + " of " + hook);
    }
  }
  return removed;
}

// Chains of deleted profiles.
template <typename F>
void DeleteChains(struct xtc_handle *h, const Transaction &tx) {
  for (const std::string &c : tx.delete_chains) {
    const Label label(c);
    if (!F::IsChain(label.get(), h)) continue;
    if (!F::FlushEntries(label.get(), h)) Fail<F>("flushing chain " + c);
    if (!F::DeleteChain(label.get(), h)) Fail<F>("deleting chain " + c);
  }
}

// With tx.exclusive, for a chain about to be refilled that a rule still jumps to once the owners'
// rules are deleted: when it is the chain of a held profile (tx.held), that rule is another
// profile's (`WEB` shares `web`'s chain), which refilling the chain would take over; or a rule iptlb
// did not write (another tool's comment, or in a chain of its own), whose packets refilling the chain
// would send to this profile's new rules. The rule is looked for in every chain, to name it; a
// profile's is named first. The text of the second refusal is the spawn executor's too (restore.ts
// jumpedBy).
template <typename F>
void RefuseShared(struct xtc_handle *h, const Transaction &tx, const std::string &chain) {
  using Entry = typename F::Entry;
  const std::string *owner = nullptr;
  for (const HookRule &hr : tx.hook_rules) {
    if (hr.rule.target.kind == Target::kJump && hr.rule.target.chain == chain) owner = &hr.owner;
  }
  for (const Created &c : tx.created) {
    if (owner && c.name == *owner) return;  // RefuseHeld's
  }
  if (!owner) return;
  std::string profile;  // a profile's rule: "rule iptlb:<name> in <chain>"
  std::string other;    // the chain of a rule iptlb did not write
  for (const char *c = F::FirstChain(h); c && profile.empty(); c = F::NextChain(h)) {
    for (const Entry *e = F::FirstRule(c, h); e; e = F::NextRule(e, h)) {
      const char *t = F::GetTarget(e, h);
      if (!t || chain != t) continue;
      const std::string comment = CommentOf<F>(e);
      if (comment.compare(0, 6, "iptlb:") == 0) {
        profile = "rule " + comment + " in " + c;
        break;
      }
      if (other.empty()) other = c;
    }
  }
  const std::string table = F::kFamily == Family::kIpv6 ? "ip6tables " : "";
  if (profile.empty() && !other.empty())
    Throw(NativeError{"ECONFLICT", EEXIST,
                      "name: profile " + *owner + ": its chain " + chain +
                          ", which this change refills, is jumped to by a rule iptlb did not write (in " + other +
                          "), whose packets would reach this profile's new rules: remove that jump (`" +
                          (F::kFamily == Family::kIpv6 ? "ip6" : "") + "iptables-legacy-save -t nat | grep -- '-j " +
                          chain + "'` finds it), then apply again"});
  Throw(NativeError{"ECONFLICT", EEXIST,
                    "name: profile " + *owner + ": the " + table +
                        "nat table already holds a profile of that name (chain " + chain +
                        (profile.empty() ? "" : ", ") + profile + ")"});
}

// Chains created, or flushed and refilled.
template <typename F>
void FillChains(struct xtc_handle *h, const Transaction &tx) {
  using Entry = typename F::Entry;
  for (const Chain &c : tx.chains) {
    const Label label(c.name);
    if (F::IsChain(label.get(), h)) {
      unsigned refs = 0;
      if (tx.exclusive && F::GetReferences(&refs, label.get(), h) && refs > 0) RefuseShared<F>(h, tx, c.name);
      if (!F::FlushEntries(label.get(), h)) Fail<F>("flushing chain " + c.name);
    } else if (!F::CreateChain(label.get(), h)) {
      Fail<F>("creating chain " + c.name);
    }
  }
  for (const Chain &c : tx.chains) {
    const Label label(c.name);
    for (size_t i = 0; i < c.rules.size(); i++) {
      std::string why;
      std::vector<uint8_t> entry = EncodeRule<F>(c.rules[i], &why);
      if (entry.empty()) {
        Throw(NativeError{"EKERNEL", EINVAL, "rule " + std::to_string(i + 1) + " of " + c.name + ": " + why});
      }
      if (!F::AppendEntry(label.get(), reinterpret_cast<const Entry *>(entry.data()), h)) {
        Fail<F>("appending rule " + std::to_string(i + 1) + " to " + c.name);
      }
    }
  }
}

// Hook rules at the top of their dispatch chain (OUTPUT/PREROUTING) or of POSTROUTING, in order.
template <typename F>
void InsertHookRules(struct xtc_handle *h, const Transaction &tx) {
  using Entry = typename F::Entry;
  std::map<std::string, unsigned> position;
  for (const HookRule &hr : tx.hook_rules) {
    std::string why;
    std::vector<uint8_t> entry = EncodeRule<F>(hr.rule, &why);
    if (entry.empty()) {
      Throw(NativeError{"EKERNEL", EINVAL, "rule of " + hr.owner + " in " + hr.chain + ": " + why});
    }
    const std::string chain = IsGated(hr.chain) ? "IPTLB_" + hr.chain : hr.chain;
    const Label label(chain);
    if (IsGated(hr.chain) && !F::IsChain(label.get(), h) && !F::CreateChain(label.get(), h))
      Fail<F>("creating chain " + chain);
    unsigned &pos = position[chain];
    if (!F::InsertEntry(label.get(), reinterpret_cast<const Entry *>(entry.data()), pos, h)) {
      Fail<F>("inserting the rule of " + hr.owner + " at " + std::to_string(pos + 1) + " of " + chain);
    }
    pos++;
  }
}

// Gates: one per dispatch chain that has rules; none (and no chain) for an empty one.
template <typename F>
void SyncGates(struct xtc_handle *h, GateWork *gate) {
  using Entry = typename F::Entry;
  gate->need_set = false;
  for (const char *hook : kGated) {
    const Label dispatch("IPTLB_" + std::string(hook));
    const bool exists = F::IsChain(dispatch.get(), h);
    const bool rules = exists && F::FirstRule(dispatch.get(), h) != nullptr;
    std::vector<unsigned> gates;
    unsigned n = 0;
    for (const Entry *e = F::FirstRule(hook, h); e; e = F::NextRule(e, h), n++) {
      const char *t = F::GetTarget(e, h);
      if (t && std::strcmp(t, dispatch.get()) == 0) gates.push_back(n);
    }
    if (rules > 0) {
      gate->need_set = true;
      if (!gates.empty()) continue;
      if (!gate->has_index) {
        bool created = false;
        gate->set_index = EnsureGateSet(F::kFamily, &created);
        gate->has_index = true;
        gate->created = gate->created || created;
      }
      Rule g;
      Match m(Match::kSetDstDst);
      m.set_index = gate->set_index;
      m.text = GateSetName(F::kFamily);
      g.matches.push_back(m);
      g.target = Target(Target::kJump);
      g.target.chain = dispatch.get();
      std::string why;
      std::vector<uint8_t> entry = EncodeRule<F>(g, &why);
      if (entry.empty()) {
        Throw(NativeError{"EKERNEL", EINVAL, std::string("the gate of ") + hook + ": " + why});
      }
      if (!F::InsertEntry(hook, reinterpret_cast<const Entry *>(entry.data()), 0, h))
        Fail<F>(std::string("inserting the gate of ") + hook);
    } else {
      for (auto it = gates.rbegin(); it != gates.rend(); ++it) {
        if (!F::DeleteNumEntry(hook, *it, h)) Fail<F>(std::string("deleting the gate of ") + hook);
      }
      if (exists) {
        if (!F::FlushEntries(dispatch.get(), h)) Fail<F>(std::string("flushing chain IPTLB_") + hook);
        if (!F::DeleteChain(dispatch.get(), h)) Fail<F>(std::string("deleting chain IPTLB_") + hook);
      }
    }
  }
}

template <typename F>
std::set<SetElement> LiveSet(struct xtc_handle *h) {
  using Entry = typename F::Entry;
  std::set<SetElement> live;
  for (const char *hook : kGated) {
    const Label dispatch("IPTLB_" + std::string(hook));
    if (!F::IsChain(dispatch.get(), h)) continue;
    for (const Entry *e = F::FirstRule(dispatch.get(), h); e; e = F::NextRule(e, h)) {
      SetElement el;
      if (ElementOfRule(DecodeRule<F>(e, h).rule, &el)) live.insert(el);
    }
  }
  return live;
}

// Elements of removed rules that no rule behind a gate selects any more: deleted after the commit.
// The transaction's own rules keep theirs (a replaced profile); only otherwise are the chains read.
template <typename F>
void CollectStale(struct xtc_handle *h, const std::vector<SetElement> &mine, std::set<SetElement> removed,
                  GateWork *gate) {
  for (const SetElement &e : mine) removed.erase(e);
  gate->stale.clear();
  if (removed.empty()) return;
  const std::set<SetElement> live = LiveSet<F>(h);
  for (const SetElement &e : removed) {
    if (!live.count(e)) gate->stale.push_back(e);
  }
}

}  // namespace

template <typename F>
std::vector<SetElement> LiveGateElements(struct xtc_handle *h) {
  const std::set<SetElement> live = LiveSet<F>(h);
  return {live.begin(), live.end()};
}

namespace {

// Whether the table holds the created profile `c` exactly as `tx` plans it: its chain with the
// planned rules, and the planned rules in the hooks (behind the gate), nothing else of its name.
// (A change interrupted after its kernel commit and before its state write leaves that: applying it
// again completes it.)
template <typename F>
bool HeldAsPlanned(struct xtc_handle *h, const Transaction &tx, const Created &c, const std::vector<HeldRule> &held) {
  using Entry = typename F::Entry;
  if (!c.chain.empty()) {
    const Chain *planned = nullptr;
    for (const Chain &ch : tx.chains) {
      if (ch.name == c.chain) planned = &ch;
    }
    const Label label(c.chain);
    if (!planned || !F::IsChain(label.get(), h)) return false;
    size_t i = 0;
    for (const Entry *e = F::FirstRule(label.get(), h); e; e = F::NextRule(e, h), i++) {
      if (i >= planned->rules.size() || !SameRule(DecodeRule<F>(e, h).rule, planned->rules[i])) return false;
    }
    if (i != planned->rules.size()) return false;
  }
  std::vector<bool> used(held.size(), false);
  size_t wanted = 0;
  for (const HookRule &hr : tx.hook_rules) {
    if (hr.owner != c.name) continue;
    wanted++;
    bool found = false;
    for (size_t k = 0; k < held.size() && !found; k++) {
      if (used[k] || held[k].direct || held[k].hook != hr.chain || !SameRule(held[k].rule, hr.rule)) continue;
      used[k] = found = true;
    }
    if (!found) return false;
  }
  return wanted == held.size();
}

}  // namespace

// With tx.exclusive: a profile the change creates (a name the state file does not hold) whose chain
// the table has, or whose name a rule carries, is another state file's (or left by an interrupted
// change), unless the table holds it exactly as planned. `held`: its rules, as DeleteOwnedRules
// found them. The message starts with "name: " (the address conflict's does not).
template <typename F>
void RefuseHeld(struct xtc_handle *h, const Transaction &tx, const HeldRules &held) {
  static const std::vector<HeldRule> kNone;
  for (const Created &c : tx.created) {
    const auto it = held.find(c.name);
    const std::vector<HeldRule> &rules = it == held.end() ? kNone : it->second;
    const bool chain = !c.chain.empty() && F::IsChain(Label(c.chain).get(), h);
    if (!chain && rules.empty()) continue;
    if (HeldAsPlanned<F>(h, tx, c, rules)) continue;
    std::string found = chain ? "chain " + c.chain : std::string();
    if (!rules.empty())
      found += (found.empty() ? "" : ", ") + std::string("rule iptlb:") + c.name + " in " + rules[0].where;
    Throw(NativeError{"ECONFLICT", EEXIST,
                      "name: profile " + c.name + ": the " + (F::kFamily == Family::kIpv6 ? "ip6tables " : "") +
                          "nat table already holds a profile of that name (" + found + ")"});
  }
}

// With tx.exclusive: a rule of another profile (commented iptlb:<name>, the name not among the
// owners) in a dispatch chain that selects the address, protocol and port of one of the rules this
// transaction inserts there. Run after the owners' rules are deleted: what is left is not theirs.
// The refusal of a profile's rule at the address of the original iptlb's jump (no comment, in a
// built-in chain, to a profile chain this change leaves as it is). The text is the spawn executor's
// too (restore.ts originalTaken): what to do, and the command that deletes that jump.
std::string OriginalTaken(Family family, const std::string &owner, const std::string &hook, const SetElement &el,
                          const std::string &target) {
  const char *proto = el.proto == IPPROTO_TCP ? "tcp" : el.proto == IPPROTO_UDP ? "udp" : "sctp";
  const std::string addr = family == Family::kIpv6 ? Ipv6Text(el.addr.in6.s6_addr)
                                                   : Ipv4Text(reinterpret_cast<const uint8_t *>(&el.addr.in.s_addr));
  const std::string rule =
      std::string("-p ") + proto + " -d " + addr + " --dport " + std::to_string(el.port) + " -j " + target;
  return "profile " + owner + ": its address is served by the original iptlb's rule in " + hook + " (" + rule +
         ", no comment), which this change would leave in place (two rules for one address: the first in " + hook +
         " wins): take that profile over under its original name (the one chain " + target +
         " was made from, applied with -run through the state file that holds it), or delete the original's rule: " +
         (family == Family::kIpv6 ? "ip6tables-legacy" : "iptables-legacy") + " -t nat -D " + hook + " " + rule;
}

template <typename F>
void RefuseTaken(struct xtc_handle *h, const Transaction &tx) {
  using Entry = typename F::Entry;
  if (!tx.exclusive) return;
  std::map<std::string, std::map<SetElement, const HookRule *>> mine;  // dispatch chain -> element -> rule
  // The addresses and protocols among them: the rules of other addresses (nearly all, in a churn of
  // one table) are passed over on their header, not decoded.
  std::set<std::pair<std::string, uint8_t>> heads;
  for (const HookRule &hr : tx.hook_rules) {
    SetElement el;
    if (!IsGated(hr.chain) || !ElementOfRule(hr.rule, &el)) continue;
    mine["IPTLB_" + hr.chain].emplace(el, &hr);
    heads.emplace(std::string(reinterpret_cast<const char *>(&el.addr), sizeof(el.addr)), el.proto);
  }
  for (const auto &[chain, elements] : mine) {
    const Label label(chain);
    if (!F::IsChain(label.get(), h)) continue;
    for (const Entry *e = F::FirstRule(label.get(), h); e; e = F::NextRule(e, h)) {
      Rule head;
      if (!GetHeader<F>(e, &head) || !head.has_dst ||
          !heads.count({std::string(reinterpret_cast<const char *>(&head.dst), sizeof(head.dst)), head.proto}))
        continue;
      const std::string comment = CommentOf<F>(e);
      if (comment.compare(0, 6, "iptlb:") != 0) continue;
      SetElement el;
      if (!ElementOfRule(DecodeRule<F>(e, h).rule, &el)) continue;
      const auto it = elements.find(el);
      if (it == elements.end()) continue;
      Throw(NativeError{"ECONFLICT", EEXIST,
                        "profile " + it->second->owner + ": its address is taken in the kernel by profile " +
                            comment.substr(6) + " (rule " + comment + " in " + chain + ")"});
    }
  }
  // The original iptlb's jumps in the built-in chain itself: those to a chain this change deletes or
  // refills are gone (DeleteOwnedRules); one left selecting a planned address would serve it too.
  for (const char *hook : kGated) {
    const auto m = mine.find(std::string("IPTLB_") + hook);
    if (m == mine.end()) continue;
    for (const Entry *e = F::FirstRule(hook, h); e; e = F::NextRule(e, h)) {
      const char *target = F::GetTarget(e, h);
      Rule head;
      if (!target || !IsProfileChain(target) || !GetHeader<F>(e, &head) || !head.has_dst ||
          !heads.count({std::string(reinterpret_cast<const char *>(&head.dst), sizeof(head.dst)), head.proto}) ||
          !CommentOf<F>(e).empty())
        continue;
      SetElement el;
      if (!ElementOfRule(DecodeRule<F>(e, h).rule, &el)) continue;
      const auto it = m->second.find(el);
      if (it == m->second.end()) continue;
      Throw(NativeError{"ECONFLICT", EEXIST, OriginalTaken(F::kFamily, it->second->owner, hook, el, target)});
    }
  }
}

template <typename F>
void ApplyTransaction(struct xtc_handle *h, const Transaction &tx, GateWork *gate,
                      std::vector<DeletedJump> *originals) {
  HeldRules held;
  std::vector<SetElement> planned = GateElements(tx);
  if (originals) originals->clear();
  std::set<SetElement> removed = DeleteOwnedRules<F>(h, tx, planned, &held, originals);
  if (tx.exclusive) RefuseHeld<F>(h, tx, held);
  RefuseTaken<F>(h, tx);
  DeleteChains<F>(h, tx);
  FillChains<F>(h, tx);
  InsertHookRules<F>(h, tx);
  SyncGates<F>(h, gate);
  gate->adds = std::move(planned);
  CollectStale<F>(h, gate->adds, std::move(removed), gate);
}

template void ApplyTransaction<Ip4Tables>(struct xtc_handle *, const Transaction &, GateWork *,
                                          std::vector<DeletedJump> *);
template void ApplyTransaction<Ip6Tables>(struct xtc_handle *, const Transaction &, GateWork *,
                                          std::vector<DeletedJump> *);
template std::vector<SetElement> LiveGateElements<Ip4Tables>(struct xtc_handle *);
template std::vector<SetElement> LiveGateElements<Ip6Tables>(struct xtc_handle *);

}  // namespace iptlb
