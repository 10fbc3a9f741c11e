// Encodes a planned Rule as an ipt_entry or ip6t_entry (IP header, matches, target) with the
// structures and revisions iptables/ip6tables 1.8 themselves write, so iptables-save and
// ip6tables-save print the same text for both executors.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "plan.h"
#include "xt_family.h"

namespace iptlb {

// Returns the F::Entry's bytes (8-byte aligned, ready for F::AppendEntry/F::InsertEntry), or sets
// *error and returns an empty vector. Instantiated for Ip4Tables and Ip6Tables.
template <typename F>
std::vector<uint8_t> EncodeRule(const Rule &rule, std::string *error);

}  // namespace iptlb
