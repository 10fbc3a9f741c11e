// A profile's masquerade rule:
// ct status dnat ct original ip daddr V ct original protocol P ct original proto-dst port masquerade
#include "expr.h"

namespace iptlb {
namespace nft {
namespace rules {
namespace masq {

void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &) {
  // ct status dnat ct original ip daddr V ct original protocol P ct original proto-dst port masquerade
  b->Ct(NFT_CT_STATUS, -1);
  ExprPtr bw = b->New("bitwise");
  const uint32_t mask = IPS_DST_NAT, zero = 0;
  nftnl_expr_set_u32(bw.get(), NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
  nftnl_expr_set_u32(bw.get(), NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
  nftnl_expr_set_u32(bw.get(), NFTNL_EXPR_BITWISE_LEN, 4);
  nftnl_expr_set(bw.get(), NFTNL_EXPR_BITWISE_MASK, &mask, 4);
  nftnl_expr_set(bw.get(), NFTNL_EXPR_BITWISE_XOR, &zero, 4);
  b->Raw(std::move(bw));
  b->Cmp(NFT_CMP_NEQ, &zero, 4);
  b->Ct(f.l.ct_dst_key, IP_CT_DIR_ORIGINAL);
  b->Cmp(NFT_CMP_EQ, r.vip.ip.data(), f.l.addr_len);
  b->Ct(NFT_CT_PROTOCOL, IP_CT_DIR_ORIGINAL);
  const uint8_t n = ProtoNumber(r.proto);
  b->Cmp(NFT_CMP_EQ, &n, 1);
  b->Ct(NFT_CT_PROTO_DST, IP_CT_DIR_ORIGINAL);
  b->Cmp(NFT_CMP_EQ, &r.vip.port, 2);
  b->Raw(b->New("masq"));
}

bool Decode(const Shape &f, const Exprs &x, Rule *out) {
  Cursor c(x);
  Rule r;
  uint8_t proto = 0;
  if (!(c.CtStatusDnat() && c.Ct(f.l.ct_dst_key, true) && c.Cmp(NFT_CMP_EQ, r.vip.ip.data(), f.l.addr_len) &&
        c.Ct(NFT_CT_PROTOCOL, false) && c.Cmp(NFT_CMP_EQ, &proto, 1) && Cursor::ProtoOf(proto, &r.proto) &&
        c.Ct(NFT_CT_PROTO_DST, true) && c.Cmp(NFT_CMP_EQ, &r.vip.port, 2) && c.Masq() && c.done()))
    return false;
  r.kind = Rule::Kind::kMasq;
  *out = std::move(r);
  return true;
}

}  // namespace masq
}  // namespace rules
}  // namespace nft
}  // namespace iptlb
