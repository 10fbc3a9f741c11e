// Errors that cross from worker threads to JavaScript: a code ("EKERNEL", "ELOCK", "EPERM"), the
// errno the kernel or libc gave, and a one-line message. Plain data: safe to build off the JS thread.
#pragma once
#include <napi.h>
#include <string>

namespace iptlb {

struct NativeError {
  std::string code;
  int err = 0;
  std::string message;

  bool empty() const { return code.empty(); }
  // "EPERM" when errno says permission, else the given code.
  static NativeError FromErrno(const std::string &code, int err, const std::string &message);
};

// A JS Error carrying .code and .errno.
Napi::Error ToJsError(Napi::Env env, const NativeError &e);

}  // namespace iptlb
