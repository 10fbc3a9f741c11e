// The original iptlb's jumps on a host whose iptables is the nf_tables one: rules of iptables-nft's
// `table ip nat` / `table ip6 nat`, chains OUTPUT and PREROUTING only, that jump (or go) to a chain
// named `IPTLB_NAT_…` and carry no comment, with what they match decoded: the destination address,
// the protocol and the destination port (NftOriginalJump in src/engines/nft/ops.ts). A change that
// gives a profile such an address is refused (src/engines/nft/original.ts): iptlb never changes
// those rules, and two tables' nat chains of one priority would serve one address.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nft_netlink.h"
#include "nft_ops.h"

namespace iptlb {
namespace nft {

struct OriginalJump {
  std::string chain;  // OUTPUT or PREROUTING
  uint64_t handle = 0;
  std::string target;  // IPTLB_NAT_…
  bool has_addr = false;
  Endpoint addr;   // the destination address (network byte order; the port unused), when has_addr
  int proto = -1;  // the layer-4 protocol number it matches, -1: any (or not read)
  int port = -1;   // the destination port it matches (host order), -1: any (or not read)
  // The parts of its match this decoder does not read (e.g. "bitwise", "xt match multiport"), empty
  // when it read them all: the rule may then match more or less than the fields above say.
  std::string unknown;
};

// Worker thread; throws NftFailure. The original iptlb's jumps in chains OUTPUT and PREROUTING of
// table `f` nat (two filtered rule dumps; none when the table or a chain does not exist). No other
// chain of that table is read: its size (Docker's, kube-proxy's chains) does not matter.
std::vector<OriginalJump> OriginalJumps(Socket *s, Family f);

}  // namespace nft
}  // namespace iptlb
