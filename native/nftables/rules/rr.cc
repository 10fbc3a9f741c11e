// A round-robin profile's rule:
// ip daddr V P dport port [fib daddr type local] dnat to ip daddr . P dport . numgen inc mod n offset 1000000+T(n) map
// @be_P
#include "expr.h"

namespace iptlb {
namespace nft {
namespace rules {
namespace rr {

void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids) {
  // ip daddr V P dport port [fib daddr type local] dnat to ip daddr . P dport . numgen inc mod n offset
  // 1000000+T(n) map @be_P comment "iptlb:<owner>"
  EncodeVipSelector(f, b, r);
  EncodeVipKey(f, b);
  b->Numgen(f.index_reg, r.n, NFT_NG_INCREMENTAL);
  b->Lookup(BackendMapName(r.proto), ids.backend_map, NFT_REG_1);
  b->Dnat(f.l.nfproto, f.port_reg);
}

bool Decode(const Shape &f, const Exprs &x, Rule *out) {
  Cursor c(x);
  Rule r;
  if (!VipSelector(f, &c, &r)) return false;
  std::string map;
  if (!(VipKey(&c, f) && c.Numgen(f.index_reg, &r.n, NFT_NG_INCREMENTAL) && c.Lookup(&map, NFT_REG_1) &&
        c.Dnat(f.l.nfproto, f.port_reg) && c.done()))
    return false;
  if (map != BackendMapName(r.proto) || r.n == 0) return false;
  r.kind = Rule::Kind::kRr;
  *out = std::move(r);
  return true;
}

}  // namespace rr
}  // namespace rules
}  // namespace nft
}  // namespace iptlb
