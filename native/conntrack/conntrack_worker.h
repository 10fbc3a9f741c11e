// conntrackFlush(flows): the JS entry point of the conntrack cleanup (native/conntrack.h). The
// flows are checked and converted to plain C++ data on the JS thread (a TypeError with code EINVAL
// naming the field); Execute() only talks netlink; OnOK() builds the per-flow counts.
#pragma once
#include <napi.h>

#include <vector>

#include "conntrack.h"
#include "promise_worker.h"

namespace iptlb {

class ConntrackFlushWorker : public PromiseWorker {
 public:
  ConntrackFlushWorker(Napi::Env env, std::vector<ct::Flow> flows, bool kernel_filter);

 protected:
  void Work() override;  // no N-API in here
  void OnOK() override;

 private:
  std::vector<ct::Flow> flows_;
  bool kernel_filter_;
  ct::FlushResult result_;
  double duration_ms_ = 0;
};

// conntrackFlush(flows: { protocol, vip: { ip, port }, destination: { ip, port } }[], opts?: { kernelFilter?: boolean
// }):
//   (`ip`: IPv4 dotted quad or IPv6 text without brackets, one family within a flow; a call may mix flows of both)
//   Promise<{ durationMs, kernelFilter, skipped, dumps, flows: { deleted, kept }[] }>
Napi::Value ConntrackFlush(const Napi::CallbackInfo &info);

}  // namespace iptlb
