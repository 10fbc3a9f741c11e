#!/usr/bin/env node
// npm's install script (also what `npm rebuild iptlb` runs). Uses the prebuilt addon shipped in the
// package (prebuilds/<platform>-<arch>/iptlb_{core,xt,nft}.node) when it loads on this host; builds
// from source (scripts/build-addon.js) only when no prebuilt file fits: another architecture, an
// older glibc/libstdc++ than the prebuild needs, another Node ABI. Never fails the install: without
// the addon, iptlb runs its spawn executors, and `iptlb doctor` says why and how to fix it.
//   IPTLB_BUILD_FROM_SOURCE=1 (or npm's --build-from-source) skips the prebuilt files.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const parts = ['core', 'xt', 'nft'];
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const fromSource = process.env.IPTLB_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true';
const SONAME_PACKAGES = {
  'libip4tc.so.2': 'libip4tc2',
  'libip6tc.so.2': 'libip6tc2',
  'libnftnl.so.11': 'libnftnl11',
  'libmnl.so.0': 'libmnl0',
};
// What each part links (dlopen names only the first library it misses).
const PART_PACKAGES = { core: ['libmnl0'], xt: ['libip4tc2', 'libip6tc2'], nft: ['libnftnl11', 'libmnl0'] };

// The CLI's V8 code cache names the path it was made for (V8 keeps that name in stack traces, see
// bin/load-bundle.cjs): make it again here, where the package is installed, unless it already is for
// this path. Without it the CLI compiles its bundle at each start (about 5 ms); the install goes on.
const bundle = path.join(root, 'dist', 'iptlb.cjs');
const codeCache = path.join(root, 'scripts', 'code-cache.cjs');
if (
  existsSync(bundle) &&
  existsSync(codeCache) &&
  !createRequire(import.meta.url)('../bin/load-bundle.cjs').readCache(bundle)
)
  spawnSync(process.execPath, [codeCache], { stdio: 'inherit' });

// In a clone of the repository (scripts/addon-sources.js is not shipped in the package) the build records
// what it was made from, as `npm run build:addon` does, which then has nothing to compile again.
const stampArg = existsSync(path.join(root, 'scripts', 'addon-sources.js')) ? ['--stamp'] : [];

function build() {
  const r = spawnSync(
    process.execPath,
    [path.join(root, 'scripts', 'build-addon.js'), ...stampArg, ...process.argv.slice(2)],
    {
      stdio: 'inherit',
    },
  );
  process.exit(r.status ?? 1);
}

if (fromSource || !parts.every((p) => existsSync(path.join(dir, `iptlb_${p}.node`)))) build();

// Load each prebuilt file with this node (the one that will run iptlb), in a child process: a damaged
// file (cut short, garbled) can kill the process that dlopens it (SIGBUS, SIGSEGV), and this script
// must then go on to build from source, not fail the install.
const LOAD = `try { require(process.argv[1]); } catch (e) { process.stdout.write(String(e?.message ?? e).split('\\n')[0]); process.exit(3); }`;
const failed = [];
for (const p of parts) {
  const file = path.join(dir, `iptlb_${p}.node`);
  const r = spawnSync(process.execPath, ['-e', LOAD, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  if (r.status === 0) continue;
  const why = r.status === 3 ? r.stdout : `loading it ${r.signal ? `was killed by ${r.signal}` : `exited ${r.status}`}`;
  failed.push([p, r.status === 3 ? why : `${file}: ${why} (damaged?)`]);
}
if (failed.length === 0) {
  console.error(
    `iptlb: using the prebuilt native addon (${path.relative(root, dir)}/iptlb_{core,xt,nft}.node); nothing compiled`,
  );
  process.exit(0);
}
// A library missing on this host: building from source would not help (it needs the same library,
// and its headers). Report per part and keep what loads; the other engine still runs natively.
const libs = failed.map(([p, m]) => [p, /^(?:\/[^:]*\/)?(lib[\w+-]+\.so(?:\.\d+)*): /.exec(m)?.[1]]);
if (libs.every(([, so]) => so && SONAME_PACKAGES[so])) {
  const pkgs = [...new Set(libs.flatMap(([p, so]) => [SONAME_PACKAGES[so], ...PART_PACKAGES[p]]))].join(' ');
  const engines = libs.map(([p]) => (p === 'xt' ? 'legacy' : p === 'nft' ? 'nft' : 'locks/conntrack')).join(', ');
  console.error(
    `iptlb: prebuilt native addon installed; ${engines}: ${[...new Set(libs.map(([, so]) => so))].join(', ')} not found on this host, so ${libs.length > 1 ? 'those parts use' : 'that part uses'} the spawn executor. Fix: apt-get install -y ${pkgs} (no rebuild needed)`,
  );
  process.exit(0);
}
console.error(
  `iptlb: the prebuilt native addon does not load here (${failed.map(([p, m]) => `iptlb_${p}.node: ${m}`).join('; ')}); building from source`,
);
build();
