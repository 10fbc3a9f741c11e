#include "job_thread.h"

#include <pthread.h>

#include <cerrno>
#include <new>
#include <system_error>
#include <thread>

namespace iptlb {

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
  back_ = Napi::TypedThreadSafeFunction<std::nullptr_t, ThreadJob, SettleThreadJob>::New(env_, name_, 0, 1);
  thread->Post(this);
}

void ThreadJob::StartAlone(const char *thread_name) {
  back_ = Napi::TypedThreadSafeFunction<std::nullptr_t, ThreadJob, SettleThreadJob>::New(env_, name_, 0, 1);
  try {
    std::thread([this, thread_name] {
      pthread_setname_np(pthread_self(), thread_name);
      Run();
    }).detach();
  } catch (const std::system_error &e) {  // no thread could be made (EAGAIN: a thread or memory limit)
    back_.Release();
    Fail(NativeError{"EKERNEL", e.code().value(), std::string("cannot start a thread: ") + e.what()});
    Settle();  // on the JS thread already: reject now
    delete this;
  }
}

void ThreadJob::Run() {
  RunCatching(
      name_, [this] { Work(); }, [this](NativeError e) { Fail(std::move(e)); });
  auto back = back_;
  if (back.BlockingCall(this) != napi_ok) delete this;  // the environment is gone: nobody to tell
  back.Release();
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
  if (env != nullptr) job->Settle();  // null: the environment is being torn down
  delete job;
}

}  // namespace iptlb
