#include "job_thread.h"

#include <pthread.h>

#include <cerrno>
#include <new>
#include <thread>
#include <unordered_map>

namespace iptlb {

using SettleFn = Napi::TypedThreadSafeFunction<std::nullptr_t, ThreadJob, SettleThreadJob>;

// One per environment (the main thread's, each worker_thread's): its thread-safe function, kept from
// the environment's first job to its teardown. `closed` (under `mutex`) tells the job threads the
// function was aborted at teardown and must not be called any more; `in_flight` is the JS thread's.
struct JobChannel {
  std::mutex mutex;
  bool closed = false;
  SettleFn fn;
  unsigned in_flight = 0;
};

namespace {

std::mutex channels_mutex;
std::unordered_map<napi_env, std::shared_ptr<JobChannel>> channels;

void CloseChannel(void *arg) {  // the environment's cleanup hook: it is going away
  const napi_env env = static_cast<napi_env>(arg);
  std::shared_ptr<JobChannel> ch;
  {
    std::lock_guard<std::mutex> l(channels_mutex);
    auto it = channels.find(env);
    if (it == channels.end()) return;
    ch = std::move(it->second);
    channels.erase(it);
  }
  std::lock_guard<std::mutex> l(ch->mutex);
  ch->closed = true;
  ch->fn.Abort();  // jobs still queued in it are handed to SettleThreadJob with a null environment
}

// JS thread of `env`.
std::shared_ptr<JobChannel> ChannelOf(Napi::Env env) {
  std::lock_guard<std::mutex> l(channels_mutex);
  std::shared_ptr<JobChannel> &ch = channels[env];
  if (!ch) {
    ch = std::make_shared<JobChannel>();
    ch->fn = SettleFn::New(env, "iptlb.job", 0, 1);
    ch->fn.Unref(env);  // ref'd only while a job is in flight (ThreadJob::Start)
    napi_add_env_cleanup_hook(env, CloseChannel, static_cast<napi_env>(env));
  }
  return ch;
}

}  // namespace

JobThread::JobThread(const char *name) {
  std::thread([this, name] {
    pthread_setname_np(pthread_self(), name);
    Loop();
  }).detach();
}

void JobThread::Post(ThreadJob *job) {
  {
    std::lock_guard<std::mutex> l(mutex_);
    queue_.push_back(job);
  }
  ready_.notify_one();
}

void JobThread::Loop() {
  for (;;) {
    ThreadJob *job;
    {
      std::unique_lock<std::mutex> l(mutex_);
      ready_.wait(l, [this] { return !queue_.empty(); });
      job = queue_.front();
      queue_.pop_front();
    }
    job->Run();
  }
}

ThreadJob::ThreadJob(Napi::Env env, const char *name) : env_(env), name_(name) {}

void ThreadJob::Start(JobThread *thread) {
  back_ = ChannelOf(env_);
  if (back_->in_flight++ == 0) back_->fn.Ref(env_);
  thread->Post(this);
}

void ThreadJob::Detach(JobThread *thread) { thread->Post(this); }

void ThreadJob::Run() {
  RunCatching(
      name_, [this] { Work(); }, [this](NativeError e) { Fail(std::move(e)); });
  if (!back_) {
    delete this;  // detached: nobody to tell
    return;
  }
  napi_status status = napi_closing;
  {
    std::lock_guard<std::mutex> l(back_->mutex);
    if (!back_->closed) status = back_->fn.NonBlockingCall(this);  // an unbounded queue: never waits
  }
  if (status != napi_ok) delete this;  // the environment is gone: nobody to tell
}

void ThreadJob::Settle() {
  Napi::HandleScope scope(env_);
  try {
    if (failed_)
      deferred_->Reject(ToJsError(env_, error_).Value());
    else
      OnOK();
  } catch (const Napi::Error &e) {
    deferred_->Reject(e.Value());
  }
}

void SettleThreadJob(Napi::Env env, Napi::Function, std::nullptr_t *, ThreadJob *job) {
  if (env == nullptr) {  // the environment is being torn down: its channel is closed
    delete job;
    return;
  }
  std::shared_ptr<JobChannel> back = job->back_;
  job->Settle();
  delete job;
  if (--back->in_flight == 0) back->fn.Unref(env);
}

}  // namespace iptlb
