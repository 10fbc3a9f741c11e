// AsyncWorker that reads iptlb's objects from the nat table: chains named IPTLB_* and rules of the
// built-in chains whose comment starts with "iptlb:", decoded, with their counters.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "errors.h"
#include "rule_decoder.h"

namespace iptlb {

class ReadWorker : public Napi::AsyncWorker {
 public:
  explicit ReadWorker(Napi::Env env);
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override;  // no N-API in here
  void OnOK() override;

 private:
  struct ChainView {
    std::string name;
    std::vector<DecodedRule> rules;
  };
  struct HookView {
    std::string chain;
    std::string owner;
    unsigned position;
    DecodedRule rule;
  };
  Napi::Promise::Deferred deferred_;
  NativeError error_;
  std::vector<ChainView> chains_;
  std::vector<HookView> hooks_;
};

}  // namespace iptlb
