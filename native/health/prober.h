// The health checks' TCP prober (issue 15): one dedicated thread with one epoll set drives every
// probe — a non-blocking connect() from the process's own network namespace, success when the
// socket turns writable with SO_ERROR 0, closed at once with SO_LINGER 0 (an RST: no FIN exchange,
// no TIME_WAIT on either side) — and enforces the timeouts itself. JavaScript hands over a batch of
// due probes per scheduler tick (one call) and gets the results back in batches (one
// napi_threadsafe_function call per batch, however many probes finished since the last one).
//
//   new HealthProber(onResults: (results: Int32Array) => void)
//   prober.probe(jobs: Uint8Array): void     jobs of kJobBytes bytes each, see below
//   prober.close(): void                     stops the thread; probes in flight are dropped
//
// A job: u32 id, u32 timeoutMs (1..3600000), u16 port (1..65535), u8 family (4 or 6), u8 0,
// 16 address bytes (IPv4: the first 4) — little-endian integers, network-order address. Results:
// pairs of (id, errno), errno 0 for success, ETIMEDOUT for a timeout. While probes are in flight the
// prober keeps the event loop alive; idle, it does not.
#pragma once
#include <napi.h>

#include <memory>

namespace iptlb {

constexpr size_t kJobBytes = 28;

struct ProberState;

class HealthProber : public Napi::ObjectWrap<HealthProber> {
 public:
  static Napi::Function Class(Napi::Env env);
  explicit HealthProber(const Napi::CallbackInfo &info);
  ~HealthProber() override;

 private:
  Napi::Value Probe(const Napi::CallbackInfo &info);
  Napi::Value Close(const Napi::CallbackInfo &info);
  void Stop();
  std::shared_ptr<ProberState> state_;
};

}  // namespace iptlb
