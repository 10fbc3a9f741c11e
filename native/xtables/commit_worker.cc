#include "commit_worker.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "iptc_handle.h"
#include "ipset.h"
#include "prefetch.h"
#include "read_worker.h"
#include "thread_priority.h"
#include "transaction.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {
// iptc_commit fails with EAGAIN when the table changed between iptc_init and the commit (a writer
// that does not take the xtables lock); we start again from a fresh copy, this many times at most.
constexpr int kMaxAttempts = 8;

// One thread that decodes the plans' JSON text, in the order the commits were made. Under churn the
// x_tables job thread is the busy one (a commit, then the prefetch of the next: both kernel work) and
// the JS thread waits for it; decoding the next plan here, while the job thread still copies the table
// out, takes it off the path between two commits (about 0.15 ms of 64 updates at 200 profiles). The
// job thread decodes a plan itself when its turn comes before the decoder began it (a decoder starved
// of CPU on a busy host costs no waiting). At the workers' background priority (thread_priority.h).
class Decoder {
 public:
  Decoder() {
    std::thread([this] { Loop(); }).detach();
  }
  void Post(std::shared_ptr<PlanDecode> job) {
    {
      std::lock_guard<std::mutex> l(m_);
      queue_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    pthread_setname_np(pthread_self(), "iptlb-decode");
    BackgroundPriority background;
    for (;;) {
      std::shared_ptr<PlanDecode> job;
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [this] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->Run();
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<PlanDecode>> queue_;
};

Decoder &PlanDecoder() {
  static Decoder *decoder = new Decoder;  // never destroyed: its thread runs for the process's life
  return *decoder;
}

}  // namespace

CommitWorker::CommitWorker(Napi::Env env, std::string json, int lock_wait_ms, int append_fd, std::string append_data)
    : ThreadJob(env, "iptlb.commit"),
      decode_(std::make_shared<PlanDecode>(std::move(json))),
      lock_path_(XtablesLockPath()),
      lock_wait_ms_(lock_wait_ms),
      append_fd_(append_fd),
      append_data_(std::move(append_data)) {
  PlanDecoder().Post(decode_);
}

PlanDecode::PlanDecode(std::string json) : text_(std::move(json)), result_(promise_.get_future()) {}

bool PlanDecode::Run() {
  if (claimed_.exchange(true)) return false;  // the job thread took it
  try {
    promise_.set_value(TransactionFromJson(std::move(text_)));
  } catch (...) {
    promise_.set_exception(std::current_exception());
  }
  return true;
}

Transaction PlanDecode::Take() {
  if (!claimed_.exchange(true)) return TransactionFromJson(std::move(text_));  // not begun: here
  return result_.get();  // begun (or done) on the decoder: its result, or what it threw
}

void CommitWorker::Work() {
  struct TrimAfter {
    ~TrimAfter() { ReleaseFreedMemory(); }  // last, after the lock is given back: the table copies are freed
  } trim;
  Commit();
  // The kernel holds the change: now its record (the caller's O_DSYNC descriptor: durable on return).
  // At the thread's own priority, not the commit's background one: the JS thread only waits for it.
  // A failure is not the commit's: it goes back in the result, and the caller undoes the change.
  while (append_fd_ >= 0 && appended_ < append_data_.size()) {
    const ssize_t n = write(append_fd_, append_data_.data() + appended_, append_data_.size() - appended_);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      append_errno_ = n < 0 ? errno : EIO;
      break;
    }
    appended_ += static_cast<size_t>(n);
  }
}

void CommitWorker::Commit() {
  BackgroundPriority background;
  const auto t0 = std::chrono::steady_clock::now();
  tx_ = decode_->Take();  // throws EPLAN, before any lock or table is touched
  std::lock_guard<std::mutex> serial(LibiptcMutex());
  // A handle prefetch() prepared (ipv4 only) holds the xtables lock already (see prefetch.h). An ipv4
  // commit takes both over. An ipv6 commit needs the same lock (ip6tables takes the same file), which
  // a second open+flock of ours would wait for in vain: it works under the held lock and leaves the
  // prepared handle (still current: nothing else can write while the lock is held) to the ipv4 commit.
  const bool v6 = tx_.family == Family::kIpv6;
  std::unique_ptr<Prefetched> pre = v6 ? nullptr : TakePrefetched();
  FlockGuard lock;
  if (!pre && !PrefetchHoldsLock()) {
    try {
      lock.Acquire(lock_path_, kXtablesLockOpen, lock_wait_ms_);
    } catch (NativeFailure &f) {
      if (f.error.code == "EPERM") f.error.message += "; changing netfilter rules needs root (CAP_NET_ADMIN)";
      throw;
    }
  }
  if (v6)
    Run<Ip6Tables>(nullptr);
  else
    Run<Ip4Tables>(pre ? pre->handle.get() : nullptr);
  pre.reset();
  lock.Release();
  duration_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

template <typename F>
void CommitWorker::Run(XtHandle<F> *prepared) {
  // The gate's set (src/gate.ts for the order): the elements of the transaction's dispatch rules are
  // added before the commit that installs their rules (one netlink message on the thread's kept
  // socket; the set's index is looked up only when a gate is inserted); stale elements are deleted,
  // or the set destroyed when no rule behind a gate remains, after it. A set that had to be created
  // (it did not exist) is filled with every dispatch rule's element, not only the transaction's.
  GateWork gate;
  for (attempts_ = 1;; attempts_++) {
    std::unique_ptr<XtHandle<F>> fresh;
    if (attempts_ > 1 || !prepared) fresh = std::make_unique<XtHandle<F>>("nat");
    XtHandle<F> &h = fresh ? *fresh : *prepared;
    if (!h.ok()) Throw(h.error());
    ApplyTransaction<F>(h.get(), tx_, &gate, &originals_);
    bool no_set = false;
    ChangeGateSet(F::kFamily, gate.created ? LiveGateElements<F>(h.get()) : gate.adds, false, &no_set);
    if (no_set) {
      EnsureGateSet(F::kFamily);
      gate.created = true;
      ChangeGateSet(F::kFamily, LiveGateElements<F>(h.get()), false);
    }
    // The transaction's strays (`iptlb sync`) that no dispatch rule of the table it commits selects.
    std::vector<SetElement> stale = gate.stale;
    if (gate.need_set && !tx_.strays.empty()) {
      const std::vector<SetElement> live = LiveGateElements<F>(h.get());
      for (const Rule &r : tx_.strays) {
        SetElement el;
        if (ElementOfRule(r, &el) && !std::binary_search(live.begin(), live.end(), el) &&
            std::find(stale.begin(), stale.end(), el) == stale.end())
          stale.push_back(el);
      }
    }
    if (F::Commit(h.get())) {
      // The rules are committed. A failure to tidy the set is not the commit's: an element too many
      // only sends its packets through the dispatch chain and back; the next commit tidies again.
      try {
        if (gate.need_set)
          ChangeGateSet(F::kFamily, stale, true);
        else
          DestroyGateSet(F::kFamily);
      } catch (const NativeFailure &) {
      }
      return;
    }
    const int err = errno;
    if (err != EAGAIN || attempts_ == kMaxAttempts) {
      std::string context =
          F::kFamily == Family::kIpv6 ? " while committing table nat (ip6tables)" : " while committing table nat";
      if (err == EAGAIN) context += " (the table kept changing: " + std::to_string(attempts_) + " attempts)";
      Throw(XtError<F>(std::string(F::kLibrary) + "_commit", err, context));
    }
  }
}

void CommitWorker::OnOK() {
  Napi::Env env = Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("durationMs", duration_ms_);
  r.Set("attempts", attempts_);
  if (append_fd_ >= 0) {
    Napi::Object a = Napi::Object::New(env);
    a.Set("written", static_cast<double>(appended_));
    a.Set("errno", append_errno_);
    r.Set("appended", a);
  }
  if (!originals_.empty()) {
    Napi::Array o = Napi::Array::New(env, originals_.size());
    for (uint32_t i = 0; i < originals_.size(); i++) {
      Napi::Object j = Napi::Object::New(env);
      j.Set("chain", originals_[i].chain);
      j.Set("rule", RuleToJs(env, tx_.family, originals_[i].rule));
      o.Set(i, j);
    }
    r.Set("originals", o);
  }
  Resolve(r);
}

}  // namespace iptlb
