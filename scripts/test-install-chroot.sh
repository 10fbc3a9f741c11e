#!/usr/bin/env bash
# The packed tarball installed into a minimal Debian 12 (debootstrap --variant=minbase, cached in
# $ROOTFS) that has the runtime libraries only: libip4tc2 libip6tc2 libnftnl11 libmnl0, no compiler,
# no make, no python3, no -dev package. node and npm are the host's, bind-mounted read-only into the
# chroot inside a private mount namespace (and a fresh network namespace for `iptlb doctor`).
# Prints the install time and checks: prebuilt addon used, nothing compiled, require/import work,
# doctor --json says both engines native, also when installed with --ignore-scripts (pnpm, bun).
# Usage (root): bash scripts/test-install-chroot.sh   (needs dist/ and prebuilds/: npm run build && npm run prebuilds)
# First run: apt-get install -y debootstrap; the rootfs takes about 75 s to make here.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOTFS=${ROOTFS:-/var/cache/iptlb-test/rootfs}
if [ ! -x "$ROOTFS/bin/sh" ]; then
  mkdir -p "$(dirname "$ROOTFS")"
  debootstrap --variant=minbase --include=libip4tc2,libip6tc2,libnftnl11,libmnl0,libstdc++6 bookworm "$ROOTFS" http://deb.debian.org/debian
fi
if chroot "$ROOTFS" sh -c 'command -v g++ || command -v gcc || command -v cc || command -v make || command -v python3'; then echo "the rootfs has a compiler, make or python3" >&2; exit 1; fi
if chroot "$ROOTFS" dpkg-query -W -f '${Package}\n' | grep -- '-dev$'; then echo "the rootfs has -dev packages" >&2; exit 1; fi
work=$(mktemp -d /tmp/iptlb-chroot-XXXXXX)
trap 'rm -rf "$work"' EXIT
tarball=$(npm pack --ignore-scripts --silent --pack-destination "$work" | tail -1)
npmdir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
cat > "$work/inside.sh" <<'INSIDE'
set -eu
export PATH=/opt/host/bin:/usr/bin:/bin HOME=/root npm_config_update_notifier=false
unset NODE_EXTRA_CA_CERTS
mkdir -p /tmp/app && cd /tmp/app && echo '{"name":"app","version":"1.0.0","private":true}' > package.json
t0=$(date +%s%N)
node /opt/host/npm/bin/npm-cli.js install /tmp/w/iptlb.tgz --prefer-offline --no-audit --no-fund --foreground-scripts 2>&1
t1=$(date +%s%N)
echo "INSTALL_MS=$(( (t1 - t0) / 1000000 ))"
[ -d node_modules/iptlb/build ] && echo "COMPILED=yes" || echo "COMPILED=no"
node -e "const m = require('iptlb'); console.log('CJS', typeof m.open)"
node --input-type=module -e "import { open } from 'iptlb'; console.log('ESM', typeof open)"
node_modules/.bin/iptlb doctor --json --state-file=/tmp/app/state.db > /tmp/w/doctor.json || true
# As pnpm/bun (or npm told not to) install it: no install script at all. The loader finds prebuilds/.
mkdir -p /tmp/app2 && cd /tmp/app2 && echo '{"name":"app2","version":"1.0.0","private":true}' > package.json
node /opt/host/npm/bin/npm-cli.js install /tmp/w/iptlb.tgz --prefer-offline --no-audit --no-fund --ignore-scripts >/dev/null 2>&1
node_modules/.bin/iptlb doctor --json --state-file=/tmp/app2/state.db > /tmp/w/doctor-noscripts.json || true
INSIDE
mkdir -p "$ROOTFS/opt/host/bin" "$ROOTFS/opt/host/npm" "$ROOTFS/tmp/w" "$ROOTFS/root/.npm"
cp "$work/$tarball" "$work/iptlb.tgz"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
unshare -m -n --propagation private -- sh -c "
  mount --bind '$(readlink -f "$(command -v node)")' '$ROOTFS/opt/host/bin/node' 2>/dev/null || { touch '$ROOTFS/opt/host/bin/node'; mount --bind '$(readlink -f "$(command -v node)")' '$ROOTFS/opt/host/bin/node'; }
  mount --bind -o ro '$npmdir' '$ROOTFS/opt/host/npm'
  mount --bind '$work' '$ROOTFS/tmp/w'
  mount --bind '$HOME/.npm' '$ROOTFS/root/.npm'
  mount -t proc proc '$ROOTFS/proc'
  ip link set lo up
  chroot '$ROOTFS' /bin/sh /tmp/w/inside.sh
  rm -rf '$ROOTFS/tmp/app' '$ROOTFS/tmp/app2'
" | tee "$work/out.txt"
grep -q 'iptlb: using the prebuilt native addon' "$work/out.txt" || { echo "FAIL: the prebuilt addon was not used" >&2; exit 1; }
grep -q 'COMPILED=no' "$work/out.txt" || { echo "FAIL: something was compiled" >&2; exit 1; }
grep -q 'CJS function' "$work/out.txt" && grep -q 'ESM function' "$work/out.txt" || { echo "FAIL: require/import" >&2; exit 1; }
node -e "
for (const f of ['doctor.json', 'doctor-noscripts.json']) {
  const d = JSON.parse(require('fs').readFileSync('$work/' + f, 'utf8'));
  for (const e of ['legacy', 'nft']) if (d.native.engines[e].executor !== 'native') { console.error('FAIL (' + f + '): ' + e + ' not native: ' + d.native.engines[e].reason); process.exit(1); }
  console.log(f === 'doctor.json' ? 'doctor:' : 'doctor, installed with --ignore-scripts:', 'legacy and nft native from', d.native.engines.nft.files.join(', '));
}
"
echo "OK: installed without compiler or -dev packages in $(grep -o 'INSTALL_MS=[0-9]*' "$work/out.txt" | cut -d= -f2) ms"
