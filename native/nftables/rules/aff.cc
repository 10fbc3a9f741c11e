// One destination of a profile with source affinity:
// ip daddr V P dport port [fib daddr type local] <pick> update @S { ip saddr } counter dnat to D
#include "expr.h"

namespace iptlb {
namespace nft {
namespace rules {
namespace aff {

void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids) {
  // ip daddr V P dport port [fib daddr type local] <pick> update @S { ip saddr } counter dnat to D comment
  // "iptlb:<owner>", as nft 1.0.6 encodes it (numgen into reg 1, `<` on the big-endian value; the port in reg 2).
  EncodeVipSelector(f, b, r);
  if (r.pick == Rule::Pick::kHit) {
    b->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1);
    b->Lookup(r.set, ids.affinity_set, -1);
  } else if (r.pick == Rule::Pick::kRandom || r.pick == Rule::Pick::kInc) {
    ExprPtr ng = b->New("numgen");
    nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_DREG, NFT_REG_1);
    nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_MODULUS, r.mod);
    nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_TYPE,
                       r.pick == Rule::Pick::kRandom ? NFT_NG_RANDOM : NFT_NG_INCREMENTAL);
    nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_OFFSET, 0);
    b->Raw(std::move(ng));
    if (r.pick == Rule::Pick::kRandom) {
      ExprPtr bo = b->New("byteorder");
      nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_SREG, NFT_REG_1);
      nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_DREG, NFT_REG_1);
      nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON);
      nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_LEN, 4);
      nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_SIZE, 4);
      b->Raw(std::move(bo));
      const uint32_t lt = htonl(r.lt);
      b->Cmp(NFT_CMP_LT, &lt, 4);
    } else {
      const uint32_t zero = 0;
      b->Cmp(NFT_CMP_EQ, &zero, 4);
    }
  }
  b->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1);
  {
    ExprPtr ds = b->New("dynset");
    nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1);
    nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
    nftnl_expr_set_str(ds.get(), NFTNL_EXPR_DYNSET_SET_NAME, r.set.c_str());
    if (ids.affinity_set) nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_SET_ID, ids.affinity_set);
    b->Raw(std::move(ds));
  }
  b->Raw(b->New("counter"));
  {
    ExprPtr ip = b->New("immediate");
    nftnl_expr_set_u32(ip.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_1);
    nftnl_expr_set(ip.get(), NFTNL_EXPR_IMM_DATA, r.to.ip.data(), f.l.addr_len);
    b->Raw(std::move(ip));
    ExprPtr port = b->New("immediate");
    nftnl_expr_set_u32(port.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_2);
    nftnl_expr_set(port.get(), NFTNL_EXPR_IMM_DATA, &r.to.port, 2);
    b->Raw(std::move(port));
    b->Dnat(f.l.nfproto, NFT_REG_2, NF_NAT_RANGE_PROTO_SPECIFIED);
  }
}

bool Decode(const Shape &f, const Exprs &x, Rule *out) {
  Cursor c(x);
  Rule r;
  if (!VipSelector(f, &c, &r)) return false;
  auto name = [&](size_t i) { return i < x.size() ? Name(x[i]) : std::string(); };
  size_t at = c.pos();
  std::string hit_set;
  if (name(at) == "numgen") {
    const nftnl_expr *ng = x[at];
    if (!U32Is(ng, NFTNL_EXPR_NG_DREG, NFT_REG_1) || !nftnl_expr_is_set(ng, NFTNL_EXPR_NG_MODULUS)) return false;
    if (nftnl_expr_is_set(ng, NFTNL_EXPR_NG_OFFSET) && nftnl_expr_get_u32(ng, NFTNL_EXPR_NG_OFFSET) != 0) return false;
    r.mod = nftnl_expr_get_u32(ng, NFTNL_EXPR_NG_MODULUS);
    c.seek(at + 1);
    if (U32Is(ng, NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM)) {
      const nftnl_expr *bo = at + 1 < x.size() && name(at + 1) == "byteorder" ? x[at + 1] : nullptr;
      if (!bo || !U32Is(bo, NFTNL_EXPR_BYTEORDER_SREG, NFT_REG_1) || !U32Is(bo, NFTNL_EXPR_BYTEORDER_DREG, NFT_REG_1) ||
          !U32Is(bo, NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON) || !U32Is(bo, NFTNL_EXPR_BYTEORDER_LEN, 4) ||
          !U32Is(bo, NFTNL_EXPR_BYTEORDER_SIZE, 4))
        return false;
      c.seek(at + 2);
      uint32_t lt = 0;
      if (!c.Cmp(NFT_CMP_LT, &lt, 4)) return false;
      r.pick = Rule::Pick::kRandom;
      r.lt = ntohl(lt);
    } else if (U32Is(ng, NFTNL_EXPR_NG_TYPE, NFT_NG_INCREMENTAL)) {
      uint32_t v = 1;
      if (!c.Cmp(NFT_CMP_EQ, &v, 4) || v != 0) return false;
      r.pick = Rule::Pick::kInc;
    } else {
      return false;
    }
  } else if (name(at) == "payload" && name(at + 1) == "lookup") {
    if (!(c.Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1) && c.Lookup(&hit_set, -1)))
      return false;
    r.pick = Rule::Pick::kHit;
  } else {
    r.pick = Rule::Pick::kRest;
  }
  if (!c.Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1)) return false;
  at = c.pos();
  if (name(at) != "dynset" || name(at + 1) != "counter" || name(at + 2) != "immediate" || name(at + 3) != "immediate" ||
      name(at + 4) != "nat" || at + 5 != x.size())
    return false;
  const nftnl_expr *ds = x[at];
  if (!U32Is(ds, NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1) || !U32Is(ds, NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE) ||
      nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_SREG_DATA) || !nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_SET_NAME))
    return false;
  if (nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_TIMEOUT) && nftnl_expr_get_u64(ds, NFTNL_EXPR_DYNSET_TIMEOUT) != 0)
    return false;
  r.set = nftnl_expr_get_str(ds, NFTNL_EXPR_DYNSET_SET_NAME);
  if (!AffinitySetTimeout(r.set) || (r.pick == Rule::Pick::kHit && hit_set != r.set)) return false;
  const nftnl_expr *ctr = x[at + 1];
  r.packets = nftnl_expr_is_set(ctr, NFTNL_EXPR_CTR_PACKETS) ? nftnl_expr_get_u64(ctr, NFTNL_EXPR_CTR_PACKETS) : 0;
  r.bytes = nftnl_expr_is_set(ctr, NFTNL_EXPR_CTR_BYTES) ? nftnl_expr_get_u64(ctr, NFTNL_EXPR_CTR_BYTES) : 0;
  uint32_t len = 0;
  const nftnl_expr *ia = x[at + 2];
  const void *a = U32Is(ia, NFTNL_EXPR_IMM_DREG, NFT_REG_1) ? nftnl_expr_get(ia, NFTNL_EXPR_IMM_DATA, &len) : nullptr;
  if (!a || len != f.l.addr_len) return false;
  std::memcpy(r.to.ip.data(), a, len);
  const nftnl_expr *ipt = x[at + 3];
  const void *p = U32Is(ipt, NFTNL_EXPR_IMM_DREG, NFT_REG_2) ? nftnl_expr_get(ipt, NFTNL_EXPR_IMM_DATA, &len) : nullptr;
  if (!p || len != 2) return false;
  std::memcpy(&r.to.port, p, 2);
  c.seek(at + 4);
  if (!(c.Dnat(f.l.nfproto, NFT_REG_2) && c.done())) return false;  // the immediates' registers
  if ((r.pick == Rule::Pick::kRandom && (r.lt == 0 || r.lt > r.mod)) ||
      ((r.pick == Rule::Pick::kRandom || r.pick == Rule::Pick::kInc) && r.mod == 0))
    return false;
  r.kind = Rule::Kind::kAff;
  *out = std::move(r);
  return true;
}

}  // namespace aff
}  // namespace rules
}  // namespace nft
}  // namespace iptlb
