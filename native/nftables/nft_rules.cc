#include "nft_rules.h"

#include <arpa/inet.h>
#include <libnftnl/common.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace iptlb {
namespace nft {
namespace {

/** First backend index of a profile with `mod` destinations (src/nft/ops.ts backendOffset). */
uint32_t BackendOffset(uint32_t mod) { return mod * (mod - 1) / 2; }
/** First backend index of a round-robin profile with `mod` slots (src/nft/ops.ts rrOffset). */
uint32_t RrOffset(uint32_t mod) { return 1000000u + BackendOffset(mod); }

// NFTNL_UDATA_RULE_COMMENT: nft keeps a rule's comment as this TLV in the rule userdata.
constexpr uint8_t kUdataRuleComment = 0;
constexpr size_t kCommentMax = 128;
constexpr uint32_t kDportOffset = 2;  // same for tcp, udp and sctp

// The 32-bit register `i` (0-15) as nft names it: the 16-byte NFT_REG_n when it starts one.
uint32_t Reg32(uint32_t i) { return i % 4 == 0 ? NFT_REG_1 + i / 4 : NFT_REG32_00 + i; }

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

void SetComment(nftnl_rule *r, const std::string &comment) {
  UdataPtr ud = Own<UdataPtr>(nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN));
  if (!nftnl_udata_put_strz(ud.get(), kUdataRuleComment, comment.c_str())) throw std::bad_alloc();
  nftnl_rule_set_data(r, NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud.get()), nftnl_udata_buf_len(ud.get()));
}

// ---- decoding ---------------------------------------------------------------------------------

using Exprs = std::vector<const nftnl_expr *>;

std::string Name(const nftnl_expr *e) {
  const char *n = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
  return n ? n : "";
}
bool U32Is(const nftnl_expr *e, uint16_t attr, uint32_t v) {
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

// `ip[6] daddr . P dport` into reg 1 and the register after the address.
bool VipKey(Cursor *c, const Shape &f) {
  return c->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.daddr_offset, f.l.addr_len, NFT_REG_1) &&
         c->Payload(NFT_PAYLOAD_TRANSPORT_HEADER, kDportOffset, 2, f.port_reg);
}

bool DecodeDispatch(const Shape &f, const Exprs &x, bool has_comment, Rule *out) {
  if (has_comment) return false;
  Cursor c(x);
  const bool fib = c.FibLocal();
  if (!fib) c.seek(0);
  Proto p;
  std::string set, map;
  uint32_t mod = 0;
  if (!(c.L4Proto(&p) && VipKey(&c, f) && c.Lookup(&set, -1) && VipKey(&c, f) &&
        c.Numgen(f.index_reg, &mod, NFT_NG_RANDOM) && c.Lookup(&map, NFT_REG_1) && c.Dnat(f.l.nfproto, f.port_reg) &&
        c.done()))
    return false;
  Hook h;
  Proto sp;
  uint32_t n;
  if (!ParseDispatchSetName(set, &h, &sp, &n) || sp != p || n != mod || map != BackendMapName(p) ||
      (h == Hook::kLoc) != fib)
    return false;
  out->kind = Rule::Kind::kDispatch;
  out->hook = h;
  out->proto = p;
  out->n = n;
  return true;
}

// The selector the profile-owned rules start with: `ip[6] daddr V P dport port [fib daddr type local]`.
bool VipSelector(const Shape &f, Cursor *c, Rule *r) {
  if (!(c->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.daddr_offset, f.l.addr_len, NFT_REG_1) &&
        c->Cmp(NFT_CMP_EQ, r->vip.ip.data(), f.l.addr_len) && c->L4Proto(&r->proto) &&
        c->Payload(NFT_PAYLOAD_TRANSPORT_HEADER, kDportOffset, 2, NFT_REG_1) && c->Cmp(NFT_CMP_EQ, &r->vip.port, 2)))
    return false;
  const size_t at = c->pos();
  r->local = c->FibLocal();
  if (!r->local) c->seek(at);
  return true;
}

bool DecodeLog(const Shape &f, const Exprs &x, const std::string &owner, Rule *out) {
  Cursor c(x);
  Rule r;
  if (!VipSelector(f, &c, &r)) return false;
  if (!(c.Log(&r.prefix, &r.level) && c.done())) return false;
  r.kind = Rule::Kind::kLog;
  r.owner = owner;
  *out = std::move(r);
  return true;
}

// ip daddr V P dport port [fib daddr type local] dnat to ip daddr . P dport . numgen inc mod n offset 1000000+T(n) map
// @be_P
bool DecodeRr(const Shape &f, const Exprs &x, const std::string &owner, Rule *out) {
  Cursor c(x);
  Rule r;
  if (!VipSelector(f, &c, &r)) return false;
  std::string map;
  if (!(VipKey(&c, f) && c.Numgen(f.index_reg, &r.n, NFT_NG_INCREMENTAL) && c.Lookup(&map, NFT_REG_1) &&
        c.Dnat(f.l.nfproto, f.port_reg) && c.done()))
    return false;
  if (map != BackendMapName(r.proto) || r.n == 0) return false;
  r.kind = Rule::Kind::kRr;
  r.owner = owner;
  *out = std::move(r);
  return true;
}

// ip daddr V P dport port [fib daddr type local] <pick> update @S { ip saddr } counter dnat to D
bool DecodeAff(const Shape &f, const Exprs &x, const std::string &owner, Rule *out) {
  Cursor c(x);
  Rule r;
  if (!VipSelector(f, &c, &r)) return false;
  auto name = [&](size_t i) { return i < x.size() ? Name(x[i]) : std::string(); };
  size_t at = c.pos();
  std::string hit_set;
  if (name(at) == "numgen") {
    const nftnl_expr *ng = x[at];
    if (!U32Is(ng, NFTNL_EXPR_NG_DREG, NFT_REG_1) || !nftnl_expr_is_set(ng, NFTNL_EXPR_NG_MODULUS)) return false;
    if (nftnl_expr_is_set(ng, NFTNL_EXPR_NG_OFFSET) && nftnl_expr_get_u32(ng, NFTNL_EXPR_NG_OFFSET) != 0) return false;
    r.mod = nftnl_expr_get_u32(ng, NFTNL_EXPR_NG_MODULUS);
    c.seek(at + 1);
    if (U32Is(ng, NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM)) {
      const nftnl_expr *bo = at + 1 < x.size() && name(at + 1) == "byteorder" ? x[at + 1] : nullptr;
      if (!bo || !U32Is(bo, NFTNL_EXPR_BYTEORDER_SREG, NFT_REG_1) || !U32Is(bo, NFTNL_EXPR_BYTEORDER_DREG, NFT_REG_1) ||
          !U32Is(bo, NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON) || !U32Is(bo, NFTNL_EXPR_BYTEORDER_LEN, 4) ||
          !U32Is(bo, NFTNL_EXPR_BYTEORDER_SIZE, 4))
        return false;
      c.seek(at + 2);
      uint32_t lt = 0;
      if (!c.Cmp(NFT_CMP_LT, &lt, 4)) return false;
      r.pick = Rule::Pick::kRandom;
      r.lt = ntohl(lt);
    } else if (U32Is(ng, NFTNL_EXPR_NG_TYPE, NFT_NG_INCREMENTAL)) {
      uint32_t v = 1;
      if (!c.Cmp(NFT_CMP_EQ, &v, 4) || v != 0) return false;
      r.pick = Rule::Pick::kInc;
    } else {
      return false;
    }
  } else if (name(at) == "payload" && name(at + 1) == "lookup") {
    if (!(c.Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1) && c.Lookup(&hit_set, -1)))
      return false;
    r.pick = Rule::Pick::kHit;
  } else {
    r.pick = Rule::Pick::kRest;
  }
  if (!c.Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1)) return false;
  at = c.pos();
  if (name(at) != "dynset" || name(at + 1) != "counter" || name(at + 2) != "immediate" || name(at + 3) != "immediate" ||
      name(at + 4) != "nat" || at + 5 != x.size())
    return false;
  const nftnl_expr *ds = x[at];
  if (!U32Is(ds, NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1) || !U32Is(ds, NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE) ||
      nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_SREG_DATA) || !nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_SET_NAME))
    return false;
  if (nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_TIMEOUT) && nftnl_expr_get_u64(ds, NFTNL_EXPR_DYNSET_TIMEOUT) != 0)
    return false;
  r.set = nftnl_expr_get_str(ds, NFTNL_EXPR_DYNSET_SET_NAME);
  if (!AffinitySetTimeout(r.set) || (r.pick == Rule::Pick::kHit && hit_set != r.set)) return false;
  const nftnl_expr *ctr = x[at + 1];
  r.packets = nftnl_expr_is_set(ctr, NFTNL_EXPR_CTR_PACKETS) ? nftnl_expr_get_u64(ctr, NFTNL_EXPR_CTR_PACKETS) : 0;
  r.bytes = nftnl_expr_is_set(ctr, NFTNL_EXPR_CTR_BYTES) ? nftnl_expr_get_u64(ctr, NFTNL_EXPR_CTR_BYTES) : 0;
  uint32_t len = 0;
  const nftnl_expr *ia = x[at + 2];
  const void *a = U32Is(ia, NFTNL_EXPR_IMM_DREG, NFT_REG_1) ? nftnl_expr_get(ia, NFTNL_EXPR_IMM_DATA, &len) : nullptr;
  if (!a || len != f.l.addr_len) return false;
  std::memcpy(r.to.ip.data(), a, len);
  const nftnl_expr *ipt = x[at + 3];
  const void *p = U32Is(ipt, NFTNL_EXPR_IMM_DREG, NFT_REG_2) ? nftnl_expr_get(ipt, NFTNL_EXPR_IMM_DATA, &len) : nullptr;
  if (!p || len != 2) return false;
  std::memcpy(&r.to.port, p, 2);
  c.seek(at + 4);
  if (!(c.Dnat(f.l.nfproto, NFT_REG_2) && c.done())) return false;  // the immediates' registers
  if ((r.pick == Rule::Pick::kRandom && (r.lt == 0 || r.lt > r.mod)) ||
      ((r.pick == Rule::Pick::kRandom || r.pick == Rule::Pick::kInc) && r.mod == 0))
    return false;
  r.kind = Rule::Kind::kAff;
  r.owner = owner;
  *out = std::move(r);
  return true;
}

bool DecodeMasq(const Shape &f, const Exprs &x, const std::string &owner, Rule *out) {
  Cursor c(x);
  Rule r;
  uint8_t proto = 0;
  if (!(c.CtStatusDnat() && c.Ct(f.l.ct_dst_key, true) && c.Cmp(NFT_CMP_EQ, r.vip.ip.data(), f.l.addr_len) &&
        c.Ct(NFT_CT_PROTOCOL, false) && c.Cmp(NFT_CMP_EQ, &proto, 1) && Cursor::ProtoOf(proto, &r.proto) &&
        c.Ct(NFT_CT_PROTO_DST, true) && c.Cmp(NFT_CMP_EQ, &r.vip.port, 2) && c.Masq() && c.done()))
    return false;
  r.kind = Rule::Kind::kMasq;
  r.owner = owner;
  *out = std::move(r);
  return true;
}

// The comment of a rule (NFTNL_UDATA_RULE_COMMENT), if any.
bool RuleComment(const nftnl_rule *r, std::string *comment) {
  if (!nftnl_rule_is_set(r, NFTNL_RULE_USERDATA)) return false;
  uint32_t len = 0;
  const void *d = nftnl_rule_get_data(r, NFTNL_RULE_USERDATA, &len);
  if (!d) return false;
  struct Found {
    std::string text;
    bool found = false;
  } f;
  nftnl_udata_parse(
      d, len,
      [](const struct nftnl_udata *a, void *data) -> int {
        auto *f = static_cast<Found *>(data);
        if (nftnl_udata_type(a) != kUdataRuleComment) return 0;
        const char *s = static_cast<const char *>(nftnl_udata_get(a));
        const uint8_t l = nftnl_udata_len(a);
        if (l == 0 || s[l - 1] != '\0') return 0;
        f->text.assign(s, l - 1);
        f->found = true;
        return 0;
      },
      &f);
  if (f.found) *comment = f.text;
  return f.found;
}

std::string Describe(const Exprs &x, bool has_comment, const std::string &comment) {
  std::string s;
  char buf[512];
  for (const nftnl_expr *e : x) {
    if (!s.empty()) s += ' ';
    const int n = nftnl_expr_snprintf(buf, sizeof buf, e, NFTNL_OUTPUT_DEFAULT, 0);
    s += '[';
    s += Name(e);
    if (n > 0) s += ' ' + std::string(buf, std::min<size_t>(n, sizeof buf - 1));
    s += ']';
    if (s.size() > 400) {
      s += " …";
      break;
    }
  }
  if (has_comment) s += " comment \"" + comment + "\"";
  return s;
}

// `ip[6] daddr V P dport port [fib daddr type local]`: the start of every profile-owned rule (see VipSelector).
void EncodeVipSelector(const Shape &f, RuleBuilder *b, const Rule &r) {
  b->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.daddr_offset, f.l.addr_len, NFT_REG_1);
  b->Cmp(NFT_CMP_EQ, r.vip.ip.data(), f.l.addr_len);
  b->L4Proto(r.proto);
  b->Payload(NFT_PAYLOAD_TRANSPORT_HEADER, kDportOffset, 2, NFT_REG_1);
  b->Cmp(NFT_CMP_EQ, &r.vip.port, 2);
  if (r.local) b->FibLocal();
}

// `ip[6] daddr . P dport` (the key of the dispatch sets, the start of the backend maps' keys).
void EncodeVipKey(const Shape &f, RuleBuilder *b) {
  b->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.daddr_offset, f.l.addr_len, NFT_REG_1);
  b->Payload(NFT_PAYLOAD_TRANSPORT_HEADER, kDportOffset, 2, f.port_reg);
}

}  // namespace

RulePtr BuildRule(Family family, BaseChain chain, const Rule &r, const LookupIds &ids) {
  const Shape f(family);
  RulePtr rule = Own<RulePtr>(nftnl_rule_alloc());
  nftnl_rule_set_u32(rule.get(), NFTNL_RULE_FAMILY, f.l.nfproto);
  nftnl_rule_set_str(rule.get(), NFTNL_RULE_TABLE, "iptlb");
  nftnl_rule_set_str(rule.get(), NFTNL_RULE_CHAIN, ChainName(chain));
  RuleBuilder b(rule.get());
  switch (r.kind) {
    case Rule::Kind::kDispatch:
      // [fib daddr type local] ip daddr . P dport @set dnat to ip daddr . P dport . numgen random mod n offset T(n) map
      // @be_P
      if (r.hook == Hook::kLoc) b.FibLocal();
      b.L4Proto(r.proto);
      EncodeVipKey(f, &b);
      b.Lookup(DispatchSetName(r.hook, r.proto, r.n), ids.dispatch_set, -1);
      EncodeVipKey(f, &b);
      b.Numgen(f.index_reg, r.n, NFT_NG_RANDOM);
      b.Lookup(BackendMapName(r.proto), ids.backend_map, NFT_REG_1);
      b.Dnat(f.l.nfproto, f.port_reg);
      break;
    case Rule::Kind::kLog: {
      // ip daddr V P dport port [fib daddr type local] log prefix "…" level L comment "iptlb:<owner>"
      EncodeVipSelector(f, &b, r);
      ExprPtr e = b.New("log");
      nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOG_PREFIX, r.prefix.c_str());
      nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOG_LEVEL, r.level);
      b.Raw(std::move(e));
      SetComment(rule.get(), "iptlb:" + r.owner);
      break;
    }
    case Rule::Kind::kRr: {
      // ip daddr V P dport port [fib daddr type local] dnat to ip daddr . P dport . numgen inc mod n offset
      // 1000000+T(n) map @be_P comment "iptlb:<owner>"
      EncodeVipSelector(f, &b, r);
      EncodeVipKey(f, &b);
      b.Numgen(f.index_reg, r.n, NFT_NG_INCREMENTAL);
      b.Lookup(BackendMapName(r.proto), ids.backend_map, NFT_REG_1);
      b.Dnat(f.l.nfproto, f.port_reg);
      SetComment(rule.get(), "iptlb:" + r.owner);
      break;
    }
    case Rule::Kind::kAff: {
      // ip daddr V P dport port [fib daddr type local] <pick> update @S { ip saddr } counter dnat to D comment
      // "iptlb:<owner>", as nft 1.0.6 encodes it (numgen into reg 1, `<` on the big-endian value; the port in reg 2).
      EncodeVipSelector(f, &b, r);
      if (r.pick == Rule::Pick::kHit) {
        b.Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1);
        b.Lookup(r.set, ids.affinity_set, -1);
      } else if (r.pick == Rule::Pick::kRandom || r.pick == Rule::Pick::kInc) {
        ExprPtr ng = b.New("numgen");
        nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_DREG, NFT_REG_1);
        nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_MODULUS, r.mod);
        nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_TYPE,
                           r.pick == Rule::Pick::kRandom ? NFT_NG_RANDOM : NFT_NG_INCREMENTAL);
        nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_OFFSET, 0);
        b.Raw(std::move(ng));
        if (r.pick == Rule::Pick::kRandom) {
          ExprPtr bo = b.New("byteorder");
          nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_SREG, NFT_REG_1);
          nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_DREG, NFT_REG_1);
          nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON);
          nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_LEN, 4);
          nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_SIZE, 4);
          b.Raw(std::move(bo));
          const uint32_t lt = htonl(r.lt);
          b.Cmp(NFT_CMP_LT, &lt, 4);
        } else {
          const uint32_t zero = 0;
          b.Cmp(NFT_CMP_EQ, &zero, 4);
        }
      }
      b.Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1);
      {
        ExprPtr ds = b.New("dynset");
        nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1);
        nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
        nftnl_expr_set_str(ds.get(), NFTNL_EXPR_DYNSET_SET_NAME, r.set.c_str());
        if (ids.affinity_set) nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_SET_ID, ids.affinity_set);
        b.Raw(std::move(ds));
      }
      b.Raw(b.New("counter"));
      {
        ExprPtr ip = b.New("immediate");
        nftnl_expr_set_u32(ip.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_1);
        nftnl_expr_set(ip.get(), NFTNL_EXPR_IMM_DATA, r.to.ip.data(), f.l.addr_len);
        b.Raw(std::move(ip));
        ExprPtr port = b.New("immediate");
        nftnl_expr_set_u32(port.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_2);
        nftnl_expr_set(port.get(), NFTNL_EXPR_IMM_DATA, &r.to.port, 2);
        b.Raw(std::move(port));
        b.Dnat(f.l.nfproto, NFT_REG_2, NF_NAT_RANGE_PROTO_SPECIFIED);
      }
      SetComment(rule.get(), "iptlb:" + r.owner);
      break;
    }
    case Rule::Kind::kMasq: {
      // ct status dnat ct original ip daddr V ct original protocol P ct original proto-dst port masquerade
      b.Ct(NFT_CT_STATUS, -1);
      ExprPtr bw = b.New("bitwise");
      const uint32_t mask = IPS_DST_NAT, zero = 0;
      nftnl_expr_set_u32(bw.get(), NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
      nftnl_expr_set_u32(bw.get(), NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
      nftnl_expr_set_u32(bw.get(), NFTNL_EXPR_BITWISE_LEN, 4);
      nftnl_expr_set(bw.get(), NFTNL_EXPR_BITWISE_MASK, &mask, 4);
      nftnl_expr_set(bw.get(), NFTNL_EXPR_BITWISE_XOR, &zero, 4);
      b.Raw(std::move(bw));
      b.Cmp(NFT_CMP_NEQ, &zero, 4);
      b.Ct(f.l.ct_dst_key, IP_CT_DIR_ORIGINAL);
      b.Cmp(NFT_CMP_EQ, r.vip.ip.data(), f.l.addr_len);
      b.Ct(NFT_CT_PROTOCOL, IP_CT_DIR_ORIGINAL);
      const uint8_t n = ProtoNumber(r.proto);
      b.Cmp(NFT_CMP_EQ, &n, 1);
      b.Ct(NFT_CT_PROTO_DST, IP_CT_DIR_ORIGINAL);
      b.Cmp(NFT_CMP_EQ, &r.vip.port, 2);
      b.Raw(b.New("masq"));
      SetComment(rule.get(), "iptlb:" + r.owner);
      break;
    }
    case Rule::Kind::kForeign:
      break;  // never encoded (the JS conversion refuses it)
  }
  return rule;
}

Rule DecodeRule(Family family, const nftnl_rule *r) {
  const Shape f(family);
  Exprs x;
  struct nftnl_expr_iter *it = nftnl_expr_iter_create(r);
  if (it) {
    for (const nftnl_expr *e = nftnl_expr_iter_next(it); e; e = nftnl_expr_iter_next(it)) x.push_back(e);
    nftnl_expr_iter_destroy(it);
  }
  std::string comment;
  const bool has_comment = RuleComment(r, &comment);
  Rule out;
  if (DecodeDispatch(f, x, has_comment, &out)) return out;
  if (has_comment && comment.rfind("iptlb:", 0) == 0 && comment.size() > 6) {
    const std::string owner = comment.substr(6);
    if (DecodeLog(f, x, owner, &out) || DecodeRr(f, x, owner, &out) || DecodeAff(f, x, owner, &out) ||
        DecodeMasq(f, x, owner, &out))
      return out;
  }
  out = Rule();
  out.kind = Rule::Kind::kForeign;
  out.text = Describe(x, has_comment, comment);
  return out;
}

}  // namespace nft
}  // namespace iptlb
