// Decodes an ipt_entry or ip6t_entry back into the Rule shape of the plan. Anything iptlb does not write — an
// extension, a revision, an option, an IP-header field — decodes as Match/Target kUnknown carrying
// the extension's name, in its place, so a foreign rule is never mistaken for one of ours.
#pragma once
#include <cstdint>
#include <string>

#include "plan.h"
#include "xt_family.h"

namespace iptlb {

struct DecodedRule {
  Rule rule;
  std::string comment;  // the comment match's text, if any
  uint64_t packets = 0;
  uint64_t bytes = 0;
};

// `h` resolves the target (standard verdicts and jumps are stored as offsets). Both are instantiated
// for Ip4Tables and Ip6Tables.
template <typename F>
DecodedRule DecodeRule(const typename F::Entry *e, struct xtc_handle *h);

// The text of an entry's comment match, or "" when it has none.
template <typename F>
std::string CommentOf(const typename F::Entry *e);

}  // namespace iptlb
