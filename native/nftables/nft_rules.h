// The rule shapes iptlb writes (NftRule in src/nft/ops.ts), as libnftnl expressions exactly as
// nft 1.0.6 encodes the rendered text, and the decoder that recognises them in a dump (anything
// else is a foreign rule with a one-line description).
#pragma once
#include <cstdint>
#include <string>

#include "nft_objects.h"
#include "nft_ops.h"

namespace iptlb {
namespace nft {

// Set ids of sets created earlier in the same batch (0: refer by name only, as nft does).
struct LookupIds {
  uint32_t dispatch_set = 0;
  uint32_t backend_map = 0;
  uint32_t affinity_set = 0;
  uint32_t client_set = 0;
};

// A rule for `add rule <ip|ip6> iptlb <chain> …` (expressions and the comment userdata).
RulePtr BuildRule(Family f, BaseChain chain, const Rule &r, const LookupIds &ids);

// The comment of a rule (NFTNL_UDATA_RULE_COMMENT, as nft keeps `comment "…"`), if any.
bool RuleComment(const nftnl_rule *r, std::string *comment);

// Decodes a rule dumped from table `f` iptlb; never fails (unknown shapes come back as Rule::Kind::kForeign).
Rule DecodeRule(Family f, const nftnl_rule *r);

}  // namespace nft
}  // namespace iptlb
