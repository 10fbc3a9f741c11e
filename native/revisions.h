// Which revision of a match or target the running kernel accepts, asked the way libxtables does
// (getsockopt IPT_SO_GET_REVISION_MATCH/TARGET on a raw socket). Answers are cached per namespace-free
// process lifetime; thread-safe.
#pragma once

namespace iptlb {

// Highest revision in [0, max] the kernel supports for this target, or -1 when none.
int TargetRevision(const char *name, int max);

}  // namespace iptlb
