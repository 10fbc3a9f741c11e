// Argument helpers shared by the addon's entry points (addon_core.cc, addon_xt.cc, addon_nft.cc).
#pragma once
#include <napi.h>

#include <string>

namespace iptlb {

// Bumped whenever the JS-visible interface changes; src/native/addon.ts checks it. All three
// .node files (iptlb_core, iptlb_xt, iptlb_nft) export the same number.
// 27: an nft addAffinitySet's size 0 (no limit) and sizeByUpdate (made without a size, then given it); 26: a legacy
// transaction's `strays` (elements of the gate's set no rule selects, deleted after the commit), the
// legacy read()'s gate.foreign (dispatch chains holding another tool's rules); 25: an nft transaction's deleteNatRule
// and deleteNatChain ops (iptables-nft's table nat: the original iptlb's jumps and chain, taken over in the batch of
// iptlb's change); 24: nftOriginalJumps(family) (the original iptlb's jumps in iptables-nft's nat OUTPUT and
// PREROUTING, with their match: a new profile at such an address is refused on the nft engine too); 23: the legacy
// read()'s bareJumps carry their rule (address, protocol, port: a profile's change at the address of the original's
// jump is refused, as the commit does); 22: the legacy read() reports the original iptlb's jumps (bareJumps: chain,
// target); 21: a legacy transaction's `was` as gate elements, holds(family); 20: a legacy transaction's `held` (a
// profile the state file holds whose name the table has at another address is refused); 19: nftChains; 18: a legacy
// transaction's `created` (a profile name another state file holds is refused); 17: a legacy transaction's `exclusive`,
// nftRead(family, addresses) (a narrow read); 16: readText (iptlb_core); 15: the merge of 12, 13 and 14; 14:
// reduceMemory (iptlb_core); 13: table operations return a job number for start(n) (JavaScript orders them), the legacy
// plan crosses as JSON text only (commit(json)); 12: the health prober (iptlb_core HealthProber); 11: three parts (10)
// and the legacy gate.
constexpr int kAbiVersion = 27;

constexpr int kDefaultLockWaitMs = 10000;
// The longest plan text commit() takes (UTF-16 units, 128 Mi): 10,000 profiles are about 6 MB.
constexpr size_t kMaxPlanJson = 128u << 20;
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
