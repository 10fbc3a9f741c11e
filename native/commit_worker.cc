#include "commit_worker.h"

#include <cerrno>
#include <chrono>
#include <mutex>

#include "iptc_handle.h"
#include "transaction.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {
// Transactions on the nat table from this process, one at a time.
std::mutex table_mutex;
constexpr int kMaxAttempts = 8;
}  // namespace

CommitWorker::CommitWorker(Napi::Env env, Transaction tx, int lock_wait_ms)
    : Napi::AsyncWorker(env, "iptlb.commit"), deferred_(Napi::Promise::Deferred::New(env)), tx_(std::move(tx)), lock_wait_ms_(lock_wait_ms) {}

void CommitWorker::Execute() {
  const auto t0 = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> guard(table_mutex);
  FlockGuard lock;
  if (!lock.Acquire(XtablesLockPath(), lock_wait_ms_, false, &error_)) return;
  for (attempts_ = 1; attempts_ <= kMaxAttempts; attempts_++) {
    IptcHandle h("nat");
    if (!h.ok()) {
      int err = errno;
      error_ = NativeError::FromErrno("EKERNEL", err, std::string("iptc_init: ") + iptc_strerror(err) + " (errno " + std::to_string(err) + ") while reading table nat");
      return;
    }
    if (!ApplyTransaction(h.get(), tx_, &error_)) return;
    if (iptc_commit(h.get())) {
      error_ = NativeError{};
      break;
    }
    int err = errno;
    error_ = NativeError::FromErrno("EKERNEL", err, std::string("iptc_commit: ") + iptc_strerror(err) + " (errno " + std::to_string(err) + ") while committing table nat");
    if (err != EAGAIN) return;  // EAGAIN: the table changed under us; start again from a fresh copy
  }
  duration_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void CommitWorker::OnOK() {
  Napi::Env env = Env();
  if (!error_.empty()) {
    deferred_.Reject(ToJsError(env, error_).Value());
    return;
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("durationMs", duration_ms_);
  r.Set("attempts", attempts_);
  deferred_.Resolve(r);
}

}  // namespace iptlb
