#include "iptc_handle.h"

#include <cerrno>

namespace iptlb {

std::mutex &LibiptcMutex() {
  static std::mutex m;
  return m;
}

IptcHandle::IptcHandle(const char *table) : handle_(iptc_init(table)) {
  if (!handle_) error_ = IptcError("iptc_init", errno, std::string(" while reading table ") + table);
}

IptcHandle::~IptcHandle() {
  if (handle_) iptc_free(handle_);
}

NativeError IptcError(const std::string &what, int err, const std::string &context) {
  return NativeError::FromErrno("EKERNEL", err, what + ": " + iptc_strerror(err) + " (errno " + std::to_string(err) + ")" + context);
}

}  // namespace iptlb
