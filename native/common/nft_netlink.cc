#include "nft_netlink.h"

#include <arpa/inet.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

namespace iptlb {
namespace nft {
namespace {

constexpr int kReplyTimeoutMs = 10000;
// Our own receive buffer: a dump part is at most a page-ish, but a socket may hand over 32 KiB+.
constexpr size_t kReceiveBuffer = 1 << 20;
constexpr int kMinSocketBuffer = 1 << 20;

// The text of an errno, like strerror but thread-safe.
std::string ErrnoText(int err) {
  char buf[256];
  const char *s = strerror_r(err, buf, sizeof buf);
  return s;
}

}  // namespace

void ThrowErrno(const std::string &code, int err, const std::string &message) {
  throw NftFailure{NativeError::FromErrno(code, err, message + ": " + ErrnoText(err))};
}

// ---------------------------------------------------------------------------------------------
// Batch

struct nlmsghdr *Batch::Start(size_t max_payload, int op) {
  // Room for the header, nfgenmsg and attributes; libnftnl writes attributes without bounds checks,
  // so the caller states an upper bound.
  const size_t need =
      used_ + MNL_ALIGN(sizeof(struct nlmsghdr)) + MNL_ALIGN(sizeof(struct nfgenmsg)) + max_payload + 64;
  if (buf_.size() < need) buf_.resize(std::max(need, buf_.size() * 2));
  std::memset(buf_.data() + used_, 0, need - used_);
  start_ = used_;
  if (op >= 0) {
    if (ops_.empty()) first_op_seq_ = next_seq_;
    ops_.push_back(op);
    last_op_start_ = used_;
  }
  return reinterpret_cast<struct nlmsghdr *>(buf_.data() + used_);
}

void Batch::Finish(struct nlmsghdr *nlh) {
  used_ = start_ + MNL_ALIGN(nlh->nlmsg_len);
  next_seq_++;
}

int Batch::OpOfSeq(uint32_t seq) const {
  if (ops_.empty()) return -1;
  const uint32_t i = seq - first_op_seq_;
  return i < ops_.size() ? ops_[i] : -1;
}

// ---------------------------------------------------------------------------------------------
// Socket

Socket::Socket() : rbuf_(new uint8_t[kReceiveBuffer]) {
  nl_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);  // kept open (the shared socket): not for child processes
  if (!nl_) ThrowErrno("EKERNEL", errno, "opening a netfilter netlink socket");
  if (mnl_socket_bind(nl_, 0, MNL_SOCKET_AUTOPID) < 0) {
    const int err = errno;
    mnl_socket_close(nl_);
    nl_ = nullptr;
    ThrowErrno("EKERNEL", err, "binding the netfilter netlink socket");
  }
  portid_ = mnl_socket_get_portid(nl_);
  int on = 1;
  // Extended acks carry the kernel's own error text; capped acks do not echo our (possibly large)
  // messages back, so a refused batch of 50,000 elements does not overflow the receive buffer.
  mnl_socket_setsockopt(nl_, NETLINK_EXT_ACK, &on, sizeof on);
  mnl_socket_setsockopt(nl_, NETLINK_CAP_ACK, &on, sizeof on);
  seq_ = static_cast<uint32_t>(time(nullptr));
}

Socket::~Socket() {
  if (nl_) mnl_socket_close(nl_);
}

void Socket::SizeBuffers(size_t send_bytes) {
  // The whole batch goes in one datagram, which must fit the send buffer (nft does the same with
  // SO_SNDBUFFORCE). The receive side gets one small ack per message.
  const int want = static_cast<int>(std::min<size_t>(std::max<size_t>(send_bytes + 65536, kMinSocketBuffer), 1u << 30));
  if (want <= sndbuf_) return;
  const int fd = mnl_socket_get_fd(nl_);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) < 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof want) < 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
  sndbuf_ = want;
}

ssize_t Socket::Receive(int timeout_ms) {
  struct pollfd p = {mnl_socket_get_fd(nl_), POLLIN, 0};
  for (;;) {
    const int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) ThrowErrno("EKERNEL", errno, "waiting for netlink replies");
    if (r == 0 && timeout_ms == 0) return -ETIMEDOUT;
    if (r == 0) ThrowErrno("EKERNEL", ETIMEDOUT, "waiting for netlink replies");
    break;
  }
  const ssize_t n = mnl_socket_recvfrom(nl_, rbuf_.get(), kReceiveBuffer);
  if (n < 0 && errno == ENOBUFS) return -ENOBUFS;
  if (n < 0) ThrowErrno("EKERNEL", errno, "reading netlink replies");
  return n;
}

namespace {

// Reads an NLMSG_ERROR message (ack when err == 0), with the extended-ack text if any.
NlAck ParseAck(const struct nlmsghdr *nlh) {
  NlAck a;
  const auto *e = static_cast<const struct nlmsgerr *>(mnl_nlmsg_get_payload(nlh));
  a.seq = e->msg.nlmsg_seq;
  a.err = -e->error;
  if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS)) return a;
  // With NETLINK_CAP_ACK the original message is not echoed, only its header (NLM_F_CAPPED).
  size_t off = MNL_ALIGN(sizeof(struct nlmsgerr));
  if (!(nlh->nlmsg_flags & NLM_F_CAPPED)) off += MNL_ALIGN(e->msg.nlmsg_len - sizeof(struct nlmsghdr));
  const size_t payload = mnl_nlmsg_get_payload_len(nlh);
  if (off >= payload) return a;
  int left = static_cast<int>(payload - off);
  const auto *attr =
      reinterpret_cast<const struct nlattr *>(static_cast<const char *>(mnl_nlmsg_get_payload(nlh)) + off);
  for (; mnl_attr_ok(attr, left); left -= MNL_ALIGN(attr->nla_len), attr = mnl_attr_next(attr)) {
    if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG && mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0)
      a.extack = mnl_attr_get_str(attr);
  }
  return a;
}

}  // namespace

std::vector<NlAck> Socket::SendBatch(const Batch &b) {
  SizeBuffers(b.size());
  const ssize_t sent = mnl_socket_sendto(nl_, b.data(), b.size());
  if (sent < 0) ThrowErrno("EKERNEL", errno, "sending the nftables batch");
  std::vector<NlAck> errors;
  // The kernel processes the batch inside sendmsg and queues its replies there: an error for every
  // message that failed (it goes on after a failure, then aborts the transaction as a whole) and the
  // ack of the last message, or a single error for the batch-begin message.
  bool done = false;
  bool overrun = false;
  while (!done) {
    // After an overrun the last ack may be lost; nothing more will come, so only drain the queue.
    const ssize_t n = Receive(overrun ? 0 : kReplyTimeoutMs);
    if (n == -ENOBUFS) {
      overrun = true;
      continue;
    }
    if (n == -ETIMEDOUT) {
      // Drained after an overrun. Only a refused batch has many replies (one per failing message)
      // and the queue keeps the first ones, so the cause is among those read.
      if (!errors.empty()) break;
      ThrowErrno("EKERNEL", ENOBUFS, "reading the replies to the nftables batch (outcome unknown)");
    }
    const auto *nlh = reinterpret_cast<const struct nlmsghdr *>(rbuf_.get());
    int len = static_cast<int>(n);
    for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_pid != portid_ && nlh->nlmsg_pid != 0) continue;
      if (nlh->nlmsg_type != NLMSG_ERROR) continue;
      NlAck a = ParseAck(nlh);
      if (a.seq == b.begin_seq()) {
        // A refusal of the batch as such: stale generation id, no permission, out of memory.
        done = true;
        if (a.err) errors.push_back(a);
        continue;
      }
      if (b.OpOfSeq(a.seq) < 0) continue;  // not ours (a stale reply)
      if (a.seq == b.last_op_seq()) done = true;
      if (a.err) errors.push_back(std::move(a));
    }
  }
  std::sort(errors.begin(), errors.end(), [](const NlAck &x, const NlAck &y) { return x.seq < y.seq; });
  return errors;
}

int Socket::Request(struct nlmsghdr *req, const std::function<void(const struct nlmsghdr *)> &on_msg,
                    bool *interrupted) {
  const bool dump = (req->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
  if (!dump) req->nlmsg_flags |= NLM_F_ACK;
  const uint32_t seq = req->nlmsg_seq;
  if (mnl_socket_sendto(nl_, req, req->nlmsg_len) < 0) ThrowErrno("EKERNEL", errno, "sending a netlink request");
  for (;;) {
    const ssize_t n = Receive(kReplyTimeoutMs);
    if (n == -ENOBUFS) ThrowErrno("EKERNEL", ENOBUFS, "reading netlink replies (dump)");
    const auto *nlh = reinterpret_cast<const struct nlmsghdr *>(rbuf_.get());
    int len = static_cast<int>(n);
    for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_seq != seq) continue;
      if (interrupted && (nlh->nlmsg_flags & NLM_F_DUMP_INTR)) *interrupted = true;
      if (nlh->nlmsg_type == NLMSG_DONE) return 0;
      if (nlh->nlmsg_type == NLMSG_ERROR) return ParseAck(nlh).err;
      if (nlh->nlmsg_type == NLMSG_NOOP) continue;
      on_msg(nlh);
    }
  }
}

}  // namespace nft
}  // namespace iptlb
