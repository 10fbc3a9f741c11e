// An exclusive flock(2) on a file, taken with a bounded wait and released by the destructor (and by
// the kernel when the process dies). Used for the xtables lock (as `iptables -w` takes it) and for
// iptlb's state-file lock.
#pragma once
#include <string>

#include "errors.h"

namespace iptlb {

class FlockGuard {
 public:
  FlockGuard() = default;
  ~FlockGuard() { Release(); }
  FlockGuard(const FlockGuard &) = delete;
  FlockGuard &operator=(const FlockGuard &) = delete;

  // Opens `path` (O_CREAT, 0600; O_NOFOLLOW when `no_follow`) and waits up to `wait_ms` for the lock.
  bool Acquire(const std::string &path, int wait_ms, bool no_follow, NativeError *error);
  void Release();
  // Gives the locked descriptor to the caller, who must close it.
  int Detach();

 private:
  int fd_ = -1;
};

// The xtables lock path: $XTABLES_LOCKFILE, else /run/xtables.lock (as iptables 1.8).
std::string XtablesLockPath();

}  // namespace iptlb
