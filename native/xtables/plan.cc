#include "plan.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmath>
#include <cstdlib>

#include "errors.h"
#include "json.h"

namespace iptlb {
namespace {

constexpr size_t kMaxChainName = 28;    // XT_EXTENSION_MAXNAMELEN - 1
constexpr size_t kMaxComment = 255;     // XT_MAX_COMMENT_LEN - 1
constexpr size_t kMaxRecentName = 199;  // XT_RECENT_NAME_LEN - 1
constexpr size_t kMaxLogPrefix = 29;    // sizeof(xt_log_info.prefix) - 1

// Where a value sits in the transaction ("transaction.chains[0].rules[2].target"), kept as a chain
// of stack frames and spelled out only when a check fails: the plan is read without building a
// string per field.
struct Path {
  const Path *parent;
  const char *key;  // nullptr: an array index
  uint32_t index;

  Path Key(const char *k) const { return Path{this, k, 0}; }
  Path Index(uint32_t i) const { return Path{this, nullptr, i}; }
  std::string Render() const {
    std::string s = parent ? parent->Render() : std::string();
    if (key) {
      if (parent) s += '.';
      s += key;
    } else {
      s += '[' + std::to_string(index) + ']';
    }
    return s;
  }
};

// A failed check: "<field>: <what>". Turned into an EPLAN NativeFailure by TransactionFromJson.
struct PlanError {
  std::string message;
};

[[noreturn]] void Fail(const Path &field, const std::string &what) { throw PlanError{field.Render() + ": " + what}; }

// A value of the parsed JSON text (plain data, any thread), read by the checks below.
class JsonValue {
 public:
  JsonValue(const JsonDoc *doc, uint32_t n) : doc_(doc), n_(n) {}
  bool IsUndefined() const { return n_ == JsonDoc::kNone; }
  bool IsString() const { return Is(JsonDoc::kString); }
  bool IsNumber() const { return Is(JsonDoc::kNumber); }
  bool IsArray() const { return Is(JsonDoc::kArray); }
  bool IsObject() const { return Is(JsonDoc::kObject); }
  bool IsBool() const { return Is(JsonDoc::kBool); }
  bool Bool() const { return doc_->boolean(n_); }
  std::string String() const { return doc_->string(n_); }
  double Number() const { return doc_->number(n_); }
  JsonValue Get(const char *key) const { return JsonValue(doc_, doc_->Find(n_, key)); }
  uint32_t Length() const { return doc_->length(n_); }
  JsonValue At(uint32_t i) const { return JsonValue(doc_, doc_->at(n_, i)); }

 private:
  bool Is(JsonDoc::Type t) const { return n_ != JsonDoc::kNone && doc_->type(n_) == t; }
  const JsonDoc *doc_;
  uint32_t n_;
};

template <typename V>
V Obj(const V &v, const Path &field) {
  if (!v.IsObject()) Fail(field, "must be an object");
  return v;
}

template <typename V>
V Arr(const V &v, const Path &field) {
  if (!v.IsArray()) Fail(field, "must be an array");
  return v;
}

template <typename V>
std::string Str(const V &v, const Path &field, size_t max) {
  if (!v.IsString()) Fail(field, "must be a string");
  std::string s = v.String();
  if (s.size() > max) Fail(field, "is longer than " + std::to_string(max) + " bytes");
  if (s.find('\0') != std::string::npos) Fail(field, "contains a NUL byte");
  return s;
}

template <typename V>
uint32_t Uint(const V &v, const Path &field, uint32_t min, uint32_t max) {
  if (!v.IsNumber()) Fail(field, "must be a number");
  double d = v.Number();
  if (!(d >= min && d <= max) || std::floor(d) != d) {
    Fail(field, "must be a whole number from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return static_cast<uint32_t>(d);
}

// A user chain name as iptables accepts it: 1-28 bytes, printable, no blank, not starting with '-'
// or '!', and not a built-in chain or verdict name.
template <typename V>
std::string ChainName(const V &v, const Path &field) {
  std::string s = Str(v, field, kMaxChainName);
  if (s.empty()) Fail(field, "must not be empty");
  for (unsigned char c : s) {
    if (c <= ' ' || c >= 0x7f) Fail(field, "must be printable ASCII without blanks");
  }
  if (s[0] == '-' || s[0] == '!') Fail(field, "must not start with '-' or '!'");
  static const char *const kReserved[] = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD",
                                          "ACCEPT",     "DROP",  "QUEUE",  "RETURN"};
  for (const char *r : kReserved) {
    if (s == r) Fail(field, "must not be the built-in name " + s);
  }
  return s;
}

// An owner name: the `<n>` of the comment "iptlb:<n>" (which must fit xt_comment's 255 bytes).
template <typename V>
std::string Owner(const V &v, const Path &field) {
  std::string s = Str(v, field, kMaxComment - 6);
  if (s.empty()) Fail(field, "must not be empty");
  return s;
}

bool IsDecimal(const std::string &s) {
  size_t digits = 0, dots = 0;
  for (char c : s) {
    if (c >= '0' && c <= '9')
      digits++;
    else if (c == '.')
      dots++;
    else
      return false;
  }
  return digits > 0 && dots <= 1;
}

// Longest address text with a prefix: an IPv6 address with a dotted IPv4 tail (45) and "/128".
constexpr size_t kMaxCidr = 49;

bool IsHost(Family family, const Address &mask) {
  const int words = family == Family::kIpv4 ? 1 : 4;
  for (int i = 0; i < words; i++) {
    if (mask.all[i] != 0xffffffffu) return false;
  }
  return true;
}

// "a.b.c.d:port" (ipv4) or "[v6]:port" (ipv6).
template <typename V>
void Endpoint(Family family, const V &v, const Path &field, Address *addr, uint16_t *port) {
  std::string s = Str(v, field, kMaxCidr + 8);
  size_t colon = s.rfind(':');
  std::string host = colon == std::string::npos ? std::string() : s.substr(0, colon);
  if (family == Family::kIpv6) {
    host =
        host.size() > 2 && host.front() == '[' && host.back() == ']' ? host.substr(1, host.size() - 2) : std::string();
  }
  Address mask{};
  if (host.empty() || host.find('/') != std::string::npos || !ParseCidr(family, host, addr, &mask) ||
      !IsHost(family, mask)) {
    Fail(field, family == Family::kIpv4 ? "must be \"a.b.c.d:port\"" : "must be \"[ipv6]:port\"");
  }
  char *end = nullptr;
  std::string p = s.substr(colon + 1);
  long n = std::strtol(p.c_str(), &end, 10);
  if (p.empty() || *end != '\0' || n < 1 || n > 65535) Fail(field, "has no valid port");
  *port = static_cast<uint16_t>(n);
}

template <typename V>
Match MatchFrom(Family family, const V &value, const Path &field) {
  V o = Obj(value, field);
  std::string name = Str(o.Get("name"), field.Key("name"), 32);
  Match m{Match::kTcp};
  if (name == "tcp" || name == "udp" || name == "sctp") {
    m.kind = name == "tcp" ? Match::kTcp : name == "udp" ? Match::kUdp : Match::kSctp;
    m.port = static_cast<uint16_t>(Uint(o.Get("dport"), field.Key("dport"), 1, 65535));
  } else if (name == "statistic") {
    const std::string mode = Str(o.Get("mode"), field.Key("mode"), 16);
    if (mode == "nth") {
      m.kind = Match::kStatisticNth;
      m.every = static_cast<uint32_t>(Uint(o.Get("every"), field.Key("every"), 1, 1u << 20));
      m.packet = static_cast<uint32_t>(Uint(o.Get("packet"), field.Key("packet"), 0, m.every - 1));
      return m;
    }
    if (mode != "random") Fail(field.Key("mode"), "must be \"random\" or \"nth\"");
    std::string p = Str(o.Get("probability"), field.Key("probability"), 32);
    char *end = nullptr;
    double d = IsDecimal(p) ? std::strtod(p.c_str(), &end) : -1.0;
    if (!end || *end != '\0' || !(d >= 0.0 && d <= 1.0))
      Fail(field.Key("probability"), "must be a decimal from 0 to 1");
    m.kind = Match::kStatistic;
    m.probability = static_cast<uint32_t>(std::lround(0x80000000 * d));
  } else if (name == "recent") {
    // Session affinity: `--set` or `--update --seconds S --reap`, always on the source address, mask /32.
    const std::string mode = Str(o.Get("mode"), field.Key("mode"), 16);
    if (mode == "set") {
      m.kind = Match::kRecentSet;
    } else if (mode == "update") {
      m.kind = Match::kRecentUpdate;
      m.seconds = static_cast<uint32_t>(Uint(o.Get("seconds"), field.Key("seconds"), 1, 86400));
    } else {
      Fail(field.Key("mode"), "must be \"set\" or \"update\"");
    }
    m.text = Str(o.Get("recentName"), field.Key("recentName"), kMaxRecentName);
    if (m.text.empty() || m.text == "." || m.text == ".." || m.text.find('/') != std::string::npos) {
      Fail(field.Key("recentName"), "must be a list name without '/'");
    }
  } else if (name == "comment") {
    m.kind = Match::kComment;
    m.text = Str(o.Get("comment"), field.Key("comment"), kMaxComment);
  } else if (name == "addrtype") {
    if (Str(o.Get("dstType"), field.Key("dstType"), 16) != "LOCAL") Fail(field.Key("dstType"), "must be \"LOCAL\"");
    m.kind = Match::kAddrtypeLocal;
  } else if (name == "conntrack") {
    if (Str(o.Get("ctstate"), field.Key("ctstate"), 16) != "DNAT") Fail(field.Key("ctstate"), "must be \"DNAT\"");
    m.kind = Match::kConntrackDnat;
    if (!ParseCidr(family, Str(o.Get("ctorigdst"), field.Key("ctorigdst"), kMaxCidr), &m.addr, &m.mask)) {
      Fail(field.Key("ctorigdst"), family == Family::kIpv4 ? "must be an IPv4 address" : "must be an IPv6 address");
    }
    m.port = static_cast<uint16_t>(Uint(o.Get("ctorigdstport"), field.Key("ctorigdstport"), 1, 65535));
  } else {
    Fail(field.Key("name"), "unknown match \"" + name + "\"");
  }
  return m;
}

template <typename V>
Target TargetFrom(Family family, const V &value, const Path &field) {
  V o = Obj(value, field);
  std::string name = Str(o.Get("name"), field.Key("name"), 32);
  Target t{Target::kReturn};
  if (name == "DNAT") {
    t.kind = Target::kDnat;
    Endpoint(family, o.Get("toDestination"), field.Key("toDestination"), &t.addr, &t.port);
  } else if (name == "LOG") {
    t.kind = Target::kLog;
    t.prefix = Str(o.Get("prefix"), field.Key("prefix"), kMaxLogPrefix);
    t.level = static_cast<uint8_t>(Uint(o.Get("level"), field.Key("level"), 0, 7));
  } else if (name == "RETURN") {
    t.kind = Target::kReturn;
  } else if (name == "MASQUERADE") {
    t.kind = Target::kMasquerade;
  } else if (name == "jump") {
    t.kind = Target::kJump;
    t.chain = ChainName(o.Get("chain"), field.Key("chain"));
  } else {
    Fail(field.Key("name"), "unknown target \"" + name + "\"");
  }
  return t;
}

template <typename V>
Rule RuleFrom(Family family, const V &value, const Path &field) {
  V o = Obj(value, field);
  Rule r;
  V dst = o.Get("dst");
  if (!dst.IsUndefined()) {
    if (!ParseCidr(family, Str(dst, field.Key("dst"), kMaxCidr), &r.dst, &r.dmsk)) {
      Fail(field.Key("dst"),
           family == Family::kIpv4 ? "must be an IPv4 address or a.b.c.d/n" : "must be an IPv6 address or v6/n");
    }
    r.has_dst = true;
  }
  V proto = o.Get("proto");
  if (!proto.IsUndefined()) {
    std::string p = Str(proto, field.Key("proto"), 8);
    if (p == "tcp")
      r.proto = IPPROTO_TCP;
    else if (p == "udp")
      r.proto = IPPROTO_UDP;
    else if (p == "sctp")
      r.proto = IPPROTO_SCTP;
    else
      Fail(field.Key("proto"), "must be tcp, udp or sctp");
  }
  const Path mf = field.Key("matches");
  V ms = Arr(o.Get("matches"), mf);
  const uint32_t count = ms.Length();
  if (count > 16) Fail(mf, "has more than 16 matches");
  r.matches.reserve(count);
  for (uint32_t i = 0; i < count; i++) r.matches.push_back(MatchFrom(family, ms.At(i), mf.Index(i)));
  for (const Match &m : r.matches) {
    uint8_t need = m.kind == Match::kTcp    ? IPPROTO_TCP
                   : m.kind == Match::kUdp  ? IPPROTO_UDP
                   : m.kind == Match::kSctp ? IPPROTO_SCTP
                                            : 0;
    if (need && r.proto != need) Fail(field.Key("proto"), "must name the protocol of its port match");
  }
  r.target = TargetFrom(family, o.Get("target"), field.Key("target"));
  return r;
}

// One element of `was`: `ip,proto:port` (ipset's text of a gate element), as the rule of a profile's
// dispatch rules' address, protocol and port (what ElementOfRule reads back).
template <typename V>
Rule WasFrom(Family family, const V &value, const Path &field) {
  const std::string text = Str(value, field, kMaxCidr + 16);
  const size_t comma = text.find(',');
  const size_t colon = text.rfind(':');
  Rule r;
  if (comma == std::string::npos || colon == std::string::npos || colon < comma ||
      !ParseCidr(family, text.substr(0, comma), &r.dst, &r.dmsk) || text.find('/') != std::string::npos)
    Fail(field, family == Family::kIpv4 ? "must be a.b.c.d,proto:port" : "must be v6,proto:port");
  r.has_dst = true;
  const std::string proto = text.substr(comma + 1, colon - comma - 1);
  Match m;
  if (proto == "tcp") {
    r.proto = IPPROTO_TCP;
    m.kind = Match::kTcp;
  } else if (proto == "udp") {
    r.proto = IPPROTO_UDP;
    m.kind = Match::kUdp;
  } else if (proto == "sctp") {
    r.proto = IPPROTO_SCTP;
    m.kind = Match::kSctp;
  } else {
    Fail(field, "must name tcp, udp or sctp");
  }
  const std::string port = text.substr(colon + 1);
  char *end = nullptr;
  const long n = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || port[0] < '1' || port[0] > '9' || *end != '\0' || n > 65535)
    Fail(field, "must end in a port from 1 to 65535");
  m.port = static_cast<uint16_t>(n);
  r.matches.push_back(m);
  r.target = Target{};
  return r;
}

template <typename V>
Transaction TransactionFrom(const V &value) {
  const Path root{nullptr, "transaction", 0};
  V o = Obj(value, root);
  V family = o.Get("family");
  const std::string f = family.IsString() ? family.String() : std::string();
  if (f != "ipv4" && f != "ipv6") Fail(root.Key("family"), "must be \"ipv4\" or \"ipv6\"");
  V table = o.Get("table");
  if (!table.IsString() || table.String() != "nat") Fail(root.Key("table"), "must be \"nat\"");
  Transaction tx;
  tx.family = f == "ipv6" ? Family::kIpv6 : Family::kIpv4;
  V exclusive = o.Get("exclusive");
  if (!exclusive.IsUndefined()) {
    if (!exclusive.IsBool()) Fail(root.Key("exclusive"), "must be true or false");
    tx.exclusive = exclusive.Bool();
  }
  const Path crf = root.Key("created");
  V created = o.Get("created");
  if (!created.IsUndefined()) {
    Arr(created, crf);
    for (uint32_t i = 0; i < created.Length(); i++) {
      const Path f = crf.Index(i);
      V c = Obj(created.At(i), f);
      Created entry;
      entry.name = Owner(c.Get("name"), f.Key("name"));
      V chain = c.Get("chain");
      if (!chain.IsUndefined()) entry.chain = ChainName(chain, f.Key("chain"));
      tx.created.push_back(std::move(entry));
    }
  }
  // `was` and `strays`: optional lists of gate elements (`ip,proto:port`), read alike.
  const auto elements = [&](const char *key, std::vector<Rule> *out) {
    const Path kf = root.Key(key);
    V list = o.Get(key);
    if (list.IsUndefined()) return;
    Arr(list, kf);
    out->reserve(list.Length());
    for (uint32_t i = 0; i < list.Length(); i++) out->push_back(WasFrom(tx.family, list.At(i), kf.Index(i)));
  };
  elements("was", &tx.was);
  elements("strays", &tx.strays);
  const Path of = root.Key("owners");
  V owners = Arr(o.Get("owners"), of);
  for (uint32_t i = 0; i < owners.Length(); i++) tx.owners.push_back(Owner(owners.At(i), of.Index(i)));
  const Path df = root.Key("deleteChains");
  V del = Arr(o.Get("deleteChains"), df);
  for (uint32_t i = 0; i < del.Length(); i++) tx.delete_chains.push_back(ChainName(del.At(i), df.Index(i)));
  const Path cf = root.Key("chains");
  V chains = Arr(o.Get("chains"), cf);
  tx.chains.reserve(chains.Length());
  for (uint32_t i = 0; i < chains.Length(); i++) {
    const Path f = cf.Index(i);
    V c = Obj(chains.At(i), f);
    Chain chain;
    chain.name = ChainName(c.Get("name"), f.Key("name"));
    const Path rf = f.Key("rules");
    V rules = Arr(c.Get("rules"), rf);
    chain.rules.reserve(rules.Length());
    for (uint32_t k = 0; k < rules.Length(); k++) chain.rules.push_back(RuleFrom(tx.family, rules.At(k), rf.Index(k)));
    tx.chains.push_back(std::move(chain));
  }
  const Path hf = root.Key("hookRules");
  V hooks = Arr(o.Get("hookRules"), hf);
  tx.hook_rules.reserve(hooks.Length());
  for (uint32_t i = 0; i < hooks.Length(); i++) {
    const Path f = hf.Index(i);
    V h = Obj(hooks.At(i), f);
    HookRule hr;
    hr.chain = Str(h.Get("chain"), f.Key("chain"), kMaxChainName);
    if (hr.chain != "OUTPUT" && hr.chain != "PREROUTING" && hr.chain != "POSTROUTING")
      Fail(f.Key("chain"), "must be OUTPUT, PREROUTING or POSTROUTING");
    hr.owner = Owner(h.Get("owner"), f.Key("owner"));
    const Path rf = f.Key("rule");
    hr.rule = RuleFrom(tx.family, h.Get("rule"), rf);
    // The comment is what later transactions find the rule by: it must be there, and be the owner's.
    bool tagged = false;
    for (const Match &m : hr.rule.matches)
      tagged = tagged || (m.kind == Match::kComment && m.text.size() == hr.owner.size() + 6 &&
                          m.text.compare(0, 6, "iptlb:") == 0 && m.text.compare(6, std::string::npos, hr.owner) == 0);
    if (!tagged) Fail(rf.Key("matches"), "must include the comment \"iptlb:" + hr.owner + "\"");
    tx.hook_rules.push_back(std::move(hr));
  }
  return tx;
}

}  // namespace

bool ParseCidr(Family family, const std::string &text, Address *addr, Address *mask) {
  const int af = family == Family::kIpv4 ? AF_INET : AF_INET6;
  const int max_bits = family == Family::kIpv4 ? 32 : 128;
  std::string ip = text;
  int bits = max_bits;
  size_t slash = text.find('/');
  if (slash != std::string::npos) {
    ip = text.substr(0, slash);
    std::string b = text.substr(slash + 1);
    char *end = nullptr;
    long n = std::strtol(b.c_str(), &end, 10);
    if (b.empty() || *end != '\0' || n < 0 || n > max_bits) return false;
    bits = static_cast<int>(n);
  }
  Address a{};
  if (inet_pton(af, ip.c_str(), family == Family::kIpv4 ? static_cast<void *>(&a.in) : static_cast<void *>(&a.in6)) !=
      1)
    return false;
  Address m{};
  for (int word = 0; word < max_bits / 32; word++) {
    const int left = bits - 32 * word;
    const uint32_t host = left >= 32 ? 0xffffffffu : left <= 0 ? 0 : 0xffffffffu << (32 - left);
    m.all[word] = htonl(host);
    a.all[word] &= m.all[word];
  }
  *addr = a;
  *mask = m;
  return true;
}

Transaction TransactionFromJson(std::string text) {
  JsonDoc doc;
  std::string why;
  if (!doc.Parse(std::move(text), &why))
    Throw(NativeError{"EPLAN", EINVAL, "transaction: is not valid JSON (" + why + ")"});
  try {
    return TransactionFrom(JsonValue(&doc, 0));
  } catch (const PlanError &e) {
    Throw(NativeError{"EPLAN", EINVAL, e.message});
  }
}

bool IsProfileChain(const std::string &name) {
  static const std::string kPrefix = "IPTLB_NAT_";
  if (name.compare(0, kPrefix.size(), kPrefix) != 0) return false;
  const size_t n = name.size() - kPrefix.size();
  if (n < 1 || n > 18) return false;
  for (size_t i = kPrefix.size(); i < name.size(); i++) {
    const char c = name[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

}  // namespace iptlb
