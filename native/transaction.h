// Applies a Transaction to a libiptc handle (in memory; nothing reaches the kernel until commit):
// delete the owners' hook rules, drop stale chains, create or flush and refill chains, insert hook
// rules at the top.
#pragma once
#include <libiptc/libiptc.h>

#include <string>

#include "errors.h"
#include "plan.h"

namespace iptlb {

bool ApplyTransaction(struct xtc_handle *h, const Transaction &tx, NativeError *error);

}  // namespace iptlb
