// iptlb_xt.node: the x_tables (legacy) engine over libiptc (libip4tc/libip6tc). Arguments are checked
// on the JS thread (synchronous TypeErrors naming the field); each table entry point returns a job
// number for start(n) (pending.h); the jobs run on the x_tables job thread (XtablesThread), not the pool.
#include <napi.h>

#include <memory>
#include <string>

#include "addon_args.h"
#include "iptc_handle.h"
#include "commit_worker.h"
#include "holds_worker.h"
#include "prefetch.h"
#include "plan.h"
#include "read_worker.h"
#include "pending.h"
#include "xtables_lock.h"

namespace iptlb {
namespace {

// The UTF-8 text of `text` (`length` UTF-16 units). Napi::String::Utf8Value() passes over the string
// twice (V8's Utf8Length, then WriteUtf8); a plan of up to 64 Ki units (about 100 profiles: a batch) is
// written in one pass into a buffer of the longest it can be (3 bytes a unit), kept for the next call.
std::string Utf8Text(napi_env env, const Napi::String &text, size_t length) {
  constexpr size_t kOnePass = 1u << 16;
  if (length > kOnePass) return text.Utf8Value();
  static thread_local std::unique_ptr<char[]> buf(new char[3 * kOnePass + 1]);
  size_t n = 0;
  if (napi_get_value_string_utf8(env, text, buf.get(), 3 * length + 1, &n) != napi_ok) return text.Utf8Value();
  return std::string(buf.get(), n);
}

// commit(json: string, opts?: { lockWaitMs?: number, append?: { fd, data } }): job number;
// start(n): Promise<{ durationMs, attempts, appended? }> (appended: { written, errno } when append was given)
// The transaction crosses as JSON.stringify text, decoded and checked on the job thread: the JS
// thread only copies one string (docs/architecture.md has the measurement against N-API objects).
// A plan that fails a check rejects with code EPLAN, the message naming the field.
Napi::Value Commit(const Napi::CallbackInfo &info) {
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "json: must be a string");
  const Napi::String text = info[0].As<Napi::String>();
  size_t length = 0;  // UTF-16 units: the UTF-8 copy is at most 3 times as long
  napi_get_value_string_utf16(info.Env(), text, nullptr, 0, &length);
  if (length == 0) throw Napi::TypeError::New(info.Env(), "json: must not be empty");
  if (length > kMaxPlanJson)
    throw Napi::TypeError::New(info.Env(), "json: longer than " + std::to_string(kMaxPlanJson) + " characters");
  const int wait = LockWait(info, 1);
  // options.append: { fd, data }: bytes the job thread writes to fd right after the commit succeeded
  // (the state journal's record; see CommitWorker::Append). Checked here, copied once.
  int append_fd = -1;
  std::string append_data;
  if (info.Length() > 1 && info[1].IsObject()) {
    const Napi::Value a = info[1].As<Napi::Object>().Get("append");
    if (!a.IsUndefined()) {
      if (!a.IsObject()) throw Napi::TypeError::New(info.Env(), "options.append: must be an object");
      const Napi::Object o = a.As<Napi::Object>();
      const Napi::Value fd = o.Get("fd");
      const Napi::Value data = o.Get("data");
      if (!fd.IsNumber() || fd.As<Napi::Number>().DoubleValue() != fd.As<Napi::Number>().Int32Value() ||
          fd.As<Napi::Number>().Int32Value() < 0)
        throw Napi::TypeError::New(info.Env(), "options.append.fd: must be a file descriptor (an integer >= 0)");
      if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
        throw Napi::TypeError::New(info.Env(), "options.append.data: must be a Uint8Array");
      const Napi::Uint8Array bytes = data.As<Napi::Uint8Array>();
      if (bytes.ByteLength() == 0) throw Napi::TypeError::New(info.Env(), "options.append.data: must not be empty");
      append_fd = fd.As<Napi::Number>().Int32Value();
      append_data.assign(reinterpret_cast<const char *>(bytes.Data()), bytes.ByteLength());
    }
  }
  return Pending(
      info.Env(),
      new CommitWorker(info.Env(), Utf8Text(info.Env(), text, length), wait, append_fd, std::move(append_data)),
      [](CommitWorker *w) { w->Start(XtablesThread()); });
}

// The optional first argument `family`: "ipv4" (the default) or "ipv6"; a TypeError naming it otherwise.
Family FamilyArg(const Napi::CallbackInfo &info) {
  if (info.Length() < 1 || info[0].IsUndefined()) return Family::kIpv4;
  const std::string f = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : std::string();
  if (f != "ipv4" && f != "ipv6") throw Napi::TypeError::New(info.Env(), "family: must be \"ipv4\" or \"ipv6\"");
  return f == "ipv6" ? Family::kIpv6 : Family::kIpv4;
}

// read(family?: 'ipv4' | 'ipv6'): job number; start(n): Promise<KernelView> (default ipv4)
Napi::Value Read(const Napi::CallbackInfo &info) {
  const Family family = FamilyArg(info);
  return Pending(info.Env(), new ReadWorker(info.Env(), family), [](ReadWorker *w) { w->Start(XtablesThread()); });
}

// holds(family?: "ipv4" | "ipv6"): job number; start(n): Promise<boolean> — whether the nat table holds
// any of iptlb's objects (holds_worker.h), asked without libiptc. Only for a nat table that exists.
Napi::Value Holds(const Napi::CallbackInfo &info) {
  const Family family = FamilyArg(info);
  return Pending(info.Env(), new HoldsWorker(info.Env(), family), [](HoldsWorker *w) { w->Start(XtablesThread()); });
}

// info(): { libiptc: true, xtablesLockPath: string }
Napi::Value Info(const Napi::CallbackInfo &info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("libiptc", true);
  o.Set("xtablesLockPath", XtablesLockPath());
  return o;
}

}  // namespace

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  FixMallocThresholds();  // legacy: the table copies must not stay in the heap (see iptc_handle.h)
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("part", Napi::String::New(env, "xt"));
  exports.Set("commit", Napi::Function::New(env, Commit, "commit"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("holds", Napi::Function::New(env, Holds, "holds"));
  exports.Set("prefetch", Napi::Function::New(env, Prefetch, "prefetch"));
  exports.Set("releasePrefetch", Napi::Function::New(env, ReleasePrefetch, "releasePrefetch"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("start", Napi::Function::New(env, StartPending, "start"));
  return exports;
}

}  // namespace iptlb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return iptlb::Init(env, exports); }
NODE_API_MODULE(iptlb_xt, InitAddon)
