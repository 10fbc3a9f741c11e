// -j DNAT --to-destination A:P: revision 2 or 1 (family-neutral ranges) where the kernel has them,
// else IPv4's revision 0 (the compat range).
#include "kinds.h"
#include "revisions.h"

#include <arpa/inet.h>
#include <linux/netfilter/nf_nat.h>

namespace iptlb {
namespace xtcodec {
namespace dnat {
namespace {

constexpr unsigned kFlags = NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED;

// The range of a DNAT to one address and port (revisions 1 and 2 differ only in a trailing field).
template <typename Range>
void AddSingleDestination(Bytes *out, uint8_t revision, const Target &t) {
  auto *r = Add<Range>(out, "DNAT", revision);
  r->flags = kFlags;
  r->min_addr = r->max_addr = t.addr;
  r->min_proto.all = r->max_proto.all = htons(t.port);
}

template <typename Range>
bool IsSingleDestination(const Range *r, Target *d) {
  if (!r || r->flags != kFlags || std::memcmp(&r->min_addr, &r->max_addr, sizeof(r->min_addr)) != 0 ||
      r->min_proto.all != r->max_proto.all) {
    return false;
  }
  d->addr = r->min_addr;
  d->port = ntohs(r->min_proto.all);
  return true;
}

}  // namespace

bool Encode(Family family, const Target &t, Bytes *out, std::string *error) {
  const int rev = TargetRevision(family, "DNAT", 2);
  if (rev == 2) {
    AddSingleDestination<struct nf_nat_range2>(out, 2, t);
  } else if (rev == 1) {
    AddSingleDestination<struct nf_nat_range>(out, 1, t);
  } else if (rev == 0 && family == Family::kIpv4) {
    auto *r = Add<struct nf_nat_ipv4_multi_range_compat>(out, "DNAT", 0);
    r->rangesize = 1;
    r->range[0].flags = kFlags;
    r->range[0].min_ip = r->range[0].max_ip = t.addr.ip;
    r->range[0].min.all = r->range[0].max.all = htons(t.port);
  } else {
    *error = "the kernel supports no revision of the DNAT target (is iptable_nat available?)";
    return false;
  }
  return true;
}

bool Decode(Family family, const TargetRead &t, Target *d) {
  if (t.label != "DNAT") return false;
  const unsigned rev = t.t->u.user.revision;
  d->kind = Target::kDnat;
  if (rev == 2) return IsSingleDestination(PayloadOf<struct nf_nat_range2>(t.t), d);
  if (rev == 1) return IsSingleDestination(PayloadOf<struct nf_nat_range>(t.t), d);
  const auto *r = PayloadOf<struct nf_nat_ipv4_multi_range_compat>(t.t);
  if (family == Family::kIpv6 || rev != 0 || !r || r->rangesize != 1) return false;
  const auto &x = r->range[0];
  if (x.flags != kFlags || x.min_ip != x.max_ip || x.min.all != x.max.all) return false;
  d->addr.ip = x.min_ip;
  d->port = ntohs(x.min.all);
  return true;
}

}  // namespace dnat
}  // namespace xtcodec
}  // namespace iptlb
