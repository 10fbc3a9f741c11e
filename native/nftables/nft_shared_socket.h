// The netfilter netlink socket the nftables workers share, kept open for the life of the process.
//
// Why: closing such a socket makes the kernel finish destroying what the last transaction deleted
// (nf_tables' NETLINK_URELEASE handler flushes its destroy work, which waits for an RCU grace
// period). With a socket per operation every commit that deleted set elements (any profile change)
// paid about 10 ms in close(); kept open, a commit costs what it sends.
//
// Only used under TableMutex(), held by each nftables operation for its whole netlink work (JavaScript
// already keeps one in flight per addon instance; the mutex covers several, e.g. in worker threads). A socket belongs
// to the network namespace it was opened in: the lease opens a new one when the calling thread is in another namespace.
#pragma once
#include <sys/types.h>

#include <memory>
#include <mutex>

#include "nft_netlink.h"

namespace iptlb {
namespace nft {

std::mutex &TableMutex();

class SharedSocketLease {
 public:
  SharedSocketLease();   // reuses the open socket, or opens one (throws NftFailure)
  ~SharedSocketLease();  // closes the socket unless Keep() was called: after a failure its state is unknown
  SharedSocketLease(const SharedSocketLease &) = delete;
  SharedSocketLease &operator=(const SharedSocketLease &) = delete;

  Socket *get() { return socket_; }
  // The operation ended cleanly (every reply read): the socket may serve the next one.
  void Keep() { keep_ = true; }

 private:
  Socket *socket_ = nullptr;
  bool keep_ = false;
};

}  // namespace nft
}  // namespace iptlb
