#include "read_text.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

// Node's external Latin-1 strings (Node 20.4+, 18.18+; declared by js_native_api.h only under
// NAPI_EXPERIMENTAL, which would change how Node treats this whole module). Weak: null where this Node
// does not have it, and the string is then a copy.
extern "C" napi_status node_api_create_external_string_latin1(napi_env env, char *str, size_t length,
                                                              napi_finalize finalize_callback, void *finalize_hint,
                                                              napi_value *result, bool *copied) __attribute__((weak));

namespace iptlb {
namespace {

constexpr double kMaxSize = 64.0 * 1024 * 1024;  // MAX_STATE_BYTES (src/model/limits.ts)

// The mapping both views share; unmapped when the last of them is collected.
struct Mapping {
  void *addr;
  size_t length;
  int views;
};

void Drop(napi_env, void *, void *hint) {
  auto *m = static_cast<Mapping *>(hint);
  if (--m->views > 0) return;
  munmap(m->addr, m->length);
  delete m;
}

// The errno's name for the Error's `code`, as Node's own file errors have it; null for one the state
// file's read is not expected to meet (the message then says it, from strerror).
const char *ErrnoName(int err) {
  switch (err) {
    case EIO:
      return "EIO";
    case EISDIR:
      return "EISDIR";
    case EBADF:
      return "EBADF";
    case EINVAL:
      return "EINVAL";
    case ENOMEM:
      return "ENOMEM";
    case EAGAIN:
      return "EAGAIN";
    case EACCES:
      return "EACCES";
    case EPERM:
      return "EPERM";
    case ESTALE:
      return "ESTALE";
    case EOVERFLOW:
      return "EOVERFLOW";
    default:
      return nullptr;
  }
}

[[noreturn]] void ThrowErrno(Napi::Env env, const char *what, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + std::strerror(err));
  if (const char *name = ErrnoName(err)) e.Set("code", Napi::String::New(env, name));
  e.Set("errno", Napi::Number::New(env, -err));
  throw e;
}

}  // namespace

Napi::Value ReadText(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "fd: must be a number");
  const double fdv = info[0].As<Napi::Number>().DoubleValue();
  if (!(fdv >= 0 && fdv <= 2147483647) || fdv != static_cast<double>(static_cast<int>(fdv)))
    throw Napi::TypeError::New(env, "fd: must be a file descriptor");
  if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(env, "size: must be a number");
  const double sizev = info[1].As<Napi::Number>().DoubleValue();
  if (!(sizev >= 1 && sizev <= kMaxSize) || sizev != static_cast<double>(static_cast<size_t>(sizev)))
    throw Napi::TypeError::New(env, "size: must be a whole number from 1 to 67108864");
  const int fd = static_cast<int>(fdv);
  const size_t size = static_cast<size_t>(sizev);

  // One byte more than `size`, to see whether the file grew.
  const size_t capacity = size + 1;
  void *addr = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (addr == MAP_FAILED) ThrowErrno(env, "readText: mmap", errno);
  char *p = static_cast<char *>(addr);
  size_t got = 0;
  while (got < capacity) {
    const ssize_t n = pread(fd, p + got, capacity - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      munmap(addr, capacity);
      ThrowErrno(env, "readText: read", err);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > size) {
    munmap(addr, capacity);
    return env.Null();
  }

  // The Buffer's view first: a runtime that refuses external memory (a sandboxed one) reads the usual way.
  auto *m = new Mapping{addr, capacity, 1};
  napi_value bytes;
  if (napi_create_external_buffer(env, got, p, Drop, m, &bytes) != napi_ok) {
    delete m;
    munmap(addr, capacity);
    return env.Null();
  }
  // Then the string's: over the same bytes, or V8's own copy (too short to be worth an external string:
  // Node then calls Drop at once), or where this Node has no external strings, a copy made here.
  napi_value text = nullptr;
  if (node_api_create_external_string_latin1 != nullptr && got > 0) {
    bool copied = false;
    m->views++;
    if (node_api_create_external_string_latin1(env, p, got, Drop, m, &text, &copied) != napi_ok) {
      m->views--;
      text = nullptr;
    }
  }
  if (text == nullptr && napi_create_string_latin1(env, p, got, &text) != napi_ok)
    throw Napi::Error::New(env, "readText: cannot make the string");
  Napi::Object out = Napi::Object::New(env);
  out.Set("text", Napi::Value(env, text));
  out.Set("bytes", Napi::Value(env, bytes));
  return out;
}

}  // namespace iptlb
