// iptlb_core.node: what both engines use and needs no netfilter table library: file locks (libc),
// conntrack flushes (ctnetlink over libmnl), the health checks' TCP prober (health/prober.h) and the
// reading of a large state file (read_text.h). Arguments are checked on the JS thread (synchronous
// TypeErrors naming the field); the work runs in AsyncWorkers and comes back as promises, but for
// flockBusy, readText and netnsCookie, which are synchronous.
#include <fcntl.h>
#include <napi.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71  // Linux 5.14 (asm-generic/socket.h)
#endif

#include "addon_args.h"
#include "conntrack_worker.h"
#include "file_lock.h"
#include "prober.h"
#include "read_text.h"
#include "v8_memory.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {

// The first argument as a file path: a string of 1-4095 bytes without NUL (else a TypeError naming it).
std::string PathArg(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path: must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.empty() || path.size() > 4095 || path.find('\0') != std::string::npos)
    throw Napi::TypeError::New(env, "path: must be a file path");
  return path;
}

// flock(path: string, waitMs: number): Promise<FileLock>
Napi::Value Flock(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info);
  const int wait = WaitMs(info.Length() < 2 ? env.Undefined() : info[1], "waitMs");
  // Free (the usual case): taken here, with no thread at all. Busy: waited for on a thread of its own.
  // Any other failure (the file cannot be opened…) rejects with the error the wait would have given.
  auto deferred = Napi::Promise::Deferred::New(env);
  NativeError failed;
  int fd = -1;
  RunCatching(
      "iptlb.flock",
      [&] {
        FlockGuard guard;
        if (guard.TryAcquireOrThrow(path, kStateFileLockOpen)) fd = guard.Detach();
      },
      [&](NativeError e) { failed = std::move(e); });
  if (!failed.empty()) {
    deferred.Reject(ToJsError(env, failed).Value());
  } else if (fd >= 0) {
    deferred.Resolve(FileLock::NewInstance(env, fd));
  } else {
    auto *w = new FlockWaiter(env, std::move(path), wait);
    Napi::Promise p = w->Promise();
    w->StartAlone("iptlb-flock");
    return p;
  }
  return deferred.Promise();
}

// flockBusy(path: string): boolean — whether someone holds an flock on `path`, asked without waiting
// (synchronous: an open and a non-blocking flock, on this thread). A file that does not exist or cannot
// be opened is not busy. A long-lived writer holding the state-file lock across a run of group
// commits asks this of the queue lock (`<state file>.lock.queue`, held by every waiter while it
// waits): busy means another process waits, and the writer gives the lock up (src/core/core.ts).
Napi::Value FlockBusy(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info);
  int fd;
  do fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return Napi::Boolean::New(env, false);
  const bool busy = flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  close(fd);  // lets go of the probe's own lock, if it got one
  return Napi::Boolean::New(env, busy);
}

// reduceMemory(level: 1 | 2): boolean — memory pressure for V8 (see common/v8_memory.h).
Napi::Value ReduceMemory(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "level: must be 1 or 2");
  const int level = info[0].As<Napi::Number>().Int32Value();
  if (level != 1 && level != 2) throw Napi::TypeError::New(env, "level: must be 1 or 2");
  return Napi::Boolean::New(env, MemoryPressure(level));
}

// netnsCookie(): string | null — the cookie of this thread's network namespace (SO_NETNS_COOKIE of a
// socket made for the question), in decimal; null when it cannot be had (Linux before 5.14:
// ENOPROTOOPT). Unlike the namespace's inode, which the kernel gives to a new namespace once the old
// one is gone, a cookie is never reused while the system runs (src/core/registry.ts keys on both).
Napi::Value NetnsCookie(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return env.Null();
  uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  const int r = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len);
  close(fd);
  if (r != 0 || len != sizeof cookie) return env.Null();
  return Napi::String::New(env, std::to_string(cookie));
}

}  // namespace

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  FileLock::Define(env);
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("part", Napi::String::New(env, "core"));
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  exports.Set("conntrackFlush", Napi::Function::New(env, ConntrackFlush, "conntrackFlush"));
  exports.Set("HealthProber", HealthProber::Class(env));
  exports.Set("flockBusy", Napi::Function::New(env, FlockBusy, "flockBusy"));
  exports.Set("reduceMemory", Napi::Function::New(env, ReduceMemory, "reduceMemory"));
  exports.Set("readText", Napi::Function::New(env, ReadText, "readText"));
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie, "netnsCookie"));
  return exports;
}

}  // namespace iptlb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return iptlb::Init(env, exports); }
NODE_API_MODULE(iptlb_core, InitAddon)
