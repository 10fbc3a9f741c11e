// iptlb_nft.node: the nf_tables engine over netlink (libnftnl/libmnl). Arguments are checked in the
// worker entry points (synchronous TypeErrors naming the field); kernel work runs in AsyncWorkers.
#include <napi.h>

#include "addon_args.h"
#include "memory.h"
#include "nft_workers.h"
#include "pending.h"

namespace iptlb {

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  FixMallocThresholds();  // a transaction's batch and a read's view must not stay in the heap (common/memory.h)
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("part", Napi::String::New(env, "nft"));
  exports.Set("nftCommit", Napi::Function::New(env, NftCommit, "nftCommit"));
  exports.Set("nftRead", Napi::Function::New(env, NftRead, "nftRead"));
  exports.Set("nftChains", Napi::Function::New(env, NftChains, "nftChains"));
  exports.Set("nftOriginalJumps", Napi::Function::New(env, NftOriginalJumps, "nftOriginalJumps"));
  exports.Set("start", Napi::Function::New(env, StartPending, "start"));
  return exports;
}

}  // namespace iptlb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return iptlb::Init(env, exports); }
NODE_API_MODULE(iptlb_nft, InitAddon)
