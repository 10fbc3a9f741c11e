// -j LOG --log-prefix X --log-level L (revision 0, no log flags).
#include "kinds.h"

#include <linux/netfilter/xt_LOG.h>

namespace iptlb {
namespace xtcodec {
namespace log {

bool Encode(Family, const Target &t, Bytes *out, std::string *) {
  auto *l = Add<struct xt_log_info>(out, "LOG", 0);
  l->level = t.level;
  std::strncpy(l->prefix, t.prefix.c_str(), sizeof(l->prefix) - 1);
  return true;
}

bool Decode(Family, const TargetRead &t, Target *d) {
  if (t.label != "LOG") return false;
  const auto *l = PayloadOf<struct xt_log_info>(t.t);
  if (t.t->u.user.revision != 0 || !l || l->logflags) return false;
  d->kind = Target::kLog;
  d->level = l->level;
  d->prefix = NameOf(l->prefix, sizeof(l->prefix));
  return true;
}

}  // namespace log
}  // namespace xtcodec
}  // namespace iptlb
