// Reads table ip iptlb or ip6 iptlb back (NftView in src/nft/ops.ts): dispatch sets and backend maps with their
// elements and counters, the base chains with their rules decoded, and the names of everything
// else in the table. Consistent: the dumps are retried when the generation changed meanwhile.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nft_netlink.h"
#include "nft_ops.h"

namespace iptlb {
namespace nft {

struct Counted {
  uint64_t packets = 0;
  uint64_t bytes = 0;
};

struct View {
  Family family = Family::kIpv4;
  uint32_t genid = 0;
  bool exists = false;
  struct DispatchSet {
    std::string name;
    std::vector<std::pair<Endpoint, Counted>> elements;
  };
  struct BackendMap {
    Proto proto = Proto::kTcp;
    std::vector<std::pair<BackendElement, Counted>> elements;
  };
  struct Chain {
    BaseChain name = BaseChain::kOutput;
    std::vector<Rule> rules;
  };
  std::vector<DispatchSet> dispatch_sets;
  std::vector<BackendMap> backend_maps;
  std::vector<Chain> chains;
  struct AffinitySet {
    std::string name;
    uint32_t timeout = 0;  // seconds
  };
  std::vector<AffinitySet> affinity_sets;  // elements not read: they are the kernel's
  std::vector<std::string> foreign;
};

// Worker thread; throws NftFailure. With `only`, a narrow read: of the dispatch sets' elements just
// those whose key is one of `only` (looked up one by one, not dumped), no backend map elements; the
// rest as usual. What a change that gives a profile a new address asks the kernel (who serves it
// already?) at a cost that does not grow with the table's elements.
View ReadView(Socket *s, Family f, const std::vector<Endpoint> *only = nullptr);

// Worker thread; throws NftFailure. The names of the chains of table `table` of family `f` (any
// table, not only iptlb's; none when it does not exist): what doctor asks of iptables-nft's
// `table ip nat` (the original iptlb's chains there), without a process of nft's own.
std::vector<std::string> ChainNames(Socket *s, Family f, const std::string &table);

}  // namespace nft
}  // namespace iptlb
