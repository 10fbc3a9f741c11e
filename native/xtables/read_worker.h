// AsyncWorker that reads iptlb's objects from the nat table of one family (iptables' through
// libiptc, ip6tables' through libip6tc): chains named IPTLB_* and rules of the
// built-in chains whose comment starts with "iptlb:", decoded, with their counters. In the shape
// parseSave gives (src/gate.ts): rules of the dispatch chains IPTLB_OUTPUT/IPTLB_PREROUTING are hook
// rules of OUTPUT/PREROUTING, those in the built-in chains themselves `direct`; `gate` says which
// gates and dispatch chains exist, `gate.members` the elements of the gate set (read while a
// dispatch chain exists). Like iptables-save it takes no xtables lock (the kernel hands out a
// consistent copy of the table).
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "ipset.h"
#include "job_thread.h"
#include "rule_decoder.h"

namespace iptlb {

// A decoded rule as JavaScript sees it: the Rule shape of src/model/types.ts.
Napi::Value RuleToJs(Napi::Env env, Family family, const Rule &rule);

class ReadWorker : public ThreadJob {
 public:
  ReadWorker(Napi::Env env, Family family);

 protected:
  void Work() override;  // no N-API in here
  void OnOK() override;

 private:
  template <typename F>
  void ReadTable();

  Family family_;
  struct ChainView {
    std::string name;
    std::vector<DecodedRule> rules;
  };
  struct HookView {
    std::string chain;
    std::string owner;
    unsigned position;
    DecodedRule rule;
    bool direct = false;  // in OUTPUT/PREROUTING itself: the layout before the gate
  };
  std::vector<ChainView> chains_;
  std::vector<HookView> hooks_;
  std::vector<std::string> gates_;     // hooks whose gate rule exists
  std::vector<std::string> dispatch_;  // hooks whose dispatch chain exists
  std::vector<std::string> foreign_;   // hooks whose dispatch chain holds a rule iptlb did not write
  // The gate set's elements (read when a dispatch chain exists; not known when the set could not be read).
  bool members_known_ = false;
  std::vector<SetElement> members_;
  // No dispatch chain, and the gate set there all the same (left over): members_ are its elements, and
  // left_references_ how many kernel components (another tool's set match) use it.
  bool left_set_ = false;
  uint32_t left_references_ = 0;
  Napi::Array MembersToJs(Napi::Env env) const;
  // The original iptlb's jumps: no comment, in a built-in chain, to a profile's chain.
  struct BareJump {
    std::string hook;
    std::string target;
    Rule rule;  // its address, protocol and port (a profile's change at that address is refused)
  };
  std::vector<BareJump> bare_;
};

}  // namespace iptlb
