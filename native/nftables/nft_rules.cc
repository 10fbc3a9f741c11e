#include "nft_rules.h"

#include <libnftnl/common.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "expr.h"

namespace iptlb {
namespace nft {
namespace {

using rules::Exprs;
using rules::Name;

// NFTNL_UDATA_RULE_COMMENT: nft keeps a rule's comment as this TLV in the rule userdata.
constexpr uint8_t kUdataRuleComment = 0;

void SetComment(nftnl_rule *r, const std::string &comment) {
  UdataPtr ud = Own<UdataPtr>(nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN));
  if (!nftnl_udata_put_strz(ud.get(), kUdataRuleComment, comment.c_str())) throw std::bad_alloc();
  nftnl_rule_set_data(r, NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud.get()), nftnl_udata_buf_len(ud.get()));
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

// Each kind's two directions (native/nftables/rules/<kind>.cc).
struct Kind {
  void (*encode)(const rules::Shape &, rules::RuleBuilder *, const Rule &, const LookupIds &);
  bool (*decode)(const rules::Shape &, const Exprs &, Rule *);
};

const Kind *KindOf(Rule::Kind k) {
  static const Kind kDispatch{rules::dispatch::Encode, rules::dispatch::Decode};
  static const Kind kLog{rules::log::Encode, rules::log::Decode};
  static const Kind kRr{rules::rr::Encode, rules::rr::Decode};
  static const Kind kAff{rules::aff::Encode, rules::aff::Decode};
  static const Kind kMasq{rules::masq::Encode, rules::masq::Decode};
  switch (k) {
    case Rule::Kind::kDispatch:
      return &kDispatch;
    case Rule::Kind::kLog:
      return &kLog;
    case Rule::Kind::kRr:
      return &kRr;
    case Rule::Kind::kAff:
      return &kAff;
    case Rule::Kind::kMasq:
      return &kMasq;
    case Rule::Kind::kForeign:
      break;
  }
  return nullptr;
}

// The kinds a rule carrying iptlb's comment may be, in the order they are tried.
constexpr Rule::Kind kOwned[] = {Rule::Kind::kLog, Rule::Kind::kRr, Rule::Kind::kAff, Rule::Kind::kMasq};

}  // namespace

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

RulePtr BuildRule(Family family, BaseChain chain, const Rule &r, const LookupIds &ids) {
  const rules::Shape f(family);
  RulePtr rule = Own<RulePtr>(nftnl_rule_alloc());
  nftnl_rule_set_u32(rule.get(), NFTNL_RULE_FAMILY, f.l.nfproto);
  nftnl_rule_set_str(rule.get(), NFTNL_RULE_TABLE, "iptlb");
  nftnl_rule_set_str(rule.get(), NFTNL_RULE_CHAIN, ChainName(chain));
  const Kind *k = KindOf(r.kind);
  if (!k) return rule;  // kForeign: never encoded (the JS conversion refuses it)
  rules::RuleBuilder b(rule.get());
  k->encode(f, &b, r, ids);
  // Every rule but the shared dispatch rules belongs to a profile: "iptlb:<owner>".
  if (r.kind != Rule::Kind::kDispatch) SetComment(rule.get(), "iptlb:" + r.owner);
  return rule;
}

Rule DecodeRule(Family family, const nftnl_rule *r) {
  const rules::Shape f(family);
  Exprs x;
  struct nftnl_expr_iter *it = nftnl_expr_iter_create(r);
  if (it) {
    for (const nftnl_expr *e = nftnl_expr_iter_next(it); e; e = nftnl_expr_iter_next(it)) x.push_back(e);
    nftnl_expr_iter_destroy(it);
  }
  std::string comment;
  const bool has_comment = RuleComment(r, &comment);
  Rule out;
  if (!has_comment && rules::dispatch::Decode(f, x, &out)) return out;
  if (has_comment && comment.rfind("iptlb:", 0) == 0 && comment.size() > 6) {
    for (Rule::Kind kind : kOwned) {
      if (KindOf(kind)->decode(f, x, &out)) {
        out.owner = comment.substr(6);
        return out;
      }
    }
  }
  out = Rule();
  out.kind = Rule::Kind::kForeign;
  out.text = Describe(x, has_comment, comment);
  // Its handle first, as the spawn executor's read says it: what `nft delete rule … handle N` takes.
  if (nftnl_rule_is_set(r, NFTNL_RULE_HANDLE))
    out.text = "handle " + std::to_string(nftnl_rule_get_u64(r, NFTNL_RULE_HANDLE)) + ": " + out.text;
  return out;
}

}  // namespace nft
}  // namespace iptlb
