// The legacy engine's gate set (see src/gate.ts): an ipset hash:ip,port spoken to over netlink
// (NFNL_SUBSYS_IPSET, with libmnl: no fork), and the set's kernel index for the xt_set match.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"
#include "plan.h"

namespace iptlb {

// The netlink socket these functions speak over is opened once per thread and kept (a thread's
// network namespace does not change under it), re-opened after a failure of the socket itself.

// One element `ip,proto:port` of a hash:ip,port set.
struct SetElement {
  Address addr{};
  uint8_t proto = 0;
  uint16_t port = 0;  // host order
  bool operator<(const SetElement &o) const;
  bool operator==(const SetElement &o) const;
};

// The element a rule selects (its destination address, protocol and --dport), or false when it has none.
bool ElementOfRule(const Rule &r, SetElement *e);

// The gate set's name of a family: iptlb-vip-inet / iptlb-vip-inet6.
const char *GateSetName(Family family);

// The set's kernel index (IPSET_INVALID_ID, 65535, when there is no such set), through
// getsockopt(SO_IP_SET) as iptables' libxt_set asks it. These functions throw NativeFailure
// (EKERNEL, or EPERM) when the kernel cannot be asked or refuses.
uint16_t SetIndexByName(const std::string &name);

// Creates the family's gate set when it does not exist (hash:ip,port, maxelem 1048576) and returns its index;
// `*created` (when given) says whether it had to be made.
uint16_t EnsureGateSet(Family family, bool *created = nullptr);

// Adds (del = false) or deletes elements of the family's gate set; existing (or missing) elements are ignored.
// With `no_set` given, a set that does not exist is no error: *no_set says so, and nothing was changed.
void ChangeGateSet(Family family, const std::vector<SetElement> &elements, bool del, bool *no_set = nullptr);

// Destroys the family's gate set; a missing set is no error.
void DestroyGateSet(Family family);

// The elements of the family's gate set (a dump, IPSET_CMD_LIST, over a socket of its own), or false
// when the set does not exist. For `status` and `sync`: an element deleted by hand (`ipset del`) sends
// its address past iptlb's rules while the x_tables rules are all there.
// `references`, when given: how many kernel components (x_tables rules' set matches) use the set.
bool ListGateSet(Family family, std::vector<SetElement> *out, uint32_t *references = nullptr);

}  // namespace iptlb
