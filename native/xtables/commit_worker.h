// AsyncWorker that commits one Transaction to the nat table of its family: under the process's
// libiptc mutex and the xtables lock (one lock file for iptables and ip6tables), a fresh libiptc
// (ipv4) or libip6tc (ipv6) handle, the changes, one commit; retried from a fresh handle on EAGAIN.
#pragma once
#include <napi.h>

#include <atomic>
#include <future>
#include <memory>
#include <string>

#include "iptc_handle.h"
#include "plan.h"
#include "transaction.h"
#include "job_thread.h"

namespace iptlb {

// A plan's JSON text, decoded once: by the decoder thread (Run, when it gets there first) or by the
// commit's own Work (Take, which otherwise waits for the decoder's result). Thread-safe.
class PlanDecode {
 public:
  explicit PlanDecode(std::string json);
  bool Run();          // decoder thread: decodes unless Take() claimed it first; whether it did
  Transaction Take();  // job thread: the transaction (or what decoding it threw), decoded here if not begun

 private:
  std::atomic<bool> claimed_{false};
  std::string text_;
  std::promise<Transaction> promise_;
  std::future<Transaction> result_;
};

class CommitWorker : public ThreadJob {
 public:
  // `json` is the transaction as JSON text, decoded and checked off the JS thread (TransactionFromJson:
  // on the decoder thread, started at once, so it runs while the job thread still does the work queued
  // before this commit, such as a prefetch; or in Work() when the decoder had not begun it); a plan
  // that fails a check rejects with code EPLAN and the field in the message.
  // `append_fd` >= 0: `append_data` is written to it on the job thread right after the commit
  // succeeded, before the result goes back (the state journal's record, its descriptor opened with
  // O_APPEND | O_DSYNC by the caller, who keeps it open until the result came back): a record is
  // written only once the kernel holds its change, without a thread hop in between. Not when the
  // commit failed. The result's `appended` says how many bytes were written and the errno of a failure.
  CommitWorker(Napi::Env env, std::string json, int lock_wait_ms, int append_fd = -1, std::string append_data = {});

 protected:
  void Work() override;  // no N-API in here
  void OnOK() override;

 private:
  // Decodes, locks and commits (at the background priority); throws NativeFailure.
  void Commit();
  // Applies and commits tx_ with F's library, starting from `prepared` when given; throws NativeFailure.
  template <typename F>
  void Run(XtHandle<F> *prepared);

  Transaction tx_;
  std::vector<DeletedJump> originals_;  // the original iptlb's jumps the commit deleted (--verbose)
  std::shared_ptr<PlanDecode> decode_;  // the JSON text, decoded on the decoder thread or in Work()
  std::string lock_path_;               // read from the environment on the JS thread
  int lock_wait_ms_;
  double duration_ms_ = 0;
  int attempts_ = 0;
  int append_fd_;
  std::string append_data_;
  size_t appended_ = 0;
  int append_errno_ = 0;
};

}  // namespace iptlb
