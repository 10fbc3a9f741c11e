// RAII owner of a libiptc handle on one table, and the process-wide lock around every libiptc use
// (libiptc keeps global state — the last function called, for iptc_strerror — and is not thread-safe).
#pragma once
#include <libiptc/libiptc.h>

#include <cstring>
#include <mutex>
#include <string>

#include "errors.h"

namespace iptlb {

// Held by every worker for the whole of its libiptc work: transactions on the table are serialised.
std::mutex &LibiptcMutex();

class IptcHandle {
 public:
  // iptc_init(table); on failure ok() is false and error() says why (EKERNEL/EPERM, errno, iptc_strerror).
  explicit IptcHandle(const char *table);
  ~IptcHandle();
  IptcHandle(const IptcHandle &) = delete;
  IptcHandle &operator=(const IptcHandle &) = delete;

  bool ok() const { return handle_ != nullptr; }
  struct xtc_handle *get() const { return handle_; }
  const NativeError &error() const { return error_; }

 private:
  struct xtc_handle *handle_;
  NativeError error_;
};

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

// An EKERNEL (or EPERM) error for the libiptc call `what` that just failed with `err`:
// "<what>: <iptc_strerror> (errno N)<context>".
NativeError IptcError(const std::string &what, int err, const std::string &context = "");

}  // namespace iptlb
