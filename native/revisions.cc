#include "revisions.h"

#include <linux/netfilter/x_tables.h>
#include <linux/netfilter_ipv4/ip_tables.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

namespace iptlb {
namespace {

std::mutex cache_mutex;
std::map<std::string, int> cache;

// True when the kernel supports `revision` of target `name`; errors other than "no such revision"
// (e.g. no permission) are treated as supported, so the commit itself reports them.
bool Supports(int fd, const char *name, int revision) {
  struct xt_get_revision rev;
  std::memset(&rev, 0, sizeof(rev));
  std::strncpy(rev.name, name, sizeof(rev.name) - 1);
  rev.revision = static_cast<__u8>(revision);
  socklen_t len = sizeof(rev);
  if (getsockopt(fd, IPPROTO_IP, IPT_SO_GET_REVISION_TARGET, &rev, &len) == 0) return true;
  return errno != EPROTONOSUPPORT && errno != ENOENT;
}

}  // namespace

int TargetRevision(const char *name, int max) {
  std::lock_guard<std::mutex> guard(cache_mutex);
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  int found = max;  // without a socket, assume the newest and let the kernel judge
  if (fd >= 0) {
    found = -1;
    for (int r = max; r >= 0; r--) {
      if (Supports(fd, name, r)) {
        found = r;
        break;
      }
    }
    close(fd);
    cache[name] = found;
  }
  return found;
}

}  // namespace iptlb
