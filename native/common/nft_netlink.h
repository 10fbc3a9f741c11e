// Netlink plumbing of the nftables executor: an RAII netfilter netlink socket (libmnl), a batch
// buffer that remembers which op each message belongs to, and the request/dump/ack loops.
// Nothing in here touches N-API; failures are thrown as NftFailure (a NativeError) and turned into
// promise rejections by the workers.
#pragma once
#include <libmnl/libmnl.h>
#include <linux/netlink.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"

namespace iptlb {
namespace nft {

// Thrown inside Execute() only; caught there and handed to PromiseWorker::Fail.
using NftFailure = NativeFailure;  // errors.h: the one error style

[[noreturn]] void ThrowErrno(const std::string &code, int err, const std::string &message);

// One error (or ack) the kernel sent for a message of ours.
struct NlAck {
  uint32_t seq = 0;
  int err = 0;         // positive errno, 0 for an ack
  std::string extack;  // NLMSGERR_ATTR_MSG, when the kernel gave one
};

// The messages of one NFNL batch, back to back in one buffer (sent with one sendmsg, so the kernel
// sees a single transaction). Each message is tagged with the op it encodes (-1: batch framing).
class Batch {
 public:
  explicit Batch(uint32_t first_seq) : next_seq_(first_seq) {}

  // Starts a message with room for `max_payload` bytes of attributes; returns its header
  // (valid until the next Start). `op` is the index of the op the message belongs to.
  struct nlmsghdr *Start(size_t max_payload, int op);
  // Closes the message started last (its nlmsg_len is final).
  void Finish(struct nlmsghdr *nlh);

  // NFNL_MSG_BATCH_BEGIN (with NFNL_BATCH_GENID when `genid` >= 0) and NFNL_MSG_BATCH_END.
  void Begin(int64_t genid);
  void End();

  const uint8_t *data() const { return buf_.data(); }
  size_t size() const { return used_; }
  uint32_t begin_seq() const { return begin_seq_; }
  // The op of the message with sequence number `seq`, -1 when none (framing or unknown).
  int OpOfSeq(uint32_t seq) const;
  // Number of op messages (not counting the framing).
  size_t op_messages() const { return ops_.size(); }
  // Sequence number of the last op message: the only one that asks for an ack (see SendBatch).
  uint32_t last_op_seq() const { return first_op_seq_ + static_cast<uint32_t>(ops_.size()) - 1; }
  uint32_t next_seq() const { return next_seq_; }

 private:
  std::vector<uint8_t> buf_;
  size_t used_ = 0;
  size_t start_ = 0;
  uint32_t next_seq_;
  uint32_t begin_seq_ = 0;
  uint32_t first_op_seq_ = 0;
  std::vector<int> ops_;  // op of message first_op_seq_ + i
  size_t last_op_start_ = 0;
};

// A bound NETLINK_NETFILTER socket. Closed by the destructor.
class Socket {
 public:
  Socket();
  ~Socket();
  Socket(const Socket &) = delete;
  Socket &operator=(const Socket &) = delete;

  uint32_t NextSeq() { return seq_++; }
  // After a batch built from NextSeq(): continue numbering after its last message.
  void ContinueSeqAt(uint32_t next) { seq_ = next; }

  // Sends a whole batch and collects the kernel's errors, in sequence order, until the reply to the
  // last op message (which asks for an ack); an error on the batch-begin message (ERESTART, EPERM,
  // ENOMEM) ends the wait instead.
  std::vector<NlAck> SendBatch(const Batch &b);

  // The ruleset generation (NFT_MSG_GETGEN).
  uint32_t GetGenid();

  // Sends one request and calls `on_msg` for every reply message until the ack (plain requests,
  // sent with NLM_F_ACK) or NLMSG_DONE (dumps). Returns 0 or the positive errno the kernel sent.
  // `*interrupted` (when given) is set if a dump part carried NLM_F_DUMP_INTR.
  int Request(struct nlmsghdr *req, const std::function<void(const struct nlmsghdr *)> &on_msg,
              bool *interrupted = nullptr);

 private:
  void SizeBuffers(size_t send_bytes);
  // Waits (poll) at most `timeout_ms` and reads one datagram into rbuf_; returns its length, or
  // -ENOBUFS when the kernel had to drop replies (other failures throw).
  ssize_t Receive(int timeout_ms);

  struct mnl_socket *nl_ = nullptr;
  uint32_t portid_ = 0;
  uint32_t seq_ = 0;
  int sndbuf_ = 0;
  // kReceiveBuffer bytes, allocated but not cleared: a page is touched only when a reply is written
  // to it (clearing all of it cost a one-shot CLI command about 3 ms of page faults on a VM).
  std::unique_ptr<uint8_t[]> rbuf_;
};

}  // namespace nft
}  // namespace iptlb
