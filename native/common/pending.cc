#include "pending.h"

#include <mutex>
#include <unordered_map>

namespace iptlb {
namespace {

struct Entry {
  napi_env env;
  std::function<Napi::Promise()> start;
};

std::mutex pending_mutex;  // several environments (worker threads) may share the addon
std::unordered_map<uint32_t, Entry> pending;
uint32_t next_id = 0;

}  // namespace

Napi::Value AddPending(Napi::Env env, std::function<Napi::Promise()> start) {
  std::lock_guard<std::mutex> l(pending_mutex);
  const uint32_t id = ++next_id;
  pending.emplace(id, Entry{env, std::move(start)});
  return Napi::Number::New(env, id);
}

Napi::Value StartPending(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "id: must be a number");
  const uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  std::function<Napi::Promise()> start;
  {
    std::lock_guard<std::mutex> l(pending_mutex);
    auto it = pending.find(id);
    if (it == pending.end() || it->second.env != static_cast<napi_env>(env))
      throw Napi::Error::New(env, "start: no operation " + std::to_string(id) + " is waiting to be started");
    start = std::move(it->second.start);
    pending.erase(it);
  }
  return start();
}

}  // namespace iptlb
