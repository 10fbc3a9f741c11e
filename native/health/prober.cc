// See prober.h.
#include "prober.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

namespace iptlb {

struct Job {
  uint32_t id;
  uint32_t timeout_ms;
  sockaddr_storage addr;
  socklen_t addr_len;
};

struct ProberState {
  // Shared between the JS thread and the probe thread, under mu.
  std::mutex mu;
  std::vector<Job> incoming;
  std::vector<int32_t> results;  // (id, errno) pairs not yet handed to JS
  bool call_scheduled = false;
  bool stop = false;
  // The probe thread's.
  int epfd = -1;
  int wakefd = -1;
  std::thread thread;
  // The JS thread's.
  Napi::ThreadSafeFunction tsfn;
  size_t js_pending = 0;  // probes handed over whose result JS has not had yet
  bool referenced = false;
  bool closed = false;
};

namespace {

constexpr uint64_t kWake = UINT64_MAX;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

struct Slot {
  int fd = -1;
  uint32_t id = 0;
  uint32_t gen = 0;
  uint64_t deadline = 0;
};

struct Deadline {
  uint64_t at;
  uint32_t slot;
  uint32_t gen;
  bool operator>(const Deadline &o) const { return at > o.at; }
};

// The probe thread: starts the jobs handed over, finishes them on their socket's event or their
// deadline, and hands the results over in one batch per loop turn.
class Loop {
 public:
  explicit Loop(std::shared_ptr<ProberState> s) : s_(std::move(s)) {}

  void Run() {
    std::vector<epoll_event> evs(1024);
    std::vector<Job> jobs;
    for (;;) {
      int wait = -1;
      while (!deadlines_.empty()) {
        const Deadline &d = deadlines_.top();
        if (slots_[d.slot].fd < 0 || slots_[d.slot].gen != d.gen) {
          deadlines_.pop();  // finished before its deadline
          continue;
        }
        const uint64_t now = NowNs();
        wait = d.at <= now ? 0 : static_cast<int>((d.at - now + 999999) / 1000000);
        break;
      }
      const int n = epoll_wait(s_->epfd, evs.data(), static_cast<int>(evs.size()), wait);
      if (n < 0 && errno != EINTR) break;
      for (int i = 0; i < n; i++) {
        const uint64_t key = evs[i].data.u64;
        if (key == kWake) {
          uint64_t v;
          (void)!read(s_->wakefd, &v, sizeof v);
          std::lock_guard<std::mutex> g(s_->mu);
          if (s_->stop) {
            CloseAll();
            return;
          }
          jobs.swap(s_->incoming);
          continue;
        }
        const uint32_t slot = static_cast<uint32_t>(key >> 32);
        const uint32_t gen = static_cast<uint32_t>(key);
        if (slot >= slots_.size() || slots_[slot].fd < 0 || slots_[slot].gen != gen) continue;
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(slots_[slot].fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err == 0 && !(evs[i].events & EPOLLOUT)) err = ECONNRESET;
        Finish(slot, err);
      }
      for (const Job &j : jobs) Start(j);
      jobs.clear();
      const uint64_t now = NowNs();
      while (!deadlines_.empty() && deadlines_.top().at <= now) {
        const Deadline d = deadlines_.top();
        deadlines_.pop();
        if (slots_[d.slot].fd >= 0 && slots_[d.slot].gen == d.gen) Finish(d.slot, ETIMEDOUT);
      }
      if (!done_.empty()) Deliver();
    }
    CloseAll();
  }

 private:
  void Start(const Job &j) {
    const int fd = socket(j.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return Result(j.id, errno);
    // Closed with an RST: no FIN exchange, no TIME_WAIT left behind on either side.
    const linger lg{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(fd, reinterpret_cast<const sockaddr *>(&j.addr), j.addr_len) == 0) {
      close(fd);
      return Result(j.id, 0);
    }
    if (errno != EINPROGRESS) {
      const int err = errno;
      close(fd);
      return Result(j.id, err);
    }
    uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    Slot &s = slots_[slot];
    s.fd = fd;
    s.id = j.id;
    s.gen++;
    s.deadline = NowNs() + static_cast<uint64_t>(j.timeout_ms) * 1000000u;
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = (static_cast<uint64_t>(slot) << 32) | s.gen;
    if (epoll_ctl(s_->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
      const int err = errno;
      close(fd);
      s.fd = -1;
      free_.push_back(slot);
      return Result(j.id, err);
    }
    deadlines_.push({s.deadline, slot, s.gen});
  }

  void Finish(uint32_t slot, int err) {
    Slot &s = slots_[slot];
    close(s.fd);  // also leaves the epoll set
    s.fd = -1;
    free_.push_back(slot);
    Result(s.id, err);
  }

  void Result(uint32_t id, int err) {
    done_.push_back(static_cast<int32_t>(id));
    done_.push_back(err);
  }

  // One threadsafe-function call per batch: a call already queued takes these results too.
  void Deliver() {
    bool call;
    {
      std::lock_guard<std::mutex> g(s_->mu);
      s_->results.insert(s_->results.end(), done_.begin(), done_.end());
      call = !s_->call_scheduled;
      s_->call_scheduled = true;
    }
    done_.clear();
    if (!call) return;
    std::shared_ptr<ProberState> st = s_;
    const napi_status r = s_->tsfn.NonBlockingCall([st](Napi::Env env, Napi::Function fn) {
      std::vector<int32_t> res;
      {
        std::lock_guard<std::mutex> g(st->mu);
        res.swap(st->results);
        st->call_scheduled = false;
      }
      if (st->closed || res.empty()) return;
      const size_t n = res.size() / 2;
      st->js_pending = st->js_pending > n ? st->js_pending - n : 0;
      if (st->js_pending == 0 && st->referenced) {
        st->tsfn.Unref(env);
        st->referenced = false;
      }
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, res.size() * sizeof(int32_t));
      memcpy(ab.Data(), res.data(), res.size() * sizeof(int32_t));
      fn.Call({Napi::Int32Array::New(env, res.size(), ab, 0)});
    });
    if (r != napi_ok) {
      std::lock_guard<std::mutex> g(s_->mu);
      s_->call_scheduled = false;  // the queue is closing: the environment is going away
    }
  }

  void CloseAll() {
    for (Slot &s : slots_)
      if (s.fd >= 0) {
        close(s.fd);
        s.fd = -1;
      }
  }

  std::shared_ptr<ProberState> s_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  std::priority_queue<Deadline, std::vector<Deadline>, std::greater<Deadline>> deadlines_;
  std::vector<int32_t> done_;
};

uint32_t U32(const uint8_t *p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }

}  // namespace

Napi::Function HealthProber::Class(Napi::Env env) {
  return DefineClass(env, "HealthProber",
                     {InstanceMethod("probe", &HealthProber::Probe), InstanceMethod("close", &HealthProber::Close)});
}

HealthProber::HealthProber(const Napi::CallbackInfo &info) : Napi::ObjectWrap<HealthProber>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) throw Napi::TypeError::New(env, "onResults: must be a function");
  auto st = std::make_shared<ProberState>();
  st->epfd = epoll_create1(EPOLL_CLOEXEC);
  st->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (st->epfd < 0 || st->wakefd < 0) {
    const int err = errno;
    if (st->epfd >= 0) close(st->epfd);
    if (st->wakefd >= 0) close(st->wakefd);
    throw Napi::Error::New(env, std::string("health prober: ") + strerror(err));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWake;
  epoll_ctl(st->epfd, EPOLL_CTL_ADD, st->wakefd, &ev);
  st->tsfn = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "iptlb.healthProber", 0, 1);
  st->tsfn.Unref(env);  // idle, the prober does not keep the process alive
  st->thread = std::thread([st] { Loop(st).Run(); });
  state_ = std::move(st);
}

HealthProber::~HealthProber() { Stop(); }

void HealthProber::Stop() {
  if (!state_ || state_->closed) return;
  state_->closed = true;
  {
    std::lock_guard<std::mutex> g(state_->mu);
    state_->stop = true;
  }
  const uint64_t one = 1;
  (void)!write(state_->wakefd, &one, sizeof one);
  if (state_->thread.joinable()) state_->thread.join();
  close(state_->epfd);
  close(state_->wakefd);
  state_->tsfn.Release();
}

Napi::Value HealthProber::Close(const Napi::CallbackInfo &info) {
  if (state_ && !state_->closed && state_->referenced) {
    state_->tsfn.Unref(info.Env());
    state_->referenced = false;
  }
  Stop();
  return info.Env().Undefined();
}

Napi::Value HealthProber::Probe(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (state_->closed) throw Napi::Error::New(env, "health prober: closed");
  if (info.Length() < 1 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, "jobs: must be a Uint8Array");
  Napi::Uint8Array a = info[0].As<Napi::Uint8Array>();
  if (a.ByteLength() % kJobBytes != 0)
    throw Napi::TypeError::New(env, "jobs: length must be a multiple of " + std::to_string(kJobBytes));
  const size_t n = a.ByteLength() / kJobBytes;
  std::vector<Job> jobs(n);
  for (size_t i = 0; i < n; i++) {
    const uint8_t *p = a.Data() + i * kJobBytes;
    const std::string at = "jobs[" + std::to_string(i) + "]";
    Job &j = jobs[i];
    j.id = U32(p);
    j.timeout_ms = U32(p + 4);
    const unsigned port = p[8] | (p[9] << 8);
    if (j.timeout_ms < 1 || j.timeout_ms > 3600000)
      throw Napi::TypeError::New(env, at + ".timeoutMs: must be from 1 to 3600000");
    if (port < 1) throw Napi::TypeError::New(env, at + ".port: must be from 1 to 65535");
    memset(&j.addr, 0, sizeof j.addr);
    if (p[10] == 4) {
      auto *sin = reinterpret_cast<sockaddr_in *>(&j.addr);
      sin->sin_family = AF_INET;
      sin->sin_port = htons(static_cast<uint16_t>(port));
      memcpy(&sin->sin_addr, p + 12, 4);
      j.addr_len = sizeof *sin;
    } else if (p[10] == 6) {
      auto *sin6 = reinterpret_cast<sockaddr_in6 *>(&j.addr);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_port = htons(static_cast<uint16_t>(port));
      memcpy(&sin6->sin6_addr, p + 12, 16);
      j.addr_len = sizeof *sin6;
    } else {
      throw Napi::TypeError::New(env, at + ".family: must be 4 or 6");
    }
  }
  if (n == 0) return env.Undefined();
  if (!state_->referenced) {
    state_->tsfn.Ref(env);  // results are due: keep the process alive until they are in
    state_->referenced = true;
  }
  state_->js_pending += n;
  bool wake;
  {
    std::lock_guard<std::mutex> g(state_->mu);
    wake = state_->incoming.empty();
    state_->incoming.insert(state_->incoming.end(), jobs.begin(), jobs.end());
  }
  if (wake) {
    const uint64_t one = 1;
    (void)!write(state_->wakefd, &one, sizeof one);
  }
  return env.Undefined();
}

}  // namespace iptlb
