#include "thread_priority.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

namespace iptlb {
namespace {

int WorkerNice() {
  static const int nice = [] {
    const char *v = std::getenv("IPTLB_WORKER_NICE");
    return v ? std::atoi(v) : 10;
  }();
  return nice;
}

}  // namespace

BackgroundPriority::BackgroundPriority() : tid_(static_cast<int>(syscall(SYS_gettid))) {
  const int target = WorkerNice();
  if (target <= 0) return;
  errno = 0;
  const int current = getpriority(PRIO_PROCESS, tid_);
  if (errno != 0 || current >= target) return;
  if (setpriority(PRIO_PROCESS, tid_, target) == 0) {
    saved_ = current;
    changed_ = true;
  }
}

BackgroundPriority::~BackgroundPriority() {
  if (changed_) setpriority(PRIO_PROCESS, tid_, saved_);
}

}  // namespace iptlb
