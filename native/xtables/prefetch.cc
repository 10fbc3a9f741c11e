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
  static JobThread *thread = new JobThread("iptlb-xt");  // never destroyed: it lives as long as the process
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

void PrefetchWorker::Work() {
  BackgroundPriority background;
  std::lock_guard<std::mutex> serial(LibiptcMutex());
  std::unique_ptr<Prefetched> &slot = Slot();
  if (release_) {
    prepared_ = slot != nullptr;
    slot.reset();
    return;
  }
  if (slot) {
    prepared_ = true;
    return;
  }
  FlockGuard lock;
  // No waiting: when someone else holds the lock, the commit will wait for it itself.
  if (!lock.TryAcquire(lock_path_, kXtablesLockOpen)) return;
  auto handle = std::make_unique<IptcHandle>("nat");
  if (!handle->ok()) return;  // the commit reports it, with its own context
  slot = std::make_unique<Prefetched>(lock.Detach(), std::move(handle));
  prepared_ = true;
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
