#include "rule_encoder.h"

#include <arpa/inet.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/x_tables.h>
#include <linux/netfilter/xt_LOG.h>
#include <linux/netfilter/xt_addrtype.h>
#include <linux/netfilter/xt_comment.h>
#include <linux/netfilter/xt_conntrack.h>
#include <linux/netfilter/xt_recent.h>
#include <linux/netfilter/xt_set.h>
#include <stdbool.h>  // xt_sctp.h is C: _Bool
#include <linux/netfilter/xt_sctp.h>
#include <linux/netfilter/xt_statistic.h>
#include <linux/netfilter/xt_tcpudp.h>
#include <netinet/in.h>

#include <cstddef>
#include <cstring>

#include "revisions.h"

namespace iptlb {
namespace {

constexpr size_t Align(size_t n) { return XT_ALIGN(n); }

// Appends a match or target header + payload to `out`, padded to its aligned size.
template <typename Payload>
void Append(std::vector<uint8_t> *out, const char *name, uint8_t revision, const Payload &payload) {
  const size_t size = Align(sizeof(struct xt_entry_match)) + Align(sizeof(Payload));
  const size_t at = out->size();
  out->resize(at + size, 0);
  auto *m = reinterpret_cast<struct xt_entry_match *>(out->data() + at);  // same layout as xt_entry_target
  m->u.user.match_size = static_cast<__u16>(size);
  std::strncpy(m->u.user.name, name, sizeof(m->u.user.name) - 1);
  m->u.user.revision = revision;
  std::memcpy(m->data, &payload, sizeof(Payload));
}

// The conntrack fields iptlb uses, common to revisions 1-3 (`--ctstate DNAT --ctorigdst A --ctorigdstport P`).
template <typename Info>
Info ConntrackDnat(const Match &m) {
  Info c;
  std::memset(&c, 0, sizeof(c));
  c.origdst_addr = m.addr;
  c.origdst_mask = m.mask;
  c.state_mask = XT_CONNTRACK_STATE_DNAT;
  c.match_flags = XT_CONNTRACK_STATE | XT_CONNTRACK_ORIGDST | XT_CONNTRACK_ORIGDST_PORT;
  return c;
}

bool EncodeMatch(Family family, const Match &m, std::vector<uint8_t> *out, std::string *error) {
  switch (m.kind) {
    case Match::kTcp: {
      struct xt_tcp t;
      std::memset(&t, 0, sizeof(t));
      t.spts[1] = 0xffff;
      t.dpts[0] = t.dpts[1] = m.port;
      Append(out, "tcp", 0, t);
      return true;
    }
    case Match::kUdp: {
      struct xt_udp u;
      std::memset(&u, 0, sizeof(u));
      u.spts[1] = 0xffff;
      u.dpts[0] = u.dpts[1] = m.port;
      Append(out, "udp", 0, u);
      return true;
    }
    case Match::kSctp: {
      struct xt_sctp_info s;
      std::memset(&s, 0, sizeof(s));
      // As libxt_sctp: its init marks every chunk-flag slot unused (0xff); the source ports stay 0-0
      // (unlike tcp/udp), the kernel ignores them without XT_SCTP_SRC_PORTS.
      for (auto &f : s.flag_info) f.chunktype = 0xff;
      s.dpts[0] = s.dpts[1] = m.port;
      s.flags = XT_SCTP_DEST_PORTS;
      Append(out, "sctp", 0, s);
      return true;
    }
    case Match::kStatistic: {
      struct xt_statistic_info s;
      std::memset(&s, 0, sizeof(s));
      s.mode = XT_STATISTIC_MODE_RANDOM;
      s.u.random.probability = m.probability;
      // libxt_statistic's final check sets count = every - packet; `every` aliases the probability.
      s.u.nth.count = m.probability;
      Append(out, "statistic", 0, s);
      return true;
    }
    case Match::kStatisticNth: {
      // As libxt_statistic: the kernel keeps every - 1, and starts the counter at count = every - 1 - packet.
      struct xt_statistic_info s;
      std::memset(&s, 0, sizeof(s));
      s.mode = XT_STATISTIC_MODE_NTH;
      s.u.nth.every = m.every - 1;
      s.u.nth.packet = m.packet;
      s.u.nth.count = m.every - 1 - m.packet;
      Append(out, "statistic", 0, s);
      return true;
    }
    case Match::kRecentSet:
    case Match::kRecentUpdate: {
      // As libxt_recent (revision 1) leaves it: source side, mask of one host: IPv4 255.255.255.255
      // in the first word of the address union, the rest zero; IPv6 all 128 bits.
      struct xt_recent_mtinfo_v1 r;
      std::memset(&r, 0, sizeof(r));
      if (m.kind == Match::kRecentSet) {
        r.check_set = XT_RECENT_SET;
      } else {
        r.check_set = XT_RECENT_UPDATE | XT_RECENT_REAP;
        r.seconds = m.seconds;
      }
      std::strncpy(r.name, m.text.c_str(), sizeof(r.name) - 1);
      r.side = XT_RECENT_SOURCE;
      if (family == Family::kIpv4)
        r.mask.ip = 0xffffffffu;
      else
        std::memset(&r.mask, 0xff, sizeof(r.mask));
      Append(out, "recent", 1, r);
      return true;
    }
    case Match::kComment: {
      struct xt_comment_info c;
      std::memset(&c, 0, sizeof(c));
      std::strncpy(c.comment, m.text.c_str(), sizeof(c.comment) - 1);
      Append(out, "comment", 0, c);
      return true;
    }
    case Match::kAddrtypeLocal: {
      // ip6tables has revision 1 only (revision 0 is IPv4's).
      const int rev = MatchRevision(family, "addrtype", 1);
      if (rev == 1) {
        struct xt_addrtype_info_v1 a;
        std::memset(&a, 0, sizeof(a));
        a.dest = XT_ADDRTYPE_LOCAL;
        Append(out, "addrtype", 1, a);
      } else if (rev == 0 && family == Family::kIpv4) {
        struct xt_addrtype_info a;
        std::memset(&a, 0, sizeof(a));
        a.dest = XT_ADDRTYPE_LOCAL;
        Append(out, "addrtype", 0, a);
      } else {
        *error = "the kernel supports no revision of the addrtype match (is xt_addrtype available?)";
        return false;
      }
      return true;
    }
    case Match::kConntrackDnat: {
      const int rev = MatchRevision(family, "conntrack", 3);
      if (rev == 3) {
        auto c = ConntrackDnat<struct xt_conntrack_mtinfo3>(m);
        c.origdst_port = c.origdst_port_high = m.port;  // revision 3 keeps a port range, in host order
        Append(out, "conntrack", 3, c);
      } else if (rev == 2) {
        auto c = ConntrackDnat<struct xt_conntrack_mtinfo2>(m);
        c.origdst_port = htons(m.port);  // revisions 1-2: one port, network order
        Append(out, "conntrack", 2, c);
      } else if (rev == 1) {
        auto c = ConntrackDnat<struct xt_conntrack_mtinfo1>(m);
        c.origdst_port = htons(m.port);
        Append(out, "conntrack", 1, c);
      } else {
        *error = "the kernel supports no revision 1-3 of the conntrack match (is xt_conntrack available?)";
        return false;
      }
      return true;
    }
    case Match::kSetDstDst: {
      // As libxt_set writes `--match-set NAME dst,dst`: two dimensions, no source flags, no counters.
      const int rev = MatchRevision(family, "set", 4);
      if (rev == 4) {
        struct xt_set_info_match_v4 s;
        std::memset(&s, 0, sizeof(s));
        s.match_set.index = m.set_index;
        s.match_set.dim = 2;
        Append(out, "set", 4, s);
      } else if (rev == 3) {
        struct xt_set_info_match_v3 s;
        std::memset(&s, 0, sizeof(s));
        s.match_set.index = m.set_index;
        s.match_set.dim = 2;
        Append(out, "set", 3, s);
      } else {
        *error = "the kernel supports no revision 3-4 of the set match (is xt_set available?)";
        return false;
      }
      return true;
    }
    case Match::kUnknown:
      break;
  }
  *error = "cannot encode an unknown match";
  return false;
}

// The range of a DNAT to one address and port (revisions 1 and 2 differ only in a trailing field).
template <typename Range>
Range SingleDestination(const Target &t) {
  Range r;
  std::memset(&r, 0, sizeof(r));
  r.flags = NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED;
  r.min_addr = r.max_addr = t.addr;
  r.min_proto.all = r.max_proto.all = htons(t.port);
  return r;
}

bool EncodeTarget(Family family, const Target &t, std::vector<uint8_t> *out, std::string *error) {
  switch (t.kind) {
    case Target::kDnat: {
      // Revisions 1 and 2 are family-neutral; revision 0 (the compat range) is IPv4's only.
      const int rev = TargetRevision(family, "DNAT", 2);
      if (rev == 2) {
        Append(out, "DNAT", 2, SingleDestination<struct nf_nat_range2>(t));
      } else if (rev == 1) {
        Append(out, "DNAT", 1, SingleDestination<struct nf_nat_range>(t));
      } else if (rev == 0 && family == Family::kIpv4) {
        struct nf_nat_ipv4_multi_range_compat r;
        std::memset(&r, 0, sizeof(r));
        r.rangesize = 1;
        r.range[0].flags = NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED;
        r.range[0].min_ip = r.range[0].max_ip = t.addr.ip;
        r.range[0].min.all = r.range[0].max.all = htons(t.port);
        Append(out, "DNAT", 0, r);
      } else {
        *error = "the kernel supports no revision of the DNAT target (is iptable_nat available?)";
        return false;
      }
      return true;
    }
    case Target::kLog: {
      struct xt_log_info l;
      std::memset(&l, 0, sizeof(l));
      l.level = t.level;
      std::strncpy(l.prefix, t.prefix.c_str(), sizeof(l.prefix) - 1);
      Append(out, "LOG", 0, l);
      return true;
    }
    case Target::kMasquerade: {
      // Revision 0 in both families, with each family's range: IPv4 the compat range (one, empty),
      // IPv6 an empty nf_nat_range (as libxt_MASQUERADE's two registrations).
      if (family == Family::kIpv6) {
        struct nf_nat_range r;
        std::memset(&r, 0, sizeof(r));
        Append(out, "MASQUERADE", 0, r);
        return true;
      }
      struct nf_nat_ipv4_multi_range_compat r;
      std::memset(&r, 0, sizeof(r));
      r.rangesize = 1;
      Append(out, "MASQUERADE", 0, r);
      return true;
    }
    case Target::kReturn:
    case Target::kJump: {
      // A standard target named by its verdict or chain; libiptc/libip6tc resolve the name at commit.
      struct xt_standard_target s;
      std::memset(&s, 0, sizeof(s));
      const std::string name = t.kind == Target::kReturn ? std::string(IPTC_LABEL_RETURN) : t.chain;
      const size_t at = out->size();
      out->resize(at + Align(sizeof(s)), 0);
      auto *st = reinterpret_cast<struct xt_standard_target *>(out->data() + at);
      st->target.u.user.target_size = static_cast<__u16>(Align(sizeof(s)));
      std::strncpy(st->target.u.user.name, name.c_str(), sizeof(st->target.u.user.name) - 1);
      return true;
    }
    case Target::kUnknown:
      break;
  }
  *error = "cannot encode an unknown target";
  return false;
}

}  // namespace

template <typename F>
std::vector<uint8_t> EncodeRule(const Rule &rule, std::string *error) {
  using Entry = typename F::Entry;
  std::vector<uint8_t> buf(sizeof(Entry), 0);
  for (const Match &m : rule.matches) {
    if (!EncodeMatch(F::kFamily, m, &buf, error)) return {};
  }
  const size_t target_offset = buf.size();
  if (!EncodeTarget(F::kFamily, rule.target, &buf, error)) return {};
  auto *e = reinterpret_cast<Entry *>(buf.data());
  SetHeader<F>(e, rule);
  e->target_offset = static_cast<__u16>(target_offset);
  e->next_offset = static_cast<__u16>(buf.size());
  return buf;
}

template std::vector<uint8_t> EncodeRule<Ip4Tables>(const Rule &, std::string *);
template std::vector<uint8_t> EncodeRule<Ip6Tables>(const Rule &, std::string *);

}  // namespace iptlb
