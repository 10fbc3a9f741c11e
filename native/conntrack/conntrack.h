// Conntrack cleanup over ctnetlink (NETLINK_NETFILTER, NFNL_SUBSYS_CTNETLINK), with libmnl: for each
// destination a change removed, find the conntrack entries (IPv4 or IPv6) of the current network
// namespace that were DNATed from the virtual address to it and delete them. No N-API in here: it
// runs inside an AsyncWorker's Execute(); failures are thrown as nft::NftFailure (a NativeError).
#pragma once
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <vector>

namespace iptlb {
namespace ct {

// An address as ctnetlink carries it (network byte order): the 4 bytes of an IPv4 one first, the
// rest zero; all 16 of an IPv6 one.
using Addr = std::array<uint8_t, 16>;

struct Endpoint {
  uint8_t family = AF_INET;  // AF_INET or AF_INET6
  Addr ip{};
  uint16_t port = 0;  // host byte order
};

// Entries with original destination `vip`, layer-4 protocol `proto` and reply source `destination`
// (both of one address family).
struct Flow {
  uint8_t proto = 0;  // IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP
  Endpoint vip;
  Endpoint destination;
};

struct FlowCount {
  uint32_t deleted = 0;  // entries deleted
  uint32_t kept = 0;     // tcp connections still open (established or closing), left to finish
};

struct FlushResult {
  std::vector<FlowCount> counts;  // one per flow, same order
  bool kernel_filter = true;      // false: the kernel refused the dump filter and the table was read whole
  bool skipped = false;           // nf_conntrack_count was 0 (or absent): no dump at all
  uint32_t dumps = 0;             // dumps made: one per address family and protocol, or one of the whole table
  // true: the half-open IPv4 tcp entries went by the kernel's own check (a filtered flush, Linux
  // 6.12+), or there were none; false: deleted one by one by tuple (older kernels, or
  // `kernel_filter` false). IPv6 tcp entries always go one by one.
  bool conditional_delete = true;
  uint32_t sweeps = 0;  // filtered flushes asked for: one per IPv4 tcp flow with half-open entries
  // true: half-open tcp entries were deleted by tuple, after a 250 ms pause, each read again first
  bool paused = false;
};

// A tcp entry in this conntrack state has not been answered by its destination (SYN_SENT, or no
// state yet): deleting it makes the client's next SYN pick a destination again.
bool TcpHalfOpen(uint8_t state);
// A tcp entry in this state is an open connection (ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK):
// left to finish, and counted as kept. TIME_WAIT and CLOSE entries are left to expire, uncounted.
bool TcpOpen(uint8_t state);

// Nothing when the calling namespace's nf_conntrack_count is 0 or absent (but EPERM without
// CAP_NET_ADMIN all the same). Else dumps the conntrack table once per distinct address family and
// protocol of the flows (a dump of one family returns only that family's entries), filtered in the
// kernel by protocol where it supports CTA_FILTER (5.8+), else reads it whole once (both families
// in one dump when both are asked); matches every entry against all the requested flows through a
// hash table (a dump walks the kernel's whole hash table however few entries it has, so not one per
// virtual address), then deletes the matching entries one by one (by tuple and id, so an entry
// that was replaced meanwhile is left alone): every match for udp and sctp. For tcp, only entries
// half-open in the dump, and for IPv4 only if still unanswered when deleted: the kernel checks and
// deletes them in one step (a filtered flush per flow, Linux 6.12+), so a handshake answered after
// the dump is not cut; IPv6 (whose address filter the kernel gets wrong) and older kernels: one by
// one by tuple, after a 250 ms pause (on this worker thread), each read again just before and
// deleted only if still half-open. An entry that vanished before its delete (expired) is not
// counted. Throws nft::NftFailure.
// `kernel_filter` false: do not ask the kernel to filter, in dumps or deletes (the path of kernels
// before 5.8; tests).
FlushResult Flush(const std::vector<Flow> &flows, bool kernel_filter = true);

}  // namespace ct
}  // namespace iptlb
