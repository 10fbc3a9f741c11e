// The ops of an NftTransaction (src/nft/ops.ts) as plain C++ data, checked and converted on the JS
// thread (TypeErrors name the field), and their encoding into one netlink batch on a worker thread.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "nft_netlink.h"

namespace iptlb {
namespace nft {

enum class Proto : uint8_t { kTcp, kUdp, kSctp };
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

// Addresses and ports in network byte order, as the kernel stores them.
struct Endpoint {
  uint32_t ip = 0;
  uint16_t port = 0;
  bool operator==(const Endpoint &o) const { return ip == o.ip && port == o.port; }
};
std::string IpText(uint32_t ip_be);
uint16_t HostPort(const Endpoint &e);

struct Rule {
  enum class Kind : uint8_t { kDispatch, kLog, kMasq, kRr, kAff, kForeign };
  // aff: how the rule picks (see NftRule 'aff' in src/nft/ops.ts).
  enum class Pick : uint8_t { kHit, kRandom, kInc, kRest };
  Kind kind = Kind::kForeign;
  Hook hook = Hook::kOut;  // dispatch
  Proto proto = Proto::kTcp;
  uint32_t n = 0;          // dispatch, rr (slots)
  std::string owner;       // log, masq, rr
  Endpoint vip;            // log, masq, rr
  bool local = false;      // log, rr
  std::string prefix;      // log
  uint32_t level = 0;      // log
  std::string text;        // foreign
  Pick pick = Pick::kRest; // aff
  uint32_t mod = 0;        // aff random/inc: numgen modulus
  uint32_t lt = 0;         // aff random: numgen result below this
  std::string set;         // aff: the destination's affinity set
  Endpoint to;             // aff: the destination
  uint64_t packets = 0;    // aff, read back: the rule's counter
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
  };
  Kind kind = Kind::kAddTable;
  Proto proto = Proto::kTcp;
  std::string name;  // set name (dispatch sets, deleteSet, element ops on dispatch sets, affinity sets)
  uint32_t timeout = 0;  // addAffinitySet: seconds
  BaseChain chain = BaseChain::kOutput;
  Rule rule;
  std::vector<Endpoint> dispatch;
  std::vector<BackendElement> backend;
};

const char *OpKindName(Op::Kind k);
// "deleteDispatchElements out_tcp_3", "addRule output", "addTable": how error messages name an op.
std::string DescribeOp(const Op &op);

struct Transaction {
  std::vector<Op> ops;
  int64_t expect_genid = -1;  // -1: none
};

// JS thread: checks and converts; throws Napi::TypeError naming the field.
Transaction TransactionFromJs(const Napi::Value &v);

// Worker thread: appends the messages of all ops (not the batch framing) to `b`.
void EncodeOps(const Transaction &tx, Batch *b);

}  // namespace nft
}  // namespace iptlb
