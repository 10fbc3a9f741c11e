#include "rule_decoder.h"

#include <arpa/inet.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/x_tables.h>
#include <linux/netfilter/xt_LOG.h>
#include <linux/netfilter/xt_addrtype.h>
#include <linux/netfilter/xt_comment.h>
#include <linux/netfilter/xt_conntrack.h>
#include <linux/netfilter/xt_sctp.h>
#include <linux/netfilter/xt_statistic.h>
#include <linux/netfilter/xt_tcpudp.h>
#include <netinet/in.h>

#include <cstring>

namespace iptlb {
namespace {

template <typename T>
const T *Payload(const struct xt_entry_match *m) {
  return m->u.match_size >= XT_ALIGN(sizeof(*m)) + sizeof(T) ? reinterpret_cast<const T *>(m->data) : nullptr;
}

bool DecodeMatch(const struct xt_entry_match *m, DecodedRule *out) {
  const std::string name = m->u.user.name;
  Match d{Match::kTcp};
  if (name == "tcp") {
    const auto *t = Payload<struct xt_tcp>(m);
    if (!t || t->dpts[0] != t->dpts[1] || t->spts[0] != 0 || t->spts[1] != 0xffff || t->invflags || t->flg_mask || t->option) return false;
    d.kind = Match::kTcp;
    d.port = t->dpts[0];
  } else if (name == "udp") {
    const auto *u = Payload<struct xt_udp>(m);
    if (!u || u->dpts[0] != u->dpts[1] || u->spts[0] != 0 || u->spts[1] != 0xffff || u->invflags) return false;
    d.kind = Match::kUdp;
    d.port = u->dpts[0];
  } else if (name == "sctp") {
    const auto *s = Payload<struct xt_sctp_info>(m);
    if (!s || s->flags != XT_SCTP_DEST_PORTS || s->dpts[0] != s->dpts[1] || s->invflags) return false;
    d.kind = Match::kSctp;
    d.port = s->dpts[0];
  } else if (name == "statistic") {
    const auto *s = Payload<struct xt_statistic_info>(m);
    if (!s || s->mode != XT_STATISTIC_MODE_RANDOM || s->flags) return false;
    d.kind = Match::kStatistic;
    d.probability = s->u.random.probability;
  } else if (name == "comment") {
    const auto *c = Payload<struct xt_comment_info>(m);
    if (!c) return false;
    d.kind = Match::kComment;
    d.text.assign(c->comment, strnlen(c->comment, sizeof(c->comment)));
    out->comment = d.text;
  } else if (name == "addrtype" && m->u.user.revision == 1) {
    const auto *a = Payload<struct xt_addrtype_info_v1>(m);
    if (!a || a->dest != XT_ADDRTYPE_LOCAL || a->source || a->flags) return false;
    d.kind = Match::kAddrtypeLocal;
  } else if (name == "conntrack" && m->u.user.revision == 3) {
    const auto *c = Payload<struct xt_conntrack_mtinfo3>(m);
    const unsigned want = XT_CONNTRACK_STATE | XT_CONNTRACK_ORIGDST | XT_CONNTRACK_ORIGDST_PORT;
    if (!c || c->match_flags != want || c->invert_flags || c->state_mask != XT_CONNTRACK_STATE_DNAT || c->origdst_port != c->origdst_port_high) return false;
    d.kind = Match::kConntrackDnat;
    d.addr = c->origdst_addr.ip;
    d.mask = c->origdst_mask.ip;
    d.port = c->origdst_port;
  } else {
    return false;
  }
  out->rule.matches.push_back(std::move(d));
  return true;
}

bool DecodeTarget(const struct ipt_entry *e, struct xtc_handle *h, DecodedRule *out) {
  const char *name = iptc_get_target(e, h);
  if (!name) return false;
  const std::string n = name;
  const auto *t = reinterpret_cast<const struct xt_entry_target *>(reinterpret_cast<const char *>(e) + e->target_offset);
  Target d{Target::kReturn};
  if (n == IPTC_LABEL_RETURN) {
    d.kind = Target::kReturn;
  } else if (n == "DNAT") {
    d.kind = Target::kDnat;
    const unsigned rev = t->u.user.revision;
    if (rev == 2 || rev == 1) {
      const auto *r = reinterpret_cast<const struct nf_nat_range *>(t->data);  // range2 starts like range
      if (r->min_addr.ip != r->max_addr.ip || r->min_proto.all != r->max_proto.all) return false;
      d.addr = r->min_addr.ip;
      d.port = ntohs(r->min_proto.all);
    } else {
      const auto *r = reinterpret_cast<const struct nf_nat_ipv4_multi_range_compat *>(t->data);
      if (r->rangesize != 1 || r->range[0].min_ip != r->range[0].max_ip) return false;
      d.addr = r->range[0].min_ip;
      d.port = ntohs(r->range[0].min.all);
    }
  } else if (n == "LOG") {
    const auto *l = reinterpret_cast<const struct xt_log_info *>(t->data);
    if (l->logflags) return false;
    d.kind = Target::kLog;
    d.level = l->level;
    d.prefix.assign(l->prefix, strnlen(l->prefix, sizeof(l->prefix)));
  } else if (n == "MASQUERADE") {
    d.kind = Target::kMasquerade;
  } else if (iptc_is_chain(name, h) && !iptc_builtin(name, h)) {
    d.kind = Target::kJump;
    d.chain = n;
  } else {
    return false;
  }
  out->rule.target = d;
  return true;
}

}  // namespace

DecodedRule DecodeRule(const struct ipt_entry *e, struct xtc_handle *h) {
  DecodedRule out;
  out.packets = e->counters.pcnt;
  out.bytes = e->counters.bcnt;
  if (e->ip.dmsk.s_addr || e->ip.dst.s_addr) {
    out.rule.has_dst = true;
    out.rule.dst = e->ip.dst.s_addr;
    out.rule.dmsk = e->ip.dmsk.s_addr;
  }
  out.rule.proto = static_cast<uint8_t>(e->ip.proto);
  bool foreign_header = e->ip.src.s_addr || e->ip.smsk.s_addr || e->ip.iniface[0] || e->ip.outiface[0] || e->ip.invflags || e->ip.flags;
  if (foreign_header) out.unknown_matches.push_back("(ip header)");
  for (size_t off = sizeof(struct ipt_entry); off < e->target_offset;) {
    const auto *m = reinterpret_cast<const struct xt_entry_match *>(reinterpret_cast<const char *>(e) + off);
    if (m->u.match_size == 0) break;
    if (!DecodeMatch(m, &out)) out.unknown_matches.push_back(m->u.user.name);
    off += m->u.match_size;
  }
  if (!DecodeTarget(e, h, &out)) {
    const char *name = iptc_get_target(e, h);
    out.unknown_target = name && *name ? name : "(standard)";
  }
  return out;
}

}  // namespace iptlb
