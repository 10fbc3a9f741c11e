// Decodes an ipt_entry back into the plan's vocabulary (matches and targets iptlb writes); anything
// else is kept by name as "unknown" so drift is visible.
#pragma once
#include <libiptc/libiptc.h>

#include <cstdint>
#include <string>
#include <vector>

#include "plan.h"

namespace iptlb {

struct DecodedRule {
  Rule rule;
  std::vector<std::string> unknown_matches;  // extension names not understood, in order
  std::string unknown_target;                // set when the target is not understood
  std::string comment;                       // the comment match's text, if any
  uint64_t packets = 0;
  uint64_t bytes = 0;
};

DecodedRule DecodeRule(const struct ipt_entry *e, struct xtc_handle *h);

}  // namespace iptlb
