{
  # The native executor (build/Release/iptlb.node). scripts/build-addon.js checks
  # `pkg-config --exists libiptc libip6tc xtables libnftnl libmnl` before node-gyp runs; the `|| echo` fallbacks only keep gyp
  # itself from failing when pkg-config is absent.
  "targets": [
    {
      "target_name": "iptlb",
      "sources": [
        "native/addon.cc",
        "native/commit_worker.cc",
        "native/conntrack.cc",
        "native/conntrack_worker.cc",
        "native/errors.cc",
        "native/file_lock.cc",
        "native/iptc_handle.cc",
        "native/ipset.cc",
        "native/ip_text.cc",
        "native/json.cc",
        "native/nft_netlink.cc",
        "native/nft_ops.cc",
        "native/nft_read.cc",
        "native/nft_rules.cc",
        "native/nft_shared_socket.cc",
        "native/nft_workers.cc",
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
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags": ["-Wall", "-Wextra", "<!@(pkg-config --cflags libiptc libip6tc xtables libnftnl libmnl 2>/dev/null || echo)"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++14", "-std=gnu++17"],
      "libraries": ["<!@(pkg-config --libs libiptc libip6tc xtables libnftnl libmnl 2>/dev/null || echo -lip4tc -lip6tc -lxtables -lnftnl -lmnl)"]
    }
  ]
}
