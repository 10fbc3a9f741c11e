{
  "targets": [
    {
      "target_name": "iptlb",
      "sources": [
        "native/addon.cc",
        "native/commit_worker.cc",
        "native/errors.cc",
        "native/file_lock.cc",
        "native/plan.cc",
        "native/read_worker.cc",
        "native/revisions.cc",
        "native/rule_decoder.cc",
        "native/rule_encoder.cc",
        "native/transaction.cc",
        "native/xtables_lock.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "<!@(pkg-config --cflags libiptc xtables 2>/dev/null || true)"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++14", "-std=gnu++17"],
      "libraries": ["<!@(pkg-config --libs libiptc xtables 2>/dev/null || echo -lip4tc -lxtables)"]
    }
  ]
}
