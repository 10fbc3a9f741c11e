#include "conntrack.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_conntrack_tcp.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <unordered_map>

#include "nft_netlink.h"

namespace iptlb {
namespace ct {
namespace {

// Bits of CTA_FILTER_ORIG_FLAGS and CTA_FILTER_REPLY_FLAGS (CTA_FILTER_F_* in
// include/uapi/.../nfnetlink_conntrack.h of newer kernels; the values are ABI, older userspace
// headers lack the names): which fields of the tuple given beside the filter must match.
constexpr uint32_t kFilterIpSrc = 1u << 0;
constexpr uint32_t kFilterIpDst = 1u << 1;
constexpr uint32_t kFilterProtoNum = 1u << 3;
constexpr uint32_t kFilterProtoSrcPort = 1u << 4;
constexpr uint32_t kFilterProtoDstPort = 1u << 5;

constexpr const char *kPermissionHint =
    "permission denied: reading and deleting conntrack entries needs CAP_NET_ADMIN (run as root)";
constexpr int kDumpAttempts = 3;
// How long a half-open tcp entry deleted by tuple must have stayed unanswered (ms); see Flush. The
// spawn path waits as long (HALF_OPEN_GRACE_MS in src/core/conntrack.ts): keep the two equal.
constexpr int kHalfOpenGraceMs = 250;

std::string ErrText(int err) {
  char buf[256];
  return strerror_r(err, buf, sizeof buf);
}

[[noreturn]] void Throw(int err, const std::string &what) {
  std::string msg = what + ": " + ErrText(err);
  if (err == EOPNOTSUPP || err == EPROTONOSUPPORT)
    msg += " (conntrack netlink is not available in this kernel: modprobe nf_conntrack_netlink)";
  throw nft::NftFailure{NativeError::FromErrno("EKERNEL", err, msg, kPermissionHint)};
}

// `a.b.c.d:port` or `[v6]:port`.
std::string EndpointText(uint8_t family, const Addr &a, uint16_t port) {
  char ip[INET6_ADDRSTRLEN] = "?";
  inet_ntop(family, a.data(), ip, sizeof ip);
  return family == AF_INET6 ? "[" + std::string(ip) + "]:" + std::to_string(port)
                            : std::string(ip) + ":" + std::to_string(port);
}

const char *FamilyText(uint8_t f) {
  switch (f) {
    case AF_INET:
      return "ipv4";
    case AF_INET6:
      return "ipv6";
    default:
      return "all families";
  }
}

const char *ProtoText(uint8_t p) {
  switch (p) {
    case IPPROTO_TCP:
      return "tcp";
    case IPPROTO_UDP:
      return "udp";
    case IPPROTO_SCTP:
      return "sctp";
    default:
      return "?";
  }
}

// ---- parsing ----------------------------------------------------------------------------------

// Collects the attributes of one nest (or message) by type; unknown types beyond `max` are skipped.
template <size_t N>
struct Attrs {
  const struct nlattr *tb[N + 1] = {};
  static int Collect(const struct nlattr *a, void *data) {
    auto *self = static_cast<Attrs *>(data);
    const uint16_t t = mnl_attr_get_type(a);
    if (t <= N) self->tb[t] = a;
    return MNL_CB_OK;
  }
  bool ParseNested(const struct nlattr *nest) { return nest && mnl_attr_parse_nested(nest, Collect, this) >= 0; }
  const struct nlattr *operator[](int t) const { return tb[t]; }
};

bool GetU8(const struct nlattr *a, uint8_t *v) {
  if (!a || mnl_attr_validate(a, MNL_TYPE_U8) < 0) return false;
  *v = mnl_attr_get_u8(a);
  return true;
}
bool GetU16(const struct nlattr *a, uint16_t *v) {
  if (!a || mnl_attr_validate(a, MNL_TYPE_U16) < 0) return false;
  *v = mnl_attr_get_u16(a);  // as sent (network order for ports, ids and zones)
  return true;
}
bool GetU32(const struct nlattr *a, uint32_t *v) {
  if (!a || mnl_attr_validate(a, MNL_TYPE_U32) < 0) return false;
  *v = mnl_attr_get_u32(a);
  return true;
}

// An IPv4 (4 bytes) or IPv6 (16 bytes) address attribute, into the first bytes of `a`.
bool GetAddr(const struct nlattr *attr, size_t len, Addr *a) {
  if (!attr || mnl_attr_get_payload_len(attr) != len) return false;
  a->fill(0);
  memcpy(a->data(), mnl_attr_get_payload(attr), len);
  return true;
}

struct Tuple {
  uint8_t family = AF_INET;
  Addr src{}, dst{};
  uint8_t proto = 0;
  uint16_t sport_be = 0, dport_be = 0;
};

bool ParseTuple(const struct nlattr *nest, Tuple *t) {
  Attrs<CTA_TUPLE_MAX> tuple;
  if (!tuple.ParseNested(nest)) return false;
  Attrs<CTA_IP_MAX> ip;
  Attrs<CTA_PROTO_MAX> proto;
  if (!ip.ParseNested(tuple[CTA_TUPLE_IP]) || !proto.ParseNested(tuple[CTA_TUPLE_PROTO])) return false;
  if (ip[CTA_IP_V4_SRC]) {
    t->family = AF_INET;
    if (!GetAddr(ip[CTA_IP_V4_SRC], 4, &t->src) || !GetAddr(ip[CTA_IP_V4_DST], 4, &t->dst)) return false;
  } else {
    t->family = AF_INET6;
    if (!GetAddr(ip[CTA_IP_V6_SRC], 16, &t->src) || !GetAddr(ip[CTA_IP_V6_DST], 16, &t->dst))
      return false;  // neither family
  }
  if (!GetU8(proto[CTA_PROTO_NUM], &t->proto)) return false;
  // Port-less protocols (icmp) have no ports; they never match a flow.
  return GetU16(proto[CTA_PROTO_SRC_PORT], &t->sport_be) && GetU16(proto[CTA_PROTO_DST_PORT], &t->dport_be);
}

// One entry of a dump, as much as matching and deleting it needs.
struct Entry {
  Tuple orig, reply;
  uint32_t id_be = 0;
  bool has_id = false;
  uint16_t zone_be = 0;
  bool has_zone = false;
  bool has_tcp_state = false;
  uint8_t tcp_state = 0;
};

bool ParseEntry(const struct nlmsghdr *nlh, Entry *e) {
  Attrs<CTA_MAX> top;
  if (mnl_attr_parse(nlh, sizeof(struct nfgenmsg), Attrs<CTA_MAX>::Collect, &top) < 0) return false;
  if (!ParseTuple(top[CTA_TUPLE_ORIG], &e->orig) || !ParseTuple(top[CTA_TUPLE_REPLY], &e->reply)) return false;
  e->has_id = GetU32(top[CTA_ID], &e->id_be);
  e->has_zone = GetU16(top[CTA_ZONE], &e->zone_be);
  Attrs<CTA_PROTOINFO_MAX> info;
  Attrs<CTA_PROTOINFO_TCP_MAX> tcp;
  if (info.ParseNested(top[CTA_PROTOINFO]) && tcp.ParseNested(info[CTA_PROTOINFO_TCP]))
    e->has_tcp_state = GetU8(tcp[CTA_PROTOINFO_TCP_STATE], &e->tcp_state);
  return true;
}

// ---- requests ---------------------------------------------------------------------------------

// `family`: that of the entries asked for (AF_UNSPEC in a dump: every family).
struct nlmsghdr *PutHeader(char *buf, uint8_t msg, uint16_t flags, uint32_t seq, uint8_t family) {
  struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | msg;
  nlh->nlmsg_flags = NLM_F_REQUEST | flags;
  nlh->nlmsg_seq = seq;
  auto *nfg = static_cast<struct nfgenmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct nfgenmsg)));
  nfg->nfgen_family = family;
  nfg->version = NFNETLINK_V0;
  nfg->res_id = 0;
  return nlh;
}

void PutTuple(struct nlmsghdr *nlh, uint16_t type, const Tuple &t, bool src, bool dst, bool ports) {
  struct nlattr *tuple = mnl_attr_nest_start(nlh, type);
  struct nlattr *ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
  const size_t len = t.family == AF_INET6 ? 16 : 4;
  if (src) mnl_attr_put(nlh, t.family == AF_INET6 ? CTA_IP_V6_SRC : CTA_IP_V4_SRC, len, t.src.data());
  if (dst) mnl_attr_put(nlh, t.family == AF_INET6 ? CTA_IP_V6_DST : CTA_IP_V4_DST, len, t.dst.data());
  mnl_attr_nest_end(nlh, ip);
  struct nlattr *proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
  mnl_attr_put_u8(nlh, CTA_PROTO_NUM, t.proto);
  if (ports && src) mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, t.sport_be);
  if (ports) mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, t.dport_be);
  mnl_attr_nest_end(nlh, proto);
  mnl_attr_nest_end(nlh, tuple);
}

// One dump of the entries of address family `family` (AF_UNSPEC: of every family) and layer-4
// protocol `proto` (0: every protocol, the table read whole): each is passed to `match`, which
// returns the index of the requested flow it belongs to, or -1. The kernel skips the entries of
// other families itself (nfgen_family, with or without a filter), and filters on the protocol
// when it can (CTA_FILTER, 5.8+): it walks its whole hash table either way (~10 ms for 262,144
// buckets, however few entries there are), so one dump serves every virtual address of the family
// and protocol. Returns false, having read nothing, when the kernel refused
// the filter (the caller then reads the table whole); retries when the table changed under the dump.
template <typename Match>
bool Dump(nft::Socket *s, uint8_t family, uint8_t proto, const Match &match,
          std::vector<std::pair<Entry, size_t>> *out) {
  for (int attempt = 0;; attempt++) {
    alignas(struct nlmsghdr) char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = PutHeader(buf, IPCTNL_MSG_CT_GET, NLM_F_DUMP, s->NextSeq(), family);
    if (proto) {
      Tuple t;
      t.family = family;
      t.proto = proto;
      PutTuple(nlh, CTA_TUPLE_ORIG, t, false, false, false);
      struct nlattr *f = mnl_attr_nest_start(nlh, CTA_FILTER);
      mnl_attr_put_u32(nlh, CTA_FILTER_ORIG_FLAGS, kFilterProtoNum);
      mnl_attr_nest_end(nlh, f);
    }
    const size_t first = out->size();
    bool interrupted = false;
    const int err = s->Request(
        nlh,
        [&](const struct nlmsghdr *m) {
          if (NFNL_MSG_TYPE(m->nlmsg_type) != IPCTNL_MSG_CT_NEW) return;
          Entry e;
          if (!ParseEntry(m, &e) || (proto && e.orig.proto != proto) ||
              (family != AF_UNSPEC && e.orig.family != family))
            return;
          const long i = match(e);
          if (i >= 0) out->emplace_back(e, static_cast<size_t>(i));
        },
        &interrupted);
    if (err && proto && (err == EINVAL || err == EOPNOTSUPP)) {
      out->resize(first);
      return false;  // a kernel without CTA_FILTER tuple filtering
    }
    if (err)
      Throw(err, std::string("dumping the conntrack table (") + FamilyText(family) + ", " +
                     (proto ? ProtoText(proto) : "all protocols") + ")");
    if (interrupted && attempt + 1 < kDumpAttempts) {
      out->resize(first);  // the table changed under the dump: read again
      continue;
    }
    return true;
  }
}

// nf_conntrack_count of the calling thread's network namespace (the sysctl files under
// /proc/sys/net are per namespace, resolved when opened); -1 when it cannot be read (no conntrack
// module loaded: no table at all).
long ConntrackCount() {
  FILE *f = fopen("/proc/sys/net/netfilter/nf_conntrack_count", "re");
  if (!f) return -1;
  long n = -1;
  if (fscanf(f, "%ld", &n) != 1) n = -1;
  fclose(f);
  return n;
}

// Whether the thread has CAP_NET_ADMIN (effective): when the table is empty and no dump is made, a
// caller without it is still refused, as the dump would have been.
bool HasNetAdmin() {
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &hdr, data) != 0) return true;  // cannot tell: let the kernel decide later
  return data[CAP_NET_ADMIN / 32].effective & (1u << (CAP_NET_ADMIN % 32));
}

// A requested flow as the dump sees it: (family, protocol, original destination, reply source),
// ports in network byte order.
struct Key {
  uint8_t family;
  uint8_t proto;
  Addr vip_ip;
  uint16_t vip_port_be;
  Addr dst_ip;
  uint16_t dst_port_be;
  bool operator==(const Key &o) const {
    return family == o.family && proto == o.proto && vip_port_be == o.vip_port_be && dst_port_be == o.dst_port_be &&
           vip_ip == o.vip_ip && dst_ip == o.dst_ip;
  }
};
struct KeyHash {
  static uint64_t Half(const Addr &a, size_t at) {
    uint64_t v;
    memcpy(&v, a.data() + at, sizeof v);
    return v;
  }
  size_t operator()(const Key &k) const {
    uint64_t h =
        ((uint64_t{k.vip_port_be} << 32) | (uint64_t{k.dst_port_be} << 16) | (uint64_t{k.family} << 8) | k.proto) *
        0x9E3779B97F4A7C15ull;
    for (uint64_t w : {Half(k.vip_ip, 0), Half(k.vip_ip, 8), Half(k.dst_ip, 0), Half(k.dst_ip, 8)}) {
      h ^= (w + 0x7F4A7C159E3779B9ull + (h << 6) + (h >> 2)) * 0xC2B2AE3D27D4EB4Full;
    }
    return static_cast<size_t>(h ^ (h >> 31));
  }
};

// `tcp 10.0.0.1:40000 -> 10.0.0.10:80`: an entry's original tuple, for error messages.
std::string TupleText(const Tuple &t) {
  return std::string(ProtoText(t.proto)) + " " + EndpointText(t.family, t.src, ntohs(t.sport_be)) + " -> " +
         EndpointText(t.family, t.dst, ntohs(t.dport_be));
}

// Deletes one entry by its original tuple (and id and zone, when the dump gave them). Returns 0,
// or ENOENT when it is gone already; other errors throw.
int Delete(nft::Socket *s, const Entry &e) {
  alignas(struct nlmsghdr) char buf[MNL_SOCKET_BUFFER_SIZE];
  struct nlmsghdr *nlh = PutHeader(buf, IPCTNL_MSG_CT_DELETE, 0, s->NextSeq(), e.orig.family);
  PutTuple(nlh, CTA_TUPLE_ORIG, e.orig, true, true, true);
  if (e.has_id) mnl_attr_put_u32(nlh, CTA_ID, e.id_be);
  if (e.has_zone) mnl_attr_put_u16(nlh, CTA_ZONE, e.zone_be);
  const int err = s->Request(nlh, [](const struct nlmsghdr *) {});
  if (err && err != ENOENT) Throw(err, "deleting the conntrack entry " + TupleText(e.orig));
  return err;
}

// Deletes, in one pass of the kernel over its table, the tcp entries of IPv4 flow `f` that have seen no
// reply (IPS_SEEN_REPLY clear) when the kernel reaches them: the kernel checks each entry and deletes
// it in the same step, so a handshake the destination answers after the dump (its SYN-ACK sets
// IPS_SEEN_REPLY) is left alone. Deleting such an entry by tuple would cut a connection that has just
// been established: the rest of its packets would no longer be translated. A delete message with
// CTA_FILTER and a partial tuple is a filtered flush from Linux 6.12 on ("support CTA_FILTER for
// flush"); earlier kernels read the partial tuple as an exact one and refuse it (EINVAL, nothing
// deleted). Returns 0, or that EINVAL (EOPNOTSUPP: a kernel that has CTA_FILTER but refuses it in a
// flush); other errors throw.
int DeleteUnanswered(nft::Socket *s, const Flow &f) {
  alignas(struct nlmsghdr) char buf[MNL_SOCKET_BUFFER_SIZE];
  const uint8_t family = f.vip.family;
  struct nlmsghdr *nlh = PutHeader(buf, IPCTNL_MSG_CT_DELETE, 0, s->NextSeq(), family);
  // The original direction: to the virtual address and port; the reply direction: from the
  // removed destination and port. PutTuple also writes the reply's destination port (0 here): the
  // kernel reads only the fields the filter's flags name.
  Tuple orig, reply;
  orig.family = reply.family = family;
  orig.proto = reply.proto = f.proto;
  orig.dst = f.vip.ip;
  orig.dport_be = htons(f.vip.port);
  reply.src = f.destination.ip;
  reply.sport_be = htons(f.destination.port);
  PutTuple(nlh, CTA_TUPLE_ORIG, orig, false, true, true);
  PutTuple(nlh, CTA_TUPLE_REPLY, reply, true, false, true);
  struct nlattr *filter = mnl_attr_nest_start(nlh, CTA_FILTER);
  mnl_attr_put_u32(nlh, CTA_FILTER_ORIG_FLAGS, kFilterIpDst | kFilterProtoNum | kFilterProtoDstPort);
  mnl_attr_put_u32(nlh, CTA_FILTER_REPLY_FLAGS, kFilterIpSrc | kFilterProtoNum | kFilterProtoSrcPort);
  mnl_attr_nest_end(nlh, filter);
  // status & IPS_SEEN_REPLY == 0: not answered.
  mnl_attr_put_u32(nlh, CTA_STATUS, htonl(0));
  mnl_attr_put_u32(nlh, CTA_STATUS_MASK, htonl(IPS_SEEN_REPLY));
  const int err = s->Request(nlh, [](const struct nlmsghdr *) {});
  if (err && err != EINVAL && err != EOPNOTSUPP)
    Throw(err, std::string("deleting the unanswered conntrack entries of tcp ") +
                   EndpointText(family, f.vip.ip, f.vip.port) + " -> " +
                   EndpointText(family, f.destination.ip, f.destination.port));
  return err;
}

// Entry `e` as the table holds it now, into `now`: false when it is gone, or when its tuple now
// belongs to another entry (another id: a new connection on the same ports).
bool LookUp(nft::Socket *s, const Entry &e, Entry *now) {
  alignas(struct nlmsghdr) char buf[MNL_SOCKET_BUFFER_SIZE];
  struct nlmsghdr *nlh = PutHeader(buf, IPCTNL_MSG_CT_GET, 0, s->NextSeq(), e.orig.family);
  PutTuple(nlh, CTA_TUPLE_ORIG, e.orig, true, true, true);
  if (e.has_zone) mnl_attr_put_u16(nlh, CTA_ZONE, e.zone_be);
  bool same = false;
  const int err = s->Request(nlh, [&](const struct nlmsghdr *m) {
    if (NFNL_MSG_TYPE(m->nlmsg_type) == IPCTNL_MSG_CT_NEW && ParseEntry(m, now))
      same = !e.has_id || !now->has_id || now->id_be == e.id_be;
  });
  if (err == ENOENT) return false;
  if (err) Throw(err, "reading the conntrack entry " + TupleText(e.orig));
  return same;
}

}  // namespace

// A connection whose destination has not answered (yet): the client's next SYN should go elsewhere.
// SYN_RECV is left alone: the destination answered, so it is alive, and deleting the entry would
// only break a handshake that is about to complete.
bool TcpHalfOpen(uint8_t state) { return state == TCP_CONNTRACK_NONE || state == TCP_CONNTRACK_SYN_SENT; }

bool TcpOpen(uint8_t state) {
  return state == TCP_CONNTRACK_ESTABLISHED || state == TCP_CONNTRACK_FIN_WAIT || state == TCP_CONNTRACK_CLOSE_WAIT ||
         state == TCP_CONNTRACK_LAST_ACK;
}

FlushResult Flush(const std::vector<Flow> &flows, bool kernel_filter) {
  FlushResult r;
  r.kernel_filter = kernel_filter;
  r.conditional_delete = kernel_filter;
  r.counts.resize(flows.size());
  if (flows.empty()) return r;
  // Every requested flow, by what a dumped entry shows of it; the same flow twice: the first counts.
  std::unordered_map<Key, size_t, KeyHash> wanted;
  wanted.reserve(flows.size());
  std::vector<std::pair<uint8_t, uint8_t>> dumps;  // (family, protocol), each once, in the order first asked
  bool v4 = false, v6 = false;
  for (size_t i = 0; i < flows.size(); i++) {
    const Flow &f = flows[i];
    const uint8_t family = f.vip.family;
    wanted.emplace(Key{family, f.proto, f.vip.ip, htons(f.vip.port), f.destination.ip, htons(f.destination.port)}, i);
    (family == AF_INET6 ? v6 : v4) = true;
    bool seen = false;
    for (const auto &d : dumps) seen = seen || (d.first == family && d.second == f.proto);
    if (!seen) dumps.emplace_back(family, f.proto);
  }
  // Checked here, on the worker thread, not in JS: no entry in this namespace's table (or no
  // conntrack at all), nothing to find, and no dump (each one walks the kernel's whole hash table).
  const long count = ConntrackCount();
  if (count <= 0) {
    if (!HasNetAdmin()) Throw(EPERM, "reading the conntrack table");
    r.skipped = true;
    return r;
  }
  const auto match = [&](const Entry &e) -> long {
    if (e.reply.family != e.orig.family) return -1;
    const auto it =
        wanted.find(Key{e.orig.family, e.orig.proto, e.orig.dst, e.orig.dport_be, e.reply.src, e.reply.sport_be});
    return it == wanted.end() ? -1 : static_cast<long>(it->second);
  };
  nft::Socket s;
  std::vector<std::pair<Entry, size_t>> found;
  bool whole = !r.kernel_filter;
  // One dump per family and protocol (filtered in the kernel), or one of the whole table (of the
  // one family asked, or of every family when both are).
  for (size_t i = 0; !whole && i < dumps.size(); i++) {
    r.dumps++;
    if (!Dump(&s, dumps[i].first, dumps[i].second, match, &found)) {
      r.kernel_filter = false;  // refused: read the table whole (once, for every family and protocol)
      found.clear();
      whole = true;
    }
  }
  if (whole) {
    r.dumps++;
    Dump(&s, v4 && v6 ? AF_UNSPEC : (v6 ? AF_INET6 : AF_INET), 0, match, &found);
  }
  // The tcp flows whose unanswered entries the kernel has deleted itself (DeleteUnanswered).
  std::vector<bool> swept(flows.size(), false);
  std::vector<std::pair<Entry, size_t>> later;  // half-open tcp entries to delete by tuple
  for (const auto &[e, i] : found) {
    FlowCount &c = r.counts[i];
    if (flows[i].proto == IPPROTO_TCP) {
      // tcp: only half-open entries go. Open connections are left to finish and counted; closed ones
      // (TIME_WAIT, CLOSE) are left to expire, uncounted. No state in the dump: left, counted.
      if (!(e.has_tcp_state && TcpHalfOpen(e.tcp_state))) {
        if (!e.has_tcp_state || TcpOpen(e.tcp_state)) c.kept++;
        continue;
      }
      // Half-open in the dump: the kernel deletes the flow's entries that are still unanswered (one
      // pass for the flow, at its first such entry); each one found is then counted by whether it
      // is gone. One the destination answered meanwhile is still there: an open connection, kept.
      // IPv4 only: the kernel's filter compares IPv6 addresses the wrong way round (it skips the
      // entries whose address equals the filter's: `!ipv6_addr_cmp` in ctnetlink_filter_match_tuple,
      // up to 6.18 at least), so an IPv6 filtered flush would delete other addresses' entries.
      // IPv6 entries go one by one, by tuple, after a pause (below).
      if (r.conditional_delete && flows[i].vip.family == AF_INET && !swept[i]) {
        r.sweeps++;
        if (DeleteUnanswered(&s, flows[i]) == 0)
          swept[i] = true;
        else
          r.conditional_delete = false;  // a kernel before 6.12: one by one, by tuple, from here on
      }
      if (swept[i]) {
        Entry now;
        if (!LookUp(&s, e, &now))
          c.deleted++;
        else if (!now.has_tcp_state || TcpOpen(now.tcp_state))
          c.kept++;  // answered after the dump: an open connection, left to finish
        continue;
      }
      later.emplace_back(e, i);  // by tuple, after the pause
      continue;
    }
    if (Delete(&s, e) == 0) c.deleted++;
  }
  // tcp entries deleted by tuple (IPv6, older kernels): only if still half-open after a pause, read
  // again right before each delete. A live destination answers a SYN far sooner; a client whose SYN
  // went unanswered retransmits it only after 1 s. So a handshake completing between the dump and
  // the delete is not cut, short of one completing between this read and the delete that follows.
  if (!later.empty()) {
    r.paused = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(kHalfOpenGraceMs));
    for (const auto &[e, i] : later) {
      FlowCount &c = r.counts[i];
      Entry now;
      if (!LookUp(&s, e, &now)) continue;  // gone (expired), or its ports reused: not ours to count
      if (now.has_tcp_state && TcpHalfOpen(now.tcp_state)) {
        if (Delete(&s, e) == 0) c.deleted++;
      } else if (!now.has_tcp_state || TcpOpen(now.tcp_state)) {
        c.kept++;  // answered meanwhile: an open connection, left to finish
      }
    }
  }
  return r;
}

}  // namespace ct
}  // namespace iptlb
