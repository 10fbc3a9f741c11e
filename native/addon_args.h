// Argument helpers shared by the addon's entry points (addon_core.cc, addon_xt.cc, addon_nft.cc).
#pragma once
#include <napi.h>

#include <string>

namespace iptlb {

// Bumped whenever the JS-visible interface changes; src/native/addon.ts checks it. All three
// .node files (iptlb_core, iptlb_xt, iptlb_nft) export the same number.
constexpr int kAbiVersion = 14;  // 14: core exports reduceMemory().  11: three parts (10) and the legacy gate (read()
                                 // reports `gate` and `direct`)

constexpr int kDefaultLockWaitMs = 10000;
constexpr double kMaxWaitMs = 3600000;

inline int WaitMs(const Napi::Value &v, const std::string &field) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), field + ": must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= kMaxWaitMs)) throw Napi::TypeError::New(v.Env(), field + ": must be from 0 to 3600000");
  return static_cast<int>(d);
}

inline int LockWait(const Napi::CallbackInfo &info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined()) return kDefaultLockWaitMs;
  if (!info[index].IsObject()) throw Napi::TypeError::New(info.Env(), "options: must be an object");
  Napi::Value v = info[index].As<Napi::Object>().Get("lockWaitMs");
  return v.IsUndefined() ? kDefaultLockWaitMs : WaitMs(v, "options.lockWaitMs");
}

}  // namespace iptlb
