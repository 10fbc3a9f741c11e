#!/usr/bin/env bash
# Installs what iptlb needs and is missing, then builds it. Sourced by demo.sh and test.sh; safe to
# run again (it only acts on what is missing or stale). Needs root for apt-get.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ "$(id -u)" != 0 ]; then
  echo "iptlb: this needs root (it installs packages and creates network namespaces); run it with sudo" >&2
  exit 1
fi

# Without their recommended packages (.ci/run installs the same list the same way): libc6-dev's
# recommendations alone bring an image library and its fonts, and a Debian 12 minbase root installed
# the list in 23 s instead of 39 s (17 MB less to fetch). ca-certificates is listed for itself: it
# came only as a recommendation, and npm may need the system's certificates to reach its registry.
PKGS=(iptables ipset libiptc-dev libxtables-dev nftables libnftnl-dev libmnl-dev pkg-config iproute2 util-linux conntrack make g++ python3 etcd-server etcd-client openssl clang-format-14 ca-certificates)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ! command -v node >/dev/null 2>&1 || ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 18 || (a === 18 && b >= 17) ? 0 : 1)'; then
  node_missing=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ] || [ -n "${node_missing:-}" ]; then
  echo "iptlb: installing ${missing[*]} ${node_missing[*]:-}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${IPTLB_APT_UPDATED:-}" ]; then apt-get update -qq; export IPTLB_APT_UPDATED=1; fi
  if [ ${#missing[@]} -gt 0 ]; then apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; fi
  # Debian's npm as Debian installs it (its recommendations included).
  if [ -n "${node_missing:-}" ]; then apt-get install -y -qq "${node_missing[@]}" >/dev/null; fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "iptlb: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f build/Release/iptlb_core.node ] || [ ! -f build/Release/iptlb_xt.node ] || [ ! -f build/Release/iptlb_nft.node ]; then
  npm run --silent build:addon
fi
# TypeScript and the bundle: built again only when a source (or node) changed since the last build
# (scripts/build-sources.js).
node scripts/build-sources.js --current || npm run --silent build
