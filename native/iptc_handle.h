// RAII owner of a libiptc handle on one table.
#pragma once
#include <libiptc/libiptc.h>

namespace iptlb {

class IptcHandle {
 public:
  explicit IptcHandle(const char *table) : handle_(iptc_init(table)) {}
  ~IptcHandle() {
    if (handle_) iptc_free(handle_);
  }
  IptcHandle(const IptcHandle &) = delete;
  IptcHandle &operator=(const IptcHandle &) = delete;

  bool ok() const { return handle_ != nullptr; }
  struct xtc_handle *get() const { return handle_; }

 private:
  struct xtc_handle *handle_;
};

}  // namespace iptlb
