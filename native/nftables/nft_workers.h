// The AsyncWorkers of the nftables executor: nftCommit(tx) and nftRead(family). Arguments are converted
// to plain C++ data on the JS thread; Execute() only talks netlink; OnOK() builds the JS result.
#pragma once
#include <napi.h>

#include <optional>
#include <vector>

#include "nft_ops.h"
#include "nft_original.h"
#include "nft_read.h"
#include "promise_worker.h"

namespace iptlb {

class NftCommitWorker : public PromiseWorker {
 public:
  NftCommitWorker(Napi::Env env, nft::Transaction tx);

 protected:
  void Work() override;
  void OnOK() override;

 private:
  nft::Transaction tx_;
  double duration_ms_ = 0;
  uint32_t genid_ = 0;
};

class NftReadWorker : public PromiseWorker {
 public:
  NftReadWorker(Napi::Env env, nft::Family family, std::optional<std::vector<nft::Endpoint>> only = std::nullopt);

 protected:
  void Work() override;
  void OnOK() override;

 private:
  nft::Family family_;
  std::optional<std::vector<nft::Endpoint>> only_;
  nft::View view_;
};

class NftChainsWorker : public PromiseWorker {
 public:
  NftChainsWorker(Napi::Env env, nft::Family family, std::string table);

 protected:
  void Work() override;
  void OnOK() override;

 private:
  nft::Family family_;
  std::string table_;
  std::vector<std::string> names_;
};

class NftOriginalWorker : public PromiseWorker {
 public:
  NftOriginalWorker(Napi::Env env, nft::Family family);

 protected:
  void Work() override;
  void OnOK() override;

 private:
  nft::Family family_;
  std::vector<nft::OriginalJump> jumps_;
};

// nftCommit(tx) / nftRead(family?, addresses?) / nftChains(family, table) / nftOriginalJumps(family): argument checks
// (TypeErrors);
// they return a job number for start(n) (pending.h): JavaScript orders the calls.
Napi::Value NftCommit(const Napi::CallbackInfo &info);
Napi::Value NftRead(const Napi::CallbackInfo &info);
Napi::Value NftChains(const Napi::CallbackInfo &info);
Napi::Value NftOriginalJumps(const Napi::CallbackInfo &info);

}  // namespace iptlb
