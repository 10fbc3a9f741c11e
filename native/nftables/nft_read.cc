#include "nft_read.h"

#include <arpa/inet.h>
#include <libnftnl/common.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <unordered_set>

#include "nft_objects.h"
#include "nft_rules.h"

namespace iptlb {
namespace nft {
namespace {

constexpr const char *kTable = "iptlb";
constexpr int kMaxAttempts = 20;
// Requests are small; the buffer only has to hold the header and a few names.
constexpr size_t kRequestBuffer = 4096;

struct RequestBuf {
  alignas(struct nlmsghdr) char data[kRequestBuffer];
};

void Check(int err, const std::string &what) {
  if (err) ThrowErrno("EKERNEL", err, what);
}

struct SetInfo {
  std::string name;
  uint32_t flags = 0;
  uint32_t key_len = 0;
  uint32_t data_len = 0;
  uint64_t timeout_ms = 0;
};

uint32_t SetU32(nftnl_set *s, uint16_t attr) { return nftnl_set_is_set(s, attr) ? nftnl_set_get_u32(s, attr) : 0; }

std::vector<SetInfo> DumpSets(Socket *s, Family f, bool *intr) {
  RequestBuf b;
  struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(b.data, NFT_MSG_GETSET, LayoutOf(f).nfproto, NLM_F_DUMP, s->NextSeq());
  SetPtr q = Own<SetPtr>(nftnl_set_alloc());
  nftnl_set_set_str(q.get(), NFTNL_SET_TABLE, kTable);
  nftnl_set_nlmsg_build_payload(nlh, q.get());
  std::vector<SetInfo> out;
  Check(
      s->Request(
          nlh,
          [&](const struct nlmsghdr *m) {
            SetPtr set = Own<SetPtr>(nftnl_set_alloc());
            if (nftnl_set_nlmsg_parse(m, set.get()) < 0) return;
            const char *t = nftnl_set_get_str(set.get(), NFTNL_SET_TABLE);
            const char *n = nftnl_set_get_str(set.get(), NFTNL_SET_NAME);
            if (!t || !n || std::strcmp(t, kTable) != 0) return;
            out.push_back(
                {n, SetU32(set.get(), NFTNL_SET_FLAGS), SetU32(set.get(), NFTNL_SET_KEY_LEN),
                 SetU32(set.get(), NFTNL_SET_DATA_LEN),
                 nftnl_set_is_set(set.get(), NFTNL_SET_TIMEOUT) ? nftnl_set_get_u64(set.get(), NFTNL_SET_TIMEOUT) : 0});
          },
          intr),
      "listing the sets of " + TableText(f));
  return out;
}

Counted ElemCounter(nftnl_set_elem *e) {
  Counted c;
  nftnl_set_elem_expr_foreach(
      e,
      [](struct nftnl_expr *x, void *data) -> int {
        const char *name = nftnl_expr_get_str(x, NFTNL_EXPR_NAME);
        if (name && std::strcmp(name, "counter") == 0) {
          auto *c = static_cast<Counted *>(data);
          c->packets = nftnl_expr_get_u64(x, NFTNL_EXPR_CTR_PACKETS);
          c->bytes = nftnl_expr_get_u64(x, NFTNL_EXPR_CTR_BYTES);
        }
        return 0;
      },
      &c);
  return c;
}

// Calls on_elem(key, key_len, data, data_len, counter) for every element of set `name`.
template <typename F>
void DumpElements(Socket *s, Family f, const std::string &name, bool *intr, F on_elem) {
  RequestBuf b;
  struct nlmsghdr *nlh =
      nftnl_nlmsg_build_hdr(b.data, NFT_MSG_GETSETELEM, LayoutOf(f).nfproto, NLM_F_DUMP, s->NextSeq());
  SetPtr q = Own<SetPtr>(nftnl_set_alloc());
  nftnl_set_set_str(q.get(), NFTNL_SET_TABLE, kTable);
  nftnl_set_set_str(q.get(), NFTNL_SET_NAME, name.c_str());
  nftnl_set_elems_nlmsg_build_payload(nlh, q.get());
  Check(s->Request(
            nlh,
            [&](const struct nlmsghdr *m) {
              SetPtr set = Own<SetPtr>(nftnl_set_alloc());
              if (nftnl_set_elems_nlmsg_parse(m, set.get()) < 0) return;
              struct Ctx {
                F *f;
              } ctx{&on_elem};
              nftnl_set_elem_foreach(
                  set.get(),
                  [](struct nftnl_set_elem *e, void *data) -> int {
                    uint32_t klen = 0, dlen = 0;
                    const void *k = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &klen);
                    const void *d = nftnl_set_elem_get(e, NFTNL_SET_ELEM_DATA, &dlen);
                    (*static_cast<Ctx *>(data)->f)(static_cast<const uint8_t *>(k), k ? klen : 0,
                                                   static_cast<const uint8_t *>(d), d ? dlen : 0, ElemCounter(e));
                    return 0;
                  },
                  &ctx);
            },
            intr),
        "listing the elements of set " + name);
}

// Whether set `name` holds the element `key` (`addr . port`, the port padded to 4 bytes): one
// NFT_MSG_GETSETELEM for that key, answered with the element or ENOENT.
bool HasElement(Socket *s, Family f, const std::string &name, const Endpoint &key) {
  const uint32_t alen = LayoutOf(f).addr_len;
  uint8_t k[16 + 4] = {};
  std::memcpy(k, key.ip.data(), alen);
  std::memcpy(k + alen, &key.port, 2);
  RequestBuf b;
  struct nlmsghdr *nlh =
      nftnl_nlmsg_build_hdr(b.data, NFT_MSG_GETSETELEM, LayoutOf(f).nfproto, NLM_F_ACK, s->NextSeq());
  SetPtr q = Own<SetPtr>(nftnl_set_alloc());
  nftnl_set_set_str(q.get(), NFTNL_SET_TABLE, kTable);
  nftnl_set_set_str(q.get(), NFTNL_SET_NAME, name.c_str());
  struct nftnl_set_elem *e = nftnl_set_elem_alloc();
  if (!e) ThrowErrno("EKERNEL", ENOMEM, "looking up an element of set " + name);
  nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, k, alen + 4);
  nftnl_set_elem_add(q.get(), e);  // owned by the set from here
  nftnl_set_elems_nlmsg_build_payload(nlh, q.get());
  bool found = false;
  const int err = s->Request(nlh, [&](const struct nlmsghdr *) { found = true; });
  if (err == ENOENT) return false;
  Check(err, "looking up an element of set " + name);
  return found;
}

// An `addr . port` key (the port padded to 4 bytes); 4 + addr_len bytes at `p`.
Endpoint EndpointAt(const uint8_t *p, uint32_t addr_len) {
  Endpoint e;
  std::memcpy(e.ip.data(), p, addr_len);
  std::memcpy(&e.port, p + addr_len, 2);
  return e;
}

struct ChainInfo {
  std::string name;
  bool base = false;  // has a hook
};

// The chains of table `table` of family `f` into `out`; returns 0 or the kernel's errno.
int RequestChains(Socket *s, Family f, const char *table, bool *intr, std::vector<ChainInfo> *out) {
  RequestBuf b;
  struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(b.data, NFT_MSG_GETCHAIN, LayoutOf(f).nfproto, NLM_F_DUMP, s->NextSeq());
  ChainPtr q = Own<ChainPtr>(nftnl_chain_alloc());
  nftnl_chain_set_str(q.get(), NFTNL_CHAIN_TABLE, table);
  nftnl_chain_nlmsg_build_payload(nlh, q.get());
  return s->Request(
      nlh,
      [&](const struct nlmsghdr *m) {
        ChainPtr c = Own<ChainPtr>(nftnl_chain_alloc());
        if (nftnl_chain_nlmsg_parse(m, c.get()) < 0) return;
        const char *t = nftnl_chain_get_str(c.get(), NFTNL_CHAIN_TABLE);
        const char *n = nftnl_chain_get_str(c.get(), NFTNL_CHAIN_NAME);
        if (t && n && std::strcmp(t, table) == 0) out->push_back({n, nftnl_chain_is_set(c.get(), NFTNL_CHAIN_HOOKNUM)});
      },
      intr);
}

std::vector<ChainInfo> DumpChains(Socket *s, Family f, bool *intr) {
  std::vector<ChainInfo> out;
  Check(RequestChains(s, f, kTable, intr, &out), "listing the chains of " + TableText(f));
  return out;
}

std::vector<Rule> DumpRules(Socket *s, Family f, const char *chain, bool *intr) {
  RequestBuf b;
  struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(b.data, NFT_MSG_GETRULE, LayoutOf(f).nfproto, NLM_F_DUMP, s->NextSeq());
  RulePtr q = Own<RulePtr>(nftnl_rule_alloc());
  nftnl_rule_set_str(q.get(), NFTNL_RULE_TABLE, kTable);
  nftnl_rule_set_str(q.get(), NFTNL_RULE_CHAIN, chain);
  nftnl_rule_nlmsg_build_payload(nlh, q.get());
  std::vector<Rule> out;
  Check(s->Request(
            nlh,
            [&](const struct nlmsghdr *m) {
              RulePtr r = Own<RulePtr>(nftnl_rule_alloc());
              if (nftnl_rule_nlmsg_parse(m, r.get()) < 0) return;
              const char *t = nftnl_rule_get_str(r.get(), NFTNL_RULE_TABLE);
              const char *c = nftnl_rule_get_str(r.get(), NFTNL_RULE_CHAIN);
              if (!t || !c || std::strcmp(t, kTable) != 0 || std::strcmp(c, chain) != 0) return;
              out.push_back(DecodeRule(f, r.get()));
            },
            intr),
        std::string("listing the rules of chain ") + chain);
  return out;
}

// true when table `f` iptlb exists.
bool TableExists(Socket *s, Family f) {
  RequestBuf b;
  struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(b.data, NFT_MSG_GETTABLE, LayoutOf(f).nfproto, 0, s->NextSeq());
  TablePtr q = Own<TablePtr>(nftnl_table_alloc());
  nftnl_table_set_str(q.get(), NFTNL_TABLE_NAME, kTable);
  nftnl_table_nlmsg_build_payload(nlh, q.get());
  const int err = s->Request(nlh, [](const struct nlmsghdr *) {});
  if (err == ENOENT) return false;
  Check(err, "looking up " + TableText(f));
  return true;
}

// SkipDrift: the kernel sends a set's elements over several netlink messages and starts each one by
// walking the set again and skipping what it already sent. A hash set that resizes in between (the
// kernel grows it in a deferred worker after a large insert) is walked in another order, so the
// dump repeats some elements and leaves out as many others, without NLM_F_DUMP_INTR and with the
// generation unchanged. A key seen twice is that case: the whole read is done again.
bool ReadOnce(Socket *s, View *v, const std::vector<Endpoint> *only) {
  bool intr = false;
  const Family f = v->family;
  const uint32_t alen = LayoutOf(f).addr_len;
  // Key and data lengths of iptlb's sets (each concatenated component padded to 4 bytes).
  const uint32_t dispatch_key = alen + 4, backend_key = alen + 8, backend_data = alen + 4;
  v->genid = s->GetGenid();
  v->exists = TableExists(s, f);
  if (v->exists) {
    for (const SetInfo &set : DumpSets(s, f, &intr)) {
      Hook h;
      Proto p;
      uint32_t n;
      // Only sets of iptlb's own shape count as dispatch sets / backend maps; anything else by
      // those names (other key sizes, a map where a set belongs) is foreign.
      if (ParseDispatchSetName(set.name, &h, &p, &n) && !(set.flags & NFT_SET_MAP) && set.key_len == dispatch_key) {
        View::DispatchSet d;
        d.name = set.name;
        if (only) {
          for (const Endpoint &e : *only)
            if (HasElement(s, f, set.name, e)) d.elements.emplace_back(e, Counted{});
          v->dispatch_sets.push_back(std::move(d));
          continue;
        }
        std::unordered_set<std::string> seen;
        DumpElements(s, f, set.name, &intr, [&](const uint8_t *k, uint32_t klen, const uint8_t *, uint32_t, Counted c) {
          if (klen != dispatch_key) return;
          if (!seen.emplace(reinterpret_cast<const char *>(k), klen).second) intr = true;  // see SkipDrift
          d.elements.emplace_back(EndpointAt(k, alen), c);
        });
        v->dispatch_sets.push_back(std::move(d));
      } else if (ParseBackendMapName(set.name, &p) && (set.flags & NFT_SET_MAP) && set.key_len == backend_key &&
                 set.data_len == backend_data) {
        View::BackendMap m;
        m.proto = p;
        if (only) {
          v->backend_maps.push_back(std::move(m));
          continue;
        }
        std::unordered_set<std::string> seen;
        DumpElements(s, f, set.name, &intr,
                     [&](const uint8_t *k, uint32_t klen, const uint8_t *d, uint32_t dlen, Counted c) {
                       if (klen != backend_key || dlen != backend_data) return;
                       if (!seen.emplace(reinterpret_cast<const char *>(k), klen).second) intr = true;  // see SkipDrift
                       BackendElement e;
                       e.vip = EndpointAt(k, alen);
                       std::memcpy(&e.index, k + alen + 4, 4);
                       e.to = EndpointAt(d, alen);
                       m.elements.emplace_back(e, c);
                     });
        v->backend_maps.push_back(std::move(m));
      } else if (AffinitySetTimeout(set.name) && !(set.flags & NFT_SET_MAP) && (set.flags & NFT_SET_TIMEOUT) &&
                 set.key_len == alen) {
        v->affinity_sets.push_back({set.name, static_cast<uint32_t>(set.timeout_ms / 1000)});
      } else {
        v->foreign.push_back(set.name);
      }
    }
    const std::vector<ChainInfo> chains = DumpChains(s, f, &intr);
    auto known = [](const ChainInfo &c) {
      return c.base && (c.name == "output" || c.name == "prerouting" || c.name == "postrouting");
    };
    for (BaseChain c : {BaseChain::kOutput, BaseChain::kPrerouting, BaseChain::kPostrouting}) {
      for (const ChainInfo &ci : chains) {
        if (known(ci) && ci.name == ChainName(c)) v->chains.push_back({c, DumpRules(s, f, ChainName(c), &intr)});
      }
    }
    for (const ChainInfo &ci : chains) {
      if (!known(ci)) v->foreign.push_back(ci.name);
    }
  }
  return !intr && s->GetGenid() == v->genid;
}

}  // namespace

View ReadView(Socket *s, Family f, const std::vector<Endpoint> *only) {
  for (int attempt = 0; attempt < kMaxAttempts; attempt++) {
    View v;
    v.family = f;
    if (ReadOnce(s, &v, only)) return v;
  }
  ThrowErrno("EKERNEL", EAGAIN, "reading " + TableText(f) + " (the ruleset kept changing)");
}

std::vector<std::string> ChainNames(Socket *s, Family f, const std::string &table) {
  std::vector<ChainInfo> chains;
  bool intr = false;
  const int err = RequestChains(s, f, table.c_str(), &intr, &chains);
  if (err == ENOENT) return {};  // no such table
  Check(err, "listing the chains of table " + std::string(LayoutOf(f).name) + " " + table);
  std::vector<std::string> out;
  for (ChainInfo &c : chains) out.push_back(std::move(c.name));
  return out;
}

}  // namespace nft
}  // namespace iptlb
