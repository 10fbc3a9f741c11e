#include "revisions.h"

#include <linux/netfilter/x_tables.h>
#include <linux/netfilter_ipv4/ip_tables.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
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
std::map<std::string, int> cache;  // "4m:name" / "6t:name" → revision

enum class Answer { kYes, kNo, kUnknown };

// As libxtables: ENOENT/EPROTONOSUPPORT = no such revision; ENOPROTOOPT = a kernel too old to be
// asked (only revision 0 then); anything else (e.g. EPERM) = cannot tell, and the commit will judge.
Answer Supports(int fd, int level, int opt, const char *name, int revision) {
  struct xt_get_revision rev;
  std::memset(&rev, 0, sizeof(rev));
  std::strncpy(rev.name, name, sizeof(rev.name) - 1);
  rev.revision = static_cast<__u8>(revision);
  socklen_t len = sizeof(rev);
  if (getsockopt(fd, level, opt, &rev, &len) == 0) return Answer::kYes;
  if (errno == ENOENT || errno == EPROTONOSUPPORT) return Answer::kNo;
  if (errno == ENOPROTOOPT) return revision == 0 ? Answer::kYes : Answer::kNo;
  return Answer::kUnknown;
}

int Revision(Family family, bool match, const char *name, int max) {
  const bool v6 = family == Family::kIpv6;
  const int opt = v6 ? (match ? IP6T_SO_GET_REVISION_MATCH : IP6T_SO_GET_REVISION_TARGET)
                     : (match ? IPT_SO_GET_REVISION_MATCH : IPT_SO_GET_REVISION_TARGET);
  const std::string key = std::string(v6 ? "6" : "4") + (match ? "m:" : "t:") + name;
  std::lock_guard<std::mutex> guard(cache_mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  if (fd < 0) return max;  // cannot ask (no permission?): assume the newest, let the kernel judge; not cached
  int found = -1;
  bool certain = true;
  for (int r = max; r >= 0; r--) {
    Answer a = Supports(fd, v6 ? IPPROTO_IPV6 : IPPROTO_IP, opt, name, r);
    if (a == Answer::kNo) continue;
    certain = a == Answer::kYes;
    found = r;
    break;
  }
  close(fd);
  if (certain) cache[key] = found;
  return found;
}

}  // namespace

int MatchRevision(Family family, const char *name, int max) { return Revision(family, true, name, max); }
int TargetRevision(Family family, const char *name, int max) { return Revision(family, false, name, max); }

}  // namespace iptlb
