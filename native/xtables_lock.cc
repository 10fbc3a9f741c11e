#include "xtables_lock.h"

#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace iptlb {
namespace {
constexpr const char *kNoAccess = "permission denied: no access to the lock file";
}  // namespace

std::string XtablesLockPath() {
  const char *env = std::getenv("XTABLES_LOCKFILE");
  return env && *env ? env : "/run/xtables.lock";
}

bool FlockGuard::Acquire(const std::string &path, int open_flags, int wait_ms, NativeError *error) {
  Release();
  int fd;
  do fd = open(path.c_str(), open_flags, 0600);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    *error = NativeError::FromErrno("ELOCK", err, "cannot open lock file " + path + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")", kNoAccess);
    return false;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  auto pause = std::chrono::microseconds(50);
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      fd_ = fd;
      return true;
    }
    const int err = errno;
    if (err != EWOULDBLOCK && err != EINTR) {
      close(fd);
      *error = NativeError::FromErrno("ELOCK", err, "cannot lock " + path + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")", kNoAccess);
      return false;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      close(fd);
      *error = NativeError{"ELOCK", EWOULDBLOCK, "another process holds the lock " + path + "; gave up after " + std::to_string(wait_ms) + " ms"};
      return false;
    }
    std::this_thread::sleep_for(pause);
    if (pause < std::chrono::milliseconds(5)) pause *= 2;
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
