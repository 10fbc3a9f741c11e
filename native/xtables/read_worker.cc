#include "read_worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "iptc_handle.h"
#include "ip_text.h"

namespace iptlb {
namespace {

// xt_chainlabel-sized (zero-padded), as libiptc reads them.
const xt_chainlabel kHooks[] = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"};

std::string AddressText(Family family, const Address &a) {
  return family == Family::kIpv6 ? Ipv6Text(a.in6.s6_addr) : Ipv4Text(reinterpret_cast<const uint8_t *>(&a.in.s_addr));
}

// "addr/prefix", or "addr/mask" when the mask is not a prefix (as iptables prints it).
std::string Cidr(Family family, const Address &addr, const Address &mask) {
  const int words = family == Family::kIpv4 ? 1 : 4;
  int bits = 0;
  bool prefix = true;
  for (int i = 0; i < words; i++) {
    const uint32_t host = ntohl(mask.all[i]);
    if (!prefix && host) return AddressText(family, addr) + "/" + AddressText(family, mask);
    if (host != 0 && (~host & (~host + 1)) != 0) return AddressText(family, addr) + "/" + AddressText(family, mask);
    bits += __builtin_popcount(host);
    prefix = host == 0xffffffffu;
  }
  return AddressText(family, addr) + "/" + std::to_string(bits);
}

Napi::Value MatchToJs(Napi::Env env, Family family, const Match &m) {
  Napi::Object o = Napi::Object::New(env);
  switch (m.kind) {
    case Match::kTcp:
      o.Set("name", "tcp");
      o.Set("dport", m.port);
      break;
    case Match::kUdp:
      o.Set("name", "udp");
      o.Set("dport", m.port);
      break;
    case Match::kSctp:
      o.Set("name", "sctp");
      o.Set("dport", m.port);
      break;
    case Match::kStatistic: {
      // As iptables-save prints it (libxt_statistic: "%.11f"), so both executors read the same text.
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.11f", 1.0 * m.probability / 0x80000000);
      o.Set("name", "statistic");
      o.Set("mode", "random");
      o.Set("probability", buf);
      break;
    }
    case Match::kStatisticNth:
      o.Set("name", "statistic");
      o.Set("mode", "nth");
      o.Set("every", m.every);
      o.Set("packet", m.packet);
      break;
    case Match::kRecentSet:
    case Match::kRecentUpdate:
      o.Set("name", "recent");
      o.Set("mode", m.kind == Match::kRecentSet ? "set" : "update");
      o.Set("recentName", m.text);
      if (m.kind == Match::kRecentUpdate) o.Set("seconds", m.seconds);
      break;
    case Match::kComment:
      o.Set("name", "comment");
      o.Set("comment", m.text);
      break;
    case Match::kAddrtypeLocal:
      o.Set("name", "addrtype");
      o.Set("dstType", "LOCAL");
      break;
    case Match::kConntrackDnat:
      o.Set("name", "conntrack");
      o.Set("ctstate", "DNAT");
      o.Set("ctorigdst", Cidr(family, m.addr, m.mask));
      o.Set("ctorigdstport", m.port);
      break;
    case Match::kSetDstDst:  // the gate's match: not one a profile writes
      o.Set("name", "unknown");
      o.Set("ext", "set");
      break;
    case Match::kUnknown:
      o.Set("name", "unknown");
      o.Set("ext", m.text);
      break;
  }
  return o;
}

Napi::Value TargetToJs(Napi::Env env, Family family, const Target &t) {
  Napi::Object o = Napi::Object::New(env);
  switch (t.kind) {
    case Target::kDnat: {
      const std::string host = AddressText(family, t.addr);
      o.Set("name", "DNAT");
      o.Set("toDestination", (family == Family::kIpv6 ? "[" + host + "]" : host) + ":" + std::to_string(t.port));
      break;
    }
    case Target::kLog:
      o.Set("name", "LOG");
      o.Set("prefix", t.prefix);
      o.Set("level", t.level);
      break;
    case Target::kReturn:
      o.Set("name", "RETURN");
      break;
    case Target::kMasquerade:
      o.Set("name", "MASQUERADE");
      break;
    case Target::kJump:
      o.Set("name", "jump");
      o.Set("chain", t.chain);
      break;
    case Target::kUnknown:
      o.Set("name", "unknown");
      o.Set("ext", t.chain);
      break;
  }
  return o;
}

}  // namespace

// The Rule shape of src/types.ts (optional fields absent, not undefined, so deepEqual holds).
Napi::Value RuleToJs(Napi::Env env, Family family, const Rule &rule) {
  Napi::Object r = Napi::Object::New(env);
  if (rule.has_dst) r.Set("dst", Cidr(family, rule.dst, rule.dmsk));
  if (rule.proto == IPPROTO_TCP)
    r.Set("proto", "tcp");
  else if (rule.proto == IPPROTO_UDP)
    r.Set("proto", "udp");
  else if (rule.proto == IPPROTO_SCTP)
    r.Set("proto", "sctp");
  Napi::Array ms = Napi::Array::New(env, rule.matches.size());
  for (uint32_t i = 0; i < rule.matches.size(); i++) ms.Set(i, MatchToJs(env, family, rule.matches[i]));
  r.Set("matches", ms);
  r.Set("target", TargetToJs(env, family, rule.target));
  return r;
}

namespace {

void SetCounters(Napi::Env env, Napi::Object o, const DecodedRule &d) {
  o.Set("packets", Napi::BigInt::New(env, static_cast<uint64_t>(d.packets)));
  o.Set("bytes", Napi::BigInt::New(env, static_cast<uint64_t>(d.bytes)));
}

}  // namespace

ReadWorker::ReadWorker(Napi::Env env, Family family) : ThreadJob(env, "iptlb.read"), family_(family) {}

void ReadWorker::Work() {
  std::lock_guard<std::mutex> serial(LibiptcMutex());
  if (family_ == Family::kIpv6)
    ReadTable<Ip6Tables>();
  else
    ReadTable<Ip4Tables>();
  ReleaseFreedMemory();  // the handle (a copy of the whole table) is gone
}

template <typename F>
void ReadWorker::ReadTable() {
  XtHandle<F> h("nat");
  if (!h.ok()) Throw(h.error());
  // Built-in chains first, then user chains (as iptables-save prints them).
  for (const char *hook : kHooks) {
    unsigned pos = 0;
    for (const auto *e = F::FirstRule(hook, h.get()); e; e = F::NextRule(e, h.get())) {
      pos++;
      const char *target = F::GetTarget(e, h.get());
      if (target && (std::strcmp(target, "IPTLB_OUTPUT") == 0 || std::strcmp(target, "IPTLB_PREROUTING") == 0) &&
          std::strcmp(target + 6, hook) == 0) {
        gates_.push_back(hook);  // the gate (src/gate.ts)
        continue;
      }
      const std::string comment = CommentOf<F>(e);
      // As the commit decides (transaction.cc): no comment text, a profile chain as the target.
      if (comment.empty() && target && IsProfileChain(target))
        bare_.push_back({hook, target, DecodeRule<F>(e, h.get()).rule});
      if (comment.compare(0, 6, "iptlb:") != 0) continue;
      const bool direct = std::strcmp(hook, "OUTPUT") == 0 || std::strcmp(hook, "PREROUTING") == 0;
      hooks_.push_back({hook, comment.substr(6), pos, DecodeRule<F>(e, h.get()), direct});
    }
  }
  for (const char *c = F::FirstChain(h.get()); c; c = F::NextChain(h.get())) {
    if (std::strncmp(c, "IPTLB_", 6) != 0) continue;
    if (std::strcmp(c, "IPTLB_OUTPUT") == 0 || std::strcmp(c, "IPTLB_PREROUTING") == 0) {
      dispatch_.push_back(c + 6);
      unsigned pos = 0;
      for (const auto *e = F::FirstRule(c, h.get()); e; e = F::NextRule(e, h.get())) {
        pos++;
        const std::string comment = CommentOf<F>(e);
        if (comment.compare(0, 6, "iptlb:") != 0) {
          // Another tool's rule behind the gate: it keeps the chain and its gate (as the spawn read says).
          if (foreign_.empty() || foreign_.back() != c + 6) foreign_.push_back(c + 6);
          continue;
        }
        hooks_.push_back({c + 6, comment.substr(6), pos, DecodeRule<F>(e, h.get())});
      }
      continue;
    }
    ChainView view{c, {}};
    for (const auto *e = F::FirstRule(c, h.get()); e; e = F::NextRule(e, h.get()))
      view.rules.push_back(DecodeRule<F>(e, h.get()));
    chains_.push_back(std::move(view));
  }
  if (dispatch_.empty()) {
    // No dispatch chain, so no gate: a gate set still there is left over (its profiles deleted by another
    // means, its gate and chain removed by hand). Said with its references (another tool's rule may use it).
    try {
      left_set_ = ListGateSet(F::kFamily, &members_, &left_references_);
      if (!left_set_) members_.clear();
    } catch (const NativeFailure &) {
      left_set_ = false;
      members_.clear();  // not known: nothing is reported
    }
    return;
  }
  // The set's elements: a profile whose address is not in it is not reached by its rules (status).
  try {
    ListGateSet(F::kFamily, &members_);
    members_known_ = true;
  } catch (const NativeFailure &) {
    members_.clear();  // not known: nothing is compared (the x_tables read stands)
  }
}

Napi::Array ReadWorker::MembersToJs(Napi::Env env) const {
  Napi::Array members = Napi::Array::New(env, members_.size());
  for (uint32_t i = 0; i < members_.size(); i++) {
    const SetElement &e = members_[i];
    const char *proto = e.proto == IPPROTO_TCP    ? "tcp"
                        : e.proto == IPPROTO_UDP  ? "udp"
                        : e.proto == IPPROTO_SCTP ? "sctp"
                                                  : nullptr;
    const std::string p = proto ? proto : std::to_string(e.proto);
    members.Set(i, AddressText(family_, e.addr) + "," + p + ":" + std::to_string(e.port));
  }
  return members;
}

void ReadWorker::OnOK() {
  Napi::Env env = Env();
  Napi::Object view = Napi::Object::New(env);
  Napi::Array chains = Napi::Array::New(env, chains_.size());
  for (uint32_t i = 0; i < chains_.size(); i++) {
    Napi::Object c = Napi::Object::New(env);
    c.Set("name", chains_[i].name);
    Napi::Array rules = Napi::Array::New(env, chains_[i].rules.size());
    for (uint32_t k = 0; k < chains_[i].rules.size(); k++) {
      Napi::Object kr = Napi::Object::New(env);
      kr.Set("rule", RuleToJs(env, family_, chains_[i].rules[k].rule));
      SetCounters(env, kr, chains_[i].rules[k]);
      rules.Set(k, kr);
    }
    c.Set("rules", rules);
    chains.Set(i, c);
  }
  Napi::Array hooks = Napi::Array::New(env, hooks_.size());
  for (uint32_t i = 0; i < hooks_.size(); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("chain", hooks_[i].chain);
    o.Set("owner", hooks_[i].owner);
    o.Set("position", hooks_[i].position);
    o.Set("rule", RuleToJs(env, family_, hooks_[i].rule.rule));
    SetCounters(env, o, hooks_[i].rule);
    if (hooks_[i].direct) o.Set("direct", true);
    hooks.Set(i, o);
  }
  view.Set("chains", chains);
  view.Set("hookRules", hooks);
  if (!gates_.empty() || !dispatch_.empty()) {
    Napi::Object gate = Napi::Object::New(env);
    Napi::Array gates = Napi::Array::New(env, gates_.size());
    for (uint32_t i = 0; i < gates_.size(); i++) gates.Set(i, gates_[i]);
    Napi::Array dispatch = Napi::Array::New(env, dispatch_.size());
    for (uint32_t i = 0; i < dispatch_.size(); i++) dispatch.Set(i, dispatch_[i]);
    gate.Set("gates", gates);
    gate.Set("dispatch", dispatch);
    if (!foreign_.empty()) {
      Napi::Array foreign = Napi::Array::New(env, foreign_.size());
      for (uint32_t i = 0; i < foreign_.size(); i++) foreign.Set(i, foreign_[i]);
      gate.Set("foreign", foreign);
    }
    if (members_known_) gate.Set("members", MembersToJs(env));
    view.Set("gate", gate);
  }
  if (left_set_) {
    Napi::Object left = Napi::Object::New(env);
    left.Set("members", MembersToJs(env));
    left.Set("references", left_references_);
    view.Set("leftSet", left);
  }
  if (!bare_.empty()) {
    Napi::Array bare = Napi::Array::New(env, bare_.size());
    for (uint32_t i = 0; i < bare_.size(); i++) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("chain", bare_[i].hook);
      o.Set("target", bare_[i].target);
      o.Set("rule", RuleToJs(env, family_, bare_[i].rule));
      bare.Set(i, o);
    }
    view.Set("bareJumps", bare);
  }
  Resolve(view);
}

}  // namespace iptlb
