// The state-file lock for JavaScript: flock(path, waitMs) resolves to a FileLock whose release()
// closes the descriptor (idempotent; the finalizer and process death release it too).
#pragma once
#include <napi.h>

#include <string>

#include "errors.h"

namespace iptlb {

class FileLock : public Napi::ObjectWrap<FileLock> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, int fd);
  explicit FileLock(const Napi::CallbackInfo &info);
  ~FileLock() override;

 private:
  Napi::Value Release(const Napi::CallbackInfo &info);
  int fd_ = -1;
};

class FlockWorker : public Napi::AsyncWorker {
 public:
  FlockWorker(Napi::Env env, std::string path, int wait_ms);
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override;  // no N-API in here
  void OnOK() override;

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  int wait_ms_;
  int fd_ = -1;
  NativeError error_;
};

}  // namespace iptlb
