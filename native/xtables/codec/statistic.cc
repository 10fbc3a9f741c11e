// -m statistic --mode random --probability P, and --mode nth --every N --packet K (revision 0).
#include "kinds.h"

#include <linux/netfilter/xt_statistic.h>

namespace iptlb {
namespace xtcodec {
namespace statistic {

bool Encode(Family, const Match &m, Bytes *out, std::string *) {
  auto *s = Add<struct xt_statistic_info>(out, "statistic", 0);
  if (m.kind == Match::kStatistic) {
    s->mode = XT_STATISTIC_MODE_RANDOM;
    s->u.random.probability = m.probability;
    // libxt_statistic's final check sets count = every - packet; `every` aliases the probability.
    s->u.nth.count = m.probability;
  } else {
    // As libxt_statistic: the kernel keeps every - 1, and starts the counter at count = every - 1 - packet.
    s->mode = XT_STATISTIC_MODE_NTH;
    s->u.nth.every = m.every - 1;
    s->u.nth.packet = m.packet;
    s->u.nth.count = m.every - 1 - m.packet;
  }
  return true;
}

bool Decode(Family, const struct xt_entry_match *m, Match *d) {
  const auto *s = m->u.user.revision == 0 ? PayloadOf<struct xt_statistic_info>(m) : nullptr;
  if (!s || s->flags) return false;
  if (s->mode == XT_STATISTIC_MODE_RANDOM) {
    d->kind = Match::kStatistic;
    d->probability = s->u.random.probability;
  } else if (s->mode == XT_STATISTIC_MODE_NTH && s->u.nth.packet <= s->u.nth.every && s->u.nth.every < (1u << 20)) {
    d->kind = Match::kStatisticNth;
    d->every = s->u.nth.every + 1;
    d->packet = s->u.nth.packet;
  } else {
    return false;
  }
  return true;
}

}  // namespace statistic
}  // namespace xtcodec
}  // namespace iptlb
