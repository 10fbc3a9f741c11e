// Address text as iptlb writes it everywhere (src/address.ts): IPv4 as a dotted quad, IPv6 in its
// RFC 5952 form (formatIpv6): lower-case hex groups without leading zeros, the first longest run of
// two or more zero groups as "::", and never a dotted IPv4 tail (which glibc's inet_ntop writes for
// some addresses). Kernel read-backs compare equal to the planned text because of this.
#pragma once
#include <cstdint>
#include <string>

namespace iptlb {

// `bytes`: the 16 bytes of an IPv6 address, network order.
std::string Ipv6Text(const uint8_t *bytes);

// `bytes`: the 4 bytes of an IPv4 address, network order.
std::string Ipv4Text(const uint8_t *bytes);

}  // namespace iptlb
