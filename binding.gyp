{
  # The native executor, as three N-API addons so that a host with only one engine's libraries still
  # loads that engine natively (see docs/install.md):
  #   iptlb_core.node  file locks + conntrack flushes + health prober   links libmnl
  #   iptlb_xt.node    legacy (x_tables) engine, libiptc  links libip4tc, libip6tc
  #   iptlb_nft.node   nft engine, netlink                links libnftnl, libmnl
  # scripts/build-addon.js checks `pkg-config --exists libiptc libip6tc xtables libnftnl libmnl` before
  # node-gyp runs; the `|| echo` fallbacks only keep gyp itself from failing when pkg-config is absent.
  # -Wl,--as-needed: a part records (DT_NEEDED) only the libraries it calls.
  "target_defaults": {
    "include_dirs": [
      "<!@(node -p \"require('node-addon-api').include\")",
      "native/common", "native/conntrack", "native/xtables", "native/xtables/codec", "native/nftables",
      "native/nftables/rules", "native/health"
    ],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
    "cflags": ["-Wall", "-Wextra", "<!@(pkg-config --cflags libiptc libip6tc xtables libnftnl libmnl 2>/dev/null || echo)"],
    "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++14", "-std=gnu++17"],
    "ldflags": ["-Wl,--as-needed"]
  },
  "targets": [
    {
      "target_name": "iptlb_core",
      "sources": [
        "native/common/addon_core.cc",
        "native/common/errors.cc",
        "native/common/file_lock.cc",
        "native/common/job_thread.cc",
        "native/common/v8_memory.cc",
        "native/common/nft_netlink.cc",
        "native/common/read_text.cc",
        "native/common/xtables_lock.cc",
        "native/conntrack/conntrack.cc",
        "native/conntrack/conntrack_worker.cc",
        "native/health/prober.cc"
      ],
      "libraries": ["<!@(pkg-config --libs libmnl 2>/dev/null || echo -lmnl)", "-ldl"]
    },
    {
      "target_name": "iptlb_xt",
      "sources": [
        "native/common/errors.cc",
        "native/common/ip_text.cc",
        "native/common/job_thread.cc",
        "native/common/memory.cc",
        "native/common/pending.cc",
        "native/common/thread_priority.cc",
        "native/common/xtables_lock.cc",
        "native/xtables/addon_xt.cc",
        "native/xtables/codec/addrtype.cc",
        "native/xtables/codec/codec.cc",
        "native/xtables/codec/comment.cc",
        "native/xtables/codec/conntrack.cc",
        "native/xtables/codec/dnat.cc",
        "native/xtables/codec/log.cc",
        "native/xtables/codec/masquerade.cc",
        "native/xtables/codec/port.cc",
        "native/xtables/codec/recent.cc",
        "native/xtables/codec/set.cc",
        "native/xtables/codec/statistic.cc",
        "native/xtables/codec/verdict.cc",
        "native/xtables/commit_worker.cc",
        "native/xtables/holds_worker.cc",
        "native/xtables/ipset.cc",
        "native/xtables/iptc_handle.cc",
        "native/xtables/json.cc",
        "native/xtables/plan.cc",
        "native/xtables/prefetch.cc",
        "native/xtables/read_worker.cc",
        "native/xtables/revisions.cc",
        "native/xtables/rule_decoder.cc",
        "native/xtables/rule_encoder.cc",
        "native/xtables/transaction.cc"
      ],
      "libraries": ["<!@(pkg-config --libs libiptc libip6tc libmnl 2>/dev/null || echo -lip4tc -lip6tc -lmnl)"]
    },
    {
      "target_name": "iptlb_nft",
      "sources": [
        "native/common/errors.cc",
        "native/common/ip_text.cc",
        "native/common/memory.cc",
        "native/common/nft_netlink.cc",
        "native/common/pending.cc",
        "native/common/thread_priority.cc",
        "native/nftables/addon_nft.cc",
        "native/nftables/nft_batch.cc",
        "native/nftables/nft_ops.cc",
        "native/nftables/nft_original.cc",
        "native/nftables/nft_read.cc",
        "native/nftables/nft_rules.cc",
        "native/nftables/nft_shared_socket.cc",
        "native/nftables/nft_workers.cc",
        "native/nftables/rules/aff.cc",
        "native/nftables/rules/dispatch.cc",
        "native/nftables/rules/expr.cc",
        "native/nftables/rules/log.cc",
        "native/nftables/rules/masq.cc",
        "native/nftables/rules/rr.cc"
      ],
      "libraries": ["<!@(pkg-config --libs libnftnl libmnl 2>/dev/null || echo -lnftnl -lmnl)"]
    }
  ]
}
