#include "holds_worker.h"

#include <linux/netfilter/x_tables.h>
#include <linux/netfilter/xt_comment.h>
#include <linux/netfilter_ipv4/ip_tables.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "errors.h"
#include "plan.h"

namespace iptlb {
namespace {

// The text of a fixed-size name field, without reading past it.
std::string FieldText(const char *p, size_t max) { return std::string(p, strnlen(p, max)); }

// Where an entry's matches start: right after the family's entry header.
size_t HeaderSize(Family family) { return family == Family::kIpv6 ? sizeof(ip6t_entry) : sizeof(ipt_entry); }

// The offsets of an entry (the same fields at different places in ipt_entry and ip6t_entry).
void Offsets(Family family, const unsigned char *e, uint16_t *target_offset, uint16_t *next_offset) {
  if (family == Family::kIpv6) {
    const auto *x = reinterpret_cast<const ip6t_entry *>(e);
    *target_offset = x->target_offset;
    *next_offset = x->next_offset;
  } else {
    const auto *x = reinterpret_cast<const ipt_entry *>(e);
    *target_offset = x->target_offset;
    *next_offset = x->next_offset;
  }
}

// The first comment of an entry's matches starts with "iptlb:" (as CommentOf reads it).
bool IptlbComment(Family family, const unsigned char *e, uint16_t target_offset) {
  size_t off = HeaderSize(family);
  while (off + sizeof(xt_entry_match) <= target_offset) {
    const auto *m = reinterpret_cast<const xt_entry_match *>(e + off);
    const uint16_t size = m->u.match_size;
    if (size < sizeof(xt_entry_match) || off + size > target_offset) return false;  // malformed: none
    if (FieldText(m->u.user.name, sizeof(m->u.user.name)) == "comment") {
      if (size < sizeof(xt_entry_match) + sizeof(xt_comment_info)) return false;
      const auto *c = reinterpret_cast<const xt_comment_info *>(m->data);
      return FieldText(c->comment, sizeof(c->comment)).compare(0, 6, "iptlb:") == 0;
    }
    off += size;
  }
  return false;
}

}  // namespace

bool EntriesHoldIptlb(Family family, const unsigned char *entries, size_t size, unsigned valid_hooks,
                      const unsigned *hook_entry, size_t hooks) {
  // The chain of the entry at hand: a built-in one (from its hook's entry point on), a dispatch chain
  // (IPTLB_OUTPUT / IPTLB_PREROUTING), or another user chain (from its ERROR head on).
  enum { kBuiltin, kDispatch, kOther } chain = kOther;
  size_t off = 0;
  while (off + HeaderSize(family) <= size) {
    for (size_t h = 0; h < hooks; h++)
      if ((valid_hooks & (1u << h)) && hook_entry[h] == off) chain = kBuiltin;
    const unsigned char *e = entries + off;
    uint16_t target_offset = 0, next_offset = 0;
    Offsets(family, e, &target_offset, &next_offset);
    if (next_offset == 0 || off + next_offset > size || target_offset > next_offset ||
        target_offset + sizeof(xt_entry_target) > next_offset)
      return false;  // malformed: nothing read as iptlb's
    const auto *t = reinterpret_cast<const xt_entry_target *>(e + target_offset);
    if (FieldText(t->u.user.name, sizeof(t->u.user.name)) == XT_ERROR_TARGET &&
        target_offset + sizeof(xt_error_target) <= next_offset) {
      // A user chain's head (the last entry of the table is one named ERROR).
      const std::string name =
          FieldText(reinterpret_cast<const xt_error_target *>(t)->errorname, XT_FUNCTION_MAXNAMELEN);
      if (IsProfileChain(name)) return true;
      chain = name == "IPTLB_OUTPUT" || name == "IPTLB_PREROUTING" ? kDispatch : kOther;
    } else if (chain != kOther && IptlbComment(family, e, target_offset)) {
      return true;
    }
    off += next_offset;
  }
  return false;
}

namespace {

template <typename Info, typename Entries>
bool AskTable(Family family, int level, int get_info, int get_entries) {
  const int domain = family == Family::kIpv6 ? AF_INET6 : AF_INET;
  const int fd = socket(domain, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  const char *what = family == Family::kIpv6 ? "the ip6tables nat table" : "the nat table";
  if (fd < 0) {
    const int err = errno;
    Throw(NativeError::FromErrno("EKERNEL", err, std::string("cannot read ") + what + ": " + std::strerror(err)));
  }
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  // The table may change between the two calls (its size with it): then the kernel says EAGAIN.
  for (int attempt = 0; attempt < 10; attempt++) {
    Info info;
    std::memset(&info, 0, sizeof(info));
    std::strcpy(info.name, "nat");
    socklen_t len = sizeof(info);
    if (getsockopt(fd, level, get_info, &info, &len) != 0) {
      const int err = errno;
      if (err == ENOENT) return false;  // no nat table: nothing of iptlb's
      Throw(NativeError::FromErrno("EKERNEL", err, std::string("cannot read ") + what + ": " + std::strerror(err)));
    }
    // Not cleared first: the kernel writes all of it (at 20,000 rules about 10 MB).
    std::unique_ptr<unsigned char[]> buf(new unsigned char[sizeof(Entries) + info.size]);
    auto *entries = reinterpret_cast<Entries *>(buf.get());
    std::memset(entries, 0, sizeof(Entries));
    std::strcpy(entries->name, "nat");
    entries->size = info.size;
    len = static_cast<socklen_t>(sizeof(Entries) + info.size);
    if (getsockopt(fd, level, get_entries, entries, &len) != 0) {
      const int err = errno;
      if (err == EAGAIN) continue;
      if (err == ENOENT) return false;
      Throw(NativeError::FromErrno("EKERNEL", err, std::string("cannot read ") + what + ": " + std::strerror(err)));
    }
    return EntriesHoldIptlb(family, reinterpret_cast<const unsigned char *>(entries->entrytable), info.size,
                            info.valid_hooks, info.hook_entry, NF_INET_NUMHOOKS);
  }
  Throw(NativeError{"EKERNEL", EAGAIN, std::string("cannot read ") + what + ": it kept changing (EAGAIN)"});
}

}  // namespace

HoldsWorker::HoldsWorker(Napi::Env env, Family family) : ThreadJob(env, "iptlb.holds"), family_(family) {}

void HoldsWorker::Work() {
  holds_ = family_ == Family::kIpv6
               ? AskTable<ip6t_getinfo, ip6t_get_entries>(family_, IPPROTO_IPV6, IP6T_SO_GET_INFO, IP6T_SO_GET_ENTRIES)
               : AskTable<ipt_getinfo, ipt_get_entries>(family_, IPPROTO_IP, IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES);
}

void HoldsWorker::OnOK() { Resolve(Napi::Boolean::New(Env(), holds_)); }

}  // namespace iptlb
