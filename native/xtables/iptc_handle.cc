#include "iptc_handle.h"

namespace iptlb {

std::mutex &LibiptcMutex() {
  static std::mutex m;
  return m;
}

}  // namespace iptlb
