// The dispatch rule: one per (hook, protocol, destination count), shared by the profiles it serves, no comment.
// [fib daddr type local] ip daddr . P dport @set dnat to ip daddr . P dport . numgen random mod n offset T(n) map @be_P
#include "expr.h"

namespace iptlb {
namespace nft {
namespace rules {
namespace dispatch {

void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids) {
  // [fib daddr type local] ip daddr . P dport @set dnat to ip daddr . P dport . numgen random mod n offset T(n) map
  // @be_P
  if (r.hook == Hook::kLoc) b->FibLocal();
  b->L4Proto(r.proto);
  EncodeVipKey(f, b);
  b->Lookup(DispatchSetName(r.hook, r.proto, r.n), ids.dispatch_set, -1);
  EncodeVipKey(f, b);
  b->Numgen(f.index_reg, r.n, NFT_NG_RANDOM);
  b->Lookup(BackendMapName(r.proto), ids.backend_map, NFT_REG_1);
  b->Dnat(f.l.nfproto, f.port_reg);
}

bool Decode(const Shape &f, const Exprs &x, Rule *out) {
  Cursor c(x);
  const bool fib = c.FibLocal();
  if (!fib) c.seek(0);
  Proto p;
  std::string set, map;
  uint32_t mod = 0;
  if (!(c.L4Proto(&p) && VipKey(&c, f) && c.Lookup(&set, -1) && VipKey(&c, f) &&
        c.Numgen(f.index_reg, &mod, NFT_NG_RANDOM) && c.Lookup(&map, NFT_REG_1) && c.Dnat(f.l.nfproto, f.port_reg) &&
        c.done()))
    return false;
  Hook h;
  Proto sp;
  uint32_t n;
  if (!ParseDispatchSetName(set, &h, &sp, &n) || sp != p || n != mod || map != BackendMapName(p) ||
      (h == Hook::kLoc) != fib)
    return false;
  out->kind = Rule::Kind::kDispatch;
  out->hook = h;
  out->proto = p;
  out->n = n;
  return true;
}

}  // namespace dispatch
}  // namespace rules
}  // namespace nft
}  // namespace iptlb
