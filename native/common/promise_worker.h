// Base of the addon's AsyncWorkers (libuv pool): a promise, and a NativeError that Work() fills with
// Fail() or throws as NativeFailure (plain data, no N-API off the JS thread; see errors.h) and
// OnError() turns into the rejection — a JS Error with .code/.errno. Work that may wait long runs
// on a JobThread instead (job_thread.h).
#pragma once
#include <napi.h>

#include <optional>

#include "errors.h"

namespace iptlb {

class PromiseWorker : public Napi::AsyncWorker {
 public:
  // The promise, made at the first call: call it in the JS scope that hands the promise out (a napi_value
  // lives only as long as the handle scope it was made in; start(n) runs in a later one).
  Napi::Promise Promise() {
    if (!deferred_) deferred_.emplace(Napi::Promise::Deferred::New(Env()));
    return deferred_->Promise();
  }

 protected:
  PromiseWorker(Napi::Env env, const char *name) : Napi::AsyncWorker(env, name), name_(name) {}

  virtual void Work() = 0;  // on a pool thread; no N-API in here
  void Execute() final {
    RunCatching(
        name_, [this] { Work(); }, [this](NativeError e) { Fail(std::move(e)); });
  }

  // From Execute(): remember the error; OnError() will reject with it.
  void Fail(NativeError e) {
    error_ = std::move(e);
    SetError(error_.message);
  }
  void OnError(const Napi::Error &e) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    deferred_->Reject(error_.empty() ? e.Value() : ToJsError(env, error_).Value());
  }
  void Resolve(Napi::Value v) { deferred_->Resolve(v); }

 private:
  const char *name_;
  std::optional<Napi::Promise::Deferred> deferred_;
  NativeError error_;
};

}  // namespace iptlb
