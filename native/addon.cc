// Module init: the addon's exports. Arguments are checked here, on the JS thread (synchronous
// TypeErrors naming the field); kernel work runs in AsyncWorkers and comes back as promises.
#include <napi.h>

#include "iptc_handle.h"
#include "commit_worker.h"
#include "prefetch.h"
#include "conntrack_worker.h"
#include "file_lock.h"
#include "nft_workers.h"
#include "plan.h"
#include "read_worker.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {

// Bumped whenever the JS-visible interface changes; src/native/addon.ts checks it.
constexpr int kAbiVersion = 10;  // 10: the legacy gate (read() reports `gate` and `direct`; commits write the gated layout)
constexpr int kDefaultLockWaitMs = 10000;
constexpr double kMaxWaitMs = 3600000;

int WaitMs(const Napi::Value &v, const std::string &field) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), field + ": must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= kMaxWaitMs)) throw Napi::TypeError::New(v.Env(), field + ": must be from 0 to 3600000");
  return static_cast<int>(d);
}

int LockWait(const Napi::CallbackInfo &info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined()) return kDefaultLockWaitMs;
  if (!info[index].IsObject()) throw Napi::TypeError::New(info.Env(), "options: must be an object");
  Napi::Value v = info[index].As<Napi::Object>().Get("lockWaitMs");
  return v.IsUndefined() ? kDefaultLockWaitMs : WaitMs(v, "options.lockWaitMs");
}

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

// flock(path: string, waitMs: number): Promise<FileLock>
Napi::Value Flock(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path: must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.empty() || path.size() > 4095 || path.find('\0') != std::string::npos) throw Napi::TypeError::New(env, "path: must be a file path");
  const int wait = WaitMs(info.Length() < 2 ? env.Undefined() : info[1], "waitMs");
  auto *w = new FlockWorker(env, std::move(path), wait);
  Napi::Promise p = w->Promise();
  w->Queue();
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  FixMallocThresholds();
  FileLock::Define(env);
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("commit", Napi::Function::New(env, Commit, "commit"));
  exports.Set("commitJson", Napi::Function::New(env, CommitJson, "commitJson"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("prefetch", Napi::Function::New(env, Prefetch, "prefetch"));
  exports.Set("releasePrefetch", Napi::Function::New(env, ReleasePrefetch, "releasePrefetch"));
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("nftCommit", Napi::Function::New(env, NftCommit, "nftCommit"));
  exports.Set("nftRead", Napi::Function::New(env, NftRead, "nftRead"));
  exports.Set("conntrackFlush", Napi::Function::New(env, ConntrackFlush, "conntrackFlush"));
  return exports;
}

}  // namespace iptlb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return iptlb::Init(env, exports); }
NODE_API_MODULE(iptlb, InitAddon)
