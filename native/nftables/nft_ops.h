// The ops of an NftTransaction (src/nft/ops.ts) as plain C++ data, checked and converted on the JS
// thread (TypeErrors name the field), and their encoding into one netlink batch on a worker thread.
#pragma once
#include <napi.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "family.h"
#include "nft_netlink.h"

namespace iptlb {
namespace nft {

enum class Proto : uint8_t { kTcp, kUdp, kSctp };
// The table's family: `ip iptlb` (IPv4 profiles) or `ip6 iptlb` (IPv6 ones, same layout).
using iptlb::Family;  // kIpv4: table ip iptlb, kIpv6: table ip6 iptlb
enum class Hook : uint8_t { kOut, kPre, kLoc };
enum class BaseChain : uint8_t { kOutput, kPrerouting, kPostrouting };

const char *ProtoName(Proto p);
uint8_t ProtoNumber(Proto p);  // IPPROTO_*
const char *HookName(Hook h);
const char *ChainName(BaseChain c);
std::string DispatchSetName(Hook h, Proto p, uint32_t n);
std::string BackendMapName(Proto p);
// Parses a name matching DISPATCH_SET_PATTERN (^(out|pre|loc)_(tcp|udp|sctp)_[1-9][0-9]*$).
bool ParseDispatchSetName(const std::string &name, Hook *h, Proto *p, uint32_t *n);
bool ParseBackendMapName(const std::string &name, Proto *p);
bool ParseProto(const std::string &s, Proto *p);

// What differs between the two tables: everything else (names, rule shapes, numgen offsets) is one.
struct FamilyLayout {
  const char *name;       // "ip" / "ip6": the nft family keyword, also the payload protocol of `daddr`
  uint8_t nfproto;        // NFPROTO_IPV4 / NFPROTO_IPV6: netlink messages, the nat expression
  int af;                 // AF_INET / AF_INET6 (inet_pton)
  uint32_t addr_len;      // 4 / 16 bytes
  uint32_t daddr_offset;  // offsetof(iphdr, daddr) 16 / offsetof(ipv6hdr, daddr) 24
  uint32_t saddr_offset;  // 12 / 8
  uint32_t ct_dst_key;    // NFT_CT_DST_IP / NFT_CT_DST_IP6 (`ct original ip[6] daddr`)
  uint32_t addr_type;     // nft's datatype id: ipv4_addr 7 / ipv6_addr 8
  uint32_t proto_desc;    // nft's PROTO_DESC_IP 12 / PROTO_DESC_IP6 13 (set typeof userdata)
  uint32_t daddr_field;   // IPHDR_DADDR 12 / IP6HDR_DADDR 9
};
const FamilyLayout &LayoutOf(Family f);
bool ParseFamily(const std::string &s, Family *f);
// "table ip iptlb" / "table ip6 iptlb", for messages.
std::string TableText(Family f);

// Addresses and ports in network byte order, as the kernel stores them. An IPv4 address takes the
// first 4 bytes of `ip` (the rest stay zero).
struct Endpoint {
  std::array<uint8_t, 16> ip{};
  uint16_t port = 0;
  bool operator==(const Endpoint &o) const { return ip == o.ip && port == o.port; }
};
// Dotted quad, or RFC 5952 text (as src/address.ts formats it).
std::string IpText(const Endpoint &e, Family f);
uint16_t HostPort(const Endpoint &e);

struct Rule {
  enum class Kind : uint8_t { kDispatch, kLog, kMasq, kRr, kAff, kForeign };
  // aff: how the rule picks (see NftRule 'aff' in src/nft/ops.ts).
  enum class Pick : uint8_t { kHit, kRandom, kInc, kRest };
  Kind kind = Kind::kForeign;
  Hook hook = Hook::kOut;  // dispatch
  Proto proto = Proto::kTcp;
  uint32_t n = 0;           // dispatch, rr (slots)
  std::string owner;        // log, masq, rr
  Endpoint vip;             // log, masq, rr
  bool local = false;       // log, rr
  std::string prefix;       // log
  uint32_t level = 0;       // log
  std::string text;         // foreign
  Pick pick = Pick::kRest;  // aff
  uint32_t mod = 0;         // aff random/inc: numgen modulus
  uint32_t lt = 0;          // aff random: numgen result below this
  std::string set;          // aff: the destination's affinity set; empty in a fallback rule (records nothing)
  std::string gate;         // aff: the profile's client set (aff_<SUFFIX>_C_<s>), updated before the pick; may be empty
  Endpoint to;              // aff: the destination
  uint64_t packets = 0;     // aff, read back: the rule's counter
  uint64_t bytes = 0;
};
// Parses an affinity set name (aff_<SUFFIX>_..._<timeout>); the timeout in seconds, 0 when not one.
uint32_t AffinitySetTimeout(const std::string &name);

struct BackendElement {
  Endpoint vip;
  uint32_t index = 0;
  Endpoint to;
};

struct Op {
  enum class Kind : uint8_t {
    kAddTable,
    kDeleteTable,
    kAddBackendMap,
    kAddDispatchSet,
    kDeleteSet,
    kAddBaseChain,
    kFlushChain,
    kAddRule,
    kAddDispatchElements,
    kDeleteDispatchElements,
    kAddBackendElements,
    kDeleteBackendElements,
    kAddAffinitySet,
    // iptables-nft's table <family> nat, not iptlb: the original iptlb's jump (by handle), its chain (flush + delete)
    kDeleteNatRule,
    kDeleteNatChain,
  };
  Kind kind = Kind::kAddTable;
  Proto proto = Proto::kTcp;
  std::string name;             // set name (dispatch sets, deleteSet, element ops on dispatch sets, affinity sets)
  uint32_t timeout = 0;         // addAffinitySet: seconds
  uint32_t size = 65535;        // addAffinitySet: most elements (0: no limit)
  bool size_by_update = false;  // addAffinitySet: made without a size, then given it (see AddAffinitySet)
  BaseChain chain = BaseChain::kOutput;
  Rule rule;
  std::vector<Endpoint> dispatch;
  std::vector<BackendElement> backend;
  std::string nat_chain;  // deleteNatRule: OUTPUT or PREROUTING; deleteNatChain: the IPTLB_NAT_… chain
  uint64_t handle = 0;    // deleteNatRule
};

const char *OpKindName(Op::Kind k);
// "deleteDispatchElements out_tcp_3", "addRule output", "addTable": how error messages name an op.
std::string DescribeOp(const Op &op);

struct Transaction {
  Family family = Family::kIpv4;
  std::vector<Op> ops;
  int64_t expect_genid = -1;  // -1: none
};

// JS thread: checks and converts; throws Napi::TypeError naming the field (also an address not of
// the transaction's family).
Transaction TransactionFromJs(const Napi::Value &v);
// nftRead's optional argument: undefined (ip), 'ip' or 'ip6'; throws Napi::TypeError otherwise.
Family FamilyFromJs(const Napi::Value &v, const std::string &path);
// nftRead's `addresses` argument: an array of { ip, port } of family `f`; throws Napi::TypeError otherwise.
std::vector<Endpoint> EndpointsFromJs(const Napi::Value &v, Family f, const std::string &path);

// Worker thread: appends the messages of all ops (not the batch framing) to `b`.
void EncodeOps(const Transaction &tx, Batch *b);

}  // namespace nft
}  // namespace iptlb
