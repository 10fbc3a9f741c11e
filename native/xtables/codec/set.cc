// -m set --match-set S dst,dst (revision 4 or 3): the gate's match on iptlb's ipset of VIPs. The
// kernel keeps the set's index, not its name; Decode gives the index back (`set_index`).
#include "kinds.h"
#include "revisions.h"

#include <linux/netfilter/xt_set.h>

namespace iptlb {
namespace xtcodec {
namespace set {
namespace {

// As libxt_set writes `--match-set NAME dst,dst`: two dimensions, no source flags, no counters.
template <typename Info>
void AddDstDst(Bytes *out, uint8_t revision, const Match &m) {
  auto *s = Add<Info>(out, "set", revision);
  s->match_set.index = m.set_index;
  s->match_set.dim = 2;
}

template <typename Info>
bool IsDstDst(const Info *s, Match *d) {
  if (!s || s->match_set.dim != 2 || s->match_set.flags || s->flags || s->packets.value || s->packets.op ||
      s->bytes.value || s->bytes.op)
    return false;
  d->kind = Match::kSetDstDst;
  d->set_index = s->match_set.index;
  return true;
}

}  // namespace

bool Encode(Family family, const Match &m, Bytes *out, std::string *error) {
  const int rev = MatchRevision(family, "set", 4);
  if (rev == 4) {
    AddDstDst<struct xt_set_info_match_v4>(out, 4, m);
  } else if (rev == 3) {
    AddDstDst<struct xt_set_info_match_v3>(out, 3, m);
  } else {
    *error = "the kernel supports no revision 3-4 of the set match (is xt_set available?)";
    return false;
  }
  return true;
}

bool Decode(Family, const struct xt_entry_match *m, Match *d) {
  if (m->u.user.revision == 4) return IsDstDst(PayloadOf<struct xt_set_info_match_v4>(m), d);
  if (m->u.user.revision == 3) return IsDstDst(PayloadOf<struct xt_set_info_match_v3>(m), d);
  return false;
}

}  // namespace set
}  // namespace xtcodec
}  // namespace iptlb
