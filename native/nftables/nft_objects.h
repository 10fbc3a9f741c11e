// RAII owners of libnftnl objects (unique_ptr with the library's free functions).
#pragma once
#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>

#include <memory>
#include <new>

namespace iptlb {
namespace nft {

template <typename T, auto Free>
struct Freer {
  void operator()(T *p) const { Free(p); }
};

using TablePtr = std::unique_ptr<nftnl_table, Freer<nftnl_table, &nftnl_table_free>>;
using ChainPtr = std::unique_ptr<nftnl_chain, Freer<nftnl_chain, &nftnl_chain_free>>;
using SetPtr = std::unique_ptr<nftnl_set, Freer<nftnl_set, &nftnl_set_free>>;
using RulePtr = std::unique_ptr<nftnl_rule, Freer<nftnl_rule, &nftnl_rule_free>>;
using ExprPtr = std::unique_ptr<nftnl_expr, Freer<nftnl_expr, &nftnl_expr_free>>;
using UdataPtr = std::unique_ptr<nftnl_udata_buf, Freer<nftnl_udata_buf, &nftnl_udata_buf_free>>;

// Allocation failures of libnftnl become std::bad_alloc.
template <typename P, typename R>
P Own(R *raw) {
  if (!raw) throw std::bad_alloc();
  return P(raw);
}

}  // namespace nft
}  // namespace iptlb
