// AsyncWorker that commits one Transaction: under the process's table mutex and the xtables lock,
// a fresh libiptc handle, the changes, one iptc_commit; retried from a fresh handle on EAGAIN.
#pragma once
#include <napi.h>

#include "errors.h"
#include "plan.h"

namespace iptlb {

class CommitWorker : public Napi::AsyncWorker {
 public:
  CommitWorker(Napi::Env env, Transaction tx, int lock_wait_ms);
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override;  // no N-API in here
  void OnOK() override;

 private:
  Napi::Promise::Deferred deferred_;
  Transaction tx_;
  int lock_wait_ms_;
  NativeError error_;
  double duration_ms_ = 0;
  int attempts_ = 0;
};

}  // namespace iptlb
