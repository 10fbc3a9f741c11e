// -m tcp|udp|sctp --dport P: the destination port of a rule that also sets `-p` (revision 0 of each).
#include "kinds.h"

#include <stdbool.h>  // xt_sctp.h is C: _Bool
#include <linux/netfilter/xt_sctp.h>
#include <linux/netfilter/xt_tcpudp.h>

namespace iptlb {
namespace xtcodec {
namespace port {

bool Encode(Family, const Match &m, Bytes *out, std::string *) {
  if (m.kind == Match::kTcp) {
    auto *t = Add<struct xt_tcp>(out, "tcp", 0);
    t->spts[1] = 0xffff;
    t->dpts[0] = t->dpts[1] = m.port;
  } else if (m.kind == Match::kUdp) {
    auto *u = Add<struct xt_udp>(out, "udp", 0);
    u->spts[1] = 0xffff;
    u->dpts[0] = u->dpts[1] = m.port;
  } else {
    auto *s = Add<struct xt_sctp_info>(out, "sctp", 0);
    // As libxt_sctp: its init marks every chunk-flag slot unused (0xff); the source ports stay 0-0
    // (unlike tcp/udp), the kernel ignores them without XT_SCTP_SRC_PORTS.
    for (auto &f : s->flag_info) f.chunktype = 0xff;
    s->dpts[0] = s->dpts[1] = m.port;
    s->flags = XT_SCTP_DEST_PORTS;
  }
  return true;
}

bool Decode(Family, const struct xt_entry_match *m, Match *d) {
  const std::string name = NameOf(m);
  if (m->u.user.revision != 0) return false;
  if (name == "tcp") {
    const auto *t = PayloadOf<struct xt_tcp>(m);
    if (!t || t->dpts[0] != t->dpts[1] || t->spts[0] != 0 || t->spts[1] != 0xffff || t->invflags || t->flg_mask ||
        t->flg_cmp || t->option)
      return false;
    d->kind = Match::kTcp;
    d->port = t->dpts[0];
  } else if (name == "udp") {
    const auto *u = PayloadOf<struct xt_udp>(m);
    if (!u || u->dpts[0] != u->dpts[1] || u->spts[0] != 0 || u->spts[1] != 0xffff || u->invflags) return false;
    d->kind = Match::kUdp;
    d->port = u->dpts[0];
  } else if (name == "sctp") {
    const auto *s = PayloadOf<struct xt_sctp_info>(m);
    if (!s || s->flags != XT_SCTP_DEST_PORTS || s->dpts[0] != s->dpts[1] || s->invflags) return false;
    d->kind = Match::kSctp;
    d->port = s->dpts[0];
  } else {
    return false;
  }
  return true;
}

}  // namespace port
}  // namespace xtcodec
}  // namespace iptlb
