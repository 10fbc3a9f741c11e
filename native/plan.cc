#include "plan.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmath>
#include <cstdlib>

namespace iptlb {
namespace {

constexpr size_t kMaxChainName = 28;   // XT_EXTENSION_MAXNAMELEN - 1
constexpr size_t kMaxComment = 255;    // XT_MAX_COMMENT_LEN - 1
constexpr size_t kMaxLogPrefix = 29;   // sizeof(xt_log_info.prefix) - 1

[[noreturn]] void Fail(const Napi::Env &env, const std::string &field, const std::string &what) {
  throw Napi::TypeError::New(env, field + ": " + what);
}

Napi::Object Obj(const Napi::Value &v, const std::string &field) {
  if (!v.IsObject() || v.IsArray()) Fail(v.Env(), field, "must be an object");
  return v.As<Napi::Object>();
}

Napi::Array Arr(const Napi::Value &v, const std::string &field) {
  if (!v.IsArray()) Fail(v.Env(), field, "must be an array");
  return v.As<Napi::Array>();
}

std::string Str(const Napi::Value &v, const std::string &field, size_t max) {
  if (!v.IsString()) Fail(v.Env(), field, "must be a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.size() > max) Fail(v.Env(), field, "is longer than " + std::to_string(max) + " bytes");
  if (s.find('\0') != std::string::npos) Fail(v.Env(), field, "contains a NUL byte");
  return s;
}

uint32_t Uint(const Napi::Value &v, const std::string &field, uint32_t min, uint32_t max) {
  if (!v.IsNumber()) Fail(v.Env(), field, "must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || std::floor(d) != d) {
    Fail(v.Env(), field, "must be a whole number from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return static_cast<uint32_t>(d);
}

// A user chain name as iptables accepts it: 1-28 bytes, printable, no blank, not starting with '-'
// or '!', and not a built-in chain or verdict name.
std::string ChainName(const Napi::Value &v, const std::string &field) {
  std::string s = Str(v, field, kMaxChainName);
  if (s.empty()) Fail(v.Env(), field, "must not be empty");
  for (unsigned char c : s) {
    if (c <= ' ' || c >= 0x7f) Fail(v.Env(), field, "must be printable ASCII without blanks");
  }
  if (s[0] == '-' || s[0] == '!') Fail(v.Env(), field, "must not start with '-' or '!'");
  static const char *const kReserved[] = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD", "ACCEPT", "DROP", "QUEUE", "RETURN"};
  for (const char *r : kReserved) {
    if (s == r) Fail(v.Env(), field, "must not be the built-in name " + s);
  }
  return s;
}

// An owner name: the `<n>` of the comment "iptlb:<n>" (which must fit xt_comment's 255 bytes).
std::string Owner(const Napi::Value &v, const std::string &field) {
  std::string s = Str(v, field, kMaxComment - 6);
  if (s.empty()) Fail(v.Env(), field, "must not be empty");
  return s;
}

bool IsDecimal(const std::string &s) {
  size_t digits = 0, dots = 0;
  for (char c : s) {
    if (c >= '0' && c <= '9') digits++;
    else if (c == '.') dots++;
    else return false;
  }
  return digits > 0 && dots <= 1;
}

void Endpoint(const Napi::Value &v, const std::string &field, uint32_t *addr, uint16_t *port) {
  std::string s = Str(v, field, 21);
  size_t colon = s.rfind(':');
  uint32_t mask = 0;
  if (colon == std::string::npos || !ParseCidr(s.substr(0, colon), addr, &mask) || mask != 0xffffffffu) {
    Fail(v.Env(), field, "must be \"a.b.c.d:port\"");
  }
  char *end = nullptr;
  std::string p = s.substr(colon + 1);
  long n = std::strtol(p.c_str(), &end, 10);
  if (p.empty() || *end != '\0' || n < 1 || n > 65535) Fail(v.Env(), field, "has no valid port");
  *port = static_cast<uint16_t>(n);
}

Match MatchFromJs(const Napi::Value &value, const std::string &field) {
  Napi::Env env = value.Env();
  Napi::Object o = Obj(value, field);
  std::string name = Str(o.Get("name"), field + ".name", 32);
  Match m{Match::kTcp};
  if (name == "tcp" || name == "udp" || name == "sctp") {
    m.kind = name == "tcp" ? Match::kTcp : name == "udp" ? Match::kUdp : Match::kSctp;
    m.port = static_cast<uint16_t>(Uint(o.Get("dport"), field + ".dport", 1, 65535));
  } else if (name == "statistic") {
    if (Str(o.Get("mode"), field + ".mode", 16) != "random") Fail(env, field + ".mode", "must be \"random\"");
    std::string p = Str(o.Get("probability"), field + ".probability", 32);
    char *end = nullptr;
    double d = IsDecimal(p) ? std::strtod(p.c_str(), &end) : -1.0;
    if (!end || *end != '\0' || !(d >= 0.0 && d <= 1.0)) Fail(env, field + ".probability", "must be a decimal from 0 to 1");
    m.kind = Match::kStatistic;
    m.probability = static_cast<uint32_t>(std::lround(0x80000000 * d));
  } else if (name == "comment") {
    m.kind = Match::kComment;
    m.text = Str(o.Get("comment"), field + ".comment", kMaxComment);
  } else if (name == "addrtype") {
    if (Str(o.Get("dstType"), field + ".dstType", 16) != "LOCAL") Fail(env, field + ".dstType", "must be \"LOCAL\"");
    m.kind = Match::kAddrtypeLocal;
  } else if (name == "conntrack") {
    if (Str(o.Get("ctstate"), field + ".ctstate", 16) != "DNAT") Fail(env, field + ".ctstate", "must be \"DNAT\"");
    m.kind = Match::kConntrackDnat;
    if (!ParseCidr(Str(o.Get("ctorigdst"), field + ".ctorigdst", 18), &m.addr, &m.mask)) Fail(env, field + ".ctorigdst", "must be an IPv4 address");
    m.port = static_cast<uint16_t>(Uint(o.Get("ctorigdstport"), field + ".ctorigdstport", 1, 65535));
  } else {
    Fail(env, field + ".name", "unknown match \"" + name + "\"");
  }
  return m;
}

Target TargetFromJs(const Napi::Value &value, const std::string &field) {
  Napi::Env env = value.Env();
  Napi::Object o = Obj(value, field);
  std::string name = Str(o.Get("name"), field + ".name", 32);
  Target t{Target::kReturn};
  if (name == "DNAT") {
    t.kind = Target::kDnat;
    Endpoint(o.Get("toDestination"), field + ".toDestination", &t.addr, &t.port);
  } else if (name == "LOG") {
    t.kind = Target::kLog;
    t.prefix = Str(o.Get("prefix"), field + ".prefix", kMaxLogPrefix);
    t.level = static_cast<uint8_t>(Uint(o.Get("level"), field + ".level", 0, 7));
  } else if (name == "RETURN") {
    t.kind = Target::kReturn;
  } else if (name == "MASQUERADE") {
    t.kind = Target::kMasquerade;
  } else if (name == "jump") {
    t.kind = Target::kJump;
    t.chain = ChainName(o.Get("chain"), field + ".chain");
  } else {
    Fail(env, field + ".name", "unknown target \"" + name + "\"");
  }
  return t;
}

Rule RuleFromJs(const Napi::Value &value, const std::string &field) {
  Napi::Env env = value.Env();
  Napi::Object o = Obj(value, field);
  Rule r;
  Napi::Value dst = o.Get("dst");
  if (!dst.IsUndefined()) {
    if (!ParseCidr(Str(dst, field + ".dst", 18), &r.dst, &r.dmsk)) Fail(env, field + ".dst", "must be an IPv4 address or a.b.c.d/n");
    r.has_dst = true;
  }
  Napi::Value proto = o.Get("proto");
  if (!proto.IsUndefined()) {
    std::string p = Str(proto, field + ".proto", 8);
    if (p == "tcp") r.proto = IPPROTO_TCP;
    else if (p == "udp") r.proto = IPPROTO_UDP;
    else if (p == "sctp") r.proto = IPPROTO_SCTP;
    else Fail(env, field + ".proto", "must be tcp, udp or sctp");
  }
  Napi::Array ms = Arr(o.Get("matches"), field + ".matches");
  if (ms.Length() > 16) Fail(env, field + ".matches", "has more than 16 matches");
  for (uint32_t i = 0; i < ms.Length(); i++) r.matches.push_back(MatchFromJs(ms.Get(i), field + ".matches[" + std::to_string(i) + "]"));
  for (const Match &m : r.matches) {
    uint8_t need = m.kind == Match::kTcp ? IPPROTO_TCP : m.kind == Match::kUdp ? IPPROTO_UDP : m.kind == Match::kSctp ? IPPROTO_SCTP : 0;
    if (need && r.proto != need) Fail(env, field + ".proto", "must name the protocol of its port match");
  }
  r.target = TargetFromJs(o.Get("target"), field + ".target");
  return r;
}

}  // namespace

bool ParseCidr(const std::string &text, uint32_t *addr, uint32_t *mask) {
  std::string ip = text;
  int bits = 32;
  size_t slash = text.find('/');
  if (slash != std::string::npos) {
    ip = text.substr(0, slash);
    std::string b = text.substr(slash + 1);
    char *end = nullptr;
    long n = std::strtol(b.c_str(), &end, 10);
    if (b.empty() || *end != '\0' || n < 0 || n > 32) return false;
    bits = static_cast<int>(n);
  }
  struct in_addr a;
  if (inet_pton(AF_INET, ip.c_str(), &a) != 1) return false;
  uint32_t m = bits == 0 ? 0 : htonl(0xffffffffu << (32 - bits));
  *addr = a.s_addr & m;
  *mask = m;
  return true;
}

Transaction TransactionFromJs(const Napi::Value &value) {
  Napi::Env env = value.Env();
  Napi::Object o = Obj(value, "transaction");
  if (!o.Get("family").IsString() || o.Get("family").As<Napi::String>().Utf8Value() != "ipv4") Fail(env, "transaction.family", "must be \"ipv4\"");
  if (!o.Get("table").IsString() || o.Get("table").As<Napi::String>().Utf8Value() != "nat") Fail(env, "transaction.table", "must be \"nat\"");
  Transaction tx;
  Napi::Array owners = Arr(o.Get("owners"), "transaction.owners");
  for (uint32_t i = 0; i < owners.Length(); i++) tx.owners.push_back(Owner(owners.Get(i), "transaction.owners[" + std::to_string(i) + "]"));
  Napi::Array del = Arr(o.Get("deleteChains"), "transaction.deleteChains");
  for (uint32_t i = 0; i < del.Length(); i++) tx.delete_chains.push_back(ChainName(del.Get(i), "transaction.deleteChains[" + std::to_string(i) + "]"));
  Napi::Array chains = Arr(o.Get("chains"), "transaction.chains");
  for (uint32_t i = 0; i < chains.Length(); i++) {
    std::string f = "transaction.chains[" + std::to_string(i) + "]";
    Napi::Object c = Obj(chains.Get(i), f);
    Chain chain;
    chain.name = ChainName(c.Get("name"), f + ".name");
    Napi::Array rules = Arr(c.Get("rules"), f + ".rules");
    for (uint32_t k = 0; k < rules.Length(); k++) chain.rules.push_back(RuleFromJs(rules.Get(k), f + ".rules[" + std::to_string(k) + "]"));
    tx.chains.push_back(std::move(chain));
  }
  Napi::Array hooks = Arr(o.Get("hookRules"), "transaction.hookRules");
  for (uint32_t i = 0; i < hooks.Length(); i++) {
    std::string f = "transaction.hookRules[" + std::to_string(i) + "]";
    Napi::Object h = Obj(hooks.Get(i), f);
    HookRule hr;
    hr.chain = Str(h.Get("chain"), f + ".chain", kMaxChainName);
    if (hr.chain != "OUTPUT" && hr.chain != "PREROUTING" && hr.chain != "POSTROUTING") Fail(env, f + ".chain", "must be OUTPUT, PREROUTING or POSTROUTING");
    hr.owner = Owner(h.Get("owner"), f + ".owner");
    hr.rule = RuleFromJs(h.Get("rule"), f + ".rule");
    // The comment is what later transactions find the rule by: it must be there, and be the owner's.
    bool tagged = false;
    for (const Match &m : hr.rule.matches) tagged = tagged || (m.kind == Match::kComment && m.text == "iptlb:" + hr.owner);
    if (!tagged) Fail(env, f + ".rule.matches", "must include the comment \"iptlb:" + hr.owner + "\"");
    tx.hook_rules.push_back(std::move(hr));
  }
  return tx;
}

}  // namespace iptlb
