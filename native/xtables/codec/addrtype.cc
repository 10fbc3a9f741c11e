// -m addrtype --dst-type LOCAL: revision 1 where the kernel has it, else IPv4's revision 0.
#include "kinds.h"
#include "revisions.h"

#include <linux/netfilter/xt_addrtype.h>

namespace iptlb {
namespace xtcodec {
namespace addrtype {

bool Encode(Family family, const Match &, Bytes *out, std::string *error) {
  // ip6tables has revision 1 only (revision 0 is IPv4's).
  const int rev = MatchRevision(family, "addrtype", 1);
  if (rev == 1) {
    Add<struct xt_addrtype_info_v1>(out, "addrtype", 1)->dest = XT_ADDRTYPE_LOCAL;
  } else if (rev == 0 && family == Family::kIpv4) {
    Add<struct xt_addrtype_info>(out, "addrtype", 0)->dest = XT_ADDRTYPE_LOCAL;
  } else {
    *error = "the kernel supports no revision of the addrtype match (is xt_addrtype available?)";
    return false;
  }
  return true;
}

bool Decode(Family family, const struct xt_entry_match *m, Match *d) {
  const unsigned rev = m->u.user.revision;
  if (rev == 1) {
    const auto *a = PayloadOf<struct xt_addrtype_info_v1>(m);
    if (!a || a->dest != XT_ADDRTYPE_LOCAL || a->source || a->flags) return false;
  } else if (rev == 0 && family == Family::kIpv4) {
    const auto *a = PayloadOf<struct xt_addrtype_info>(m);
    if (!a || a->dest != XT_ADDRTYPE_LOCAL || a->source || a->invert_source || a->invert_dest) return false;
  } else {
    return false;
  }
  d->kind = Match::kAddrtypeLocal;
  return true;
}

}  // namespace addrtype
}  // namespace xtcodec
}  // namespace iptlb
