// RAII owner of a libiptc/libip6tc handle on one table, and the process-wide lock around every use of
// either library (each keeps global state — the last function called, for its strerror — and neither
// is thread-safe; one lock for both also keeps iptables' and ip6tables' work in one order).
#pragma once
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include "errors.h"
#include "memory.h"
#include "xt_family.h"

namespace iptlb {

// Held by every worker for the whole of its libiptc/libip6tc work: transactions are serialised.
std::mutex &LibiptcMutex();

// After a handle is gone: ReleaseFreedMemory() (common/memory.h) gives the memory a freed handle of a
// large table leaves in malloc's free lists back to the kernel: a handle holds a copy of the whole
// table and its rules, tens of MiB at 10,000 profiles.

// An EKERNEL (or EPERM) error for the library call `what` that just failed with `err`:
// "<what>: <strerror of F's library> (errno N)<context>".
template <typename F>
NativeError XtError(const std::string &what, int err, const std::string &context = "") {
  return NativeError::FromErrno("EKERNEL", err,
                                what + ": " + F::StrError(err) + " (errno " + std::to_string(err) + ")" + context);
}

// F::Init(table) (iptc_init / ip6tc_init); on failure ok() is false and error() says why.
template <typename F>
class XtHandle {
 public:
  explicit XtHandle(const char *table) : handle_(F::Init(table)) {
    if (!handle_)
      error_ = XtError<F>(std::string(F::kLibrary) + "_init", errno, std::string(" while reading table ") + table);
  }
  ~XtHandle() {
    if (handle_) F::Free(handle_);
  }
  XtHandle(const XtHandle &) = delete;
  XtHandle &operator=(const XtHandle &) = delete;

  bool ok() const { return handle_ != nullptr; }
  struct xtc_handle *get() const {
    return handle_;
  }
  const NativeError &error() const { return error_; }

 private:
  struct xtc_handle *handle_;
  NativeError error_;
};

using IptcHandle = XtHandle<Ip4Tables>;

// A chain name as libiptc's prototypes want it: a zero-padded xt_chainlabel (char[32]) — libiptc may
// read the whole array, so never pass it a shorter std::string buffer.
class Label {
 public:
  explicit Label(const std::string &name) {
    std::memset(label_, 0, sizeof(label_));
    name.copy(label_, sizeof(label_) - 1);
  }
  const char *get() const { return label_; }

 private:
  xt_chainlabel label_;
};

}  // namespace iptlb
