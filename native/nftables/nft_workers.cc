#include "nft_workers.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <new>

#include "memory.h"
#include "nft_netlink.h"
#include "nft_shared_socket.h"
#include "pending.h"
#include "thread_priority.h"

namespace iptlb {
namespace {

std::string ErrText(int err) {
  char buf[256];
  return strerror_r(err, buf, sizeof buf);
}

// The rejection for the first error of a refused batch.
NativeError BatchError(const nft::Batch &b, const nft::Transaction &tx, const nft::NlAck &a) {
  const std::string ext = a.extack.empty() ? "" : " (" + a.extack + ")";
  const int op = b.OpOfSeq(a.seq);
  if (op < 0) {
    if (a.err == ERESTART) {
      NativeError e;
      e.code = "ERESTART";
      e.err = a.err;
      e.message = "nft batch refused: the ruleset changed since generation " + std::to_string(tx.expect_genid) + " (" +
                  ErrText(a.err) + ")";
      return e;
    }
    return NativeError::FromErrno("EKERNEL", a.err, "nft batch refused: " + ErrText(a.err) + ext);
  }
  return NativeError::FromErrno(
      "EKERNEL", a.err,
      "nft op " + std::to_string(op) + " (" + nft::DescribeOp(tx.ops[op]) + "): " + ErrText(a.err) + ext);
}

Napi::Object EndpointJs(Napi::Env env, const nft::Endpoint &e, nft::Family f) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ip", nft::IpText(e, f));
  o.Set("port", nft::HostPort(e));
  return o;
}

Napi::Object RuleJs(Napi::Env env, const nft::Rule &r, nft::Family f) {
  Napi::Object o = Napi::Object::New(env);
  switch (r.kind) {
    case nft::Rule::Kind::kDispatch:
      o.Set("kind", "dispatch");
      o.Set("hook", nft::HookName(r.hook));
      o.Set("proto", nft::ProtoName(r.proto));
      o.Set("n", r.n);
      break;
    case nft::Rule::Kind::kLog:
      o.Set("kind", "log");
      o.Set("owner", r.owner);
      o.Set("vip", EndpointJs(env, r.vip, f));
      o.Set("proto", nft::ProtoName(r.proto));
      o.Set("local", r.local);
      o.Set("prefix", r.prefix);
      o.Set("level", r.level);
      break;
    case nft::Rule::Kind::kMasq:
      o.Set("kind", "masq");
      o.Set("owner", r.owner);
      o.Set("vip", EndpointJs(env, r.vip, f));
      o.Set("proto", nft::ProtoName(r.proto));
      break;
    case nft::Rule::Kind::kRr:
      o.Set("kind", "rr");
      o.Set("owner", r.owner);
      o.Set("vip", EndpointJs(env, r.vip, f));
      o.Set("proto", nft::ProtoName(r.proto));
      o.Set("local", r.local);
      o.Set("n", r.n);
      break;
    case nft::Rule::Kind::kAff: {
      o.Set("kind", "aff");
      o.Set("owner", r.owner);
      o.Set("vip", EndpointJs(env, r.vip, f));
      o.Set("proto", nft::ProtoName(r.proto));
      o.Set("local", r.local);
      Napi::Object pick = Napi::Object::New(env);
      switch (r.pick) {
        case nft::Rule::Pick::kHit:
          pick.Set("mode", "hit");
          break;
        case nft::Rule::Pick::kRandom:
          pick.Set("mode", "random");
          pick.Set("mod", r.mod);
          pick.Set("lt", r.lt);
          break;
        case nft::Rule::Pick::kInc:
          pick.Set("mode", "inc");
          pick.Set("mod", r.mod);
          break;
        case nft::Rule::Pick::kRest:
          pick.Set("mode", "rest");
          break;
      }
      o.Set("pick", pick);
      if (!r.set.empty()) o.Set("set", r.set);
      if (!r.gate.empty()) o.Set("gate", r.gate);
      o.Set("to", EndpointJs(env, r.to, f));
      o.Set("packets", Napi::BigInt::New(env, r.packets));
      o.Set("bytes", Napi::BigInt::New(env, r.bytes));
      break;
    }
    case nft::Rule::Kind::kForeign:
      o.Set("kind", "foreign");
      o.Set("text", r.text);
      break;
  }
  return o;
}

void SetCounters(Napi::Env env, Napi::Object o, const nft::Counted &c) {
  o.Set("packets", Napi::BigInt::New(env, c.packets));
  o.Set("bytes", Napi::BigInt::New(env, c.bytes));
}

}  // namespace

// ---- nftCommit --------------------------------------------------------------------------------

NftCommitWorker::NftCommitWorker(Napi::Env env, nft::Transaction tx)
    : PromiseWorker(env, "iptlb.nftCommit"), tx_(std::move(tx)) {}

void NftCommitWorker::Work() {
  BackgroundPriority background;
  std::lock_guard<std::mutex> one(nft::TableMutex());  // one operation at a time, also across environments
  const auto t0 = std::chrono::steady_clock::now();
  nft::SharedSocketLease lease;
  nft::Socket &s = *lease.get();
  nft::Batch b(s.NextSeq());
  b.Begin(tx_.expect_genid);
  nft::EncodeOps(tx_, &b);
  b.End();
  s.ContinueSeqAt(b.next_seq());
  if (b.op_messages() > 0) {
    const std::vector<nft::NlAck> errors = s.SendBatch(b);
    if (!errors.empty()) Throw(BatchError(b, tx_, errors.front()));
  }
  genid_ = s.GetGenid();
  if (b.op_messages() == 0 && tx_.expect_genid >= 0 && genid_ != tx_.expect_genid) {
    // Nothing to send (only empty element lists); the generation check still applies.
    Throw(BatchError(b, tx_, nft::NlAck{b.begin_seq(), ERESTART, ""}));
  }
  lease.Keep();
  duration_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void NftCommitWorker::OnOK() {
  Napi::Env env = Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("durationMs", duration_ms_);
  r.Set("genid", genid_);
  Resolve(r);
  ReleaseFreedMemory();  // the transaction and its batch are freed with this worker (a large sync: MiBs)
}

// ---- nftRead ----------------------------------------------------------------------------------

NftReadWorker::NftReadWorker(Napi::Env env, nft::Family family, std::optional<std::vector<nft::Endpoint>> only)
    : PromiseWorker(env, "iptlb.nftRead"), family_(family), only_(std::move(only)) {}

void NftReadWorker::Work() {
  std::lock_guard<std::mutex> one(nft::TableMutex());
  nft::SharedSocketLease lease;
  view_ = nft::ReadView(lease.get(), family_, only_ ? &*only_ : nullptr);
  lease.Keep();
}

void NftReadWorker::OnOK() {
  ReleaseFreedMemory();  // the view is freed with this worker, once converted below
  Napi::Env env = Env();
  const nft::View &v = view_;
  Napi::Object r = Napi::Object::New(env);
  r.Set("genid", v.genid);
  // Only for ip6: a read of table ip iptlb has no `family` (absent means ip, as before).
  if (v.family == nft::Family::kIpv6) r.Set("family", nft::LayoutOf(v.family).name);
  r.Set("exists", v.exists);
  if (only_) r.Set("narrow", true);
  Napi::Array sets = Napi::Array::New(env, v.dispatch_sets.size());
  for (size_t i = 0; i < v.dispatch_sets.size(); i++) {
    const auto &d = v.dispatch_sets[i];
    Napi::Object so = Napi::Object::New(env);
    so.Set("name", d.name);
    Napi::Array els = Napi::Array::New(env, d.elements.size());
    for (size_t j = 0; j < d.elements.size(); j++) {
      Napi::Object e = Napi::Object::New(env);
      e.Set("key", EndpointJs(env, d.elements[j].first, v.family));
      SetCounters(env, e, d.elements[j].second);
      els.Set(static_cast<uint32_t>(j), e);
    }
    so.Set("elements", els);
    sets.Set(static_cast<uint32_t>(i), so);
  }
  r.Set("dispatchSets", sets);
  Napi::Array maps = Napi::Array::New(env, v.backend_maps.size());
  for (size_t i = 0; i < v.backend_maps.size(); i++) {
    const auto &m = v.backend_maps[i];
    Napi::Object mo = Napi::Object::New(env);
    mo.Set("proto", nft::ProtoName(m.proto));
    Napi::Array els = Napi::Array::New(env, m.elements.size());
    for (size_t j = 0; j < m.elements.size(); j++) {
      const nft::BackendElement &be = m.elements[j].first;
      Napi::Object e = Napi::Object::New(env);
      e.Set("vip", EndpointJs(env, be.vip, v.family));
      e.Set("index", be.index);
      e.Set("to", EndpointJs(env, be.to, v.family));
      SetCounters(env, e, m.elements[j].second);
      els.Set(static_cast<uint32_t>(j), e);
    }
    mo.Set("elements", els);
    maps.Set(static_cast<uint32_t>(i), mo);
  }
  r.Set("backendMaps", maps);
  Napi::Array chains = Napi::Array::New(env, v.chains.size());
  for (size_t i = 0; i < v.chains.size(); i++) {
    Napi::Object co = Napi::Object::New(env);
    co.Set("name", nft::ChainName(v.chains[i].name));
    Napi::Array rules = Napi::Array::New(env, v.chains[i].rules.size());
    for (size_t j = 0; j < v.chains[i].rules.size(); j++)
      rules.Set(static_cast<uint32_t>(j), RuleJs(env, v.chains[i].rules[j], v.family));
    co.Set("rules", rules);
    chains.Set(static_cast<uint32_t>(i), co);
  }
  r.Set("chains", chains);
  Napi::Array foreign = Napi::Array::New(env, v.foreign.size());
  for (size_t i = 0; i < v.foreign.size(); i++) foreign.Set(static_cast<uint32_t>(i), v.foreign[i]);
  r.Set("foreign", foreign);
  // Only when there are any (the field is optional, as in the spawn executor's read).
  if (!v.affinity_sets.empty()) {
    Napi::Array aff = Napi::Array::New(env, v.affinity_sets.size());
    for (size_t i = 0; i < v.affinity_sets.size(); i++) {
      Napi::Object so = Napi::Object::New(env);
      so.Set("name", v.affinity_sets[i].name);
      so.Set("timeout", v.affinity_sets[i].timeout);
      aff.Set(static_cast<uint32_t>(i), so);
    }
    r.Set("affinitySets", aff);
  }
  Resolve(r);
}

// ---- entry points -----------------------------------------------------------------------------

Napi::Value NftCommit(const Napi::CallbackInfo &info) {
  if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "transaction: missing");
  nft::Transaction tx = nft::TransactionFromJs(info[0]);
  return Pending(info.Env(), new NftCommitWorker(info.Env(), std::move(tx)), [](NftCommitWorker *w) { w->Queue(); });
}

Napi::Value NftRead(const Napi::CallbackInfo &info) {
  const nft::Family family = nft::FamilyFromJs(info[0], "family");
  std::optional<std::vector<nft::Endpoint>> only;
  if (info.Length() > 1 && !info[1].IsUndefined()) only = nft::EndpointsFromJs(info[1], family, "addresses");
  return Pending(info.Env(), new NftReadWorker(info.Env(), family, std::move(only)),
                 [](NftReadWorker *w) { w->Queue(); });
}

// ---- nftChains --------------------------------------------------------------------------------

NftChainsWorker::NftChainsWorker(Napi::Env env, nft::Family family, std::string table)
    : PromiseWorker(env, "iptlb.nftChains"), family_(family), table_(std::move(table)) {}

void NftChainsWorker::Work() {
  // Another table than iptlb's: no need for iptlb's table mutex, only a socket.
  nft::SharedSocketLease lease;
  names_ = nft::ChainNames(lease.get(), family_, table_);
  lease.Keep();
}

void NftChainsWorker::OnOK() {
  Napi::Env env = Env();
  Napi::Array out = Napi::Array::New(env, names_.size());
  for (size_t i = 0; i < names_.size(); i++) out.Set(static_cast<uint32_t>(i), names_[i]);
  Resolve(out);
}

Napi::Value NftChains(const Napi::CallbackInfo &info) {
  const nft::Family family = nft::FamilyFromJs(info[0], "family");
  if (info.Length() < 2 || !info[1].IsString())
    throw Napi::TypeError::New(info.Env(), "table: must be a string (a table name, e.g. nat)");
  std::string table = info[1].As<Napi::String>().Utf8Value();
  if (table.empty() || table.size() > 255) throw Napi::TypeError::New(info.Env(), "table: must be 1 to 255 characters");
  return Pending(info.Env(), new NftChainsWorker(info.Env(), family, std::move(table)),
                 [](NftChainsWorker *w) { w->Queue(); });
}

// ---- nftOriginalJumps -------------------------------------------------------------------------

NftOriginalWorker::NftOriginalWorker(Napi::Env env, nft::Family family)
    : PromiseWorker(env, "iptlb.nftOriginalJumps"), family_(family) {}

void NftOriginalWorker::Work() {
  // Another table than iptlb's (iptables-nft's nat): no need for iptlb's table mutex, only a socket.
  nft::SharedSocketLease lease;
  jumps_ = nft::OriginalJumps(lease.get(), family_);
  lease.Keep();
}

void NftOriginalWorker::OnOK() {
  Napi::Env env = Env();
  Napi::Array out = Napi::Array::New(env, jumps_.size());
  for (size_t i = 0; i < jumps_.size(); i++) {
    const nft::OriginalJump &j = jumps_[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("chain", j.chain);
    o.Set("handle", static_cast<double>(j.handle));
    o.Set("target", j.target);
    if (j.has_addr) o.Set("ip", nft::IpText(j.addr, family_));
    if (j.proto >= 0) o.Set("proto", j.proto);
    if (j.port >= 0) o.Set("port", j.port);
    if (!j.unknown.empty()) o.Set("unknown", j.unknown);
    out.Set(static_cast<uint32_t>(i), o);
  }
  Resolve(out);
}

Napi::Value NftOriginalJumps(const Napi::CallbackInfo &info) {
  const nft::Family family = nft::FamilyFromJs(info[0], "family");
  return Pending(info.Env(), new NftOriginalWorker(info.Env(), family), [](NftOriginalWorker *w) { w->Queue(); });
}

}  // namespace iptlb
