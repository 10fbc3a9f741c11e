// The rule plan as plain C++ data (mirrors src/types.ts), and its decoding from the JSON text
// JavaScript hands over (any thread: an EPLAN error naming the field for bad input).
#pragma once
// glibc's headers before the kernel's: linux/libc-compat.h (included once) then leaves glibc's
// definitions alone, also for the headers libiptc includes later (it includes net/if.h).
#include <net/if.h>
#include <netinet/in.h>
#include <linux/netfilter.h>  // union nf_inet_addr

#include <cstdint>
#include <string>
#include <vector>

#include "family.h"

namespace iptlb {

// An address or mask in network order, as the kernel's structures hold it: `.ip` for IPv4 (the
// other words zero), `.in6` for IPv6.
using Address = union nf_inet_addr;

struct Match {
  // kUnknown only comes out of the decoder (an extension iptlb does not write; `text` is its name).
  enum Kind {
    kTcp,
    kUdp,
    kSctp,
    kStatistic,
    kStatisticNth,
    kRecentSet,
    kRecentUpdate,
    kComment,
    kAddrtypeLocal,
    kConntrackDnat,
    kSetDstDst,
    kUnknown
  };
  explicit Match(Kind k = kUnknown) : kind(k) {}
  Kind kind;
  uint16_t port = 0;         // tcp/udp/sctp dport, conntrack ctorigdstport
  uint32_t probability = 0;  // statistic: lround(0x80000000 * p)
  uint32_t every = 0;        // statistic nth: --every (1..)
  uint32_t packet = 0;       // statistic nth: --packet (0..every-1)
  uint32_t seconds = 0;      // recent --update: --seconds (1..)
  std::string text;          // comment; recent list name; extension name of kUnknown
  uint16_t set_index =
      0;  // kSetDstDst (the gate, never planned from JS): `-m set --match-set <set> dst,dst`, the set's kernel index
  Address addr{};  // conntrack ctorigdst
  Address mask{};  // conntrack mask
};

struct Target {
  // kUnknown only comes out of the decoder (`chain` then holds the extension or verdict name).
  enum Kind { kDnat, kLog, kReturn, kMasquerade, kJump, kUnknown };
  explicit Target(Kind k = kReturn) : kind(k) {}
  Kind kind;
  Address addr{};      // DNAT address
  uint16_t port = 0;   // DNAT port (host order)
  std::string prefix;  // LOG prefix
  uint8_t level = 4;   // LOG level
  std::string chain;   // jump target; name of kUnknown
};

struct Rule {
  bool has_dst = false;
  Address dst{};
  Address dmsk{};
  uint8_t proto = 0;  // IPPROTO_*
  std::vector<Match> matches;
  Target target{Target::kReturn};
};

struct Chain {
  std::string name;
  std::vector<Rule> rules;
};

struct HookRule {
  std::string chain;
  std::string owner;
  Rule rule;
};

// A profile a change creates (a name the state file does not hold) and its chain; the chain is
// empty when a profile this state file holds keeps it in the same change (a rename between names
// that share a chain).
struct Created {
  std::string name;
  std::string chain;
};

struct Transaction {
  Family family = Family::kIpv4;
  // Refuse (ECONFLICT) a hook rule whose address, protocol and port a rule of another profile (not
  // among the owners) already sends to its chain: a state-file instance does not take over an
  // address the kernel gives to a profile it does not hold.
  bool exclusive = false;
  // With `exclusive`: refuse (ECONFLICT, the message starting "name: ") a created profile whose
  // chain the table has, or whose name rules carry, unless the table holds it exactly as planned:
  // a state-file instance does not take over a profile the kernel holds for another state file.
  std::vector<Created> created;
  // With `exclusive`, of the profiles the change replaces or deletes that the state file holds (the
  // owners not created): the address of the version the state file holds of each one it moves or
  // deletes (given as its gate element `ip,proto:port`, kept here as a rule of that address,
  // protocol and port). Refuse (ECONFLICT, the message starting "name: ") such a profile whose name a dispatch
  // rule carries at an address neither planned nor here, or whose chain a rule of a profile not
  // among the owners jumps to (another state file's profile, which the change would take over).
  std::vector<Rule> was;
  // Elements of the gate's set that no rule behind the gate selected when the table was read (`iptlb
  // sync`: added by hand or by another tool), in the same form as `was`: deleted after the commit, each
  // unless a dispatch rule of the committed table selects it.
  std::vector<Rule> strays;
  std::vector<std::string> owners;
  std::vector<std::string> delete_chains;
  std::vector<Chain> chains;
  std::vector<HookRule> hook_rules;
};

// JSON.stringify of a transaction → the plan; throws NativeFailure with code EPLAN and the message
// "<field>: <what>" when the text is not JSON or the plan fails a check. No N-API: any thread.
Transaction TransactionFromJson(std::string text);

// Parses "a.b.c.d" or "a.b.c.d/n" (ipv4), "v6" or "v6/n" (ipv6: any RFC 4291 text form); false
// when malformed or of the other family. The address comes back masked.
bool ParseCidr(Family family, const std::string &text, Address *addr, Address *mask);

// A profile's chain as iptlb (and the original) names it (src/engines/legacy/plan.ts OWN_CHAIN):
// IPTLB_NAT_ and 1-18 of A-Z 0-9 _.
bool IsProfileChain(const std::string &name);

}  // namespace iptlb
