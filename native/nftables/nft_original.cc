#include "nft_original.h"

#include <arpa/inet.h>  // before the linux/ headers: netinet/in.h first
#include <libnftnl/common.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/xt_sctp.h>
#include <linux/netfilter/xt_tcpudp.h>

#include <cerrno>
#include <cstring>
#include <map>

#include "expr.h"
#include "nft_objects.h"
#include "nft_rules.h"

namespace iptlb {
namespace nft {
namespace {

constexpr const char *kNat = "nat";
constexpr size_t kRequestBuffer = 4096;
constexpr const char kProfileChain[] = "IPTLB_NAT_";

struct RequestBuf {
  alignas(struct nlmsghdr) char data[kRequestBuffer];
};

// What a register holds, as far as a jump's match uses it.
enum class Load { kDaddr, kProto, kDport, kOther };

void AddUnknown(OriginalJump *j, const std::string &what) {
  if (j->unknown.find(what) != std::string::npos) return;
  if (!j->unknown.empty()) j->unknown += ", ";
  j->unknown += what;
}

// xt match tcp/udp/sctp (iptables-nft's compat expression, e.g. sctp's, or tcp's with flags): the
// destination port when the match is exactly `--dport P` (one port, no source port, no inversion,
// no other option); otherwise the match is not read.
bool XtPort(const nftnl_expr *e, const std::string &name, int *port) {
  uint32_t len = 0;
  const void *info = nftnl_expr_get(e, NFTNL_EXPR_MT_INFO, &len);
  if (!info) return false;
  auto single = [&](const uint16_t *spts, const uint16_t *dpts) {
    if (spts[0] != 0 || spts[1] != 0xffff || dpts[0] != dpts[1]) return false;
    *port = dpts[0];
    return true;
  };
  if (name == "tcp" && len >= sizeof(xt_tcp)) {
    xt_tcp t;
    std::memcpy(&t, info, sizeof t);
    return t.option == 0 && t.flg_mask == 0 && t.invflags == 0 && single(t.spts, t.dpts);
  }
  if (name == "udp" && len >= sizeof(xt_udp)) {
    xt_udp u;
    std::memcpy(&u, info, sizeof u);
    return u.invflags == 0 && single(u.spts, u.dpts);
  }
  if (name == "sctp" && len >= sizeof(xt_sctp_info)) {
    xt_sctp_info s;
    std::memcpy(&s, info, sizeof s);
    if (s.flags != XT_SCTP_DEST_PORTS || s.invflags != 0 || s.dpts[0] != s.dpts[1]) return false;
    *port = s.dpts[0];
    return true;
  }
  return false;
}

// Decodes one rule of chain `chain`; false when it is not the original's jump (no jump to an
// `IPTLB_NAT_…` chain as its verdict, or a comment).
bool Decode(Family f, const char *chain, const nftnl_rule *r, OriginalJump *out) {
  std::string comment;
  if (RuleComment(r, &comment)) return false;
  rules::Exprs x;
  struct nftnl_expr_iter *it = nftnl_expr_iter_create(r);
  if (!it) return false;
  for (const nftnl_expr *e = nftnl_expr_iter_next(it); e; e = nftnl_expr_iter_next(it)) x.push_back(e);
  nftnl_expr_iter_destroy(it);
  if (x.empty()) return false;
  const nftnl_expr *verdict = x.back();
  if (rules::Name(verdict) != "immediate" || !nftnl_expr_is_set(verdict, NFTNL_EXPR_IMM_VERDICT) ||
      !nftnl_expr_is_set(verdict, NFTNL_EXPR_IMM_CHAIN))
    return false;
  const int v = static_cast<int>(nftnl_expr_get_u32(verdict, NFTNL_EXPR_IMM_VERDICT));
  const char *target = nftnl_expr_get_str(verdict, NFTNL_EXPR_IMM_CHAIN);
  if ((v != NFT_JUMP && v != NFT_GOTO) || !target || std::strncmp(target, kProfileChain, sizeof kProfileChain - 1) != 0)
    return false;
  OriginalJump j;
  j.chain = chain;
  j.target = target;
  if (nftnl_rule_is_set(r, NFTNL_RULE_HANDLE)) j.handle = nftnl_rule_get_u64(r, NFTNL_RULE_HANDLE);
  if (v == NFT_GOTO) AddUnknown(&j, "goto");
  const FamilyLayout &l = LayoutOf(f);
  // The network header's destination address, and its protocol field (ip: protocol; ip6: next header).
  const uint32_t daddr_off = f == Family::kIpv6 ? 24 : 16;
  const uint32_t proto_off = f == Family::kIpv6 ? 6 : 9;
  std::map<uint32_t, Load> regs;
  for (size_t i = 0; i + 1 < x.size(); i++) {
    const nftnl_expr *e = x[i];
    const std::string name = rules::Name(e);
    if (name == "counter") continue;
    if (name == "payload" && !nftnl_expr_is_set(e, NFTNL_EXPR_PAYLOAD_SREG) &&
        nftnl_expr_is_set(e, NFTNL_EXPR_PAYLOAD_DREG)) {
      const uint32_t base = nftnl_expr_get_u32(e, NFTNL_EXPR_PAYLOAD_BASE);
      const uint32_t off = nftnl_expr_get_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET);
      const uint32_t len = nftnl_expr_get_u32(e, NFTNL_EXPR_PAYLOAD_LEN);
      Load load = Load::kOther;
      if (base == NFT_PAYLOAD_NETWORK_HEADER && off == daddr_off && len == l.addr_len) load = Load::kDaddr;
      if (base == NFT_PAYLOAD_NETWORK_HEADER && off == proto_off && len == 1) load = Load::kProto;
      if (base == NFT_PAYLOAD_TRANSPORT_HEADER && off == rules::kDportOffset && len == 2) load = Load::kDport;
      regs[nftnl_expr_get_u32(e, NFTNL_EXPR_PAYLOAD_DREG)] = load;
      if (load == Load::kOther) AddUnknown(&j, "payload");
      continue;
    }
    if (name == "meta" && nftnl_expr_is_set(e, NFTNL_EXPR_META_DREG)) {
      const bool l4 = nftnl_expr_get_u32(e, NFTNL_EXPR_META_KEY) == NFT_META_L4PROTO;
      regs[nftnl_expr_get_u32(e, NFTNL_EXPR_META_DREG)] = l4 ? Load::kProto : Load::kOther;
      if (!l4) AddUnknown(&j, "meta");
      continue;
    }
    if (name == "cmp") {
      const auto reg = regs.find(nftnl_expr_get_u32(e, NFTNL_EXPR_CMP_SREG));
      uint32_t len = 0;
      const uint8_t *d = static_cast<const uint8_t *>(nftnl_expr_get(e, NFTNL_EXPR_CMP_DATA, &len));
      const bool eq = nftnl_expr_get_u32(e, NFTNL_EXPR_CMP_OP) == NFT_CMP_EQ;
      const Load load = reg == regs.end() ? Load::kOther : reg->second;
      if (!eq || !d || load == Load::kOther) {
        if (load != Load::kOther || reg == regs.end()) AddUnknown(&j, "cmp");
        continue;
      }
      if (load == Load::kDaddr && len == l.addr_len) {
        j.has_addr = true;
        std::memcpy(j.addr.ip.data(), d, len);
      } else if (load == Load::kProto && len == 1) {
        j.proto = d[0];
      } else if (load == Load::kDport && len == 2) {
        j.port = (d[0] << 8) | d[1];
      } else {
        AddUnknown(&j, "cmp");
      }
      continue;
    }
    if (name == "match") {
      const char *mt = nftnl_expr_get_str(e, NFTNL_EXPR_MT_NAME);
      const std::string m = mt ? mt : "";
      if (m == "comment") return false;  // iptables-nft's -m comment: not the original's (it wrote none)
      int port = -1;
      if (XtPort(e, m, &port)) {
        j.port = port;
        if (j.proto < 0) j.proto = m == "tcp" ? IPPROTO_TCP : m == "udp" ? IPPROTO_UDP : IPPROTO_SCTP;
      } else {
        AddUnknown(&j, "xt match " + m);
      }
      continue;
    }
    // Anything else: not read, and what it leaves in a register is not what a load there said (a bitwise mask
    // of the address, say): every register is forgotten, so no later comparison is read as a plain match.
    AddUnknown(&j, name);
    for (auto &r : regs) r.second = Load::kOther;
  }
  *out = std::move(j);
  return true;
}

}  // namespace

std::vector<OriginalJump> OriginalJumps(Socket *s, Family f) {
  std::vector<OriginalJump> out;
  for (const char *chain : {"OUTPUT", "PREROUTING"}) {
    RequestBuf b;
    struct nlmsghdr *nlh =
        nftnl_nlmsg_build_hdr(b.data, NFT_MSG_GETRULE, LayoutOf(f).nfproto, NLM_F_DUMP, s->NextSeq());
    RulePtr q = Own<RulePtr>(nftnl_rule_alloc());
    nftnl_rule_set_str(q.get(), NFTNL_RULE_TABLE, kNat);
    nftnl_rule_set_str(q.get(), NFTNL_RULE_CHAIN, chain);
    nftnl_rule_nlmsg_build_payload(nlh, q.get());
    const int err = s->Request(nlh, [&](const struct nlmsghdr *m) {
      RulePtr r = Own<RulePtr>(nftnl_rule_alloc());
      if (nftnl_rule_nlmsg_parse(m, r.get()) < 0) return;
      const char *t = nftnl_rule_get_str(r.get(), NFTNL_RULE_TABLE);
      const char *c = nftnl_rule_get_str(r.get(), NFTNL_RULE_CHAIN);
      if (!t || !c || std::strcmp(t, kNat) != 0 || std::strcmp(c, chain) != 0) return;
      OriginalJump j;
      if (Decode(f, chain, r.get(), &j)) out.push_back(std::move(j));
    });
    if (err == ENOENT) continue;  // no such table or chain
    if (err)
      ThrowErrno("EKERNEL", err,
                 std::string("listing the rules of chain ") + chain + " of table " + LayoutOf(f).name + " nat");
  }
  return out;
}

}  // namespace nft
}  // namespace iptlb
