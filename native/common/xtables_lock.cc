#include "xtables_lock.h"

#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>

namespace iptlb {
namespace {
constexpr const char *kNoAccess = "permission denied: no access to the lock file";

// The wait for a held lock is a blocking flock(LOCK_EX): the kernel wakes it the moment the holder
// lets go, so it takes its turn before a writer that re-takes the lock in a loop can start its next
// round (polling with sleeps lost most of those races). Its time limit is a per-thread timer whose
// signal interrupts the flock (EINTR), as `iptables -w` does with alarm(). The signal is one of the
// real-time ones, with a handler that does nothing, sent only to the waiting thread.
int WakeSignal() { return SIGRTMIN + 4; }

void NoOp(int) {}

bool InstallWakeHandler() {
  static bool ok = false;
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = NoOp;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: the flock returns EINTR
    ok = sigaction(WakeSignal(), &sa, nullptr) == 0;
  });
  return ok;
}

// A timer that signals this thread; false when one cannot be made (then the caller polls).
class ThreadTimer {
 public:
  ThreadTimer() {
    if (!InstallWakeHandler()) return;
    struct sigevent sev;
    std::memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = WakeSignal();
    sev._sigev_un._tid = static_cast<pid_t>(syscall(SYS_gettid));
    ok_ = timer_create(CLOCK_MONOTONIC, &sev, &timer_) == 0;
    if (!ok_) return;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, WakeSignal());
    pthread_sigmask(SIG_UNBLOCK, &set, &old_);
  }
  ~ThreadTimer() {
    if (!ok_) return;
    timer_delete(timer_);
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  bool ok() const { return ok_; }
  void Arm(std::chrono::nanoseconds in) {
    struct itimerspec t;
    std::memset(&t, 0, sizeof(t));
    const long long ns = std::max<long long>(in.count(), 1000);
    t.it_value.tv_sec = ns / 1000000000;
    t.it_value.tv_nsec = ns % 1000000000;
    timer_settime(timer_, 0, &t, nullptr);
  }
  void Disarm() {
    struct itimerspec t;
    std::memset(&t, 0, sizeof(t));
    timer_settime(timer_, 0, &t, nullptr);
  }

 private:
  bool ok_ = false;
  timer_t timer_{};
  sigset_t old_{};
};

}  // namespace

std::string XtablesLockPath() {
  const char *env = std::getenv("XTABLES_LOCKFILE");
  return env && *env ? env : "/run/xtables.lock";
}

namespace {

// Opens the lock file (mode 0600 when created); NativeFailure ELOCK (EPERM for a permission) when it cannot.
int OpenLockFile(const std::string &path, int open_flags) {
  int fd;
  do fd = open(path.c_str(), open_flags, 0600);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    Throw(NativeError::FromErrno(
        "ELOCK", err,
        "cannot open lock file " + path + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")",
        kNoAccess));
  }
  return fd;
}

}  // namespace

void FlockGuard::Acquire(const std::string &path, int open_flags, int wait_ms) {
  Release();
  const int fd = OpenLockFile(path, open_flags);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
    fd_ = fd;
    return;
  }
  // IPTLB_XTLOCK_WAIT=poll: the wait of earlier versions (LOCK_NB polled with a backoff from 50 us to
  // 5 ms), kept for the side-by-side rows of `npm run bench -- lockwait` only.
  const char *mode = std::getenv("IPTLB_XTLOCK_WAIT");
  const bool backoff = mode && std::strcmp(mode, "poll") == 0;
  if (wait_ms > 0 && errno == EWOULDBLOCK && !backoff) {
    ThreadTimer timer;
    while (timer.ok()) {
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= std::chrono::nanoseconds(0)) break;
      timer.Arm(std::chrono::duration_cast<std::chrono::nanoseconds>(left));
      const int r = flock(fd, LOCK_EX);
      const int err = errno;
      timer.Disarm();
      if (r == 0) {
        fd_ = fd;
        return;
      }
      if (err != EINTR) {
        close(fd);
        Throw(NativeError::FromErrno(
            "ELOCK", err, "cannot lock " + path + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")",
            kNoAccess));
      }
      // EINTR: the time limit, or another signal; the loop looks at the clock.
    }
  }
  // No timer (or no wait): poll at a fine fixed interval.
  auto pause = std::chrono::microseconds(backoff ? 50 : 200);
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      fd_ = fd;
      return;
    }
    const int err = errno;
    if (err != EWOULDBLOCK && err != EINTR) {
      close(fd);
      Throw(NativeError::FromErrno(
          "ELOCK", err, "cannot lock " + path + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")",
          kNoAccess));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      close(fd);
      Throw(
          NativeError{"ELOCK", EWOULDBLOCK,
                      "another process holds the lock " + path + "; gave up after " + std::to_string(wait_ms) + " ms"});
    }
    std::this_thread::sleep_for(pause);
    if (backoff && pause < std::chrono::milliseconds(5)) pause *= 2;
  }
}

bool FlockGuard::TryAcquireOrThrow(const std::string &path, int open_flags) {
  Release();
  const int fd = OpenLockFile(path, open_flags);
  int r;
  do r = flock(fd, LOCK_EX | LOCK_NB);
  while (r != 0 && errno == EINTR);
  if (r == 0) {
    fd_ = fd;
    return true;
  }
  const int err = errno;
  close(fd);
  if (err == EWOULDBLOCK) return false;
  Throw(NativeError::FromErrno(
      "ELOCK", err, "cannot lock " + path + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")",
      kNoAccess));
}

bool FlockGuard::TryAcquire(const std::string &path, int open_flags) {
  try {
    return TryAcquireOrThrow(path, open_flags);
  } catch (const NativeFailure &) {
    return false;
  }
}

void FlockGuard::Release() {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
}

int FlockGuard::Detach() {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

}  // namespace iptlb
