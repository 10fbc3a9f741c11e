#include "errors.h"

#include <cerrno>

namespace iptlb {

NativeError NativeError::FromErrno(const std::string &code, int err, const std::string &message,
                                   const char *permission_hint) {
  NativeError e;
  e.err = err;
  if (err == EPERM || err == EACCES) {
    e.code = "EPERM";
    e.message = message + " (" + permission_hint + ")";
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
