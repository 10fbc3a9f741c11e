#include "v8_memory.h"

#include <dlfcn.h>

namespace iptlb {

bool MemoryPressure(int level) {
  // Looked up at run time rather than linked: N-API addons must load in runtimes that do not export
  // V8's C++ API, and an unresolved symbol would refuse the whole part. `static v8::Isolate*
  // v8::Isolate::GetCurrent()` and `void v8::Isolate::MemoryPressureNotification(v8::MemoryPressureLevel)`
  // (a non-virtual member: called with the isolate as its first argument; the enum is an int:
  // kNone 0, kModerate 1, kCritical 2). Both have been in V8's API, unchanged, since 2016.
  using GetCurrent = void *(*)();
  using Notify = void (*)(void *, int);
  static const GetCurrent current = reinterpret_cast<GetCurrent>(dlsym(RTLD_DEFAULT, "_ZN2v87Isolate10GetCurrentEv"));
  static const Notify notify = reinterpret_cast<Notify>(
      dlsym(RTLD_DEFAULT, "_ZN2v87Isolate26MemoryPressureNotificationENS_19MemoryPressureLevelE"));
  if (current == nullptr || notify == nullptr || level < 1 || level > 2) return false;
  void *isolate = current();
  if (isolate == nullptr) return false;
  notify(isolate, level);
  notify(isolate, 0);
  return true;
}

}  // namespace iptlb
