{
  # The native executor, as three N-API addons so that a host with only one engine's libraries still
  # loads that engine natively (see docs/install.md):
  #   iptlb_core.node  file locks + conntrack flushes     links libmnl
  #   iptlb_xt.node    legacy (x_tables) engine, libiptc  links libip4tc, libip6tc
  #   iptlb_nft.node   nft engine, netlink                links libnftnl, libmnl
  # scripts/build-addon.js checks `pkg-config --exists libiptc libip6tc xtables libnftnl libmnl` before
  # node-gyp runs; the `|| echo` fallbacks only keep gyp itself from failing when pkg-config is absent.
  # -Wl,--as-needed: a part records (DT_NEEDED) only the libraries it calls.
  "target_defaults": {
    "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")", "native", "native/common"],
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
        "native/addon_core.cc",
        "native/common/v8_memory.cc",
        "native/conntrack.cc",
        "native/conntrack_worker.cc",
        "native/errors.cc",
        "native/file_lock.cc",
        "native/nft_netlink.cc",
        "native/xtables_lock.cc"
      ],
      "libraries": ["<!@(pkg-config --libs libmnl 2>/dev/null || echo -lmnl)", "-ldl"]
    },
    {
      "target_name": "iptlb_xt",
      "sources": [
        "native/addon_xt.cc",
        "native/commit_worker.cc",
        "native/common/memory.cc",
        "native/errors.cc",
        "native/iptc_handle.cc",
        "native/ipset.cc",
        "native/ip_text.cc",
        "native/json.cc",
        "native/plan.cc",
        "native/prefetch.cc",
        "native/read_worker.cc",
        "native/revisions.cc",
        "native/rule_decoder.cc",
        "native/rule_encoder.cc",
        "native/table_queue.cc",
        "native/thread_priority.cc",
        "native/transaction.cc",
        "native/xtables_lock.cc"
      ],
      "libraries": ["<!@(pkg-config --libs libiptc libip6tc libmnl 2>/dev/null || echo -lip4tc -lip6tc -lmnl)"]
    },
    {
      "target_name": "iptlb_nft",
      "sources": [
        "native/addon_nft.cc",
        "native/common/memory.cc",
        "native/errors.cc",
        "native/ip_text.cc",
        "native/nft_batch.cc",
        "native/nft_netlink.cc",
        "native/nft_ops.cc",
        "native/nft_read.cc",
        "native/nft_rules.cc",
        "native/nft_shared_socket.cc",
        "native/nft_workers.cc",
        "native/table_queue.cc",
        "native/thread_priority.cc"
      ],
      "libraries": ["<!@(pkg-config --libs libnftnl libmnl 2>/dev/null || echo -lnftnl -lmnl)"]
    }
  ]
}
