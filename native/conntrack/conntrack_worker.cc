#include "conntrack_worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <new>
#include <string>

#include "nft_netlink.h"

namespace iptlb {
namespace {

// More flows than any change can remove; a bound keeps a runaway caller from queueing huge work.
constexpr uint32_t kMaxFlows = 1u << 20;

[[noreturn]] void Bad(Napi::Env env, const std::string &path, const std::string &what) {
  Napi::TypeError e = Napi::TypeError::New(env, path + ": " + what);
  e.Set("code", Napi::String::New(env, "EINVAL"));
  e.Set("errno", Napi::Number::New(env, EINVAL));
  throw e;
}

ct::Endpoint EndpointFromJs(const Napi::Value &v, const std::string &path) {
  Napi::Env env = v.Env();
  if (!v.IsObject() || v.IsArray()) Bad(env, path, "must be an object { ip, port }");
  Napi::Object o = v.As<Napi::Object>();
  ct::Endpoint e;
  Napi::Value ip = o.Get("ip");
  if (!ip.IsString()) Bad(env, path + ".ip", "must be a string");
  const std::string text = ip.As<Napi::String>().Utf8Value();
  // IPv6 text has a colon; IPv4 text none. No brackets, no zone, no prefix length.
  e.family = text.find(':') == std::string::npos ? AF_INET : AF_INET6;
  if (text.size() >= INET6_ADDRSTRLEN || inet_pton(e.family, text.c_str(), e.ip.data()) != 1) {
    Bad(env, path + ".ip",
        "must be an IPv4 or IPv6 address (IPv6 without brackets), got \"" + text.substr(0, 64) + "\"");
  }
  Napi::Value port = o.Get("port");
  if (!port.IsNumber()) Bad(env, path + ".port", "must be a number");
  const double p = port.As<Napi::Number>().DoubleValue();
  if (!(p >= 1 && p <= 65535) || std::floor(p) != p) Bad(env, path + ".port", "must be an integer from 1 to 65535");
  e.port = static_cast<uint16_t>(p);
  return e;
}

std::vector<ct::Flow> FlowsFromJs(const Napi::Value &v) {
  Napi::Env env = v.Env();
  if (!v.IsArray()) Bad(env, "flows", "must be an array");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > kMaxFlows) Bad(env, "flows", "has more than " + std::to_string(kMaxFlows) + " entries");
  std::vector<ct::Flow> flows;
  flows.reserve(a.Length());
  for (uint32_t i = 0; i < a.Length(); i++) {
    const std::string path = "flows[" + std::to_string(i) + "]";
    Napi::Value fv = a.Get(i);
    if (!fv.IsObject() || fv.IsArray()) Bad(env, path, "must be an object { protocol, vip, destination }");
    Napi::Object fo = fv.As<Napi::Object>();
    ct::Flow f;
    Napi::Value proto = fo.Get("protocol");
    const std::string p = proto.IsString() ? proto.As<Napi::String>().Utf8Value() : "";
    if (p == "tcp")
      f.proto = IPPROTO_TCP;
    else if (p == "udp")
      f.proto = IPPROTO_UDP;
    else if (p == "sctp")
      f.proto = IPPROTO_SCTP;
    else
      Bad(env, path + ".protocol", "must be \"tcp\", \"udp\" or \"sctp\"");
    f.vip = EndpointFromJs(fo.Get("vip"), path + ".vip");
    f.destination = EndpointFromJs(fo.Get("destination"), path + ".destination");
    if (f.destination.family != f.vip.family) {
      const auto name = [](const ct::Endpoint &e) { return e.family == AF_INET6 ? "IPv6" : "IPv4"; };
      Bad(env, path + ".destination.ip",
          std::string("is ") + name(f.destination) + " but " + path + ".vip.ip is " + name(f.vip) +
              "; a flow's addresses are of one family");
    }
    flows.push_back(f);
  }
  return flows;
}

}  // namespace

ConntrackFlushWorker::ConntrackFlushWorker(Napi::Env env, std::vector<ct::Flow> flows, bool kernel_filter)
    : PromiseWorker(env, "iptlb.conntrackFlush"), flows_(std::move(flows)), kernel_filter_(kernel_filter) {}

void ConntrackFlushWorker::Work() {
  const auto t0 = std::chrono::steady_clock::now();
  result_ = ct::Flush(flows_, kernel_filter_);  // throws NativeFailure (the boundary: PromiseWorker)
  duration_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void ConntrackFlushWorker::OnOK() {
  Napi::Env env = Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("durationMs", duration_ms_);
  r.Set("kernelFilter", result_.kernel_filter);
  r.Set("skipped", result_.skipped);
  r.Set("dumps", result_.dumps);
  r.Set("conditionalDelete", result_.conditional_delete);
  r.Set("sweeps", result_.sweeps);
  r.Set("paused", result_.paused);
  Napi::Array counts = Napi::Array::New(env, result_.counts.size());
  for (size_t i = 0; i < result_.counts.size(); i++) {
    Napi::Object c = Napi::Object::New(env);
    c.Set("deleted", result_.counts[i].deleted);
    c.Set("kept", result_.counts[i].kept);
    counts.Set(static_cast<uint32_t>(i), c);
  }
  r.Set("flows", counts);
  Resolve(r);
}

Napi::Value ConntrackFlush(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<ct::Flow> flows = FlowsFromJs(info.Length() < 1 ? env.Undefined() : info[0]);
  bool kernel_filter = true;
  if (info.Length() >= 2 && !info[1].IsUndefined()) {
    if (!info[1].IsObject() || info[1].IsArray()) Bad(env, "options", "must be an object");
    Napi::Value v = info[1].As<Napi::Object>().Get("kernelFilter");
    if (!v.IsUndefined() && !v.IsBoolean()) Bad(env, "options.kernelFilter", "must be a boolean");
    if (v.IsBoolean()) kernel_filter = v.As<Napi::Boolean>().Value();
  }
  auto *w = new ConntrackFlushWorker(env, std::move(flows), kernel_filter);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace iptlb
