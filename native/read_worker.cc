#include "read_worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "iptc_handle.h"
#include "transaction.h"

namespace iptlb {
namespace {

const char *const kHooks[] = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"};

std::string Cidr(uint32_t addr, uint32_t mask) {
  char buf[INET_ADDRSTRLEN];
  struct in_addr a;
  a.s_addr = addr;
  inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return std::string(buf) + "/" + std::to_string(__builtin_popcount(mask));
}

Napi::Value RuleToJs(Napi::Env env, const DecodedRule &d) {
  Napi::Object r = Napi::Object::New(env);
  if (d.rule.has_dst) r.Set("dst", Cidr(d.rule.dst, d.rule.dmsk));
  if (d.rule.proto == IPPROTO_TCP) r.Set("proto", "tcp");
  else if (d.rule.proto == IPPROTO_UDP) r.Set("proto", "udp");
  else if (d.rule.proto == IPPROTO_SCTP) r.Set("proto", "sctp");
  Napi::Array ms = Napi::Array::New(env);
  uint32_t i = 0;
  for (const Match &m : d.rule.matches) {
    Napi::Object o = Napi::Object::New(env);
    switch (m.kind) {
      case Match::kTcp: o.Set("name", "tcp"); o.Set("dport", m.port); break;
      case Match::kUdp: o.Set("name", "udp"); o.Set("dport", m.port); break;
      case Match::kSctp: o.Set("name", "sctp"); o.Set("dport", m.port); break;
      case Match::kStatistic: {
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%.11f", 1.0 * m.probability / 0x80000000);  // as iptables-save prints it
        o.Set("name", "statistic");
        o.Set("mode", "random");
        o.Set("probability", buf);
        break;
      }
      case Match::kComment: o.Set("name", "comment"); o.Set("comment", m.text); break;
      case Match::kAddrtypeLocal: o.Set("name", "addrtype"); o.Set("dstType", "LOCAL"); break;
      case Match::kConntrackDnat:
        o.Set("name", "conntrack");
        o.Set("ctstate", "DNAT");
        o.Set("ctorigdst", Cidr(m.addr, m.mask));
        o.Set("ctorigdstport", m.port);
        break;
    }
    ms.Set(i++, o);
  }
  for (const std::string &u : d.unknown_matches) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", "unknown");
    o.Set("ext", u);
    ms.Set(i++, o);
  }
  r.Set("matches", ms);
  Napi::Object t = Napi::Object::New(env);
  if (!d.unknown_target.empty()) {
    t.Set("name", "unknown");
    t.Set("ext", d.unknown_target);
  } else {
    switch (d.rule.target.kind) {
      case Target::kDnat: {
        char buf[INET_ADDRSTRLEN];
        struct in_addr a;
        a.s_addr = d.rule.target.addr;
        inet_ntop(AF_INET, &a, buf, sizeof(buf));
        t.Set("name", "DNAT");
        t.Set("toDestination", std::string(buf) + ":" + std::to_string(d.rule.target.port));
        break;
      }
      case Target::kLog: t.Set("name", "LOG"); t.Set("prefix", d.rule.target.prefix); t.Set("level", d.rule.target.level); break;
      case Target::kReturn: t.Set("name", "RETURN"); break;
      case Target::kMasquerade: t.Set("name", "MASQUERADE"); break;
      case Target::kJump: t.Set("name", "jump"); t.Set("chain", d.rule.target.chain); break;
    }
  }
  r.Set("target", t);
  return r;
}

}  // namespace

ReadWorker::ReadWorker(Napi::Env env) : Napi::AsyncWorker(env, "iptlb.read"), deferred_(Napi::Promise::Deferred::New(env)) {}

void ReadWorker::Execute() {
  IptcHandle h("nat");
  if (!h.ok()) {
    int err = errno;
    error_ = NativeError::FromErrno("EKERNEL", err, std::string("iptc_init: ") + iptc_strerror(err) + " (errno " + std::to_string(err) + ") while reading table nat");
    return;
  }
  for (const char *c = iptc_first_chain(h.get()); c; c = iptc_next_chain(h.get())) {
    if (std::strncmp(c, "IPTLB_", 6) != 0) continue;
    ChainView view{c, {}};
    for (const struct ipt_entry *e = iptc_first_rule(c, h.get()); e; e = iptc_next_rule(e, h.get())) view.rules.push_back(DecodeRule(e, h.get()));
    chains_.push_back(std::move(view));
  }
  for (const char *hook : kHooks) {
    unsigned pos = 0;
    for (const struct ipt_entry *e = iptc_first_rule(hook, h.get()); e; e = iptc_next_rule(e, h.get())) {
      pos++;
      std::string comment = CommentOf(e);
      if (comment.compare(0, 6, "iptlb:") != 0) continue;
      hooks_.push_back({hook, comment.substr(6), pos, DecodeRule(e, h.get())});
    }
  }
}

void ReadWorker::OnOK() {
  Napi::Env env = Env();
  if (!error_.empty()) {
    deferred_.Reject(ToJsError(env, error_).Value());
    return;
  }
  Napi::Object view = Napi::Object::New(env);
  Napi::Array chains = Napi::Array::New(env, chains_.size());
  for (size_t i = 0; i < chains_.size(); i++) {
    Napi::Object c = Napi::Object::New(env);
    c.Set("name", chains_[i].name);
    Napi::Array rules = Napi::Array::New(env, chains_[i].rules.size());
    for (size_t k = 0; k < chains_[i].rules.size(); k++) {
      Napi::Object kr = Napi::Object::New(env);
      kr.Set("rule", RuleToJs(env, chains_[i].rules[k]));
      kr.Set("packets", Napi::BigInt::New(env, static_cast<uint64_t>(chains_[i].rules[k].packets)));
      kr.Set("bytes", Napi::BigInt::New(env, static_cast<uint64_t>(chains_[i].rules[k].bytes)));
      rules.Set(k, kr);
    }
    c.Set("rules", rules);
    chains.Set(i, c);
  }
  Napi::Array hooks = Napi::Array::New(env, hooks_.size());
  for (size_t i = 0; i < hooks_.size(); i++) {
    Napi::Object h = Napi::Object::New(env);
    h.Set("chain", hooks_[i].chain);
    h.Set("owner", hooks_[i].owner);
    h.Set("position", hooks_[i].position);
    h.Set("rule", RuleToJs(env, hooks_[i].rule));
    h.Set("packets", Napi::BigInt::New(env, static_cast<uint64_t>(hooks_[i].rule.packets)));
    h.Set("bytes", Napi::BigInt::New(env, static_cast<uint64_t>(hooks_[i].rule.bytes)));
    hooks.Set(i, h);
  }
  view.Set("chains", chains);
  view.Set("hookRules", hooks);
  deferred_.Resolve(view);
}

}  // namespace iptlb
