#include "rule_decoder.h"

#include <cstring>

#include "codec.h"

namespace iptlb {
namespace {

// The matches of an entry, in order: f(match) for each until the target (stops at a malformed size).
template <typename F, typename Fn>
void ForEachMatch(const typename F::Entry *e, Fn f) {
  for (size_t off = sizeof(*e); off + sizeof(struct xt_entry_match) <= e->target_offset;) {
    const auto *m = reinterpret_cast<const struct xt_entry_match *>(reinterpret_cast<const char *>(e) + off);
    if (m->u.match_size < sizeof(struct xt_entry_match)) break;  // malformed: stop rather than loop
    f(m);
    off += m->u.match_size;
  }
}

template <typename F>
bool DecodeTarget(const typename F::Entry *e, struct xtc_handle *h, Target *d) {
  const char *label = F::GetTarget(e, h);
  if (!label) return false;
  xtcodec::TargetRead t;
  t.label = label;
  t.t = reinterpret_cast<const struct xt_entry_target *>(reinterpret_cast<const char *>(e) + e->target_offset);
  t.user_chain = F::IsChain(label, h) && !F::Builtin(label, h);
  return xtcodec::DecodeTarget(F::kFamily, t, d);
}

}  // namespace

template <typename F>
std::string CommentOf(const typename F::Entry *e) {
  std::string text;
  bool found = false;
  ForEachMatch<F>(e, [&](const struct xt_entry_match *m) {
    if (!found) found = xtcodec::CommentText(m, &text);
  });
  return found ? text : "";
}

template <typename F>
DecodedRule DecodeRule(const typename F::Entry *e, struct xtc_handle *h) {
  DecodedRule out;
  out.packets = e->counters.pcnt;
  out.bytes = e->counters.bcnt;
  Rule &r = out.rule;
  // Header fields iptlb never sets (source, interfaces, inversions, fragments, other protocols).
  if (!GetHeader<F>(e, &r)) {
    Match u{Match::kUnknown};
    u.text = "(ip header)";
    r.matches.push_back(std::move(u));
  }
  ForEachMatch<F>(e, [&](const struct xt_entry_match *m) {
    Match d{Match::kUnknown};
    if (!xtcodec::DecodeMatch(F::kFamily, m, &d)) {
      d = Match{Match::kUnknown};
      d.text = std::string(m->u.user.name, strnlen(m->u.user.name, sizeof(m->u.user.name)));
    }
    if (d.kind == Match::kComment && out.comment.empty()) out.comment = d.text;
    r.matches.push_back(std::move(d));
  });
  Target t{Target::kReturn};
  if (!DecodeTarget<F>(e, h, &t)) {
    const char *label = F::GetTarget(e, h);
    t = Target{Target::kUnknown};
    t.chain = label && *label ? label : "(standard)";
  }
  r.target = std::move(t);
  return out;
}

template DecodedRule DecodeRule<Ip4Tables>(const Ip4Tables::Entry *, struct xtc_handle *);
template DecodedRule DecodeRule<Ip6Tables>(const Ip6Tables::Entry *, struct xtc_handle *);
template std::string CommentOf<Ip4Tables>(const Ip4Tables::Entry *);
template std::string CommentOf<Ip6Tables>(const Ip6Tables::Entry *);

}  // namespace iptlb
