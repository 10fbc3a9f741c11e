#include "errors.h"

#include <cerrno>

namespace iptlb {

NativeError NativeError::FromErrno(const std::string &code, int err, const std::string &message) {
  NativeError e;
  e.err = err;
  if (err == EPERM || err == EACCES) {
    e.code = "EPERM";
    e.message = message + " (permission denied: changing netfilter rules needs CAP_NET_ADMIN)";
  } else {
    e.code = code;
    e.message = message;
  }
  return e;
}

Napi::Error ToJsError(Napi::Env env, const NativeError &e) {
  Napi::Error js = Napi::Error::New(env, e.message);
  js.Set("code", Napi::String::New(env, e.code));
  js.Set("errno", Napi::Number::New(env, e.err));
  return js;
}

}  // namespace iptlb
