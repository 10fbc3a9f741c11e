// -m conntrack --ctstate DNAT --ctorigdst A --ctorigdstport P: revision 3, 2 or 1, the highest the
// kernel has (the masquerade rule's selector of flows DNATed to a profile's VIP).
#include "kinds.h"
#include "revisions.h"

#include <arpa/inet.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/xt_conntrack.h>

namespace iptlb {
namespace xtcodec {
namespace conntrack {
namespace {

constexpr unsigned kFlags = XT_CONNTRACK_STATE | XT_CONNTRACK_ORIGDST | XT_CONNTRACK_ORIGDST_PORT;

// The fields iptlb uses, common to revisions 1-3; the port is each revision's own.
template <typename Info>
Info *AddDnat(Bytes *out, uint8_t revision, const Match &m) {
  auto *c = Add<Info>(out, "conntrack", revision);
  c->origdst_addr = m.addr;
  c->origdst_mask = m.mask;
  c->state_mask = XT_CONNTRACK_STATE_DNAT;
  c->match_flags = kFlags;
  return c;
}

template <typename Info>
bool IsDnat(const Info *c, Match *d) {
  if (!c || c->match_flags != kFlags || c->invert_flags || c->state_mask != XT_CONNTRACK_STATE_DNAT) return false;
  d->kind = Match::kConntrackDnat;
  d->addr = c->origdst_addr;
  d->mask = c->origdst_mask;
  return true;
}

}  // namespace

bool Encode(Family family, const Match &m, Bytes *out, std::string *error) {
  const int rev = MatchRevision(family, "conntrack", 3);
  if (rev == 3) {
    auto *c = AddDnat<struct xt_conntrack_mtinfo3>(out, 3, m);
    c->origdst_port = c->origdst_port_high = m.port;  // revision 3 keeps a port range, in host order
  } else if (rev == 2) {
    AddDnat<struct xt_conntrack_mtinfo2>(out, 2, m)->origdst_port = htons(m.port);  // 1-2: one port, network order
  } else if (rev == 1) {
    AddDnat<struct xt_conntrack_mtinfo1>(out, 1, m)->origdst_port = htons(m.port);
  } else {
    *error = "the kernel supports no revision 1-3 of the conntrack match (is xt_conntrack available?)";
    return false;
  }
  return true;
}

bool Decode(Family, const struct xt_entry_match *m, Match *d) {
  switch (m->u.user.revision) {
    case 3: {
      const auto *c = PayloadOf<struct xt_conntrack_mtinfo3>(m);
      if (!IsDnat(c, d) || c->origdst_port != c->origdst_port_high) return false;
      d->port = c->origdst_port;
      return true;
    }
    case 2: {
      const auto *c = PayloadOf<struct xt_conntrack_mtinfo2>(m);
      if (!IsDnat(c, d)) return false;
      d->port = ntohs(c->origdst_port);
      return true;
    }
    case 1: {
      const auto *c = PayloadOf<struct xt_conntrack_mtinfo1>(m);
      if (!IsDnat(c, d)) return false;
      d->port = ntohs(c->origdst_port);
      return true;
    }
    default:
      return false;
  }
}

}  // namespace conntrack
}  // namespace xtcodec
}  // namespace iptlb
