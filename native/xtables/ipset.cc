#include "ipset.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/ipset/ip_set.h>
#include <linux/netfilter/nfnetlink.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace iptlb {
namespace {

constexpr uint32_t kMaxElem = 1 << 20;
constexpr size_t kMessageBuffer = 1 << 16;
constexpr size_t kPerMessage = 256;  // elements per netlink message (about 40 bytes each)
constexpr int kNewestRevision = 7;   // hash:ip,port as ipset 7.17 creates it (with bucketsize)

std::string IpsetErrorText(int err) {
  switch (err) {
    case IPSET_ERR_PROTOCOL:
      return "ipset protocol error";
    case IPSET_ERR_FIND_TYPE:
      return "set type hash:ip,port not supported by the kernel";
    case IPSET_ERR_BUSY:
      return "set is in use";
    case IPSET_ERR_EXIST_SETNAME2:
      return "a set of this name exists with other parameters";
    default:
      break;
  }
  if (err >= IPSET_ERR_PRIVATE) return "ipset error " + std::to_string(err);
  char buf[256];
  return strerror_r(err, buf, sizeof buf);
}

NativeError IpsetError(const std::string &what, int err) {
  NativeError e =
      NativeError::FromErrno("EKERNEL", err < IPSET_ERR_PRIVATE ? err : EINVAL, what + ": " + IpsetErrorText(err));
  if (err == EPERM) e.code = "EPERM";
  return e;
}

struct SocketCloser {
  void operator()(struct mnl_socket *s) const { mnl_socket_close(s); }
};

// Sends the messages it builds one by one, each acknowledged; the first error (positive errno or
// ipset's private code) is returned. One per thread (Conn()), its socket kept open.
class Ipset {
 public:
  void Open() {
    if (sock_) return;
    sock_.reset(mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC));  // kept open: not for child processes
    if (!sock_ || mnl_socket_bind(sock_.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
      const int err = errno;
      sock_.reset();
      Throw(IpsetError("ipset netlink socket", err));
    }
    portid_ = mnl_socket_get_portid(sock_.get());
  }

  struct nlmsghdr *Start(Family family, int cmd) {
    // Not cleared: every byte of a message is written by libmnl's put calls (header, attributes, padding).
    if (!buf_) buf_.reset(new char[kMessageBuffer]);
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf_.get());
    nlh->nlmsg_type = (NFNL_SUBSYS_IPSET << 8) | cmd;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    nlh->nlmsg_seq = ++seq_;
    auto *nfg = static_cast<struct nfgenmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct nfgenmsg)));
    nfg->nfgen_family = family == Family::kIpv6 ? NFPROTO_IPV6 : NFPROTO_IPV4;
    nfg->version = NFNETLINK_V0;
    nfg->res_id = htons(0);
    mnl_attr_put_u8(nlh, IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL);
    return nlh;
  }

  // 0, or the errno / ipset code of the kernel's answer. A failure of the socket itself (not an
  // answer) closes it: the next message opens a new one, with no stale answer waiting in it.
  int Send(struct nlmsghdr *nlh) {
    if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0) return Broken(errno);
    char reply[MNL_SOCKET_BUFFER_SIZE];
    for (;;) {
      const ssize_t n = mnl_socket_recvfrom(sock_.get(), reply, sizeof reply);
      if (n < 0) return Broken(errno);
      const int r = mnl_cb_run(reply, n, nlh->nlmsg_seq, portid_, nullptr, nullptr);
      if (r == MNL_CB_ERROR) return errno == ESRCH || errno == EPROTO ? Broken(errno) : errno;
      if (r == MNL_CB_STOP) return 0;
    }
  }

 private:
  int Broken(int err) {
    sock_.reset();
    return err;
  }
  std::unique_ptr<struct mnl_socket, SocketCloser> sock_;
  unsigned portid_ = 0;
  uint32_t seq_ = static_cast<uint32_t>(time(nullptr));
  std::unique_ptr<char[]> buf_;
};

// This thread's connection, opened.
Ipset &Conn() {
  static thread_local Ipset conn;
  conn.Open();
  return conn;
}

void PutElement(struct nlmsghdr *nlh, Family family, const SetElement &e) {
  struct nlattr *data = mnl_attr_nest_start(nlh, IPSET_ATTR_DATA);
  struct nlattr *ip = mnl_attr_nest_start(nlh, IPSET_ATTR_IP);
  if (family == Family::kIpv6)
    mnl_attr_put(nlh, IPSET_ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, 16, &e.addr.in6);
  else
    mnl_attr_put(nlh, IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, 4, &e.addr.ip);
  mnl_attr_nest_end(nlh, ip);
  mnl_attr_put_u16(nlh, IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER, htons(e.port));
  mnl_attr_put_u8(nlh, IPSET_ATTR_PROTO, e.proto);
  mnl_attr_nest_end(nlh, data);
}

}  // namespace

bool SetElement::operator<(const SetElement &o) const {
  const int c = std::memcmp(&addr, &o.addr, sizeof(addr));
  if (c != 0) return c < 0;
  if (proto != o.proto) return proto < o.proto;
  return port < o.port;
}
bool SetElement::operator==(const SetElement &o) const { return !(*this < o) && !(o < *this); }

bool ElementOfRule(const Rule &r, SetElement *e) {
  if (!r.has_dst || !r.proto) return false;
  for (const Match &m : r.matches) {
    if ((m.kind == Match::kTcp && r.proto == IPPROTO_TCP) || (m.kind == Match::kUdp && r.proto == IPPROTO_UDP) ||
        (m.kind == Match::kSctp && r.proto == IPPROTO_SCTP)) {
      *e = SetElement{};
      e->addr = r.dst;
      e->proto = r.proto;
      e->port = m.port;
      return true;
    }
  }
  return false;
}

const char *GateSetName(Family family) { return family == Family::kIpv6 ? "iptlb-vip-inet6" : "iptlb-vip-inet"; }

uint16_t SetIndexByName(const std::string &name) {
  int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  if (fd < 0) {
    Throw(IpsetError("ipset index of " + name + ": socket", errno));
  }
  struct ip_set_req_version ver;
  std::memset(&ver, 0, sizeof(ver));
  ver.op = IP_SET_OP_VERSION;
  socklen_t len = sizeof(ver);
  if (getsockopt(fd, SOL_IP, SO_IP_SET, &ver, &len) != 0) {
    const int err = errno;
    close(fd);
    Throw(IpsetError("ipset index of " + name + ": version", err));
  }
  struct ip_set_req_get_set req;
  std::memset(&req, 0, sizeof(req));
  req.op = IP_SET_OP_GET_BYNAME;
  req.version = ver.version;
  name.copy(req.set.name, IPSET_MAXNAMELEN - 1);
  len = sizeof(req);
  const int r = getsockopt(fd, SOL_IP, SO_IP_SET, &req, &len);
  const int err = errno;
  close(fd);
  if (r != 0) {
    Throw(IpsetError("ipset index of " + name, err));
  }
  return req.set.index;
}

uint16_t EnsureGateSet(Family family, bool *created) {
  const char *name = GateSetName(family);
  uint16_t index = SetIndexByName(name);
  if (created) *created = false;
  if (index != IPSET_INVALID_ID) return index;
  Ipset &s = Conn();
  int err = 0;
  for (int rev = kNewestRevision; rev >= 0; rev--) {
    struct nlmsghdr *nlh = s.Start(family, IPSET_CMD_CREATE);
    mnl_attr_put_strz(nlh, IPSET_ATTR_SETNAME, name);
    mnl_attr_put_strz(nlh, IPSET_ATTR_TYPENAME, "hash:ip,port");
    mnl_attr_put_u8(nlh, IPSET_ATTR_REVISION, static_cast<uint8_t>(rev));
    mnl_attr_put_u8(nlh, IPSET_ATTR_FAMILY, family == Family::kIpv6 ? NFPROTO_IPV6 : NFPROTO_IPV4);
    struct nlattr *data = mnl_attr_nest_start(nlh, IPSET_ATTR_DATA);
    mnl_attr_put_u32(nlh, IPSET_ATTR_MAXELEM | NLA_F_NET_BYTEORDER, htonl(kMaxElem));
    mnl_attr_nest_end(nlh, data);
    err = s.Send(nlh);
    if (err != IPSET_ERR_FIND_TYPE) break;  // an older kernel: try the revision below
  }
  if (err != 0 && err != IPSET_ERR_EXIST_SETNAME2 && err != EEXIST) {
    Throw(IpsetError(std::string("creating ipset ") + name, err));
  }
  if (created) *created = err == 0;
  index = SetIndexByName(name);
  if (index == IPSET_INVALID_ID) {
    Throw(IpsetError(std::string("ipset ") + name + " vanished after its creation", ENOENT));
  }
  return index;
}

void ChangeGateSet(Family family, const std::vector<SetElement> &elements, bool del, bool *no_set) {
  if (no_set) *no_set = false;
  if (elements.empty()) return;
  const char *name = GateSetName(family);
  Ipset &s = Conn();
  for (size_t at = 0; at < elements.size(); at += kPerMessage) {
    struct nlmsghdr *nlh = s.Start(family, del ? IPSET_CMD_DEL : IPSET_CMD_ADD);
    mnl_attr_put_strz(nlh, IPSET_ATTR_SETNAME, name);
    mnl_attr_put_u32(nlh, IPSET_ATTR_LINENO, 0);  // the kernel wants it with a batch (IPSET_ATTR_ADT)
    struct nlattr *adt = mnl_attr_nest_start(nlh, IPSET_ATTR_ADT);
    for (size_t i = at; i < elements.size() && i < at + kPerMessage; i++) PutElement(nlh, family, elements[i]);
    mnl_attr_nest_end(nlh, adt);
    const int err = s.Send(nlh);
    if (err == ENOENT && no_set && at == 0) {
      *no_set = true;
      return;
    }
    if (err != 0) {
      Throw(IpsetError(std::string(del ? "deleting elements of ipset " : "adding elements to ipset ") + name, err));
    }
  }
}

void DestroyGateSet(Family family) {
  const char *name = GateSetName(family);
  Ipset &s = Conn();
  struct nlmsghdr *nlh = s.Start(family, IPSET_CMD_DESTROY);
  mnl_attr_put_strz(nlh, IPSET_ATTR_SETNAME, name);
  const int err = s.Send(nlh);
  if (err != 0 && err != ENOENT) {
    Throw(IpsetError(std::string("destroying ipset ") + name, err));
  }
}

namespace {

struct DumpState {
  std::vector<SetElement> *out;
  uint32_t *references;  // the header's IPSET_ATTR_REFERENCES (rules of x_tables that use the set), or null
};

// One element (IPSET_ATTR_DATA inside IPSET_ATTR_ADT) as it is parsed: its address, port and protocol.
struct ElementParse {
  SetElement e{};
  bool has_ip = false;
};

int ElementIpAttr(const struct nlattr *a, void *data) {
  auto *p = static_cast<ElementParse *>(data);
  const uint16_t t = mnl_attr_get_type(a);
  if (t == IPSET_ATTR_IPADDR_IPV4 && mnl_attr_get_payload_len(a) == 4) {
    std::memcpy(&p->e.addr.ip, mnl_attr_get_payload(a), 4);
    p->has_ip = true;
  } else if (t == IPSET_ATTR_IPADDR_IPV6 && mnl_attr_get_payload_len(a) == 16) {
    std::memcpy(&p->e.addr.in6, mnl_attr_get_payload(a), 16);
    p->has_ip = true;
  }
  return MNL_CB_OK;
}

int ElementAttr(const struct nlattr *a, void *data) {
  auto *p = static_cast<ElementParse *>(data);
  switch (mnl_attr_get_type(a)) {
    case IPSET_ATTR_IP:
      return mnl_attr_parse_nested(a, ElementIpAttr, p) < 0 ? MNL_CB_ERROR : MNL_CB_OK;
    case IPSET_ATTR_PORT:
      if (mnl_attr_get_payload_len(a) >= 2) p->e.port = ntohs(mnl_attr_get_u16(a));
      break;
    case IPSET_ATTR_PROTO:
      if (mnl_attr_get_payload_len(a) >= 1) p->e.proto = mnl_attr_get_u8(a);
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

int AdtAttr(const struct nlattr *a, void *data) {
  if (mnl_attr_get_type(a) != IPSET_ATTR_DATA) return MNL_CB_OK;
  ElementParse p;
  if (mnl_attr_parse_nested(a, ElementAttr, &p) < 0) return MNL_CB_ERROR;
  if (p.has_ip) static_cast<DumpState *>(data)->out->push_back(p.e);
  return MNL_CB_OK;
}

// One attribute of the set's header data: its references (how many kernel components, x_tables rules, use it).
int HeaderAttr(const struct nlattr *a, void *data) {
  auto *st = static_cast<DumpState *>(data);
  if (mnl_attr_get_type(a) == IPSET_ATTR_REFERENCES && mnl_attr_get_payload_len(a) >= 4 && st->references)
    *st->references = ntohl(mnl_attr_get_u32(a));
  return MNL_CB_OK;
}

int DumpAttr(const struct nlattr *attr, void *data) {
  const uint16_t t = mnl_attr_get_type(attr);
  if (t == IPSET_ATTR_DATA)  // the set's header (sent with its first message)
    return mnl_attr_parse_nested(attr, HeaderAttr, data) < 0 ? MNL_CB_ERROR : MNL_CB_OK;
  if (t != IPSET_ATTR_ADT) return MNL_CB_OK;  // its name, type…
  return mnl_attr_parse_nested(attr, AdtAttr, data) < 0 ? MNL_CB_ERROR : MNL_CB_OK;
}

int DumpMessage(const struct nlmsghdr *nlh, void *data) {
  return mnl_attr_parse(nlh, sizeof(struct nfgenmsg), DumpAttr, data) < 0 ? MNL_CB_ERROR : MNL_CB_OK;
}

}  // namespace

bool ListGateSet(Family family, std::vector<SetElement> *out, uint32_t *references) {
  out->clear();
  if (references) *references = 0;
  const char *name = GateSetName(family);
  if (SetIndexByName(name) == IPSET_INVALID_ID) return false;
  // A socket of its own: whatever a dump leaves unread never reaches the kept socket's next answer.
  std::unique_ptr<struct mnl_socket, SocketCloser> sock(mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC));
  if (!sock || mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
    Throw(IpsetError("ipset netlink socket", errno));
  }
  const unsigned portid = mnl_socket_get_portid(sock.get());
  std::unique_ptr<char[]> buf(new char[kMessageBuffer]);
  struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf.get());
  nlh->nlmsg_type = (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  nlh->nlmsg_seq = static_cast<uint32_t>(time(nullptr));
  auto *nfg = static_cast<struct nfgenmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct nfgenmsg)));
  nfg->nfgen_family = family == Family::kIpv6 ? NFPROTO_IPV6 : NFPROTO_IPV4;
  nfg->version = NFNETLINK_V0;
  nfg->res_id = htons(0);
  mnl_attr_put_u8(nlh, IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL);
  mnl_attr_put_strz(nlh, IPSET_ATTR_SETNAME, name);
  const uint32_t seq = nlh->nlmsg_seq;
  if (mnl_socket_sendto(sock.get(), nlh, nlh->nlmsg_len) < 0) {
    Throw(IpsetError(std::string("listing ipset ") + name, errno));
  }
  DumpState st{out, references};
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(sock.get(), buf.get(), kMessageBuffer);
    if (n < 0) Throw(IpsetError(std::string("listing ipset ") + name, errno));
    const int r = mnl_cb_run(buf.get(), n, seq, portid, DumpMessage, &st);
    if (r == MNL_CB_STOP) return true;
    if (r == MNL_CB_ERROR) {
      const int err = errno;
      if (err == ENOENT) {  // destroyed since its index was asked
        out->clear();
        return false;
      }
      Throw(IpsetError(std::string("listing ipset ") + name, err));
    }
  }
}

}  // namespace iptlb
