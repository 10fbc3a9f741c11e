// Errors that cross from worker threads to JavaScript: a code ("EKERNEL", "ELOCK", "EPERM"), the
// errno the kernel or libc gave, and a one-line message. Plain data: safe to build off the JS thread;
// ToJsError (JS thread only) makes the Error that the promise rejects with.
#pragma once
#include <napi.h>

#include <string>

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

}  // namespace iptlb
