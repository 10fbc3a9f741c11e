// Standard targets: -j RETURN and -j CHAIN (a jump to a user-defined chain). The entry holds a
// verdict or an offset; libiptc/libip6tc resolve the name at commit, and give it back as the label.
#include "kinds.h"

#include <libiptc/libiptc.h>

namespace iptlb {
namespace xtcodec {
namespace verdict {

bool Encode(Family, const Target &t, Bytes *out, std::string *) {
  const std::string name = t.kind == Target::kReturn ? std::string(IPTC_LABEL_RETURN) : t.chain;
  const size_t size = XT_ALIGN(sizeof(struct xt_standard_target));
  const size_t at = out->size();
  out->resize(at + size, 0);
  auto *st = reinterpret_cast<struct xt_standard_target *>(out->data() + at);
  st->target.u.user.target_size = static_cast<__u16>(size);
  std::strncpy(st->target.u.user.name, name.c_str(), sizeof(st->target.u.user.name) - 1);
  return true;
}

bool Decode(Family, const TargetRead &t, Target *d) {
  if (t.label == IPTC_LABEL_RETURN) {
    d->kind = Target::kReturn;
  } else if (t.user_chain) {
    d->kind = Target::kJump;
    d->chain = t.label;
  } else {
    return false;
  }
  return true;
}

}  // namespace verdict
}  // namespace xtcodec
}  // namespace iptlb
