#include "xtables_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace iptlb {

std::string XtablesLockPath() {
  const char *env = std::getenv("XTABLES_LOCKFILE");
  return env && *env ? env : "/run/xtables.lock";
}

bool FlockGuard::Acquire(const std::string &path, int wait_ms, bool no_follow, NativeError *error) {
  Release();
  int flags = O_RDWR | O_CREAT | O_CLOEXEC | (no_follow ? O_NOFOLLOW : 0);
  int fd = open(path.c_str(), flags, 0600);
  if (fd < 0 && errno == EISDIR) fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = NativeError::FromErrno("ELOCK", errno, "cannot open lock file " + path + ": " + std::strerror(errno));
    return false;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  auto pause = std::chrono::microseconds(50);
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      fd_ = fd;
      return true;
    }
    if (errno != EWOULDBLOCK && errno != EINTR) {
      int err = errno;
      close(fd);
      *error = NativeError::FromErrno("ELOCK", err, "cannot lock " + path + ": " + std::strerror(err));
      return false;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      close(fd);
      error->code = "ELOCK";
      error->err = EWOULDBLOCK;
      error->message = "another process holds " + path + "; gave up after " + std::to_string(wait_ms) + " ms";
      return false;
    }
    std::this_thread::sleep_for(pause);
    if (pause < std::chrono::milliseconds(10)) pause *= 2;
  }
}

void FlockGuard::Release() {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
}

int FlockGuard::Detach() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

}  // namespace iptlb
