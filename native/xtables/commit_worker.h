// AsyncWorker that commits one Transaction to the nat table of its family: under the process's
// libiptc mutex and the xtables lock (one lock file for iptables and ip6tables), a fresh libiptc
// (ipv4) or libip6tc (ipv6) handle, the changes, one commit; retried from a fresh handle on EAGAIN.
#pragma once
#include <napi.h>

#include <functional>
#include <future>
#include <string>

#include "iptc_handle.h"
#include "plan.h"
#include "job_thread.h"

namespace iptlb {

class CommitWorker : public ThreadJob {
 public:
  // `json` is the transaction as JSON text, decoded and checked off the JS thread (TransactionFromJson,
  // on a decoder thread of its own, started at once: it runs while the job thread still does the work
  // before this commit, such as a prefetch); a plan that fails a check rejects with code EPLAN and the
  // field in the message. `prefetch_after`: once the commit succeeded and its result was handed back,
  // the job thread prefetches the next commit (as prefetch() does) before it takes its next job.
  CommitWorker(Napi::Env env, std::string json, int lock_wait_ms, bool prefetch_after = false);

 protected:
  void Work() override;  // no N-API in here
  void OnOK() override;
  std::function<void()> Tail() override;

 private:
  // Applies and commits tx_ with F's library, starting from `prepared` when given; throws NativeFailure.
  template <typename F>
  void Run(XtHandle<F> *prepared);

  Transaction tx_;
  std::future<Transaction> decoded_;  // the JSON text decoded on the decoder thread; taken into tx_ by Work()
  std::string lock_path_;             // read from the environment on the JS thread
  int lock_wait_ms_;
  double duration_ms_ = 0;
  int attempts_ = 0;
  bool prefetch_after_;
};

}  // namespace iptlb
