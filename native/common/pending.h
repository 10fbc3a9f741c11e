// How the addon's table operations are called: an entry point checks its arguments on the JS thread
// (a TypeError naming the field), makes the job and returns its number instead of a promise;
// JavaScript calls the part's start(number) when the operation's turn has come (src/native/addon.ts
// keeps one operation per table in flight, in call order) and gets the promise. Nothing in the C++
// waits for a turn. A number is started once; the JavaScript side starts every number it is given.
#pragma once
#include <napi.h>

#include <cstdint>
#include <functional>

namespace iptlb {

// Keeps `start` (which queues the job and returns its promise) under a new number, returned as a JS number.
Napi::Value AddPending(Napi::Env env, std::function<Napi::Promise()> start);

// start(id: number): Promise — the part's export.
Napi::Value StartPending(const Napi::CallbackInfo &info);

// `launch(job)` queues the job (an AsyncWorker's Queue(), or ThreadJob::Start on its thread).
template <typename Job, typename Launch>
Napi::Value Pending(Napi::Env env, Job *job, Launch launch) {
  return AddPending(env, [job, launch]() {
    Napi::Promise p = job->Promise();
    launch(job);
    return p;
  });
}

}  // namespace iptlb
