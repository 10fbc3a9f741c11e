// What the codec's kind files share (see codec.h): the framing of a match or target in an entry,
// and each kind's two directions. One file per kind; codec.cc dispatches to them.
#pragma once
#include <cstring>
#include <string>

#include "codec.h"

namespace iptlb {
namespace xtcodec {

// Appends a match or target header (name, revision, size) and a zeroed, aligned payload of type T
// to `out`; returns the payload in place, for the caller to fill before anything else is appended.
// Filled in place, not copied in: the padding inside T stays zero (the kernel compares it when a
// rule is deleted by its specification, as iptables -D does).
template <typename T>
T *Add(Bytes *out, const char *name, uint8_t revision) {
  const size_t size = XT_ALIGN(sizeof(struct xt_entry_match)) + XT_ALIGN(sizeof(T));
  const size_t at = out->size();
  out->resize(at + size, 0);
  auto *m = reinterpret_cast<struct xt_entry_match *>(out->data() + at);  // same layout as xt_entry_target
  m->u.user.match_size = static_cast<__u16>(size);
  std::strncpy(m->u.user.name, name, sizeof(m->u.user.name) - 1);
  m->u.user.revision = revision;
  return reinterpret_cast<T *>(m->data);
}

// The payload of a match or target, or null when it is too short to hold a T.
template <typename T>
const T *PayloadOf(const struct xt_entry_match *m) {
  return m->u.match_size >= XT_ALIGN(sizeof(*m)) + sizeof(T) ? reinterpret_cast<const T *>(m->data) : nullptr;
}
template <typename T>
const T *PayloadOf(const struct xt_entry_target *t) {
  return t->u.target_size >= XT_ALIGN(sizeof(*t)) + sizeof(T) ? reinterpret_cast<const T *>(t->data) : nullptr;
}

// A fixed-size, possibly unterminated name field as a string.
inline std::string NameOf(const char *name, size_t max) { return std::string(name, strnlen(name, max)); }

inline std::string NameOf(const struct xt_entry_match *m) { return NameOf(m->u.user.name, sizeof(m->u.user.name)); }

// Each kind, in <kind>.cc: Encode appends its structure (false + *error when the running kernel has
// no revision of it iptlb can write); Decode recognises exactly what Encode writes, in any revision
// iptlb may have written, and nothing else.

// -m tcp|udp|sctp --dport P (port.cc)
namespace port {
bool Encode(Family family, const Match &m, Bytes *out, std::string *error);
bool Decode(Family family, const struct xt_entry_match *m, Match *d);
}  // namespace port

// -m statistic --mode random|nth (statistic.cc)
namespace statistic {
bool Encode(Family family, const Match &m, Bytes *out, std::string *error);
bool Decode(Family family, const struct xt_entry_match *m, Match *d);
}  // namespace statistic

// -m comment --comment C (comment.cc)
namespace comment {
bool Encode(Family family, const Match &m, Bytes *out, std::string *error);
bool Decode(Family family, const struct xt_entry_match *m, Match *d);
}  // namespace comment

// -m recent --set|--update --name N --rsource (recent.cc)
namespace recent {
bool Encode(Family family, const Match &m, Bytes *out, std::string *error);
bool Decode(Family family, const struct xt_entry_match *m, Match *d);
}  // namespace recent

// -m addrtype --dst-type LOCAL (addrtype.cc)
namespace addrtype {
bool Encode(Family family, const Match &m, Bytes *out, std::string *error);
bool Decode(Family family, const struct xt_entry_match *m, Match *d);
}  // namespace addrtype

// -m conntrack --ctstate DNAT --ctorigdst A --ctorigdstport P (conntrack.cc)
namespace conntrack {
bool Encode(Family family, const Match &m, Bytes *out, std::string *error);
bool Decode(Family family, const struct xt_entry_match *m, Match *d);
}  // namespace conntrack

// -m set --match-set S dst,dst (the gate) (set.cc)
namespace set {
bool Encode(Family family, const Match &m, Bytes *out, std::string *error);
bool Decode(Family family, const struct xt_entry_match *m, Match *d);
}  // namespace set

// -j DNAT --to-destination A:P (dnat.cc)
namespace dnat {
bool Encode(Family family, const Target &t, Bytes *out, std::string *error);
bool Decode(Family family, const TargetRead &t, Target *d);
}  // namespace dnat

// -j LOG --log-prefix X --log-level L (log.cc)
namespace log {
bool Encode(Family family, const Target &t, Bytes *out, std::string *error);
bool Decode(Family family, const TargetRead &t, Target *d);
}  // namespace log

// -j RETURN, -j CHAIN (standard targets) (verdict.cc)
namespace verdict {
bool Encode(Family family, const Target &t, Bytes *out, std::string *error);
bool Decode(Family family, const TargetRead &t, Target *d);
}  // namespace verdict

// -j MASQUERADE (masquerade.cc)
namespace masquerade {
bool Encode(Family family, const Target &t, Bytes *out, std::string *error);
bool Decode(Family family, const TargetRead &t, Target *d);
}  // namespace masquerade

}  // namespace xtcodec
}  // namespace iptlb
