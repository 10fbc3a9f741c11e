// One destination of a profile with source affinity:
// ip daddr V P dport port [fib daddr type local] [ip saddr @S] update @C { ip saddr } <pick> update @S { ip saddr }
// counter dnat to D; a fallback rule has no update (and no hit); a rule written before the client set has no
// `update @C` (read back only).
#include <string>
#include <vector>

#include "expr.h"

namespace iptlb {
namespace nft {
namespace rules {
namespace aff {

namespace {

// `update @S { ip saddr }` (S created in this batch: its id).
void EncodeUpdate(const Shape &f, RuleBuilder *b, const std::string &set, uint32_t set_id) {
  b->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1);
  ExprPtr ds = b->New("dynset");
  nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1);
  nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
  nftnl_expr_set_str(ds.get(), NFTNL_EXPR_DYNSET_SET_NAME, set.c_str());
  if (set_id) nftnl_expr_set_u32(ds.get(), NFTNL_EXPR_DYNSET_SET_ID, set_id);
  b->Raw(std::move(ds));
}

// <pick>: which connections without an affinity entry this rule takes (see NftRule 'aff' in
// src/engines/nft/ops.ts). random: `numgen random mod M < L`; inc: `numgen inc mod M 0`; hit and rest: nothing here.
// As nft 1.0.6 encodes them: numgen into reg 1, `<` on the big-endian value.
void EncodePick(RuleBuilder *b, const Rule &r) {
  if (r.pick != Rule::Pick::kRandom && r.pick != Rule::Pick::kInc) return;
  ExprPtr ng = b->New("numgen");
  nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_DREG, NFT_REG_1);
  nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_MODULUS, r.mod);
  nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_TYPE, r.pick == Rule::Pick::kRandom ? NFT_NG_RANDOM : NFT_NG_INCREMENTAL);
  nftnl_expr_set_u32(ng.get(), NFTNL_EXPR_NG_OFFSET, 0);
  b->Raw(std::move(ng));
  if (r.pick == Rule::Pick::kRandom) {
    ExprPtr bo = b->New("byteorder");
    nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_SREG, NFT_REG_1);
    nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_DREG, NFT_REG_1);
    nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON);
    nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_LEN, 4);
    nftnl_expr_set_u32(bo.get(), NFTNL_EXPR_BYTEORDER_SIZE, 4);
    b->Raw(std::move(bo));
    const uint32_t lt = htonl(r.lt);
    b->Cmp(NFT_CMP_LT, &lt, 4);
  } else {
    const uint32_t zero = 0;
    b->Cmp(NFT_CMP_EQ, &zero, 4);
  }
}

// `counter dnat to D`: the destination in reg 1 (address) and reg 2 (port).
void EncodeDnat(const Shape &f, RuleBuilder *b, const Rule &r) {
  b->Raw(b->New("counter"));
  ExprPtr ip = b->New("immediate");
  nftnl_expr_set_u32(ip.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_1);
  nftnl_expr_set(ip.get(), NFTNL_EXPR_IMM_DATA, r.to.ip.data(), f.l.addr_len);
  b->Raw(std::move(ip));
  ExprPtr port = b->New("immediate");
  nftnl_expr_set_u32(port.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_2);
  nftnl_expr_set(port.get(), NFTNL_EXPR_IMM_DATA, &r.to.port, 2);
  b->Raw(std::move(port));
  b->Dnat(f.l.nfproto, NFT_REG_2, NF_NAT_RANGE_PROTO_SPECIFIED);
}

// The name of expression `i`, "" past the end.
std::string NameAt(const Exprs &x, size_t i) { return i < x.size() ? Name(x[i]) : std::string(); }

// `numgen random mod M` + byteorder + `< L`, or `numgen inc mod M` + `== 0`, from the cursor on.
bool DecodeNumgenPick(const Exprs &x, Cursor *c, Rule *r) {
  const size_t at = c->pos();
  const nftnl_expr *ng = x[at];
  if (!U32Is(ng, NFTNL_EXPR_NG_DREG, NFT_REG_1) || !nftnl_expr_is_set(ng, NFTNL_EXPR_NG_MODULUS)) return false;
  if (nftnl_expr_is_set(ng, NFTNL_EXPR_NG_OFFSET) && nftnl_expr_get_u32(ng, NFTNL_EXPR_NG_OFFSET) != 0) return false;
  r->mod = nftnl_expr_get_u32(ng, NFTNL_EXPR_NG_MODULUS);
  c->seek(at + 1);
  if (U32Is(ng, NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM)) {
    const nftnl_expr *bo = NameAt(x, at + 1) == "byteorder" ? x[at + 1] : nullptr;
    if (!bo || !U32Is(bo, NFTNL_EXPR_BYTEORDER_SREG, NFT_REG_1) || !U32Is(bo, NFTNL_EXPR_BYTEORDER_DREG, NFT_REG_1) ||
        !U32Is(bo, NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON) || !U32Is(bo, NFTNL_EXPR_BYTEORDER_LEN, 4) ||
        !U32Is(bo, NFTNL_EXPR_BYTEORDER_SIZE, 4))
      return false;
    c->seek(at + 2);
    uint32_t lt = 0;
    if (!c->Cmp(NFT_CMP_LT, &lt, 4)) return false;
    r->pick = Rule::Pick::kRandom;
    r->lt = ntohl(lt);
    return true;
  }
  if (U32Is(ng, NFTNL_EXPR_NG_TYPE, NFT_NG_INCREMENTAL)) {
    uint32_t v = 1;
    if (!c->Cmp(NFT_CMP_EQ, &v, 4) || v != 0) return false;
    r->pick = Rule::Pick::kInc;
    return true;
  }
  return false;
}

// `update @S { ip saddr }` from the cursor on (see EncodeUpdate): the set's name into `set`.
bool DecodeUpdate(const Shape &f, const Exprs &x, Cursor *c, std::string *set) {
  const size_t at = c->pos();
  if (NameAt(x, at) != "payload" || NameAt(x, at + 1) != "dynset") return false;
  if (!c->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1)) return false;
  const nftnl_expr *ds = x[at + 1];
  if (!U32Is(ds, NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1) || !U32Is(ds, NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE) ||
      nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_SREG_DATA) || !nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_SET_NAME))
    return false;
  if (nftnl_expr_is_set(ds, NFTNL_EXPR_DYNSET_TIMEOUT) && nftnl_expr_get_u64(ds, NFTNL_EXPR_DYNSET_TIMEOUT) != 0)
    return false;
  *set = nftnl_expr_get_str(ds, NFTNL_EXPR_DYNSET_SET_NAME);
  if (!AffinitySetTimeout(*set)) return false;
  c->seek(at + 2);
  return true;
}

// `counter dnat to D` from the cursor to the end (see EncodeDnat).
bool DecodeDnat(const Shape &f, const Exprs &x, Cursor *c, Rule *r) {
  const size_t at = c->pos();
  if (NameAt(x, at) != "counter" || NameAt(x, at + 1) != "immediate" || NameAt(x, at + 2) != "immediate" ||
      NameAt(x, at + 3) != "nat" || at + 4 != x.size())
    return false;
  const nftnl_expr *ctr = x[at];
  r->packets = nftnl_expr_is_set(ctr, NFTNL_EXPR_CTR_PACKETS) ? nftnl_expr_get_u64(ctr, NFTNL_EXPR_CTR_PACKETS) : 0;
  r->bytes = nftnl_expr_is_set(ctr, NFTNL_EXPR_CTR_BYTES) ? nftnl_expr_get_u64(ctr, NFTNL_EXPR_CTR_BYTES) : 0;
  uint32_t len = 0;
  const nftnl_expr *ia = x[at + 1];
  const void *a = U32Is(ia, NFTNL_EXPR_IMM_DREG, NFT_REG_1) ? nftnl_expr_get(ia, NFTNL_EXPR_IMM_DATA, &len) : nullptr;
  if (!a || len != f.l.addr_len) return false;
  std::memcpy(r->to.ip.data(), a, len);
  const nftnl_expr *ipt = x[at + 2];
  const void *p = U32Is(ipt, NFTNL_EXPR_IMM_DREG, NFT_REG_2) ? nftnl_expr_get(ipt, NFTNL_EXPR_IMM_DATA, &len) : nullptr;
  if (!p || len != 2) return false;
  std::memcpy(&r->to.port, p, 2);
  c->seek(at + 3);
  return c->Dnat(f.l.nfproto, NFT_REG_2) && c->done();  // the immediates' registers
}

}  // namespace

void Encode(const Shape &f, RuleBuilder *b, const Rule &r, const LookupIds &ids) {
  EncodeVipSelector(f, b, r);
  if (r.pick == Rule::Pick::kHit) {
    b->Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1);
    b->Lookup(r.set, ids.affinity_set, -1);
  }
  if (!r.gate.empty()) EncodeUpdate(f, b, r.gate, ids.client_set);
  EncodePick(b, r);
  if (!r.set.empty()) EncodeUpdate(f, b, r.set, ids.affinity_set);
  EncodeDnat(f, b, r);
}

// After the selector: [ip saddr @S] then one of nothing or a numgen pick (fallback; not after a hit), update @S or
// pick, update @S (written before the client set), update @C, update @S or update @C, pick, update @S.
bool Decode(const Shape &f, const Exprs &x, Rule *out) {
  Cursor c(x);
  Rule r;
  if (!VipSelector(f, &c, &r)) return false;
  std::string hit_set;
  if (NameAt(x, c.pos()) == "payload" && NameAt(x, c.pos() + 1) == "lookup") {
    if (!(c.Payload(NFT_PAYLOAD_NETWORK_HEADER, f.l.saddr_offset, f.l.addr_len, NFT_REG_1) && c.Lookup(&hit_set, -1)))
      return false;
    r.pick = Rule::Pick::kHit;
  }
  std::string kinds;  // U: an update, N: a numgen pick
  std::vector<std::string> updates;
  while (NameAt(x, c.pos()) != "counter") {
    if (NameAt(x, c.pos()) == "numgen") {
      if (!DecodeNumgenPick(x, &c, &r)) return false;
      kinds += 'N';
    } else {
      std::string set;
      if (!DecodeUpdate(f, x, &c, &set)) return false;
      updates.push_back(std::move(set));
      kinds += 'U';
    }
    if (kinds.size() > 3) return false;
  }
  static const char *const kShapes[] = {"", "N", "U", "NU", "UU", "UNU"};
  bool shape = false;
  for (const char *k : kShapes) shape = shape || kinds == k;
  const bool hit = r.pick == Rule::Pick::kHit;
  if (!shape || (hit && (kinds.find('N') != std::string::npos || kinds.empty()))) return false;
  if (!DecodeDnat(f, x, &c, &r)) return false;
  if (!updates.empty()) r.set = updates.back();
  if (updates.size() == 2) r.gate = updates.front();
  if (hit && hit_set != r.set) return false;
  if ((r.pick == Rule::Pick::kRandom && (r.lt == 0 || r.lt > r.mod)) ||
      ((r.pick == Rule::Pick::kRandom || r.pick == Rule::Pick::kInc) && r.mod == 0))
    return false;
  r.kind = Rule::Kind::kAff;
  *out = std::move(r);
  return true;
}

}  // namespace aff
}  // namespace rules
}  // namespace nft
}  // namespace iptlb
