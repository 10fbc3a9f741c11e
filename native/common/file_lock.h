// The state-file lock for JavaScript: flock(path, waitMs) resolves to a FileLock whose release()
// closes the descriptor (idempotent; the finalizer and process death release it too). FileLock
// objects can only be made by NewInstance (the constructor wants a private token, not an fd).
//
// A free lock is taken on the JS thread (an open and a non-blocking flock). A held one is waited for
// by a FlockWaiter on a thread of its own, never a libuv pool thread: a process waiting for four
// state files held by others filled the pool, and its fs work (and its own state writes) stalled.
#pragma once
#include <napi.h>

#include <string>

#include "job_thread.h"

namespace iptlb {

class FileLock : public Napi::ObjectWrap<FileLock> {
 public:
  // Registers the class with the addon instance (not exported to JavaScript).
  static void Define(Napi::Env env);
  // Wraps a locked descriptor; the FileLock owns it from here on.
  static Napi::Object NewInstance(Napi::Env env, int fd);
  explicit FileLock(const Napi::CallbackInfo &info);
  ~FileLock() override;

 private:
  Napi::Value Release(const Napi::CallbackInfo &info);
  // The descriptor holding the lock, -1 once released: a child process given a copy keeps the lock
  // held until it exits too.
  Napi::Value Fd(const Napi::CallbackInfo &info);
  int fd_ = -1;
};

class FlockWaiter : public ThreadJob {
 public:
  FlockWaiter(Napi::Env env, std::string path, int wait_ms);
  ~FlockWaiter() override;

 protected:
  void Work() override;  // no N-API in here
  void OnOK() override;

 private:
  std::string path_;
  int wait_ms_;
  int fd_ = -1;  // owned until handed to a FileLock
};

}  // namespace iptlb
