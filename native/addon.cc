// Module init: the addon's exports. Arguments are checked here, on the JS thread; kernel work runs
// in AsyncWorkers and comes back as promises.
#include <napi.h>

#include "commit_worker.h"
#include "file_lock.h"
#include "plan.h"
#include "read_worker.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {

constexpr int kAbiVersion = 1;

int LockWait(const Napi::CallbackInfo &info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined()) return 10000;
  if (!info[index].IsObject()) throw Napi::TypeError::New(info.Env(), "options: must be an object");
  Napi::Value v = info[index].As<Napi::Object>().Get("lockWaitMs");
  if (v.IsUndefined()) return 10000;
  if (!v.IsNumber()) throw Napi::TypeError::New(info.Env(), "options.lockWaitMs: must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 3600000)) throw Napi::TypeError::New(info.Env(), "options.lockWaitMs: must be from 0 to 3600000");
  return static_cast<int>(d);
}

Napi::Value Commit(const Napi::CallbackInfo &info) {
  if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "commit(transaction, options?): transaction missing");
  Transaction tx = TransactionFromJs(info[0]);
  auto *w = new CommitWorker(info.Env(), std::move(tx), LockWait(info, 1));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value Read(const Napi::CallbackInfo &info) {
  auto *w = new ReadWorker(info.Env());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value Flock(const Napi::CallbackInfo &info) {
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), "flock(path: string, waitMs: number)");
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.empty() || path.size() > 4095 || path.find('\0') != std::string::npos) throw Napi::TypeError::New(info.Env(), "path: must be a file path");
  double wait = info[1].As<Napi::Number>().DoubleValue();
  if (!(wait >= 0 && wait <= 3600000)) throw Napi::TypeError::New(info.Env(), "waitMs: must be from 0 to 3600000");
  auto *w = new FlockWorker(info.Env(), path, static_cast<int>(wait));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value Info(const Napi::CallbackInfo &info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("libiptc", true);
  o.Set("xtablesLockPath", XtablesLockPath());
  return o;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("commit", Napi::Function::New(env, Commit, "commit"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("FileLock", FileLock::Define(env));
  return exports;
}

}  // namespace iptlb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return iptlb::Init(env, exports); }
NODE_API_MODULE(iptlb, InitAddon)
