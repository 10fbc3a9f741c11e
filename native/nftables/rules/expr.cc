#include "expr.h"

namespace iptlb {
namespace nft {
namespace rules {

// `ip[6] daddr . P dport` into reg 1 and the register after the address.
bool VipKey(Cursor *c, const Shape &f) {
  return c->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.daddr_offset, f.l.addr_len, NFT_REG_1) &&
         c->Payload(NFT_PAYLOAD_TRANSPORT_HEADER, kDportOffset, 2, f.port_reg);
}

// The selector the profile-owned rules start with: `ip[6] daddr V P dport port [fib daddr type local]`.
bool VipSelector(const Shape &f, Cursor *c, Rule *r) {
  if (!(c->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.daddr_offset, f.l.addr_len, NFT_REG_1) &&
        c->Cmp(NFT_CMP_EQ, r->vip.ip.data(), f.l.addr_len) && c->L4Proto(&r->proto) &&
        c->Payload(NFT_PAYLOAD_TRANSPORT_HEADER, kDportOffset, 2, NFT_REG_1) && c->Cmp(NFT_CMP_EQ, &r->vip.port, 2)))
    return false;
  const size_t at = c->pos();
  r->local = c->FibLocal();
  if (!r->local) c->seek(at);
  return true;
}

// `ip[6] daddr V P dport port [fib daddr type local]`: the start of every profile-owned rule (see VipSelector).
void EncodeVipSelector(const Shape &f, RuleBuilder *b, const Rule &r) {
  b->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.daddr_offset, f.l.addr_len, NFT_REG_1);
  b->Cmp(NFT_CMP_EQ, r.vip.ip.data(), f.l.addr_len);
  b->L4Proto(r.proto);
  b->Payload(NFT_PAYLOAD_TRANSPORT_HEADER, kDportOffset, 2, NFT_REG_1);
  b->Cmp(NFT_CMP_EQ, &r.vip.port, 2);
  if (r.local) b->FibLocal();
}

// `ip[6] daddr . P dport` (the key of the dispatch sets, the start of the backend maps' keys).
void EncodeVipKey(const Shape &f, RuleBuilder *b) {
  b->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.daddr_offset, f.l.addr_len, NFT_REG_1);
  b->Payload(NFT_PAYLOAD_TRANSPORT_HEADER, kDportOffset, 2, f.port_reg);
}

}  // namespace rules
}  // namespace nft
}  // namespace iptlb
