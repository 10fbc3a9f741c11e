// Which revision of a match or target the running kernel accepts, asked the way libxtables'
// compatible_revision does (getsockopt IPT_SO_GET_REVISION_MATCH/TARGET on a raw socket; the kernel
// loads the module on demand). iptables uses the highest revision its extension implements that the
// kernel supports; so do we. Answers are cached for the process (modules are per kernel, not per
// namespace); thread-safe.
#pragma once

namespace iptlb {

// Highest revision in [0, max] the kernel supports for this match, or -1 when none.
int MatchRevision(const char *name, int max);
// Highest revision in [0, max] the kernel supports for this target, or -1 when none.
int TargetRevision(const char *name, int max);

}  // namespace iptlb
