#include "rule_decoder.h"

#include <arpa/inet.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/x_tables.h>
#include <linux/netfilter/xt_LOG.h>
#include <linux/netfilter/xt_addrtype.h>
#include <linux/netfilter/xt_comment.h>
#include <linux/netfilter/xt_conntrack.h>
#include <linux/netfilter/xt_recent.h>
#include <stdbool.h>  // xt_sctp.h is C: _Bool
#include <linux/netfilter/xt_sctp.h>
#include <linux/netfilter/xt_statistic.h>
#include <linux/netfilter/xt_tcpudp.h>
#include <netinet/in.h>

#include <cstring>

namespace iptlb {
namespace {

// The payload of a match or target, or null when it is too short to hold a T.
template <typename T>
const T *Payload(const struct xt_entry_match *m) {
  return m->u.match_size >= XT_ALIGN(sizeof(*m)) + sizeof(T) ? reinterpret_cast<const T *>(m->data) : nullptr;
}
template <typename T>
const T *Payload(const struct xt_entry_target *t) {
  return t->u.target_size >= XT_ALIGN(sizeof(*t)) + sizeof(T) ? reinterpret_cast<const T *>(t->data) : nullptr;
}

std::string NameOf(const char *name, size_t max) { return std::string(name, strnlen(name, max)); }

template <typename Info>
bool ConntrackDnat(const Info *c, Match *d) {
  const unsigned want = XT_CONNTRACK_STATE | XT_CONNTRACK_ORIGDST | XT_CONNTRACK_ORIGDST_PORT;
  if (!c || c->match_flags != want || c->invert_flags || c->state_mask != XT_CONNTRACK_STATE_DNAT) return false;
  d->kind = Match::kConntrackDnat;
  d->addr = c->origdst_addr;
  d->mask = c->origdst_mask;
  return true;
}

// xt_recent's mask of one host in `family` (see the encoder).
bool HostMask(Family family, const union nf_inet_addr &mask) {
  if (family == Family::kIpv6)
    return mask.all[0] == 0xffffffffu && mask.all[1] == 0xffffffffu && mask.all[2] == 0xffffffffu &&
           mask.all[3] == 0xffffffffu;
  return mask.ip == 0xffffffffu && !mask.all[1] && !mask.all[2] && !mask.all[3];
}

// True when `m` is exactly something iptlb writes in a table of `family`; fills `d`.
bool DecodeMatch(Family family, const struct xt_entry_match *m, Match *d) {
  const std::string name = NameOf(m->u.user.name, sizeof(m->u.user.name));
  const unsigned rev = m->u.user.revision;
  if (name == "tcp" && rev == 0) {
    const auto *t = Payload<struct xt_tcp>(m);
    if (!t || t->dpts[0] != t->dpts[1] || t->spts[0] != 0 || t->spts[1] != 0xffff || t->invflags || t->flg_mask ||
        t->flg_cmp || t->option)
      return false;
    d->kind = Match::kTcp;
    d->port = t->dpts[0];
  } else if (name == "udp" && rev == 0) {
    const auto *u = Payload<struct xt_udp>(m);
    if (!u || u->dpts[0] != u->dpts[1] || u->spts[0] != 0 || u->spts[1] != 0xffff || u->invflags) return false;
    d->kind = Match::kUdp;
    d->port = u->dpts[0];
  } else if (name == "sctp" && rev == 0) {
    const auto *s = Payload<struct xt_sctp_info>(m);
    if (!s || s->flags != XT_SCTP_DEST_PORTS || s->dpts[0] != s->dpts[1] || s->invflags) return false;
    d->kind = Match::kSctp;
    d->port = s->dpts[0];
  } else if (name == "statistic" && rev == 0) {
    const auto *s = Payload<struct xt_statistic_info>(m);
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
  } else if (name == "recent" && rev == 1) {
    const auto *r = Payload<struct xt_recent_mtinfo_v1>(m);
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
  } else if (name == "comment" && rev == 0) {
    const auto *c = Payload<struct xt_comment_info>(m);
    if (!c) return false;
    d->kind = Match::kComment;
    d->text = NameOf(c->comment, sizeof(c->comment));
  } else if (name == "addrtype" && rev == 1) {
    const auto *a = Payload<struct xt_addrtype_info_v1>(m);
    if (!a || a->dest != XT_ADDRTYPE_LOCAL || a->source || a->flags) return false;
    d->kind = Match::kAddrtypeLocal;
  } else if (name == "addrtype" && rev == 0 && family == Family::kIpv4) {
    const auto *a = Payload<struct xt_addrtype_info>(m);
    if (!a || a->dest != XT_ADDRTYPE_LOCAL || a->source || a->invert_source || a->invert_dest) return false;
    d->kind = Match::kAddrtypeLocal;
  } else if (name == "conntrack" && rev == 3) {
    const auto *c = Payload<struct xt_conntrack_mtinfo3>(m);
    if (!ConntrackDnat(c, d) || c->origdst_port != c->origdst_port_high) return false;
    d->port = c->origdst_port;
  } else if (name == "conntrack" && rev == 2) {
    const auto *c = Payload<struct xt_conntrack_mtinfo2>(m);
    if (!ConntrackDnat(c, d)) return false;
    d->port = ntohs(c->origdst_port);
  } else if (name == "conntrack" && rev == 1) {
    const auto *c = Payload<struct xt_conntrack_mtinfo1>(m);
    if (!ConntrackDnat(c, d)) return false;
    d->port = ntohs(c->origdst_port);
  } else {
    return false;
  }
  return true;
}

// The DNAT range iptlb writes: one address, one port.
template <typename Range>
bool SingleDestination(const Range *r, Target *d) {
  if (!r || r->flags != (NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED) ||
      std::memcmp(&r->min_addr, &r->max_addr, sizeof(r->min_addr)) != 0 || r->min_proto.all != r->max_proto.all) {
    return false;
  }
  d->addr = r->min_addr;
  d->port = ntohs(r->min_proto.all);
  return true;
}

template <typename F>
bool DecodeTarget(const typename F::Entry *e, struct xtc_handle *h, Target *d) {
  constexpr bool v6 = F::kFamily == Family::kIpv6;
  const char *label = F::GetTarget(e, h);
  if (!label) return false;
  const std::string n = label;
  const auto *t =
      reinterpret_cast<const struct xt_entry_target *>(reinterpret_cast<const char *>(e) + e->target_offset);
  const unsigned rev = t->u.user.revision;
  if (n == F::kLabelReturn) {
    d->kind = Target::kReturn;
  } else if (n == "DNAT") {
    d->kind = Target::kDnat;
    if (rev == 2) return SingleDestination(Payload<struct nf_nat_range2>(t), d);
    if (rev == 1) return SingleDestination(Payload<struct nf_nat_range>(t), d);
    const auto *r = Payload<struct nf_nat_ipv4_multi_range_compat>(t);
    if (v6 || rev != 0 || !r || r->rangesize != 1) return false;
    const auto &x = r->range[0];
    if (x.flags != (NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED) || x.min_ip != x.max_ip ||
        x.min.all != x.max.all)
      return false;
    d->addr.ip = x.min_ip;
    d->port = ntohs(x.min.all);
  } else if (n == "LOG") {
    const auto *l = Payload<struct xt_log_info>(t);
    if (rev != 0 || !l || l->logflags) return false;
    d->kind = Target::kLog;
    d->level = l->level;
    d->prefix = NameOf(l->prefix, sizeof(l->prefix));
  } else if (n == "MASQUERADE" && v6) {
    const auto *r = Payload<struct nf_nat_range>(t);
    if (rev != 0 || !r || r->flags) return false;
    d->kind = Target::kMasquerade;
  } else if (n == "MASQUERADE") {
    const auto *r = Payload<struct nf_nat_ipv4_multi_range_compat>(t);
    if (rev != 0 || !r || r->rangesize != 1 || r->range[0].flags) return false;
    d->kind = Target::kMasquerade;
  } else if (F::IsChain(label, h) && !F::Builtin(label, h)) {
    d->kind = Target::kJump;
    d->chain = n;
  } else {
    return false;
  }
  return true;
}

}  // namespace

template <typename F>
std::string CommentOf(const typename F::Entry *e) {
  for (size_t off = sizeof(*e); off + sizeof(struct xt_entry_match) <= e->target_offset;) {
    const auto *m = reinterpret_cast<const struct xt_entry_match *>(reinterpret_cast<const char *>(e) + off);
    if (m->u.match_size == 0) break;
    if (std::strcmp(m->u.user.name, "comment") == 0) {
      if (const auto *c = Payload<struct xt_comment_info>(m)) return NameOf(c->comment, sizeof(c->comment));
    }
    off += m->u.match_size;
  }
  return "";
}

template <typename F>
DecodedRule DecodeRule(const typename F::Entry *e, struct xtc_handle *h) {
  DecodedRule out;
  out.packets = e->counters.pcnt;
  out.bytes = e->counters.bcnt;
  Rule &r = out.rule;
  // Header fields iptlb never sets (source, interfaces, inversions, fragments, other protocols).
  if (!GetHeader<F>(e, &r)) {
    Match u{Match::kUnknown};
    u.text = "(ip header)";
    r.matches.push_back(std::move(u));
  }
  for (size_t off = sizeof(*e); off + sizeof(struct xt_entry_match) <= e->target_offset;) {
    const auto *m = reinterpret_cast<const struct xt_entry_match *>(reinterpret_cast<const char *>(e) + off);
    if (m->u.match_size < sizeof(struct xt_entry_match)) break;  // malformed: stop rather than loop
    Match d{Match::kUnknown};
    if (!DecodeMatch(F::kFamily, m, &d)) {
      d = Match{Match::kUnknown};
      d.text = NameOf(m->u.user.name, sizeof(m->u.user.name));
    }
    if (d.kind == Match::kComment && out.comment.empty()) out.comment = d.text;
    r.matches.push_back(std::move(d));
    off += m->u.match_size;
  }
  Target t{Target::kReturn};
  if (!DecodeTarget<F>(e, h, &t)) {
    const char *label = F::GetTarget(e, h);
    t = Target{Target::kUnknown};
    t.chain = label && *label ? label : "(standard)";
  }
  r.target = std::move(t);
  return out;
}

template DecodedRule DecodeRule<Ip4Tables>(const Ip4Tables::Entry *, struct xtc_handle *);
template DecodedRule DecodeRule<Ip6Tables>(const Ip6Tables::Entry *, struct xtc_handle *);
template std::string CommentOf<Ip4Tables>(const Ip4Tables::Entry *);
template std::string CommentOf<Ip6Tables>(const Ip6Tables::Entry *);

}  // namespace iptlb
