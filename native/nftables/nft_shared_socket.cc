#include "nft_shared_socket.h"

#include <sys/stat.h>

namespace iptlb {
namespace nft {
namespace {

struct Shared {
  std::unique_ptr<Socket> socket;
  dev_t netns_dev = 0;
  ino_t netns_ino = 0;
};

Shared &State() {
  static Shared s;  // under TableMutex() only
  return s;
}

}  // namespace

std::mutex &TableMutex() {
  static std::mutex m;
  return m;
}

SharedSocketLease::SharedSocketLease() {
  Shared &s = State();
  struct stat st {};
  const bool known = stat("/proc/thread-self/ns/net", &st) == 0;
  if (s.socket && (!known || st.st_dev != s.netns_dev || st.st_ino != s.netns_ino)) s.socket.reset();
  if (!s.socket) {
    s.socket = std::make_unique<Socket>();
    s.netns_dev = known ? st.st_dev : 0;
    s.netns_ino = known ? st.st_ino : 0;
  }
  socket_ = s.socket.get();
}

SharedSocketLease::~SharedSocketLease() {
  if (!keep_) State().socket.reset();
}

}  // namespace nft
}  // namespace iptlb
