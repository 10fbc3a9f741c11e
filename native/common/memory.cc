#include "memory.h"

#include <malloc.h>
#include <pthread.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "thread_priority.h"

namespace iptlb {
namespace {

// One background thread that calls malloc_trim once the work has been quiet for kQuiet: a trim walks
// malloc's free lists (about 0.3 ms at 1,000 profiles, 2 ms at 10,000, measured on a loaded 2-core
// machine), too much to pay on every commit of a burst, but a held instance should not keep a freed
// copy of the table, or a freed batch, for good.
constexpr auto kQuiet = std::chrono::milliseconds(250);

class Trimmer {
 public:
  Trimmer() {
    std::thread([this] { Loop(); }).detach();
  }
  void Poke() {
    std::lock_guard<std::mutex> g(m_);
    due_ = std::chrono::steady_clock::now() + kQuiet;
    pending_ = true;
    cv_.notify_one();
  }

 private:
  void Loop() {
    // Named, so it can be told apart (/proc/self/task/*/comm), and below the JavaScript thread's
    // priority for its whole life, as the workers are while they do kernel work.
    pthread_setname_np(pthread_self(), "iptlb-trim");
    BackgroundPriority background;
    std::unique_lock<std::mutex> l(m_);
    for (;;) {
      cv_.wait(l, [this] { return pending_; });
      while (std::chrono::steady_clock::now() < due_) cv_.wait_until(l, due_);  // a later Poke moves due_
      pending_ = false;
      l.unlock();
      malloc_trim(0);
      l.lock();
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::chrono::steady_clock::time_point due_{};
  bool pending_ = false;
};

}  // namespace

void ReleaseFreedMemory() {
  static Trimmer *trimmer = new Trimmer;  // never destroyed: its thread runs for the process's life
  trimmer->Poke();
}

void FixMallocThresholds() {
  mallopt(M_MMAP_THRESHOLD, 2 * 1024 * 1024);  // see memory.h
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
}

}  // namespace iptlb
