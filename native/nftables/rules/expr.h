// What the nft rule codecs share (native/nftables/rules/, one file per rule kind iptlb writes, as
// src/engines/nft/rules/ on the TypeScript side): where a family's rules keep things (Shape), the
// expression builder (encoding) and the cursor over a dumped rule's expressions (decoding), the
// selectors several kinds start with, and each kind's two directions. The expressions are exactly
// what nft 1.0.6 encodes for the text src/engines/nft/render.ts writes.
#pragma once
#include <arpa/inet.h>
#include <libnftnl/common.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <cstring>
#include <string>
#include <vector>

#include "nft_objects.h"
#include "nft_ops.h"
#include "nft_rules.h"

namespace iptlb {
namespace nft {
namespace rules {

/** First backend index of a profile with `mod` destinations (src/nft/ops.ts backendOffset). */
inline uint32_t BackendOffset(uint32_t mod) { return mod * (mod - 1) / 2; }
/** First backend index of a round-robin profile with `mod` slots (src/nft/ops.ts rrOffset). */
inline uint32_t RrOffset(uint32_t mod) { return 1000000u + BackendOffset(mod); }

constexpr uint32_t kDportOffset = 2;  // same for tcp, udp and sctp

// The 32-bit register `i` (0-15) as nft names it: the 16-byte NFT_REG_n when it starts one.
inline uint32_t Reg32(uint32_t i) { return i % 4 == 0 ? NFT_REG_1 + i / 4 : NFT_REG32_00 + i; }

// Where a family's rules keep things: the address at NFT_REG_1, then the concatenation's port
// (and the backend index) in the registers right after it (each component padded to 4 bytes).
struct Shape {
  explicit Shape(Family f) : l(LayoutOf(f)), port_reg(Reg32(l.addr_len / 4)), index_reg(Reg32(l.addr_len / 4 + 1)) {}
  const FamilyLayout &l;
  uint32_t port_reg;   // ip: NFT_REG32_01; ip6: NFT_REG_2
  uint32_t index_reg;  // ip: NFT_REG32_02; ip6: NFT_REG32_05
};

// ---- encoding ---------------------------------------------------------------------------------

class RuleBuilder {
 public:
  explicit RuleBuilder(nftnl_rule *r) : r_(r) {}

  void Payload(uint32_t base, uint32_t offset, uint32_t len, uint32_t dreg) {
    ExprPtr e = New("payload");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_DREG, dreg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_BASE, base);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_OFFSET, offset);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_LEN, len);
    Add(std::move(e));
  }
  void Cmp(uint32_t op, const void *data, uint32_t len) {
    ExprPtr e = New("cmp");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_SREG, NFT_REG_1);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_OP, op);
    nftnl_expr_set(e.get(), NFTNL_EXPR_CMP_DATA, data, len);
    Add(std::move(e));
  }
  void Meta(uint32_t key) {
    ExprPtr e = New("meta");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_DREG, NFT_REG_1);
    Add(std::move(e));
  }
  // `meta l4proto P` (nft's implicit dependency of `tcp dport`).
  void L4Proto(Proto p) {
    Meta(NFT_META_L4PROTO);
    const uint8_t n = ProtoNumber(p);
    Cmp(NFT_CMP_EQ, &n, 1);
  }
  // `fib daddr type local`
  void FibLocal() {
    ExprPtr e = New("fib");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_FIB_DREG, NFT_REG_1);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
    Add(std::move(e));
    const uint32_t local = RTN_LOCAL;  // host byte order, as the fib expression stores it
    Cmp(NFT_CMP_EQ, &local, sizeof local);
  }
  void Ct(uint32_t key, int dir) {
    ExprPtr e = New("ct");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, NFT_REG_1);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, key);
    if (dir >= 0) nftnl_expr_set_u8(e.get(), NFTNL_EXPR_CT_DIR, static_cast<uint8_t>(dir));
    Add(std::move(e));
  }
  void Lookup(const std::string &set, uint32_t set_id, int dreg) {
    ExprPtr e = New("lookup");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
    if (dreg >= 0) nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_DREG, static_cast<uint32_t>(dreg));
    nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOOKUP_SET, set.c_str());
    if (set_id) nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SET_ID, set_id);
    Add(std::move(e));
  }
  void Numgen(uint32_t dreg, uint32_t mod, uint32_t type) {
    ExprPtr e = New("numgen");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NG_DREG, dreg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NG_MODULUS, mod);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NG_TYPE, type);
    // Each destination count has its own index range in the backend map: [n(n-1)/2, n(n-1)/2 + n);
    // round-robin profiles have theirs from 1000000 on.
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NG_OFFSET, type == NFT_NG_RANDOM ? BackendOffset(mod) : RrOffset(mod));
    Add(std::move(e));
  }
  // dnat ip[6] to: the address in reg 1, the port in `proto_reg`.
  void Dnat(uint8_t nfproto, uint32_t proto_reg, uint32_t flags = 0) {
    ExprPtr e = New("nat");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_FAMILY, nfproto);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_REG_ADDR_MIN, NFT_REG_1);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_REG_PROTO_MIN, proto_reg);
    if (flags) nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_FLAGS, flags);
    Add(std::move(e));
  }
  void Raw(ExprPtr e) { Add(std::move(e)); }
  ExprPtr New(const char *name) { return Own<ExprPtr>(nftnl_expr_alloc(name)); }

 private:
  void Add(ExprPtr e) { nftnl_rule_add_expr(r_, e.release()); }
  nftnl_rule *r_;
};

// ---- decoding ---------------------------------------------------------------------------------

using Exprs = std::vector<const nftnl_expr *>;

inline std::string Name(const nftnl_expr *e) {
  const char *n = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
  return n ? n : "";
}
inline bool U32Is(const nftnl_expr *e, uint16_t attr, uint32_t v) {
  return nftnl_expr_is_set(e, attr) && nftnl_expr_get_u32(e, attr) == v;
}

// Reads expressions from position `i` on; each matcher advances `i` only on success.
class Cursor {
 public:
  explicit Cursor(const Exprs &x) : x_(x) {}
  bool done() const { return i_ == x_.size(); }
  size_t pos() const { return i_; }
  void seek(size_t i) { i_ = i; }

  bool Payload(uint32_t base, uint32_t offset, uint32_t len, uint32_t dreg) {
    const nftnl_expr *e = Next("payload");
    if (!e || nftnl_expr_is_set(e, NFTNL_EXPR_PAYLOAD_SREG)) return false;
    return Ok(U32Is(e, NFTNL_EXPR_PAYLOAD_BASE, base) && U32Is(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset) &&
              U32Is(e, NFTNL_EXPR_PAYLOAD_LEN, len) && U32Is(e, NFTNL_EXPR_PAYLOAD_DREG, dreg));
  }
  // cmp on reg 1 with `op`; copies the operand (length `len`) into `out`.
  bool Cmp(uint32_t op, void *out, uint32_t len) {
    const nftnl_expr *e = Next("cmp");
    if (!e || !U32Is(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1) || !U32Is(e, NFTNL_EXPR_CMP_OP, op)) return false;
    uint32_t got = 0;
    const void *d = nftnl_expr_get(e, NFTNL_EXPR_CMP_DATA, &got);
    if (!d || got != len) return false;
    std::memcpy(out, d, len);
    return Ok(true);
  }
  bool L4Proto(Proto *p) {
    const nftnl_expr *e = Next("meta");
    if (!e || !U32Is(e, NFTNL_EXPR_META_KEY, NFT_META_L4PROTO) || !U32Is(e, NFTNL_EXPR_META_DREG, NFT_REG_1))
      return false;
    Ok(true);
    uint8_t n = 0;
    return Cmp(NFT_CMP_EQ, &n, 1) && ProtoOf(n, p);
  }
  bool FibLocal() {
    const nftnl_expr *e = Next("fib");
    if (!e || !U32Is(e, NFTNL_EXPR_FIB_DREG, NFT_REG_1) || !U32Is(e, NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE) ||
        !U32Is(e, NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR))
      return false;
    Ok(true);
    uint32_t t = 0;
    return Cmp(NFT_CMP_EQ, &t, 4) && t == RTN_LOCAL;
  }
  // ct KEY [original] => reg 1; `dir` -1: the kernel reports no direction for this key.
  bool Ct(uint32_t key, bool want_dir) {
    const nftnl_expr *e = Next("ct");
    if (!e || !U32Is(e, NFTNL_EXPR_CT_KEY, key) || !U32Is(e, NFTNL_EXPR_CT_DREG, NFT_REG_1)) return false;
    if (want_dir &&
        !(nftnl_expr_is_set(e, NFTNL_EXPR_CT_DIR) && nftnl_expr_get_u8(e, NFTNL_EXPR_CT_DIR) == IP_CT_DIR_ORIGINAL))
      return false;
    if (!want_dir && nftnl_expr_is_set(e, NFTNL_EXPR_CT_DIR) &&
        nftnl_expr_get_u8(e, NFTNL_EXPR_CT_DIR) != IP_CT_DIR_ORIGINAL)
      return false;
    return Ok(true);
  }
  bool Lookup(std::string *set, int dreg) {
    const nftnl_expr *e = Next("lookup");
    if (!e || !U32Is(e, NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1)) return false;
    if (nftnl_expr_is_set(e, NFTNL_EXPR_LOOKUP_FLAGS) && nftnl_expr_get_u32(e, NFTNL_EXPR_LOOKUP_FLAGS) != 0)
      return false;
    if (dreg < 0 ? nftnl_expr_is_set(e, NFTNL_EXPR_LOOKUP_DREG)
                 : !U32Is(e, NFTNL_EXPR_LOOKUP_DREG, static_cast<uint32_t>(dreg)))
      return false;
    const char *s = nftnl_expr_get_str(e, NFTNL_EXPR_LOOKUP_SET);
    if (!s) return false;
    *set = s;
    return Ok(true);
  }
  bool Numgen(uint32_t dreg, uint32_t *mod, uint32_t type) {
    const nftnl_expr *e = Next("numgen");
    if (!e || !U32Is(e, NFTNL_EXPR_NG_DREG, dreg) || !U32Is(e, NFTNL_EXPR_NG_TYPE, type)) return false;
    if (!nftnl_expr_is_set(e, NFTNL_EXPR_NG_MODULUS)) return false;
    *mod = nftnl_expr_get_u32(e, NFTNL_EXPR_NG_MODULUS);
    const uint32_t offset =
        nftnl_expr_is_set(e, NFTNL_EXPR_NG_OFFSET) ? nftnl_expr_get_u32(e, NFTNL_EXPR_NG_OFFSET) : 0;
    if (offset != (type == NFT_NG_RANDOM ? BackendOffset(*mod) : RrOffset(*mod))) return false;
    return Ok(true);
  }
  // dnat ip[6] to reg 1 (address) and `proto_reg` (port): the kernel fills in max = min and the range flags.
  bool Dnat(uint8_t nfproto, uint32_t proto_reg) {
    const nftnl_expr *e = Next("nat");
    if (!e || !U32Is(e, NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT) || !U32Is(e, NFTNL_EXPR_NAT_FAMILY, nfproto) ||
        !U32Is(e, NFTNL_EXPR_NAT_REG_ADDR_MIN, NFT_REG_1) || !U32Is(e, NFTNL_EXPR_NAT_REG_PROTO_MIN, proto_reg))
      return false;
    if (nftnl_expr_is_set(e, NFTNL_EXPR_NAT_REG_ADDR_MAX) && !U32Is(e, NFTNL_EXPR_NAT_REG_ADDR_MAX, NFT_REG_1))
      return false;
    if (nftnl_expr_is_set(e, NFTNL_EXPR_NAT_REG_PROTO_MAX) && !U32Is(e, NFTNL_EXPR_NAT_REG_PROTO_MAX, proto_reg))
      return false;
    const uint32_t range = NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED;
    if (nftnl_expr_is_set(e, NFTNL_EXPR_NAT_FLAGS) && (nftnl_expr_get_u32(e, NFTNL_EXPR_NAT_FLAGS) & ~range))
      return false;
    return Ok(true);
  }
  bool Log(std::string *prefix, uint32_t *level) {
    const nftnl_expr *e = Next("log");
    if (!e) return false;
    for (uint16_t a : {NFTNL_EXPR_LOG_GROUP, NFTNL_EXPR_LOG_SNAPLEN, NFTNL_EXPR_LOG_QTHRESHOLD}) {
      if (nftnl_expr_is_set(e, a)) return false;
    }
    if (nftnl_expr_is_set(e, NFTNL_EXPR_LOG_FLAGS) && nftnl_expr_get_u32(e, NFTNL_EXPR_LOG_FLAGS) != 0) return false;
    const char *p =
        nftnl_expr_is_set(e, NFTNL_EXPR_LOG_PREFIX) ? nftnl_expr_get_str(e, NFTNL_EXPR_LOG_PREFIX) : nullptr;
    if (!p || !nftnl_expr_is_set(e, NFTNL_EXPR_LOG_LEVEL)) return false;
    *prefix = p;
    *level = nftnl_expr_get_u32(e, NFTNL_EXPR_LOG_LEVEL);
    return Ok(*level <= 7);
  }
  bool Masq() {
    const nftnl_expr *e = Next("masq");
    if (!e) return false;
    for (uint16_t a = NFTNL_EXPR_BASE; a < NFTNL_EXPR_BASE + 8; a++) {
      if (nftnl_expr_is_set(e, a) && !(a == NFTNL_EXPR_MASQ_FLAGS && nftnl_expr_get_u32(e, a) == 0)) return false;
    }
    return Ok(true);
  }
  // ct status dnat: ct status => reg 1; reg 1 = (reg 1 & IPS_DST_NAT) ^ 0; reg 1 != 0
  bool CtStatusDnat() {
    if (!Ct(NFT_CT_STATUS, false)) return false;
    const nftnl_expr *e = Next("bitwise");
    if (!e || !U32Is(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1) || !U32Is(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1) ||
        !U32Is(e, NFTNL_EXPR_BITWISE_LEN, 4))
      return false;
    if (nftnl_expr_is_set(e, NFTNL_EXPR_BITWISE_OP) && nftnl_expr_get_u32(e, NFTNL_EXPR_BITWISE_OP) != NFT_BITWISE_BOOL)
      return false;
    uint32_t ml = 0, xl = 0;
    const void *m = nftnl_expr_get(e, NFTNL_EXPR_BITWISE_MASK, &ml);
    const void *x = nftnl_expr_get(e, NFTNL_EXPR_BITWISE_XOR, &xl);
    if (!m || !x || ml != 4 || xl != 4) return false;
    uint32_t mask, xr;
    std::memcpy(&mask, m, 4);
    std::memcpy(&xr, x, 4);
    if (mask != IPS_DST_NAT || xr != 0) return false;
    Ok(true);
    uint32_t zero = 1;
    return Cmp(NFT_CMP_NEQ, &zero, 4) && zero == 0;
  }

  static bool ProtoOf(uint8_t n, Proto *p) {
    for (Proto q : {Proto::kTcp, Proto::kUdp, Proto::kSctp}) {
      if (ProtoNumber(q) == n) {
        *p = q;
        return true;
      }
    }
    return false;
  }

 private:
  const nftnl_expr *Next(const char *name) {
    if (i_ >= x_.size() || Name(x_[i_]) != name) return nullptr;
    return x_[i_];
  }
  bool Ok(bool ok) {
    if (ok) i_++;
    return ok;
  }
  const Exprs &x_;
  size_t i_ = 0;
};

// `ip[6] daddr . P dport` into reg 1 and the register after the address (the key of the dispatch
// sets, the start of the backend maps' keys).
void EncodeVipKey(const Shape &f, RuleBuilder *b);
bool VipKey(Cursor *c, const Shape &f);

// `ip[6] daddr V P dport port [fib daddr type local]`: the start of every profile-owned rule but masq.
void EncodeVipSelector(const Shape &f, RuleBuilder *b, const Rule &r);
bool VipSelector(const Shape &f, Cursor *c, Rule *r);

// Each kind, in <kind>.cc: Encode appends the kind's expressions to the rule (nft_rules.cc sets its
// table, chain and comment); Decode recognises exactly those expressions in a dumped rule, and
// nothing else (nft_rules.cc then tries the next kind, and a rule no kind decodes is foreign). The
// profile-owned kinds (all but dispatch) carry the comment "iptlb:<owner>"; nft_rules.cc reads it.

// [fib daddr type local] meta l4proto P ip daddr . P dport @set dnat to ip daddr . P dport . numgen random mod n offset
// T(n) map @be_P: the shared dispatch rule of one (hook, protocol, destination count), no comment
namespace dispatch {
void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids);
bool Decode(const Shape &f, const Exprs &x, Rule *out);
}  // namespace dispatch

// ip daddr V P dport port [fib daddr type local] log prefix "…" level L: a profile's LOG rule
namespace log {
void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids);
bool Decode(const Shape &f, const Exprs &x, Rule *out);
}  // namespace log

// ip daddr V P dport port [fib daddr type local] dnat to ip daddr . P dport . numgen inc mod n offset 1000000+T(n) map
// @be_P: a round-robin profile's rule
namespace rr {
void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids);
bool Decode(const Shape &f, const Exprs &x, Rule *out);
}  // namespace rr

// ip daddr V P dport port [fib daddr type local] <pick> update @S { ip saddr } counter dnat to D: one destination of a
// profile with source affinity
namespace aff {
void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids);
bool Decode(const Shape &f, const Exprs &x, Rule *out);
}  // namespace aff

// ct status dnat ct original ip daddr V ct original protocol P ct original proto-dst port masquerade: a profile's
// masquerade rule
namespace masq {
void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids);
bool Decode(const Shape &f, const Exprs &x, Rule *out);
}  // namespace masq

}  // namespace rules
}  // namespace nft
}  // namespace iptlb
