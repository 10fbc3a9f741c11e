// The dispatcher of the x_tables codec (codec.h): a rule kind to the file that encodes it, an
// extension's name (or a target's label) to the file that decodes it.
#include "codec.h"

#include "kinds.h"

namespace iptlb {
namespace xtcodec {

bool EncodeMatch(Family family, const Match &m, Bytes *out, std::string *error) {
  switch (m.kind) {
    case Match::kTcp:
    case Match::kUdp:
    case Match::kSctp:
      return port::Encode(family, m, out, error);
    case Match::kStatistic:
    case Match::kStatisticNth:
      return statistic::Encode(family, m, out, error);
    case Match::kRecentSet:
    case Match::kRecentUpdate:
      return recent::Encode(family, m, out, error);
    case Match::kComment:
      return comment::Encode(family, m, out, error);
    case Match::kAddrtypeLocal:
      return addrtype::Encode(family, m, out, error);
    case Match::kConntrackDnat:
      return conntrack::Encode(family, m, out, error);
    case Match::kSetDstDst:
      return set::Encode(family, m, out, error);
    case Match::kUnknown:
      break;
  }
  *error = "cannot encode an unknown match";
  return false;
}

bool EncodeTarget(Family family, const Target &t, Bytes *out, std::string *error) {
  switch (t.kind) {
    case Target::kDnat:
      return dnat::Encode(family, t, out, error);
    case Target::kLog:
      return log::Encode(family, t, out, error);
    case Target::kMasquerade:
      return masquerade::Encode(family, t, out, error);
    case Target::kReturn:
    case Target::kJump:
      return verdict::Encode(family, t, out, error);
    case Target::kUnknown:
      break;
  }
  *error = "cannot encode an unknown target";
  return false;
}

bool DecodeMatch(Family family, const struct xt_entry_match *m, Match *d) {
  using Decoder = bool (*)(Family, const struct xt_entry_match *, Match *);
  static const struct {
    const char *name;
    Decoder decode;
  } kDecoders[] = {
      {"tcp", port::Decode},          {"udp", port::Decode},
      {"sctp", port::Decode},         {"statistic", statistic::Decode},
      {"recent", recent::Decode},     {"comment", comment::Decode},
      {"addrtype", addrtype::Decode}, {"conntrack", conntrack::Decode},
      {"set", set::Decode},
  };
  const std::string name = NameOf(m);
  for (const auto &k : kDecoders) {
    if (name == k.name) return k.decode(family, m, d);
  }
  return false;
}

bool DecodeTarget(Family family, const TargetRead &t, Target *d) {
  if (t.label == "DNAT") return dnat::Decode(family, t, d);
  if (t.label == "LOG") return log::Decode(family, t, d);
  if (t.label == "MASQUERADE") return masquerade::Decode(family, t, d);
  return verdict::Decode(family, t, d);
}

}  // namespace xtcodec
}  // namespace iptlb
