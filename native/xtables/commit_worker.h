// AsyncWorker that commits one Transaction to the nat table of its family: under the process's
// libiptc mutex and the xtables lock (one lock file for iptables and ip6tables), a fresh libiptc
// (ipv4) or libip6tc (ipv6) handle, the changes, one commit; retried from a fresh handle on EAGAIN.
#pragma once
#include <napi.h>

#include <string>

#include "iptc_handle.h"
#include "plan.h"
#include "promise_worker.h"
#include "table_queue.h"

namespace iptlb {

class CommitWorker : public PromiseWorker {
 public:
  // `tx` is already validated plain data (TransactionFromJs, on the JS thread).
  CommitWorker(Napi::Env env, Transaction tx, int lock_wait_ms);
  // `json` is the transaction as JSON text, decoded and checked in Execute() (TransactionFromJson);
  // a plan that fails a check rejects with code EPLAN and the field in the message.
  CommitWorker(Napi::Env env, std::string json, int lock_wait_ms);
  // Queues the worker behind every commit/read called before it (see table_queue.h).
  void QueueInOrder() { turn_.Queue(this); }

 protected:
  void Execute() override;  // no N-API in here
  void OnOK() override;

 private:
  // Applies and commits tx_ with F's library, starting from `prepared` when given; false after Fail().
  template <typename F>
  bool Run(XtHandle<F> *prepared);

  TableTurn turn_;
  Transaction tx_;
  std::string json_;       // non-empty: decode into tx_ first (worker thread)
  std::string lock_path_;  // read from the environment on the JS thread
  int lock_wait_ms_;
  double duration_ms_ = 0;
  int attempts_ = 0;
};

}  // namespace iptlb
