// The address family of everything iptlb writes, for both engines: x_tables' nat tables of iptables
// (ipv4, libip4tc) and ip6tables (ipv6, libip6tc), and nftables' tables `ip iptlb` and `ip6 iptlb`.
#pragma once
#include <cstdint>

namespace iptlb {

enum class Family : uint8_t { kIpv4, kIpv6 };

}  // namespace iptlb
