// The parts of the netlink plumbing that need libnftnl (batch begin/end messages, the generation
// id request). Kept apart from nft_netlink.cc so that iptlb_core.node (conntrack, over libmnl only)
// does not link libnftnl: a host without the nftables libraries still loads it.
#include <arpa/inet.h>
#include <libnftnl/common.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <cerrno>

#include "nft_netlink.h"

namespace iptlb {
namespace nft {

void Batch::Begin(int64_t genid) {
  struct nlmsghdr *nlh = Start(16, -1);
  begin_seq_ = next_seq_;
  nlh = nftnl_batch_begin(reinterpret_cast<char *>(nlh), next_seq_);
  if (genid >= 0) mnl_attr_put_u32(nlh, NFNL_BATCH_GENID, htonl(static_cast<uint32_t>(genid)));
  Finish(nlh);
}

void Batch::End() {
  // Only the last op message asks for an ack: errors of the others are reported anyway (in order,
  // before it), and one ack per message could overflow the receive buffer for big transactions.
  if (!ops_.empty()) reinterpret_cast<struct nlmsghdr *>(buf_.data() + last_op_start_)->nlmsg_flags |= NLM_F_ACK;
  struct nlmsghdr *nlh = Start(0, -1);
  nlh = nftnl_batch_end(reinterpret_cast<char *>(nlh), next_seq_);
  Finish(nlh);
}

uint32_t Socket::GetGenid() {
  alignas(struct nlmsghdr) char buf[MNL_SOCKET_BUFFER_SIZE];
  struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETGEN, AF_UNSPEC, 0, NextSeq());
  uint32_t genid = 0;
  bool got = false;
  const int err = Request(nlh, [&](const struct nlmsghdr *m) {
    const auto *attr = static_cast<const struct nlattr *>(mnl_nlmsg_get_payload_offset(m, sizeof(struct nfgenmsg)));
    for (; mnl_attr_ok(attr,
                       static_cast<const char *>(mnl_nlmsg_get_payload_tail(m)) - reinterpret_cast<const char *>(attr));
         attr = mnl_attr_next(attr)) {
      if (mnl_attr_get_type(attr) == NFTA_GEN_ID && mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) {
        genid = ntohl(mnl_attr_get_u32(attr));
        got = true;
      }
    }
  });
  if (err) ThrowErrno("EKERNEL", err, "reading the nftables generation id");
  if (!got) ThrowErrno("EKERNEL", EPROTO, "reading the nftables generation id");
  return genid;
}

}  // namespace nft
}  // namespace iptlb
