// Errors that cross from worker threads to JavaScript: a code ("EKERNEL", "ELOCK", "EPERM", "EPLAN",
// "ERESTART"), the errno the kernel or libc gave, and a one-line message. Plain data: safe to build
// off the JS thread; ToJsError (JS thread only) makes the Error that the promise rejects with.
//
// The one error style of the C++ off the JS thread: a function that fails throws NativeFailure (a
// NativeError) and the worker boundary (PromiseWorker, ThreadJob: RunCatching below) turns it into the
// rejection. On the JS thread, bad arguments are Napi::TypeErrors naming the field.
#pragma once
#include <napi.h>

#include <cerrno>
#include <new>
#include <string>
#include <utility>

namespace iptlb {

struct NativeError {
  std::string code;
  int err = 0;
  std::string message;

  bool empty() const { return code.empty(); }
  // `code`, or "EPERM" when `err` is EPERM/EACCES — then `permission_hint` is appended to the
  // message (by default: changing netfilter rules needs CAP_NET_ADMIN).
  static NativeError FromErrno(
      const std::string &code, int err, const std::string &message,
      const char *permission_hint = "permission denied: changing netfilter rules needs CAP_NET_ADMIN (run as root)");
};

// A JS Error carrying .code and .errno.
Napi::Error ToJsError(Napi::Env env, const NativeError &e);

// What worker-thread code throws; RunCatching turns it into the worker's rejection.
struct NativeFailure {
  NativeError error;
};
[[noreturn]] inline void Throw(NativeError e) { throw NativeFailure{std::move(e)}; }

// The worker boundary: runs `work`, and hands what it threw to `fail` as a NativeError (NativeFailure
// as it is; out of memory and any other exception as EKERNEL, prefixed with `what`).
template <typename Work, typename OnFail>
void RunCatching(const char *what, Work &&work, OnFail &&fail) {
  if (std::string(what).rfind("iptlb.", 0) == 0) what += 6;  // a worker's resource name: "iptlb.nftCommit"
  try {
    work();
  } catch (NativeFailure &f) {
    fail(std::move(f.error));
  } catch (const std::bad_alloc &) {
    fail(NativeError::FromErrno("EKERNEL", ENOMEM, std::string(what) + ": out of memory"));
  } catch (const std::exception &e) {
    fail(NativeError::FromErrno("EKERNEL", EINVAL, std::string(what) + ": " + e.what()));
  }
}

}  // namespace iptlb
