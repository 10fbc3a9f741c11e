#include "file_lock.h"

#include <unistd.h>

#include "xtables_lock.h"

namespace iptlb {
namespace {

// Per-addon-instance data: the FileLock constructor, and the token only NewInstance knows.
struct FileLockClass {
  Napi::FunctionReference constructor;
  int token = 0;
};

FileLockClass *ClassOf(Napi::Env env) { return env.GetInstanceData<FileLockClass>(); }

}  // namespace

void FileLock::Define(Napi::Env env) {
  auto *cls = new FileLockClass;
  cls->constructor = Napi::Persistent(
      DefineClass(env, "FileLock",
                  {InstanceMethod("release", &FileLock::Release), InstanceAccessor("fd", &FileLock::Fd, nullptr)}));
  env.SetInstanceData(cls);  // deleted by node-addon-api when the environment goes away
}

Napi::Object FileLock::NewInstance(Napi::Env env, int fd) {
  FileLockClass *cls = ClassOf(env);
  return cls->constructor.New({Napi::External<int>::New(env, &cls->token), Napi::Number::New(env, fd)});
}

FileLock::FileLock(const Napi::CallbackInfo &info) : Napi::ObjectWrap<FileLock>(info) {
  FileLockClass *cls = ClassOf(info.Env());
  if (info.Length() != 2 || !info[0].IsExternal() || info[0].As<Napi::External<int>>().Data() != &cls->token ||
      !info[1].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), "FileLock objects are made by flock()");
  }
  fd_ = info[1].As<Napi::Number>().Int32Value();
}

FileLock::~FileLock() {
  if (fd_ >= 0) close(fd_);  // finalizer: a lock nobody released goes with its object
}

Napi::Value FileLock::Fd(const Napi::CallbackInfo &info) { return Napi::Number::New(info.Env(), fd_); }

Napi::Value FileLock::Release(const Napi::CallbackInfo &info) {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  return info.Env().Undefined();
}

FlockWaiter::FlockWaiter(Napi::Env env, std::string path, int wait_ms)
    : ThreadJob(env, "iptlb.flock"), path_(std::move(path)), wait_ms_(wait_ms) {}

FlockWaiter::~FlockWaiter() {
  if (fd_ >= 0) close(fd_);  // never handed over (environment torn down first)
}

void FlockWaiter::Work() {
  FlockGuard guard;
  guard.Acquire(path_, kStateFileLockOpen, wait_ms_);
  fd_ = guard.Detach();
}

void FlockWaiter::OnOK() {
  Napi::Object lock = FileLock::NewInstance(Env(), fd_);
  fd_ = -1;  // the FileLock owns it now
  Resolve(lock);
}

}  // namespace iptlb
