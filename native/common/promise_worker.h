// Base of the addon's AsyncWorkers: a promise, and a NativeError that Execute() fills (plain data,
// no N-API off the JS thread) and OnError() turns into the rejection — a JS Error with .code/.errno.
#pragma once
#include <napi.h>

#include "errors.h"

namespace iptlb {

class PromiseWorker : public Napi::AsyncWorker {
 public:
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  PromiseWorker(Napi::Env env, const char *name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}

  // From Execute(): remember the error; OnError() will reject with it.
  void Fail(NativeError e) {
    error_ = std::move(e);
    SetError(error_.message);
  }
  void OnError(const Napi::Error &e) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    deferred_.Reject(error_.empty() ? e.Value() : ToJsError(env, error_).Value());
  }
  void Resolve(Napi::Value v) { deferred_.Resolve(v); }

 private:
  Napi::Promise::Deferred deferred_;
  NativeError error_;
};

}  // namespace iptlb
