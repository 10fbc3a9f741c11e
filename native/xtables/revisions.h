// Which revision of a match or target the running kernel accepts, asked the way libxtables'
// compatible_revision does (getsockopt IPT_SO_GET_REVISION_MATCH/TARGET on a raw socket; the kernel
// loads the module on demand). iptables uses the highest revision its extension implements that the
// kernel supports; so do we. Answers are cached for the process (modules are per kernel, not per
// namespace); thread-safe. IPv6 is asked as ip6tables does (an AF_INET6 socket, IP6T_SO_GET_REVISION_*):
// the kernel answers for the extension's IPv6 (or family-neutral) registration.
#pragma once

#include "plan.h"

namespace iptlb {

// Highest revision in [0, max] the kernel supports for this match in `family`, or -1 when none.
int MatchRevision(Family family, const char *name, int max);
// Highest revision in [0, max] the kernel supports for this target in `family`, or -1 when none.
int TargetRevision(Family family, const char *name, int max);

}  // namespace iptlb
