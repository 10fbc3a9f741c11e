// Speculative preparation of the next legacy (ipv4) commit. Under churn every commit starts with the same
// work: take the xtables lock, then copy the nat table out of the kernel and parse it (iptc_init,
// about 40 % of a commit's kernel time with 200 profiles). prefetch() does that on a worker thread
// while the JavaScript thread is still planning the next batch; the next CommitWorker takes the
// prepared handle and its lock instead of making its own. release() gives both back when no commit
// followed. Holding the xtables lock keeps every well-behaved writer out, so the copy stays current;
// a writer that ignores the lock makes iptc_commit fail with EAGAIN, and the commit starts again from
// a fresh copy as it always does.
//
// The slot is touched only on the x_tables job thread (XtablesThread) and under LibiptcMutex, so at
// most one operation sees it at a time; JavaScript orders prefetches with commits and reads.
#pragma once
#include <napi.h>

#include <memory>

#include "iptc_handle.h"
#include "job_thread.h"

namespace iptlb {

// A prepared nat-table handle and the xtables lock it was made under (closed by the destructor).
struct Prefetched {
  Prefetched(int lock_fd, std::unique_ptr<IptcHandle> h) : fd(lock_fd), handle(std::move(h)) {}
  ~Prefetched();
  Prefetched(const Prefetched &) = delete;
  Prefetched &operator=(const Prefetched &) = delete;
  int fd;
  std::unique_ptr<IptcHandle> handle;
};

// Removes and returns the prepared handle, null when there is none. On the x_tables job thread only.

// The one thread all x_tables work runs on (commit, read, prefetch): a commit waiting for the
// xtables lock holds it, never a libuv pool thread.
JobThread *XtablesThread();
std::unique_ptr<Prefetched> TakePrefetched();

// Whether a prepared handle, and with it the xtables lock, is held (an ipv6 commit then works under
// that lock rather than wait for it). On the x_tables job thread only.
bool PrefetchHoldsLock();

class PrefetchWorker : public ThreadJob {
 public:
  // `release`: drop a prepared handle (and its lock) instead of making one.
  PrefetchWorker(Napi::Env env, bool release);

 protected:
  void Work() override;  // no N-API in here
  void OnOK() override;

 private:
  bool release_;
  std::string lock_path_;
  bool prepared_ = false;
};

// prefetch(): Promise<boolean> (false when the lock was busy or the table unreadable: the commit
// then does the work itself); releasePrefetch(): Promise<boolean> (whether there was one).
Napi::Value Prefetch(const Napi::CallbackInfo &info);
Napi::Value ReleasePrefetch(const Napi::CallbackInfo &info);

}  // namespace iptlb
