// An exclusive flock(2) on a file, taken with a bounded wait (a blocking flock interrupted by a
// per-thread timer at the time limit, see xtables_lock.cc; on the calling — worker — thread) and
// released by the destructor (and by the kernel when the process dies). Used for the xtables lock (as `iptables -w`
// takes it) and for iptlb's state-file lock.
#pragma once
#include <fcntl.h>

#include <string>

#include "errors.h"

namespace iptlb {

// How iptables 1.8.9 (xshared.c) opens its lock file: open(XT_LOCK_NAME, O_CREAT, 0600).
constexpr int kXtablesLockOpen = O_RDONLY | O_CREAT | O_CLOEXEC;
// The state-file lock: never through a symlink.
constexpr int kStateFileLockOpen = O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC;

class FlockGuard {
 public:
  FlockGuard() = default;
  ~FlockGuard() { Release(); }
  FlockGuard(const FlockGuard &) = delete;
  FlockGuard &operator=(const FlockGuard &) = delete;

  // Opens `path` (`open_flags`, mode 0600) and waits up to `wait_ms` for LOCK_EX. Throws NativeFailure:
  // ELOCK on timeout or an unusable file, EPERM when permission is denied.
  void Acquire(const std::string &path, int open_flags, int wait_ms);
  // Without waiting; false when the lock is busy or cannot be taken (TryAcquireOrThrow's failures too).
  bool TryAcquire(const std::string &path, int open_flags);
  // Without waiting; false when the lock is busy, NativeFailure as Acquire when the file cannot be
  // opened or locked for another reason.
  bool TryAcquireOrThrow(const std::string &path, int open_flags);
  void Release();
  // Gives the locked descriptor to the caller, who must close it.
  int Detach();

 private:
  int fd_ = -1;
};

// The xtables lock path: $XTABLES_LOCKFILE, else /run/xtables.lock (as iptables 1.8).
std::string XtablesLockPath();

}  // namespace iptlb
