#include "rule_encoder.h"

#include "codec.h"

namespace iptlb {

template <typename F>
std::vector<uint8_t> EncodeRule(const Rule &rule, std::string *error) {
  using Entry = typename F::Entry;
  std::vector<uint8_t> buf(sizeof(Entry), 0);
  for (const Match &m : rule.matches) {
    if (!xtcodec::EncodeMatch(F::kFamily, m, &buf, error)) return {};
  }
  const size_t target_offset = buf.size();
  if (!xtcodec::EncodeTarget(F::kFamily, rule.target, &buf, error)) return {};
  auto *e = reinterpret_cast<Entry *>(buf.data());
  SetHeader<F>(e, rule);
  e->target_offset = static_cast<__u16>(target_offset);
  e->next_offset = static_cast<__u16>(buf.size());
  return buf;
}

template std::vector<uint8_t> EncodeRule<Ip4Tables>(const Rule &, std::string *);
template std::vector<uint8_t> EncodeRule<Ip6Tables>(const Rule &, std::string *);

}  // namespace iptlb
