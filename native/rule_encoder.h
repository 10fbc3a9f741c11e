// Encodes a planned Rule as an ipt_entry (IP header, matches, target) with the structures and
// revisions iptables 1.8 itself writes, so iptables-save prints the same text for both executors.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "plan.h"

namespace iptlb {

// Returns the entry's bytes (8-byte aligned, ready for iptc_append_entry/iptc_insert_entry), or
// sets *error and returns an empty vector.
std::vector<uint8_t> EncodeRule(const Rule &rule, std::string *error);

}  // namespace iptlb
