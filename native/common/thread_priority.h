// The priority of a worker thread while it does a commit's kernel work. On a machine with few cores,
// a libuv worker that copies and replaces a large table competes with the JavaScript thread for a
// core; the scheduler then makes the event loop wait for a time slice. Below the JS thread's
// priority, the worker yields to it instead: commits take the same CPU, the event loop stays free.
#pragma once

namespace iptlb {

class BackgroundPriority {
 public:
  // Raises this thread's nice value to kWorkerNice (leaves it alone when it is already that high).
  BackgroundPriority();
  // Puts the old value back. Without CAP_SYS_NICE (or a RLIMIT_NICE that allows it) the kernel
  // refuses to lower a nice value: the thread then stays at kWorkerNice, which only makes the pool's
  // other work (fs calls) yield to the JS thread too.
  ~BackgroundPriority();
  BackgroundPriority(const BackgroundPriority &) = delete;
  BackgroundPriority &operator=(const BackgroundPriority &) = delete;

 private:
  int tid_;
  int saved_ = 0;
  bool changed_ = false;
};

}  // namespace iptlb
