#!/usr/bin/env bash
# Measures `npm install <tarball>` into a fresh project, side by side in one run, RUNS times each:
#   prebuilt  - the default: the prebuilt addon in the package is used, nothing compiled
#   source    - IPTLB_BUILD_FROM_SOURCE=1: the addon compiled by node-gyp (npm's bundled copy)
# Dependencies come from npm's cache (--prefer-offline), so the figures are the install itself.
# Usage: bash scripts/test-install.sh [RUNS]   (needs dist/ built and prebuilds/ made: npm run build && npm run prebuilds)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
work=$(mktemp -d /tmp/iptlb-install-XXXXXX)
trap 'rm -rf "$work"' EXIT
tarball=$(npm pack --ignore-scripts --silent --pack-destination "$work" | tail -1)
echo "tarball: $tarball ($(du -k "$work/$tarball" | cut -f1) KiB); $(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
one() { # $1 label, env...
  local label=$1; shift
  local app="$work/app-$label-$RANDOM"
  mkdir -p "$app" && echo '{"name":"app","version":"1.0.0","private":true}' > "$app/package.json"
  local t0=$(date +%s.%N)
  (cd "$app" && env "$@" npm install "$work/$tarball" --prefer-offline --no-audit --no-fund --foreground-scripts >"$app.log" 2>&1) || { echo "$label: install failed, see $app.log"; cat "$app.log"; exit 1; }
  local t1=$(date +%s.%N)
  local built=no; [ -d "$app/node_modules/iptlb/build/Release" ] && built=yes
  printf '%-9s %6.1f s  compiled: %s\n' "$label" "$(echo "$t1 - $t0" | bc)" "$built"
  rm -rf "$app"
}
for i in $(seq 1 "$RUNS"); do
  one prebuilt IPTLB_X=1
  one source IPTLB_BUILD_FROM_SOURCE=1
done
