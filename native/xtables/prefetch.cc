#include "prefetch.h"

#include <unistd.h>

#include <mutex>

#include "pending.h"
#include "thread_priority.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {

std::unique_ptr<Prefetched> &Slot() {
  static std::unique_ptr<Prefetched> slot;  // on the x_tables job thread only (see prefetch.h)
  return slot;
}

}  // namespace

JobThread *XtablesThread() {
  static JobThread *thread = new JobThread();  // never destroyed: it lives as long as the process
  return thread;
}

Prefetched::~Prefetched() {
  handle.reset();  // the copy first, then the lock it was made under
  if (fd >= 0) close(fd);
}

std::unique_ptr<Prefetched> TakePrefetched() { return std::move(Slot()); }

bool PrefetchHoldsLock() { return Slot() != nullptr; }

PrefetchWorker::PrefetchWorker(Napi::Env env, bool release)
    : ThreadJob(env, release ? "iptlb.releasePrefetch" : "iptlb.prefetch"),
      release_(release),
      lock_path_(XtablesLockPath()) {}

bool PrefetchNow(const std::string &lock_path) {
  try {
    BackgroundPriority background;
    std::lock_guard<std::mutex> serial(LibiptcMutex());
    std::unique_ptr<Prefetched> &slot = Slot();
    if (slot) return true;
    FlockGuard lock;
    // No waiting: when someone else holds the lock, the commit will wait for it itself.
    if (!lock.TryAcquire(lock_path, kXtablesLockOpen)) return false;
    auto handle = std::make_unique<IptcHandle>("nat");
    if (!handle->ok()) return false;  // the commit reports it, with its own context
    slot = std::make_unique<Prefetched>(lock.Detach(), std::move(handle));
    return true;
  } catch (...) {
    return false;  // a failed prefetch only means the commit does the work itself
  }
}

void PrefetchWorker::Work() {
  if (!release_) {
    prepared_ = PrefetchNow(lock_path_);
    return;
  }
  BackgroundPriority background;
  std::lock_guard<std::mutex> serial(LibiptcMutex());
  std::unique_ptr<Prefetched> &slot = Slot();
  prepared_ = slot != nullptr;
  slot.reset();
}

void PrefetchWorker::OnOK() { Resolve(Napi::Boolean::New(Env(), prepared_)); }

Napi::Value Prefetch(const Napi::CallbackInfo &info) {
  return Pending(info.Env(), new PrefetchWorker(info.Env(), false),
                 [](PrefetchWorker *w) { w->Start(XtablesThread()); });
}

Napi::Value ReleasePrefetch(const Napi::CallbackInfo &info) {
  return Pending(info.Env(), new PrefetchWorker(info.Env(), true),
                 [](PrefetchWorker *w) { w->Start(XtablesThread()); });
}

}  // namespace iptlb
