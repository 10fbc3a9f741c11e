// -j MASQUERADE: revision 0 in both families, each with its own (empty) range, as libxt_MASQUERADE's
// two registrations write it: IPv4 the compat range (one, empty), IPv6 an empty nf_nat_range.
#include "kinds.h"

#include <linux/netfilter/nf_nat.h>

namespace iptlb {
namespace xtcodec {
namespace masquerade {

bool Encode(Family family, const Target &, Bytes *out, std::string *) {
  if (family == Family::kIpv6) {
    Add<struct nf_nat_range>(out, "MASQUERADE", 0);
    return true;
  }
  Add<struct nf_nat_ipv4_multi_range_compat>(out, "MASQUERADE", 0)->rangesize = 1;
  return true;
}

bool Decode(Family family, const TargetRead &t, Target *d) {
  if (t.label != "MASQUERADE" || t.t->u.user.revision != 0) return false;
  if (family == Family::kIpv6) {
    const auto *r = PayloadOf<struct nf_nat_range>(t.t);
    if (!r || r->flags) return false;
  } else {
    const auto *r = PayloadOf<struct nf_nat_ipv4_multi_range_compat>(t.t);
    if (!r || r->rangesize != 1 || r->range[0].flags) return false;
  }
  d->kind = Target::kMasquerade;
  return true;
}

}  // namespace masquerade
}  // namespace xtcodec
}  // namespace iptlb
