// -m recent --set / --update --seconds S --reap, --name N --rsource (revision 1): source affinity.
#include "kinds.h"

#include <linux/netfilter/xt_recent.h>

namespace iptlb {
namespace xtcodec {
namespace recent {
namespace {

// xt_recent's mask of one host in `family` (see Encode).
bool HostMask(Family family, const union nf_inet_addr &mask) {
  if (family == Family::kIpv6)
    return mask.all[0] == 0xffffffffu && mask.all[1] == 0xffffffffu && mask.all[2] == 0xffffffffu &&
           mask.all[3] == 0xffffffffu;
  return mask.ip == 0xffffffffu && !mask.all[1] && !mask.all[2] && !mask.all[3];
}

}  // namespace

bool Encode(Family family, const Match &m, Bytes *out, std::string *) {
  // As libxt_recent (revision 1) leaves it: source side, mask of one host: IPv4 255.255.255.255
  // in the first word of the address union, the rest zero; IPv6 all 128 bits.
  auto *r = Add<struct xt_recent_mtinfo_v1>(out, "recent", 1);
  if (m.kind == Match::kRecentSet) {
    r->check_set = XT_RECENT_SET;
  } else {
    r->check_set = XT_RECENT_UPDATE | XT_RECENT_REAP;
    r->seconds = m.seconds;
  }
  std::strncpy(r->name, m.text.c_str(), sizeof(r->name) - 1);
  r->side = XT_RECENT_SOURCE;
  if (family == Family::kIpv4)
    r->mask.ip = 0xffffffffu;
  else
    std::memset(&r->mask, 0xff, sizeof(r->mask));
  return true;
}

bool Decode(Family family, const struct xt_entry_match *m, Match *d) {
  const auto *r = m->u.user.revision == 1 ? PayloadOf<struct xt_recent_mtinfo_v1>(m) : nullptr;
  if (!r || r->invert || r->hit_count || r->side != XT_RECENT_SOURCE || !HostMask(family, r->mask)) return false;
  if (r->check_set == XT_RECENT_SET && r->seconds == 0) {
    d->kind = Match::kRecentSet;
  } else if (r->check_set == (XT_RECENT_UPDATE | XT_RECENT_REAP) && r->seconds >= 1) {
    d->kind = Match::kRecentUpdate;
    d->seconds = r->seconds;
  } else {
    return false;
  }
  d->text = NameOf(r->name, sizeof(r->name));
  return true;
}

}  // namespace recent
}  // namespace xtcodec
}  // namespace iptlb
