// The two x_tables families iptlb writes, as traits: libip4tc on iptables' tables (struct ipt_entry)
// and libip6tc on ip6tables' (struct ip6t_entry). The libraries have the same functions under two
// prefixes and the entries differ only in their IP header; everything above this file (handle,
// transaction, encoder, decoder, workers) is written once, as templates over a traits class.
#pragma once
#include <libiptc/libiptc.h>
// libip6tc.h, unlike libiptc.h, has no extern "C" of its own.
extern "C" {
#include <libiptc/libip6tc.h>
}

#include <cstring>

#include "plan.h"

namespace iptlb {

// A traits class: the library's functions iptlb uses under one set of names (libip4tc's iptc_* and
// libip6tc's ip6tc_* take the same arguments but for the entry type), the entry type, the member
// holding its IP header, the family, and the header flag that marks `-p` (ip6tables sets
// IP6T_F_PROTO, without which the kernel ignores `proto`; iptables sets none).
#define IPTLB_XT_TRAITS(prefix, entry, header, family, proto_flag)                                                 \
  using Entry = entry;                                                                                             \
  static constexpr Family kFamily = family;                                                                        \
  static constexpr unsigned kProtoFlag = proto_flag;                                                               \
  static constexpr const char *kLibrary = #prefix;                                                                 \
  static constexpr const char *kLabelReturn = "RETURN";                                                            \
  static auto &Header(Entry *e) { return e->header; }                                                              \
  static const auto &Header(const Entry *e) { return e->header; }                                                  \
  static struct xtc_handle *Init(const char *table) { return prefix##_init(table); }                               \
  static void Free(struct xtc_handle *h) { prefix##_free(h); }                                                     \
  static const char *StrError(int err) { return prefix##_strerror(err); }                                          \
  static int Commit(struct xtc_handle *h) { return prefix##_commit(h); }                                           \
  static const char *FirstChain(struct xtc_handle *h) { return prefix##_first_chain(h); }                          \
  static const char *NextChain(struct xtc_handle *h) { return prefix##_next_chain(h); }                            \
  static const Entry *FirstRule(const char *chain, struct xtc_handle *h) { return prefix##_first_rule(chain, h); } \
  static const Entry *NextRule(const Entry *e, struct xtc_handle *h) { return prefix##_next_rule(e, h); }          \
  static const char *GetTarget(const Entry *e, struct xtc_handle *h) { return prefix##_get_target(e, h); }         \
  static int IsChain(const char *chain, struct xtc_handle *h) { return prefix##_is_chain(chain, h); }              \
  static int Builtin(const char *chain, struct xtc_handle *h) { return prefix##_builtin(chain, h); }               \
  static int GetReferences(unsigned *refs, const char *chain, struct xtc_handle *h) {                              \
    return prefix##_get_references(refs, chain, h);                                                                \
  }                                                                                                                \
  static int CreateChain(const char *chain, struct xtc_handle *h) { return prefix##_create_chain(chain, h); }      \
  static int FlushEntries(const char *chain, struct xtc_handle *h) { return prefix##_flush_entries(chain, h); }    \
  static int DeleteChain(const char *chain, struct xtc_handle *h) { return prefix##_delete_chain(chain, h); }      \
  static int AppendEntry(const char *chain, const Entry *e, struct xtc_handle *h) {                                \
    return prefix##_append_entry(chain, e, h);                                                                     \
  }                                                                                                                \
  static int InsertEntry(const char *chain, const Entry *e, unsigned n, struct xtc_handle *h) {                    \
    return prefix##_insert_entry(chain, e, n, h);                                                                  \
  }                                                                                                                \
  static int DeleteNumEntry(const char *chain, unsigned n, struct xtc_handle *h) {                                 \
    return prefix##_delete_num_entry(chain, n, h);                                                                 \
  }

// iptables' tables through libip4tc.
struct Ip4Tables {
  IPTLB_XT_TRAITS(iptc, struct ipt_entry, ip, Family::kIpv4, 0)
};

// ip6tables' tables through libip6tc.
struct Ip6Tables {
  IPTLB_XT_TRAITS(ip6tc, struct ip6t_entry, ipv6, Family::kIpv6, IP6T_F_PROTO)
};

#undef IPTLB_XT_TRAITS

// Writes the IP header iptlb sets: a destination (address and mask) and a protocol, nothing else.
template <typename F>
void SetHeader(typename F::Entry *e, const Rule &r) {
  auto &ip = F::Header(e);
  if (r.has_dst) {
    std::memcpy(&ip.dst, &r.dst, sizeof(ip.dst));  // 4 or 16 bytes: the Address is in network order
    std::memcpy(&ip.dmsk, &r.dmsk, sizeof(ip.dmsk));
  }
  ip.proto = r.proto;
  if (r.proto) ip.flags |= F::kProtoFlag;
}

// Reads back the destination and protocol of `e`; false when the header sets anything else (a
// source, interfaces, inversions, fragment flags) or a protocol iptlb does not write.
template <typename F>
bool GetHeader(const typename F::Entry *e, Rule *r) {
  const auto &ip = F::Header(e);
  auto zero = [](const auto &field) {
    const auto *b = reinterpret_cast<const unsigned char *>(&field);
    for (size_t i = 0; i < sizeof(field); i++) {
      if (b[i]) return false;
    }
    return true;
  };
  if (!zero(ip.dst) || !zero(ip.dmsk)) {
    r->has_dst = true;
    std::memcpy(&r->dst, &ip.dst, sizeof(ip.dst));
    std::memcpy(&r->dmsk, &ip.dmsk, sizeof(ip.dmsk));
  }
  const unsigned p = ip.proto;
  if (p != 0 && p != IPPROTO_TCP && p != IPPROTO_UDP && p != IPPROTO_SCTP) return false;
  r->proto = static_cast<uint8_t>(p);
  return zero(ip.src) && zero(ip.smsk) && !ip.iniface[0] && !ip.outiface[0] && !ip.invflags &&
         ip.flags == (p ? F::kProtoFlag : 0);
}

}  // namespace iptlb
