// iptlb_xt.node: the x_tables (legacy) engine over libiptc (libip4tc/libip6tc). Arguments are checked
// on the JS thread (synchronous TypeErrors naming the field); kernel work runs in AsyncWorkers.
#include <napi.h>

#include "addon_args.h"
#include "iptc_handle.h"
#include "commit_worker.h"
#include "prefetch.h"
#include "plan.h"
#include "read_worker.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {

// commit(tx: Transaction, opts?: { lockWaitMs?: number }): Promise<{ durationMs, attempts }>
Napi::Value Commit(const Napi::CallbackInfo &info) {
  if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "transaction: missing");
  Transaction tx = TransactionFromJs(info[0]);
  const int wait = LockWait(info, 1);
  auto *w = new CommitWorker(info.Env(), std::move(tx), wait);
  Napi::Promise p = w->Promise();
  w->QueueInOrder();
  return p;
}

// commitJson(json: string, opts?: { lockWaitMs?: number }): Promise<{ durationMs, attempts }>
// The same commit, with the transaction as JSON.stringify text: decoded and checked on the worker
// thread, so a large plan costs the JS thread one string copy. A plan that fails a check rejects with
// code EPLAN (the message names the field, as commit()'s TypeErrors do).
Napi::Value CommitJson(const Napi::CallbackInfo &info) {
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "json: must be a string");
  std::string json = info[0].As<Napi::String>().Utf8Value();
  if (json.empty()) throw Napi::TypeError::New(info.Env(), "json: must not be empty");
  const int wait = LockWait(info, 1);
  auto *w = new CommitWorker(info.Env(), std::move(json), wait);
  Napi::Promise p = w->Promise();
  w->QueueInOrder();
  return p;
}

// read(family?: 'ipv4' | 'ipv6'): Promise<KernelView> (default ipv4)
Napi::Value Read(const Napi::CallbackInfo &info) {
  Family family = Family::kIpv4;
  if (info.Length() >= 1 && !info[0].IsUndefined()) {
    const std::string f = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : std::string();
    if (f != "ipv4" && f != "ipv6") throw Napi::TypeError::New(info.Env(), "family: must be \"ipv4\" or \"ipv6\"");
    family = f == "ipv6" ? Family::kIpv6 : Family::kIpv4;
  }
  auto *w = new ReadWorker(info.Env(), family);
  Napi::Promise p = w->Promise();
  w->QueueInOrder();
  return p;
}

// info(): { libiptc: true, xtablesLockPath: string }
Napi::Value Info(const Napi::CallbackInfo &info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("libiptc", true);
  o.Set("xtablesLockPath", XtablesLockPath());
  return o;
}

}  // namespace

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  FixMallocThresholds();  // legacy: the table copies must not stay in the heap (see iptc_handle.h)
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("part", Napi::String::New(env, "xt"));
  exports.Set("commit", Napi::Function::New(env, Commit, "commit"));
  exports.Set("commitJson", Napi::Function::New(env, CommitJson, "commitJson"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("prefetch", Napi::Function::New(env, Prefetch, "prefetch"));
  exports.Set("releasePrefetch", Napi::Function::New(env, ReleasePrefetch, "releasePrefetch"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  return exports;
}

}  // namespace iptlb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return iptlb::Init(env, exports); }
NODE_API_MODULE(iptlb_xt, InitAddon)
