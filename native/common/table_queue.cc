#include "table_queue.h"

#include <condition_variable>
#include <mutex>
#include <set>

namespace iptlb {
namespace {

std::mutex queue_mutex;  // ticket + napi_queue_async_work, atomically
std::mutex turn_mutex;
std::condition_variable turn_cv;
uint64_t next_ticket = 0;
uint64_t serving = 0;
std::set<uint64_t> abandoned;

// With turn_mutex held: moves past `serving` and any abandoned tickets after it.
void AdvanceLocked() {
  serving++;
  while (abandoned.erase(serving)) serving++;
  turn_cv.notify_all();
}

}  // namespace

void TableTurn::Queue(Napi::AsyncWorker *worker) {
  std::lock_guard<std::mutex> q(queue_mutex);
  {
    std::lock_guard<std::mutex> t(turn_mutex);
    ticket_ = next_ticket++;
    has_ticket_ = true;
  }
  try {
    worker->Queue();
  } catch (...) {  // never queued: give the ticket up now (the worker will never run nor be deleted)
    std::lock_guard<std::mutex> t(turn_mutex);
    if (serving == ticket_)
      AdvanceLocked();
    else
      abandoned.insert(ticket_);
    has_ticket_ = false;
    throw;
  }
}

TableTurn::Held TableTurn::Enter() {
  std::unique_lock<std::mutex> l(turn_mutex);
  turn_cv.wait(l, [this] { return serving == ticket_; });
  entered_ = true;
  return Held(this);
}

TableTurn::Held::~Held() {
  std::lock_guard<std::mutex> l(turn_mutex);
  if (!turn_->left_) {
    turn_->left_ = true;
    AdvanceLocked();
  }
}

TableTurn::~TableTurn() {
  if (!has_ticket_ || entered_) return;
  std::lock_guard<std::mutex> l(turn_mutex);
  if (serving == ticket_)
    AdvanceLocked();
  else
    abandoned.insert(ticket_);
}

}  // namespace iptlb
