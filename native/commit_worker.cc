#include "commit_worker.h"

#include <cerrno>
#include <chrono>
#include <mutex>

#include "iptc_handle.h"
#include "prefetch.h"
#include "thread_priority.h"
#include "transaction.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {
// iptc_commit fails with EAGAIN when the table changed between iptc_init and the commit (a writer
// that does not take the xtables lock); we start again from a fresh copy, this many times at most.
constexpr int kMaxAttempts = 8;
}  // namespace

CommitWorker::CommitWorker(Napi::Env env, Transaction tx, int lock_wait_ms)
    : PromiseWorker(env, "iptlb.commit"), tx_(std::move(tx)), lock_path_(XtablesLockPath()), lock_wait_ms_(lock_wait_ms) {}

CommitWorker::CommitWorker(Napi::Env env, std::string json, int lock_wait_ms)
    : PromiseWorker(env, "iptlb.commit"), json_(std::move(json)), lock_path_(XtablesLockPath()), lock_wait_ms_(lock_wait_ms) {}

void CommitWorker::Execute() {
  BackgroundPriority background;
  const auto t0 = std::chrono::steady_clock::now();
  if (!json_.empty()) {
    // Decoded before waiting for our turn: it needs neither the table nor the lock.
    std::string why;
    const bool ok = TransactionFromJson(std::move(json_), &tx_, &why);
    json_.clear();
    if (!ok) return Fail(NativeError{"EPLAN", EINVAL, why});
  }
  auto turn = turn_.Enter();  // commits and reads reach the table one at a time, in call order
  std::lock_guard<std::mutex> serial(LibiptcMutex());
  // A handle prefetch() prepared holds the xtables lock already (see prefetch.h).
  std::unique_ptr<Prefetched> pre = TakePrefetched();
  FlockGuard lock;
  NativeError error;
  if (!pre && !lock.Acquire(lock_path_, kXtablesLockOpen, lock_wait_ms_, &error)) {
    if (error.code == "EPERM") error.message += "; changing netfilter rules needs root (CAP_NET_ADMIN)";
    return Fail(std::move(error));
  }
  for (attempts_ = 1;; attempts_++) {
    std::unique_ptr<IptcHandle> fresh;
    if (attempts_ > 1 || !pre) fresh = std::make_unique<IptcHandle>("nat");
    IptcHandle &h = fresh ? *fresh : *pre->handle;
    if (!h.ok()) return Fail(h.error());
    if (!ApplyTransaction(h.get(), tx_, &error)) return Fail(std::move(error));
    if (iptc_commit(h.get())) break;
    const int err = errno;
    if (err != EAGAIN || attempts_ == kMaxAttempts) {
      std::string context = " while committing table nat";
      if (err == EAGAIN) context += " (the table kept changing: " + std::to_string(attempts_) + " attempts)";
      return Fail(IptcError("iptc_commit", err, context));
    }
  }
  duration_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void CommitWorker::OnOK() {
  Napi::Env env = Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("durationMs", duration_ms_);
  r.Set("attempts", attempts_);
  Resolve(r);
}

}  // namespace iptlb
