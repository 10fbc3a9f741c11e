// Call-order serialisation of the addon's work on the nat table. Each commit/read takes a ticket on
// the JS thread when it is queued; its Execute() waits for its turn, so transactions reach the kernel
// one at a time and in the order JavaScript called commit()/read() — a std::mutex alone would
// serialise them but let a later call overtake an earlier one. The libuv thread pool dequeues work
// in FIFO order and tickets are taken in queueing order (Queue() below holds a process-wide lock
// across both, for several Node environments), so the holder of the next ticket is always running.
#pragma once
#include <napi.h>

#include <cstdint>

namespace iptlb {

class TableTurn {
 public:
  TableTurn() = default;
  ~TableTurn();  // a ticket whose work never ran is given up, so later ones are not stuck
  TableTurn(const TableTurn &) = delete;
  TableTurn &operator=(const TableTurn &) = delete;

  // Takes a ticket and queues `worker`, atomically with respect to other environments.
  void Queue(Napi::AsyncWorker *worker);

  // In Execute(): waits for this ticket's turn; the returned guard ends the turn.
  class Held {
   public:
    explicit Held(TableTurn *t) : turn_(t) {}
    ~Held();
    Held(const Held &) = delete;
    Held &operator=(const Held &) = delete;

   private:
    TableTurn *turn_;
  };
  [[nodiscard]] Held Enter();

 private:
  uint64_t ticket_ = 0;
  bool has_ticket_ = false;
  bool entered_ = false;
  bool left_ = false;
};

}  // namespace iptlb
