// Work that must not occupy the libuv thread pool while it waits: a JobThread is one thread of its
// own that runs ThreadJobs one at a time, in the order they were started. The x_tables engine runs
// all its table work on one (xtables/addon_xt.cc): a commit waiting for the xtables lock (up to
// lockWaitMs) then holds that thread, never a pool thread, so fs, dns and crypto work goes on.
//
// A ThreadJob has the shape of PromiseWorker (promise_worker.h): Work() off the JS thread (no
// N-API), then OnOK() or the rejection with the NativeError it failed with. Work() may also throw
// NativeFailure (errors.h); std::bad_alloc and other exceptions become EKERNEL rejections. The result
// comes back through a thread-safe function, which keeps the event loop alive until it settled.
#pragma once
#include <napi.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include "errors.h"

namespace iptlb {

class ThreadJob;
void SettleThreadJob(Napi::Env env, Napi::Function, std::nullptr_t *, ThreadJob *job);

class JobThread {
 public:
  explicit JobThread(const char *name);  // starts the thread, so named (detached: it lives as long as the process)
  JobThread(const JobThread &) = delete;
  JobThread &operator=(const JobThread &) = delete;
  void Post(ThreadJob *job);

 private:
  void Loop();
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<ThreadJob *> queue_;
};

class ThreadJob {
 public:
  virtual ~ThreadJob() = default;
  ThreadJob(const ThreadJob &) = delete;
  ThreadJob &operator=(const ThreadJob &) = delete;
  // Made at the first call, in the JS scope that hands the promise out (see PromiseWorker::Promise).
  Napi::Promise Promise() {
    if (!deferred_) deferred_.emplace(Napi::Promise::Deferred::New(env_));
    return deferred_->Promise();
  }
  // JS thread: hands the job to `thread`. The job deletes itself once its promise has settled.
  void Start(JobThread *thread);
  // JS thread: runs the job on a thread of its own, named `thread_name`, which ends with it: for waits
  // that may each last long and must not queue behind one another (one JobThread would run them in turn).
  void StartAlone(const char *thread_name);

 protected:
  ThreadJob(Napi::Env env, const char *name);
  Napi::Env Env() const { return env_; }
  virtual void Work() = 0;  // on the job thread; no N-API in here
  virtual void OnOK() = 0;  // JS thread: Resolve(...)
  void Fail(NativeError e) {
    error_ = std::move(e);
    failed_ = true;
  }
  void Resolve(Napi::Value v) { deferred_->Resolve(v); }

 private:
  friend class JobThread;
  friend void SettleThreadJob(Napi::Env env, Napi::Function, std::nullptr_t *, ThreadJob *job);
  void Run();     // job thread: Work(), then the call back to the JS thread
  void Settle();  // JS thread

  Napi::Env env_;
  const char *name_;
  std::optional<Napi::Promise::Deferred> deferred_;
  Napi::TypedThreadSafeFunction<std::nullptr_t, ThreadJob, SettleThreadJob> back_;
  NativeError error_;
  bool failed_ = false;
};

}  // namespace iptlb
