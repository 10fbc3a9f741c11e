// -m comment --comment C (revision 0): how iptlb marks its rules ("iptlb:<owner>").
#include "kinds.h"

#include <linux/netfilter/xt_comment.h>

namespace iptlb {
namespace xtcodec {
namespace comment {

bool Encode(Family, const Match &m, Bytes *out, std::string *) {
  auto *c = Add<struct xt_comment_info>(out, "comment", 0);
  std::strncpy(c->comment, m.text.c_str(), sizeof(c->comment) - 1);
  return true;
}

bool Decode(Family, const struct xt_entry_match *m, Match *d) {
  const auto *c = m->u.user.revision == 0 ? PayloadOf<struct xt_comment_info>(m) : nullptr;
  if (!c) return false;
  d->kind = Match::kComment;
  d->text = NameOf(c->comment, sizeof(c->comment));
  return true;
}

}  // namespace comment

bool CommentText(const struct xt_entry_match *m, std::string *text) {
  if (std::strcmp(m->u.user.name, "comment") != 0) return false;
  const auto *c = PayloadOf<struct xt_comment_info>(m);
  if (!c) return false;
  *text = NameOf(c->comment, sizeof(c->comment));
  return true;
}
}  // namespace xtcodec
}  // namespace iptlb
