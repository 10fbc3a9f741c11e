#include "file_lock.h"

#include <unistd.h>

#include "xtables_lock.h"

namespace iptlb {
namespace {
Napi::FunctionReference *constructor = nullptr;
}

Napi::Function FileLock::Define(Napi::Env env) {
  Napi::Function f = DefineClass(env, "FileLock", {InstanceMethod("release", &FileLock::Release)});
  constructor = new Napi::FunctionReference(Napi::Persistent(f));
  return f;
}

Napi::Object FileLock::NewInstance(Napi::Env env, int fd) {
  return constructor->New({Napi::Number::New(env, fd)});
}

FileLock::FileLock(const Napi::CallbackInfo &info) : Napi::ObjectWrap<FileLock>(info) {
  if (info.Length() != 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(info.Env(), "FileLock is made by flock()").ThrowAsJavaScriptException();
    return;
  }
  fd_ = info[0].As<Napi::Number>().Int32Value();
}

FileLock::~FileLock() {
  if (fd_ >= 0) close(fd_);
}

Napi::Value FileLock::Release(const Napi::CallbackInfo &info) {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  return info.Env().Undefined();
}

FlockWorker::FlockWorker(Napi::Env env, std::string path, int wait_ms)
    : Napi::AsyncWorker(env, "iptlb.flock"), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)), wait_ms_(wait_ms) {}

void FlockWorker::Execute() {
  FlockGuard guard;
  if (guard.Acquire(path_, wait_ms_, true, &error_)) fd_ = guard.Detach();
}

void FlockWorker::OnOK() {
  Napi::Env env = Env();
  if (!error_.empty()) {
    deferred_.Reject(ToJsError(env, error_).Value());
    return;
  }
  deferred_.Resolve(FileLock::NewInstance(env, fd_));
}

}  // namespace iptlb
