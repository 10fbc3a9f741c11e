#include "nft_ops.h"

#include <arpa/inet.h>
#include <libnftnl/common.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <netinet/in.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "ip_text.h"
#include "nft_objects.h"
#include "nft_rules.h"

namespace iptlb {
namespace nft {

// ---- names ------------------------------------------------------------------------------------

const char *ProtoName(Proto p) {
  switch (p) {
    case Proto::kTcp:
      return "tcp";
    case Proto::kUdp:
      return "udp";
    case Proto::kSctp:
      return "sctp";
  }
  return "?";
}
uint8_t ProtoNumber(Proto p) {
  switch (p) {
    case Proto::kTcp:
      return IPPROTO_TCP;
    case Proto::kUdp:
      return IPPROTO_UDP;
    case Proto::kSctp:
      return IPPROTO_SCTP;
  }
  return 0;
}
const char *HookName(Hook h) {
  switch (h) {
    case Hook::kOut:
      return "out";
    case Hook::kPre:
      return "pre";
    case Hook::kLoc:
      return "loc";
  }
  return "?";
}
const char *ChainName(BaseChain c) {
  switch (c) {
    case BaseChain::kOutput:
      return "output";
    case BaseChain::kPrerouting:
      return "prerouting";
    case BaseChain::kPostrouting:
      return "postrouting";
  }
  return "?";
}
std::string DispatchSetName(Hook h, Proto p, uint32_t n) {
  return std::string(HookName(h)) + "_" + ProtoName(p) + "_" + std::to_string(n);
}
std::string BackendMapName(Proto p) { return std::string("be_") + ProtoName(p); }

bool ParseProto(const std::string &s, Proto *p) {
  for (Proto q : {Proto::kTcp, Proto::kUdp, Proto::kSctp}) {
    if (s == ProtoName(q)) {
      *p = q;
      return true;
    }
  }
  return false;
}

namespace {
bool ParseHook(const std::string &s, Hook *h) {
  for (Hook q : {Hook::kOut, Hook::kPre, Hook::kLoc}) {
    if (s == HookName(q)) {
      *h = q;
      return true;
    }
  }
  return false;
}
bool ParseChain(const std::string &s, BaseChain *c) {
  for (BaseChain q : {BaseChain::kOutput, BaseChain::kPrerouting, BaseChain::kPostrouting}) {
    if (s == ChainName(q)) {
      *c = q;
      return true;
    }
  }
  return false;
}
}  // namespace

bool ParseDispatchSetName(const std::string &name, Hook *h, Proto *p, uint32_t *n) {
  const size_t a = name.find('_');
  const size_t b = a == std::string::npos ? a : name.find('_', a + 1);
  if (b == std::string::npos) return false;
  const std::string digits = name.substr(b + 1);
  if (digits.empty() || digits.size() > 9 || digits[0] < '1' || digits[0] > '9') return false;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
  }
  if (!ParseHook(name.substr(0, a), h) || !ParseProto(name.substr(a + 1, b - a - 1), p)) return false;
  *n = static_cast<uint32_t>(std::stoul(digits));
  return true;
}

bool ParseBackendMapName(const std::string &name, Proto *p) {
  return name.rfind("be_", 0) == 0 && ParseProto(name.substr(3), p);
}

const FamilyLayout &LayoutOf(Family f) {
  static const FamilyLayout kIp{"ip", NFPROTO_IPV4, AF_INET, 4, 16, 12, NFT_CT_DST_IP, 7, 12, 12};
  static const FamilyLayout kIp6{"ip6", NFPROTO_IPV6, AF_INET6, 16, 24, 8, NFT_CT_DST_IP6, 8, 13, 9};
  return f == Family::kIpv6 ? kIp6 : kIp;
}

bool ParseFamily(const std::string &s, Family *f) {
  for (Family q : {Family::kIpv4, Family::kIpv6}) {
    if (s == LayoutOf(q).name) {
      *f = q;
      return true;
    }
  }
  return false;
}

std::string TableText(Family f) { return std::string("table ") + LayoutOf(f).name + " iptlb"; }

std::string IpText(const Endpoint &e, Family f) {
  return f == Family::kIpv4 ? Ipv4Text(e.ip.data()) : Ipv6Text(e.ip.data());
}
uint16_t HostPort(const Endpoint &e) { return ntohs(e.port); }

uint32_t AffinitySetTimeout(const std::string &name) {
  // ^aff_[A-Z0-9_]+_[1-9][0-9]*$ (AFFINITY_SET_PATTERN in src/nft/ops.ts)
  if (name.size() < 7 || name.compare(0, 4, "aff_") != 0) return 0;
  for (size_t i = 4; i < name.size(); i++) {
    const char c = name[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return 0;
  }
  const size_t us = name.rfind('_');
  if (us <= 4 || us + 1 >= name.size() || name[us + 1] == '0' || name.size() - us - 1 > 6) return 0;
  uint32_t v = 0;
  for (size_t i = us + 1; i < name.size(); i++) v = v * 10 + static_cast<uint32_t>(name[i] - '0');
  return v;
}

const char *OpKindName(Op::Kind k) {
  switch (k) {
    case Op::Kind::kAddTable:
      return "addTable";
    case Op::Kind::kDeleteTable:
      return "deleteTable";
    case Op::Kind::kAddBackendMap:
      return "addBackendMap";
    case Op::Kind::kAddDispatchSet:
      return "addDispatchSet";
    case Op::Kind::kDeleteSet:
      return "deleteSet";
    case Op::Kind::kAddBaseChain:
      return "addBaseChain";
    case Op::Kind::kFlushChain:
      return "flushChain";
    case Op::Kind::kAddRule:
      return "addRule";
    case Op::Kind::kAddDispatchElements:
      return "addDispatchElements";
    case Op::Kind::kDeleteDispatchElements:
      return "deleteDispatchElements";
    case Op::Kind::kAddBackendElements:
      return "addBackendElements";
    case Op::Kind::kDeleteBackendElements:
      return "deleteBackendElements";
    case Op::Kind::kAddAffinitySet:
      return "addAffinitySet";
    case Op::Kind::kDeleteNatRule:
      return "deleteNatRule";
    case Op::Kind::kDeleteNatChain:
      return "deleteNatChain";
  }
  return "?";
}

std::string DescribeOp(const Op &op) {
  std::string s = OpKindName(op.kind);
  switch (op.kind) {
    case Op::Kind::kAddTable:
    case Op::Kind::kDeleteTable:
      return s;
    case Op::Kind::kAddBackendMap:
    case Op::Kind::kAddBackendElements:
    case Op::Kind::kDeleteBackendElements:
      return s + " " + BackendMapName(op.proto);
    case Op::Kind::kAddDispatchSet:
    case Op::Kind::kAddAffinitySet:
    case Op::Kind::kDeleteSet:
    case Op::Kind::kAddDispatchElements:
    case Op::Kind::kDeleteDispatchElements:
      return s + " " + op.name;
    case Op::Kind::kAddBaseChain:
    case Op::Kind::kFlushChain:
    case Op::Kind::kAddRule:
      return s + " " + ChainName(op.chain);
    case Op::Kind::kDeleteNatRule:
      return s + " " + op.nat_chain + " handle " + std::to_string(op.handle);
    case Op::Kind::kDeleteNatChain:
      return s + " " + op.nat_chain;
  }
  return s;
}

// ---- JS → C++ (JS thread) ---------------------------------------------------------------------

namespace {

[[noreturn]] void Bad(Napi::Env env, const std::string &path, const std::string &what) {
  throw Napi::TypeError::New(env, path + ": " + what);
}

Napi::Object Obj(const Napi::Value &v, const std::string &path) {
  if (!v.IsObject() || v.IsArray()) Bad(v.Env(), path, "must be an object");
  return v.As<Napi::Object>();
}

std::string Str(const Napi::Value &v, const std::string &path) {
  if (!v.IsString()) Bad(v.Env(), path, "must be a string");
  return v.As<Napi::String>().Utf8Value();
}

// An integer in [lo, hi]; `path` is built only on failure.
template <typename PathFn>
double Int(const Napi::Value &v, double lo, double hi, PathFn path) {
  if (!v.IsNumber()) Bad(v.Env(), path(), "must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= lo && d <= hi) || std::floor(d) != d) {
    Bad(v.Env(), path(),
        "must be an integer from " + std::to_string(static_cast<long long>(lo)) + " to " +
            std::to_string(static_cast<long long>(hi)));
  }
  return d;
}

template <typename PathFn>
Endpoint EndpointFromJs(const Napi::Value &v, Family f, PathFn path) {
  if (!v.IsObject()) Bad(v.Env(), path(), "must be an object { ip, port }");
  Napi::Object o = v.As<Napi::Object>();
  Endpoint e;
  Napi::Value ip = o.Get("ip");
  if (!ip.IsString()) Bad(v.Env(), path() + ".ip", "must be a string");
  const std::string s = ip.As<Napi::String>().Utf8Value();
  if (inet_pton(LayoutOf(f).af, s.c_str(), e.ip.data()) != 1) {
    Bad(v.Env(), path() + ".ip",
        std::string(f == Family::kIpv4 ? "not an IPv4 address: " : "not an IPv6 address: ") + s.substr(0, 64));
  }
  e.port = htons(static_cast<uint16_t>(Int(o.Get("port"), 1, 65535, [&] { return path() + ".port"; })));
  return e;
}

Proto ProtoFromJs(const Napi::Value &v, const std::string &path) {
  Proto p;
  if (!ParseProto(Str(v, path), &p)) Bad(v.Env(), path, "must be 'tcp', 'udp' or 'sctp'");
  return p;
}

std::string DispatchNameFromJs(const Napi::Value &v, const std::string &path) {
  const std::string s = Str(v, path);
  Hook h;
  Proto p;
  uint32_t n;
  if (!ParseDispatchSetName(s, &h, &p, &n))
    Bad(v.Env(), path, "not a dispatch set name (<out|pre|loc>_<tcp|udp|sctp>_<n>): " + s.substr(0, 64));
  return s;
}

// "iptlb:" + owner must fit nft's comment limit (128 bytes with the NUL).
std::string OwnerFromJs(const Napi::Value &v, const std::string &path) {
  std::string s = Str(v, path);
  if (s.empty() || s.size() + 6 >= 128 || s.find('\0') != std::string::npos)
    Bad(v.Env(), path, "must be a non-empty string of at most 121 bytes");
  return s;
}

Rule RuleFromJs(const Napi::Value &v, Family f, const std::string &path) {
  Napi::Object o = Obj(v, path);
  Napi::Env env = v.Env();
  const std::string kind = Str(o.Get("kind"), path + ".kind");
  Rule r;
  r.proto = ProtoFromJs(o.Get("proto"), path + ".proto");
  if (kind == "dispatch") {
    r.kind = Rule::Kind::kDispatch;
    if (!ParseHook(Str(o.Get("hook"), path + ".hook"), &r.hook))
      Bad(env, path + ".hook", "must be 'out', 'pre' or 'loc'");
    r.n = static_cast<uint32_t>(Int(o.Get("n"), 1, 65535, [&] { return path + ".n"; }));
  } else if (kind == "log") {
    r.kind = Rule::Kind::kLog;
    r.owner = OwnerFromJs(o.Get("owner"), path + ".owner");
    r.vip = EndpointFromJs(o.Get("vip"), f, [&] { return path + ".vip"; });
    Napi::Value local = o.Get("local");
    if (!local.IsBoolean()) Bad(env, path + ".local", "must be a boolean");
    r.local = local.As<Napi::Boolean>().Value();
    r.prefix = Str(o.Get("prefix"), path + ".prefix");
    if (r.prefix.size() > 127 || r.prefix.find('\0') != std::string::npos)
      Bad(env, path + ".prefix", "must be at most 127 bytes, without NUL");
    r.level = static_cast<uint32_t>(Int(o.Get("level"), 0, 7, [&] { return path + ".level"; }));
  } else if (kind == "masq") {
    r.kind = Rule::Kind::kMasq;
    r.owner = OwnerFromJs(o.Get("owner"), path + ".owner");
    r.vip = EndpointFromJs(o.Get("vip"), f, [&] { return path + ".vip"; });
  } else if (kind == "rr") {
    r.kind = Rule::Kind::kRr;
    r.owner = OwnerFromJs(o.Get("owner"), path + ".owner");
    r.vip = EndpointFromJs(o.Get("vip"), f, [&] { return path + ".vip"; });
    Napi::Value local = o.Get("local");
    if (!local.IsBoolean()) Bad(env, path + ".local", "must be a boolean");
    r.local = local.As<Napi::Boolean>().Value();
    r.n = static_cast<uint32_t>(Int(o.Get("n"), 1, 65535, [&] { return path + ".n"; }));
  } else if (kind == "aff") {
    r.kind = Rule::Kind::kAff;
    r.owner = OwnerFromJs(o.Get("owner"), path + ".owner");
    r.vip = EndpointFromJs(o.Get("vip"), f, [&] { return path + ".vip"; });
    Napi::Value local = o.Get("local");
    if (!local.IsBoolean()) Bad(env, path + ".local", "must be a boolean");
    r.local = local.As<Napi::Boolean>().Value();
    // set and gate: absent in a fallback rule; a rule with a gate has a set.
    for (const char *key : {"set", "gate"}) {
      Napi::Value v = o.Get(key);
      if (v.IsUndefined()) continue;
      std::string name = Str(v, path + "." + key);
      if (!AffinitySetTimeout(name) || name.size() >= NFT_SET_MAXNAMELEN)
        Bad(env, path + "." + key, "not an affinity set name (aff_<NAME>_…_<seconds>)");
      (std::string(key) == "set" ? r.set : r.gate) = std::move(name);
    }
    if (r.set.empty() && !r.gate.empty()) Bad(env, path + ".set", "must be given with gate");
    r.to = EndpointFromJs(o.Get("to"), f, [&] { return path + ".to"; });
    Napi::Object pick = Obj(o.Get("pick"), path + ".pick");
    const std::string mode = Str(pick.Get("mode"), path + ".pick.mode");
    if (mode == "hit") {
      r.pick = Rule::Pick::kHit;
    } else if (mode == "rest") {
      r.pick = Rule::Pick::kRest;
    } else if (mode == "random" || mode == "inc") {
      r.pick = mode == "random" ? Rule::Pick::kRandom : Rule::Pick::kInc;
      r.mod = static_cast<uint32_t>(Int(pick.Get("mod"), 1, 65535, [&] { return path + ".pick.mod"; }));
      if (mode == "random")
        r.lt = static_cast<uint32_t>(Int(pick.Get("lt"), 1, r.mod, [&] { return path + ".pick.lt"; }));
    } else {
      Bad(env, path + ".pick.mode", "must be 'hit', 'random', 'inc' or 'rest'");
    }
    if (r.pick == Rule::Pick::kHit && r.set.empty()) Bad(env, path + ".set", "must be given with pick 'hit'");
  } else {
    Bad(env, path + ".kind", "must be 'dispatch', 'log', 'masq', 'rr' or 'aff'");
  }
  return r;
}

Napi::Array ArrayFromJs(const Napi::Value &v, const std::string &path) {
  if (!v.IsArray()) Bad(v.Env(), path, "must be an array");
  return v.As<Napi::Array>();
}

const std::map<std::string, Op::Kind> &OpKinds() {
  static const std::map<std::string, Op::Kind> kinds = [] {
    std::map<std::string, Op::Kind> m;
    for (int k = 0; k <= static_cast<int>(Op::Kind::kDeleteNatChain); k++)
      m[OpKindName(static_cast<Op::Kind>(k))] = static_cast<Op::Kind>(k);
    return m;
  }();
  return kinds;
}

Op OpFromJs(const Napi::Value &v, Family f, const std::string &path) {
  Napi::Env env = v.Env();
  Napi::Object o = Obj(v, path);
  const std::string kind = Str(o.Get("op"), path + ".op");
  auto it = OpKinds().find(kind);
  if (it == OpKinds().end()) Bad(env, path + ".op", "unknown op: " + kind.substr(0, 64));
  Op op;
  op.kind = it->second;
  switch (op.kind) {
    case Op::Kind::kAddTable:
    case Op::Kind::kDeleteTable:
      break;
    case Op::Kind::kAddBackendMap:
      op.proto = ProtoFromJs(o.Get("proto"), path + ".proto");
      break;
    case Op::Kind::kAddDispatchSet:
      op.name = DispatchNameFromJs(o.Get("name"), path + ".name");
      break;
    case Op::Kind::kAddAffinitySet:
      op.name = Str(o.Get("name"), path + ".name");
      if (!AffinitySetTimeout(op.name) || op.name.size() >= NFT_SET_MAXNAMELEN)
        Bad(env, path + ".name", "not an affinity set name (aff_<NAME>_…_<seconds>)");
      op.timeout = static_cast<uint32_t>(Int(o.Get("timeout"), 1, 86400, [&] { return path + ".timeout"; }));
      if (!o.Get("size").IsUndefined())
        op.size = static_cast<uint32_t>(Int(o.Get("size"), 0, 1 << 24, [&] { return path + ".size"; }));
      if (!o.Get("sizeByUpdate").IsUndefined()) {
        const Napi::Value v = o.Get("sizeByUpdate");
        if (!v.IsBoolean()) Bad(env, path + ".sizeByUpdate", "must be a boolean");
        op.size_by_update = v.As<Napi::Boolean>().Value();
      }
      break;
    case Op::Kind::kDeleteSet:
      op.name = Str(o.Get("name"), path + ".name");
      if (op.name.empty() || op.name.size() >= NFT_SET_MAXNAMELEN || op.name.find('\0') != std::string::npos)
        Bad(env, path + ".name", "not a set name");
      break;
    case Op::Kind::kAddBaseChain:
    case Op::Kind::kFlushChain:
      if (!ParseChain(Str(o.Get("name"), path + ".name"), &op.chain))
        Bad(env, path + ".name", "must be 'output', 'prerouting' or 'postrouting'");
      break;
    case Op::Kind::kAddRule:
      if (!ParseChain(Str(o.Get("chain"), path + ".chain"), &op.chain))
        Bad(env, path + ".chain", "must be 'output', 'prerouting' or 'postrouting'");
      op.rule = RuleFromJs(o.Get("rule"), f, path + ".rule");
      break;
    case Op::Kind::kDeleteNatRule:
      op.nat_chain = Str(o.Get("chain"), path + ".chain");
      if (op.nat_chain != "OUTPUT" && op.nat_chain != "PREROUTING")
        Bad(env, path + ".chain", "must be 'OUTPUT' or 'PREROUTING'");
      op.handle = static_cast<uint64_t>(Int(o.Get("handle"), 1, 9007199254740991.0, [&] { return path + ".handle"; }));
      break;
    case Op::Kind::kDeleteNatChain: {
      // Only the original iptlb's chain: IPTLB_NAT_ and 1 to 18 of A-Z 0-9 _ (src/engines/legacy/plan.ts OWN_CHAIN).
      op.nat_chain = Str(o.Get("name"), path + ".name");
      const std::string &c = op.nat_chain;
      bool ok = c.size() > 10 && c.size() <= 28 && c.compare(0, 10, "IPTLB_NAT_") == 0;
      for (size_t k = 10; ok && k < c.size(); k++)
        ok = (c[k] >= 'A' && c[k] <= 'Z') || (c[k] >= '0' && c[k] <= '9') || c[k] == '_';
      if (!ok) Bad(env, path + ".name", "not a chain of the original iptlb (IPTLB_NAT_…)");
      break;
    }
    case Op::Kind::kAddDispatchElements:
    case Op::Kind::kDeleteDispatchElements: {
      op.name = DispatchNameFromJs(o.Get("set"), path + ".set");
      Napi::Array a = ArrayFromJs(o.Get("elements"), path + ".elements");
      const uint32_t n = a.Length();
      op.dispatch.reserve(n);
      for (uint32_t j = 0; j < n; j++)
        op.dispatch.push_back(
            EndpointFromJs(a.Get(j), f, [&] { return path + ".elements[" + std::to_string(j) + "]"; }));
      break;
    }
    case Op::Kind::kAddBackendElements:
    case Op::Kind::kDeleteBackendElements: {
      op.proto = ProtoFromJs(o.Get("proto"), path + ".proto");
      Napi::Array a = ArrayFromJs(o.Get("elements"), path + ".elements");
      const uint32_t n = a.Length();
      const bool add = op.kind == Op::Kind::kAddBackendElements;
      op.backend.reserve(n);
      for (uint32_t j = 0; j < n; j++) {
        auto at = [&] { return path + ".elements[" + std::to_string(j) + "]"; };
        Napi::Value ev = a.Get(j);
        if (!ev.IsObject()) Bad(env, at(), "must be an object { vip, index, to }");
        Napi::Object e = ev.As<Napi::Object>();
        BackendElement be;
        be.vip = EndpointFromJs(e.Get("vip"), f, [&] { return at() + ".vip"; });
        // Random profiles use [T(n), T(n) + n), round-robin ones 1000000 + that (n up to 65535: below 2^32).
        be.index = static_cast<uint32_t>(Int(e.Get("index"), 0, 4294967294.0, [&] { return at() + ".index"; }));
        if (add) be.to = EndpointFromJs(e.Get("to"), f, [&] { return at() + ".to"; });  // ignored by deletes
        op.backend.push_back(be);
      }
      break;
    }
  }
  return op;
}

}  // namespace

Transaction TransactionFromJs(const Napi::Value &v) {
  Napi::Env env = v.Env();
  Napi::Object o = Obj(v, "transaction");
  Transaction tx;
  if (!ParseFamily(Str(o.Get("family"), "transaction.family"), &tx.family))
    Bad(env, "transaction.family", "must be 'ip' or 'ip6'");
  if (Str(o.Get("table"), "transaction.table") != "iptlb") Bad(env, "transaction.table", "must be 'iptlb'");
  Napi::Value g = o.Get("expectGenid");
  if (!g.IsUndefined())
    tx.expect_genid =
        static_cast<int64_t>(Int(g, 0, 4294967295.0, [] { return std::string("transaction.expectGenid"); }));
  Napi::Value opsv = o.Get("ops");
  if (!opsv.IsArray()) Bad(env, "ops", "must be an array");
  Napi::Array ops = opsv.As<Napi::Array>();
  const uint32_t n = ops.Length();
  tx.ops.reserve(n);
  for (uint32_t i = 0; i < n; i++) tx.ops.push_back(OpFromJs(ops.Get(i), tx.family, "ops[" + std::to_string(i) + "]"));
  return tx;
}

std::vector<Endpoint> EndpointsFromJs(const Napi::Value &v, Family f, const std::string &path) {
  if (!v.IsArray()) Bad(v.Env(), path, "must be an array of { ip, port }");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<Endpoint> out;
  out.reserve(a.Length());
  for (uint32_t i = 0; i < a.Length(); i++)
    out.push_back(EndpointFromJs(a.Get(i), f, [&] { return path + "[" + std::to_string(i) + "]"; }));
  return out;
}

Family FamilyFromJs(const Napi::Value &v, const std::string &path) {
  Family f = Family::kIpv4;
  if (v.IsUndefined()) return f;
  if (!v.IsString() || !ParseFamily(v.As<Napi::String>().Utf8Value(), &f)) Bad(v.Env(), path, "must be 'ip' or 'ip6'");
  return f;
}

// ---- encoding (worker thread) -----------------------------------------------------------------

namespace {

constexpr const char *kTable = "iptlb";
constexpr const char *kNatTable = "nat";  // iptables-nft's: only the takeover ops (DeleteNatRule, DeleteNatChain)
// Elements per NEWSETELEM/DELSETELEM message: the element list is one attribute, whose length
// field is 16 bits. An encoded backend element takes 2 * address length + 32 bytes (nests and
// attribute headers around key and data): 40 for IPv4 (1024 a message), 64 for IPv6 (fewer).
constexpr size_t kElementsPerMessage = 1024;
constexpr size_t kElementListBytes = 60000;
constexpr size_t ElementBytes(const FamilyLayout &l) { return 2 * l.addr_len + 32; }

// nft's set key/data type ids (datatype.h): inet_service 13, integer 4 (the address types are in
// FamilyLayout); a concatenation is the ids shifted by 6 bits each.
constexpr uint32_t kTypeInetService = 13, kTypeInteger = 4;
constexpr uint32_t kByteorderBigEndian =
    2;  // nft's BYTEORDER_BIG_ENDIAN, the key byte order of `type ipv4_addr` / `ipv6_addr`
// nft's concatenations pad each component to 4 bytes: `addr . port` is addr_len + 4 bytes.
constexpr uint32_t kPortField = 4, kIndexField = 4;
constexpr uint32_t Concat2(uint32_t a, uint32_t b) { return (a << 6) | b; }
constexpr uint32_t Concat3(uint32_t a, uint32_t b, uint32_t c) { return (a << 12) | (b << 6) | c; }

// Set userdata as nft 1.0.6 writes it (udata types of libnftnl/udata.h, values host-endian u32),
// so `nft list` prints `type …` / `typeof …` back the same way.
enum : uint8_t {
  kUdKeyByteorder = 0,  // NFTNL_UDATA_SET_KEYBYTEORDER
  kUdDataByteorder = 1,
  kUdKeyTypeof = 3,
  kUdDataTypeof = 4,
  kUdDataInterval = 6,
};
enum : uint8_t { kUdTypeofExpr = 0, kUdTypeofData = 1 };
// nft's expression type ids and protocol description ids (EXPR_*, PROTO_DESC_*).
constexpr uint32_t kExprPayload = 7, kExprNumgen = 23, kExprConcat = 13;
constexpr uint32_t kDportField = 2;
uint32_t ProtoDesc(Proto p) {
  switch (p) {
    case Proto::kTcp:
      return 8;
    case Proto::kUdp:
      return 6;
    case Proto::kSctp:
      return 10;
  }
  return 0;
}

class Udata {
 public:
  Udata() : buf_(Own<UdataPtr>(nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN))) {}
  void U32(uint8_t type, uint32_t v) { Check(nftnl_udata_put_u32(buf_.get(), type, v)); }
  struct nftnl_udata *Open(uint8_t type) {
    struct nftnl_udata *n = nftnl_udata_nest_start(buf_.get(), type);
    Check(n != nullptr);
    return n;
  }
  void Close(struct nftnl_udata *n) { nftnl_udata_nest_end(buf_.get(), n); }
  // Field `k` of a concatenation: `<proto> <field>` payload.
  void Payload(uint8_t k, uint32_t desc, uint32_t field) {
    auto *f = Open(k);
    U32(kUdTypeofExpr, kExprPayload);
    auto *d = Open(kUdTypeofData);
    U32(0, desc);   // NFTNL_UDATA_SET_KEY_PAYLOAD_DESC
    U32(1, field);  // NFTNL_UDATA_SET_KEY_PAYLOAD_TYPE
    Close(d);
    Close(f);
  }
  void Set(nftnl_set *s) {
    nftnl_set_set_data(s, NFTNL_SET_USERDATA, nftnl_udata_buf_data(buf_.get()), nftnl_udata_buf_len(buf_.get()));
  }

 private:
  static void Check(bool ok) {
    if (!ok) throw std::bad_alloc();
  }
  UdataPtr buf_;
};

class Encoder {
 public:
  Encoder(Batch *b, Family f) : b_(b), family_(f), l_(LayoutOf(f)) {}

  struct nlmsghdr *Msg(uint16_t type, uint16_t flags, size_t max_payload, int op) {
    char *p = reinterpret_cast<char *>(b_->Start(max_payload, op));
    return nftnl_nlmsg_build_hdr(p, type, l_.nfproto, flags, b_->next_seq());
  }

  void Encode(const Op &op, int i) {
    switch (op.kind) {
      case Op::Kind::kAddTable:
        return AddTable(i);
      case Op::Kind::kDeleteTable:
        return DeleteTable(i);
      case Op::Kind::kAddBackendMap:
        return AddSet(BackendMapName(op.proto), true, op.proto, i);
      case Op::Kind::kAddDispatchSet:
        return AddSet(op.name, false, Proto::kTcp, i);
      case Op::Kind::kAddAffinitySet:
        return AddAffinitySet(op, i);
      case Op::Kind::kDeleteSet:
        return DeleteSet(op, i);
      case Op::Kind::kAddBaseChain:
        return AddBaseChain(op, i);
      case Op::Kind::kFlushChain:
        return FlushChain(op, i);
      case Op::Kind::kAddRule:
        return AddRule(op, i);
      case Op::Kind::kAddDispatchElements:
      case Op::Kind::kDeleteDispatchElements:
      case Op::Kind::kAddBackendElements:
      case Op::Kind::kDeleteBackendElements:
        return Elements(op, i);
      case Op::Kind::kDeleteNatRule:
        return DeleteNatRule(op, i);
      case Op::Kind::kDeleteNatChain:
        return DeleteNatChain(op, i);
    }
  }

 private:
  // add table <f> iptlb
  void AddTable(int i) {
    TablePtr t = Own<TablePtr>(nftnl_table_alloc());
    nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTable);
    nftnl_table_set_u32(t.get(), NFTNL_TABLE_FLAGS, 0);
    auto *nlh = Msg(NFT_MSG_NEWTABLE, 0, 256, i);
    nftnl_table_nlmsg_build_payload(nlh, t.get());
    b_->Finish(nlh);
  }

  // delete table <f> iptlb (and the ids of the sets created in this batch with it)
  void DeleteTable(int i) {
    TablePtr t = Own<TablePtr>(nftnl_table_alloc());
    nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTable);
    auto *nlh = Msg(NFT_MSG_DELTABLE, 0, 256, i);
    nftnl_table_nlmsg_build_payload(nlh, t.get());
    b_->Finish(nlh);
    set_ids_.clear();
  }

  // type ipv4_addr (ipv6_addr); [size <size>;] flags dynamic,timeout; timeout <s>s; (size 0: none). With
  // size_by_update, first without a size, then the same set again with it: the kernel (6.5 and later) takes the size
  // of an existing set as its limit only, so the hash table is sized by the elements, not by the limit.
  void AddAffinitySet(const Op &op, int i) {
    const bool later = op.size_by_update && op.size != 0;
    const uint32_t id = next_set_id_++;
    NewAffinitySet(op, later ? 0 : op.size, id, i);
    // The kernel wants an id in every NEWSET; the rules refer to the first (the set's own).
    if (later) NewAffinitySet(op, op.size, next_set_id_++, i);
    set_ids_[op.name] = id;
  }

  void NewAffinitySet(const Op &op, uint32_t size, uint32_t id, int i) {
    SetPtr s = NewSet(op.name);
    Udata ud;
    ud.U32(kUdKeyByteorder, kByteorderBigEndian);
    nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
    nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, l_.addr_type);
    nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, l_.addr_len);
    nftnl_set_set_u64(s.get(), NFTNL_SET_TIMEOUT, static_cast<uint64_t>(op.timeout) * 1000);
    if (size != 0) nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, size);
    nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
    ud.Set(s.get());
    auto *nlh = Msg(NFT_MSG_NEWSET, NLM_F_CREATE, 1024, i);
    nftnl_set_nlmsg_build_payload(nlh, s.get());
    b_->Finish(nlh);
  }

  // delete set <f> iptlb <name>
  void DeleteSet(const Op &op, int i) {
    SetPtr s = NewSet(op.name);
    auto *nlh = Msg(NFT_MSG_DELSET, 0, 512, i);
    nftnl_set_nlmsg_build_payload(nlh, s.get());
    b_->Finish(nlh);
    set_ids_.erase(op.name);
  }

  // add chain <f> iptlb <chain> { type nat hook <hook> priority <p>; policy accept; }
  void AddBaseChain(const Op &op, int i) {
    ChainPtr c = Own<ChainPtr>(nftnl_chain_alloc());
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, l_.nfproto);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, kTable);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, ChainName(op.chain));
    uint32_t hook = NF_INET_LOCAL_OUT;
    int32_t prio = -100;
    if (op.chain == BaseChain::kPrerouting) hook = NF_INET_PRE_ROUTING;
    if (op.chain == BaseChain::kPostrouting) hook = NF_INET_POST_ROUTING, prio = 100;
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, hook);
    nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, prio);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, "nat");
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
    auto *nlh = Msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, 512, i);
    nftnl_chain_nlmsg_build_payload(nlh, c.get());
    b_->Finish(nlh);
  }

  // One DELRULE message: the rule of <f> <table> <chain> with `handle`, or, without one, every rule of the
  // chain (a flush). A handle that is gone fails the batch (ENOENT): the kernel deletes a rule by its handle only.
  void DelRules(const char *table, const char *chain, const uint64_t *handle, int i) {
    RulePtr r = Own<RulePtr>(nftnl_rule_alloc());
    nftnl_rule_set_u32(r.get(), NFTNL_RULE_FAMILY, l_.nfproto);
    nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, table);
    nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, chain);
    if (handle) nftnl_rule_set_u64(r.get(), NFTNL_RULE_HANDLE, *handle);
    auto *nlh = Msg(NFT_MSG_DELRULE, 0, 256, i);
    nftnl_rule_nlmsg_build_payload(nlh, r.get());
    b_->Finish(nlh);
  }

  // flush chain <f> iptlb <chain>
  void FlushChain(const Op &op, int i) { DelRules(kTable, ChainName(op.chain), nullptr, i); }

  // delete rule <f> nat <OUTPUT|PREROUTING> handle N (iptables-nft's table: the original iptlb's jump)
  void DeleteNatRule(const Op &op, int i) { DelRules(kNatTable, op.nat_chain.c_str(), &op.handle, i); }

  // flush chain <f> nat IPTLB_NAT_…; delete chain <f> nat IPTLB_NAT_… (the original iptlb's chain, its jumps deleted
  // before in the batch). A rule still jumping to it fails the batch (EBUSY).
  void DeleteNatChain(const Op &op, int i) {
    DelRules(kNatTable, op.nat_chain.c_str(), nullptr, i);
    ChainPtr c = Own<ChainPtr>(nftnl_chain_alloc());
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, l_.nfproto);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, kNatTable);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, op.nat_chain.c_str());
    auto *nlh = Msg(NFT_MSG_DELCHAIN, 0, 256, i);
    nftnl_chain_nlmsg_build_payload(nlh, c.get());
    b_->Finish(nlh);
  }

  // add rule <f> iptlb <chain> …: the rule codec (nft_rules.h), referring to sets created in this batch by id
  void AddRule(const Op &op, int i) {
    LookupIds ids;
    if (op.rule.kind == Rule::Kind::kDispatch) {
      ids.dispatch_set = SetId(DispatchSetName(op.rule.hook, op.rule.proto, op.rule.n));
      ids.backend_map = SetId(BackendMapName(op.rule.proto));
    } else if (op.rule.kind == Rule::Kind::kRr) {
      ids.backend_map = SetId(BackendMapName(op.rule.proto));
    } else if (op.rule.kind == Rule::Kind::kAff) {
      ids.affinity_set = SetId(op.rule.set);
      ids.client_set = SetId(op.rule.gate);
    }
    RulePtr r = BuildRule(family_, op.chain, op.rule, ids);
    auto *nlh = Msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, 4096, i);
    nftnl_rule_nlmsg_build_payload(nlh, r.get());
    b_->Finish(nlh);
  }

  uint32_t SetId(const std::string &name) const {
    auto it = set_ids_.find(name);
    return it == set_ids_.end() ? 0 : it->second;
  }

  SetPtr NewSet(const std::string &name) {
    SetPtr s = Own<SetPtr>(nftnl_set_alloc());
    nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, l_.nfproto);
    nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, kTable);
    nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
    return s;
  }

  void AddSet(const std::string &name, bool map, Proto p, int i) {
    SetPtr s = NewSet(name);
    const uint32_t id = next_set_id_++;
    Udata ud;
    ud.U32(kUdKeyByteorder, 0);
    if (map) {
      // typeof ip[6] daddr . P dport . numgen random mod 1 : ip[6] daddr . P dport
      ud.U32(kUdDataByteorder, 0);
      nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_MAP);
      nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, Concat3(l_.addr_type, kTypeInetService, kTypeInteger));
      nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, l_.addr_len + kPortField + kIndexField);
      nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_TYPE, Concat2(l_.addr_type, kTypeInetService));
      nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_LEN, l_.addr_len + kPortField);
      auto *key = ud.Open(kUdKeyTypeof);
      ud.U32(kUdTypeofExpr, kExprConcat);
      auto *kd = ud.Open(kUdTypeofData);
      ud.Payload(0, l_.proto_desc, l_.daddr_field);
      ud.Payload(1, ProtoDesc(p), kDportField);
      auto *ng = ud.Open(2);
      ud.U32(kUdTypeofExpr, kExprNumgen);
      auto *ngd = ud.Open(kUdTypeofData);
      ud.U32(0, NFT_NG_RANDOM);  // type
      ud.U32(1, 1);              // mod
      ud.U32(2, 0);              // offset
      ud.Close(ngd);
      ud.Close(ng);
      ud.Close(kd);
      ud.Close(key);
      auto *data = ud.Open(kUdDataTypeof);
      ud.U32(kUdTypeofExpr, kExprConcat);
      auto *dd = ud.Open(kUdTypeofData);
      ud.Payload(0, l_.proto_desc, l_.daddr_field);
      ud.Payload(1, ProtoDesc(p), kDportField);
      ud.Close(dd);
      ud.Close(data);
      ud.U32(kUdDataInterval, 0);
    } else {
      // type ipv4_addr . inet_service (ipv6_addr . inet_service)
      nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, 0);
      nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, Concat2(l_.addr_type, kTypeInetService));
      nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, l_.addr_len + kPortField);
      auto *key = ud.Open(kUdKeyTypeof);
      ud.U32(kUdTypeofExpr, kExprConcat);
      ud.Close(ud.Open(kUdTypeofData));
      ud.Close(key);
    }
    nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
    ud.Set(s.get());
    nftnl_set_add_expr(s.get(), Own<ExprPtr>(nftnl_expr_alloc("counter")).release());  // `counter;`
    auto *nlh = Msg(NFT_MSG_NEWSET, NLM_F_CREATE, 1024, i);
    nftnl_set_nlmsg_build_payload(nlh, s.get());
    b_->Finish(nlh);
    set_ids_[name] = id;
  }

  static void PutValue(struct nlmsghdr *nlh, uint16_t type, const void *data, size_t len) {
    struct nlattr *n = mnl_attr_nest_start(nlh, type);
    mnl_attr_put(nlh, NFTA_DATA_VALUE, len, data);
    mnl_attr_nest_end(nlh, n);
  }

  // `ip . port` keys: the port is padded to 4 bytes (nft's concatenation registers).
  size_t Key(uint8_t *out, const Endpoint &e) const {
    std::memcpy(out, e.ip.data(), l_.addr_len);
    std::memcpy(out + l_.addr_len, &e.port, 2);
    out[l_.addr_len + 2] = out[l_.addr_len + 3] = 0;
    return l_.addr_len + kPortField;
  }

  void Elements(const Op &op, int i) {
    const bool add = op.kind == Op::Kind::kAddDispatchElements || op.kind == Op::Kind::kAddBackendElements;
    const bool backend = op.kind == Op::Kind::kAddBackendElements || op.kind == Op::Kind::kDeleteBackendElements;
    const std::string set = backend ? BackendMapName(op.proto) : op.name;
    const uint32_t id = SetId(set);
    const size_t total = backend ? op.backend.size() : op.dispatch.size();
    const size_t per_message = std::min(kElementsPerMessage, kElementListBytes / ElementBytes(l_));
    for (size_t from = 0; from < total; from += per_message) {
      const size_t to = std::min(total, from + per_message);
      auto *nlh = Msg(add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM, add ? NLM_F_CREATE : 0,
                      512 + (to - from) * ElementBytes(l_), i);
      mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_TABLE, kTable);
      mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_SET, set.c_str());
      if (id) mnl_attr_put_u32(nlh, NFTA_SET_ELEM_LIST_SET_ID, htonl(id));
      struct nlattr *list = mnl_attr_nest_start(nlh, NFTA_SET_ELEM_LIST_ELEMENTS);
      uint8_t key[16 + kPortField + kIndexField];
      for (size_t j = from; j < to; j++) {
        struct nlattr *el = mnl_attr_nest_start(nlh, NFTA_LIST_ELEM);
        if (backend) {
          const BackendElement &e = op.backend[j];
          const size_t at = Key(key, e.vip);
          std::memcpy(key + at, &e.index, kIndexField);  // numgen's result: host byte order
          PutValue(nlh, NFTA_SET_ELEM_KEY, key, at + kIndexField);
          if (add) {
            uint8_t data[16 + kPortField];
            PutValue(nlh, NFTA_SET_ELEM_DATA, data, Key(data, e.to));
          }
        } else {
          PutValue(nlh, NFTA_SET_ELEM_KEY, key, Key(key, op.dispatch[j]));
        }
        mnl_attr_nest_end(nlh, el);
      }
      mnl_attr_nest_end(nlh, list);
      b_->Finish(nlh);
    }
  }

  Batch *b_;
  Family family_;
  const FamilyLayout &l_;
  uint32_t next_set_id_ = 1;
  std::map<std::string, uint32_t> set_ids_;
};

}  // namespace

void EncodeOps(const Transaction &tx, Batch *b) {
  Encoder e(b, tx.family);
  for (size_t i = 0; i < tx.ops.size(); i++) e.Encode(tx.ops[i], static_cast<int>(i));
}

}  // namespace nft
}  // namespace iptlb
