// A profile's LOG rule: ip daddr V P dport port [fib daddr type local] log prefix "…" level L
#include "expr.h"

namespace iptlb {
namespace nft {
namespace rules {
namespace log {

void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &) {
  // ip daddr V P dport port [fib daddr type local] log prefix "…" level L comment "iptlb:<owner>"
  EncodeVipSelector(f, b, r);
  ExprPtr e = b->New("log");
  nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOG_PREFIX, r.prefix.c_str());
  nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOG_LEVEL, r.level);
  b->Raw(std::move(e));
}

bool Decode(const Shape &f, const Exprs &x, Rule *out) {
  Cursor c(x);
  Rule r;
  if (!VipSelector(f, &c, &r)) return false;
  if (!(c.Log(&r.prefix, &r.level) && c.done())) return false;
  r.kind = Rule::Kind::kLog;
  *out = std::move(r);
  return true;
}

}  // namespace log
}  // namespace rules
}  // namespace nft
}  // namespace iptlb
