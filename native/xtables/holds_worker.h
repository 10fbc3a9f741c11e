// Whether the nat table of one family holds any of iptlb's objects (what a read would find: a rule
// whose comment starts with "iptlb:" in a built-in chain or a dispatch chain, or a profile chain
// IPTLB_NAT_*), asked without libiptc: the table's entries are copied out of the kernel as they are
// (IPT_SO_GET_ENTRIES, one getsockopt) and walked once. libiptc's parse of a table of 20,000 foreign
// rules (kube-proxy's, say) cost about 150 ms, which every engine selection without an engine record
// paid for asking whether legacy holds iptlb's rules. Like a read it takes no xtables lock, and it is
// asked only of a nat table that exists (asking for a table by name creates it).
#pragma once
#include <napi.h>

#include "job_thread.h"
#include "plan.h"

namespace iptlb {

class HoldsWorker : public ThreadJob {
 public:
  HoldsWorker(Napi::Env env, Family family);

 protected:
  void Work() override;  // no N-API in here
  void OnOK() override;

 private:
  Family family_;
  bool holds_ = false;
};

// The walk itself, over the entries as IPT_SO_GET_ENTRIES (IP6T_…) gives them: `hook_entry` holds the
// offsets where the built-in chains of `valid_hooks` start. For the tests of the walk.
bool EntriesHoldIptlb(Family family, const unsigned char *entries, size_t size, unsigned valid_hooks,
                      const unsigned *hook_entry, size_t hooks);

}  // namespace iptlb
