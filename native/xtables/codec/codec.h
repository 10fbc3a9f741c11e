// The x_tables rule codec: one file per match or target kind iptlb writes, each holding both
// directions (its Encode into the kernel's structure, its Decode back into the plan's Match or
// Target), as the TypeScript codec does in src/engines/legacy/codec/. This header is the
// dispatcher the entry framing (rule_encoder.cc, rule_decoder.cc) calls; codec.cc holds it.
// Revisions are asked of the kernel as iptables asks them (revisions.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "plan.h"
// After plan.h: glibc's headers before the kernel's (see plan.h).
#include <linux/netfilter/x_tables.h>

namespace iptlb {
namespace xtcodec {

using Bytes = std::vector<uint8_t>;

// Appends the match's header and payload to `out` (8-byte aligned). False with *error set when the
// running kernel has no revision of the extension iptlb can write.
bool EncodeMatch(Family family, const Match &m, Bytes *out, std::string *error);
// Appends the target's header and payload to `out`; false with *error set, as EncodeMatch.
bool EncodeTarget(Family family, const Target &t, Bytes *out, std::string *error);

// True when `m` is exactly something iptlb writes in a table of `family`; fills `d`.
bool DecodeMatch(Family family, const struct xt_entry_match *m, Match *d);

// The text of a comment match (any revision, as iptables-save prints it); false when `m` is not
// one. How the framing finds a rule's owner without decoding the rest.
bool CommentText(const struct xt_entry_match *m, std::string *text);

// A target as an entry holds it: libiptc's label for it (a verdict, a chain, or the extension's
// name), its bytes, and whether the label names a user-defined chain of the table.
struct TargetRead {
  std::string label;
  const struct xt_entry_target *t = nullptr;
  bool user_chain = false;
};
// True when the target is exactly something iptlb writes in a table of `family`; fills `d`.
bool DecodeTarget(Family family, const TargetRead &t, Target *d);

}  // namespace xtcodec
}  // namespace iptlb
