// Applies a Transaction to a libiptc or libip6tc handle (in memory; nothing reaches the kernel until commit):
// delete the owners' hook rules, drop stale chains, create or flush and refill chains, insert hook
// rules at the top.
#pragma once
#include <string>

#include "errors.h"
#include "plan.h"
#include "xt_family.h"

namespace iptlb {

// `h` is a handle of F's library (tx.family is F's). Instantiated for Ip4Tables and Ip6Tables.
template <typename F>
bool ApplyTransaction(struct xtc_handle *h, const Transaction &tx, NativeError *error);

}  // namespace iptlb
