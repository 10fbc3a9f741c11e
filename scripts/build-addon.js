#!/usr/bin/env node
// Builds the native addon from source (build/Release/iptlb_core.node, iptlb_xt.node, iptlb_nft.node,
// see binding.gyp). Run by scripts/install.js when no prebuilt binary fits this host (soft: a missing
// toolchain or library never fails the install; the spawn executor is used instead and `iptlb doctor`
// says why), by `npm run build:addon` (--verbose: full output, fails loudly) and by
// `npm run prebuild`.
//
// node-gyp is never downloaded: it is npm's own bundled copy (npm hands its path to install scripts
// as npm_config_node_gyp), the pinned devDependency in a checkout of this repo, or the copy bundled
// with the npm beside this node binary.
// The whole output of the last run is kept in build/build-addon.log; `iptlb doctor` shows its end.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const verbose = process.argv.includes('--verbose');
const log = path.join(root, 'build', 'build-addon.log');
// In a consumer project (this package under node_modules) `npm run build:addon` does not exist.
const consumer = root.split(path.sep).includes('node_modules');
const rebuild = consumer ? 'npm rebuild iptlb --foreground-scripts' : 'npm run build:addon';
const BUILD_PACKAGES = 'libiptc-dev libxtables-dev libnftnl-dev libmnl-dev pkg-config g++ make python3';
const FIX = `apt-get install -y ${BUILD_PACKAGES} && ${rebuild}`;

function writeLog(text) {
  try {
    mkdirSync(path.dirname(log), { recursive: true });
    writeFileSync(log, `${new Date().toISOString()} iptlb: building the native addon from source in ${root}\n${text}`);
  } catch {
    /* a read-only install: the message on stderr is all there is */
  }
}

function skip(reason, missing) {
  writeLog(`not built: ${reason}\n`);
  const fix = missing ? `apt-get install -y ${missing} && ${rebuild}` : FIX;
  console.error(
    `iptlb: native addon not built (${reason}); the spawn executors (iptables-legacy-restore, nft) will be used. Fix: ${fix}. Log: ${log}`,
  );
  process.exit(verbose ? 1 : 0);
}

/** The first program of `names` on PATH. */
function which(name) {
  for (const d of (process.env.PATH ?? '').split(':')) {
    if (d && existsSync(path.join(d, name))) return path.join(d, name);
  }
  return undefined;
}

if (process.platform !== 'linux') skip(`${process.platform} has no netfilter`);
// What is missing, by Debian package, so the fix names exactly those.
// pkg-config when there is one; else the headers where Debian puts them (binding.gyp then links
// -lip4tc -lip6tc -lnftnl -lmnl without it).
const missing = [];
const mods = [
  ['libiptc', 'libiptc-dev', 'libiptc/libiptc.h'],
  ['libip6tc', 'libiptc-dev', 'libiptc/libip6tc.h'],
  ['xtables', 'libxtables-dev', 'xtables.h'],
  ['libnftnl', 'libnftnl-dev', 'libnftnl/table.h'],
  ['libmnl', 'libmnl-dev', 'libmnl/libmnl.h'],
];
const hasPkgConfig = !!which('pkg-config');
for (const [mod, pkg, header] of mods) {
  const found = hasPkgConfig
    ? spawnSync('pkg-config', ['--exists', mod]).status === 0
    : ['/usr/include', '/usr/local/include'].some((d) => existsSync(path.join(d, header)));
  if (!found && !missing.includes(pkg)) missing.push(pkg);
}
if (!which('g++') && !which('c++')) missing.push('g++');
if (!which('make')) missing.push('make');
if (!which('python3')) missing.push('python3');
if (missing.length) skip(`missing to build it: ${missing.join(' ')}`, missing.join(' '));

function nodeGyp() {
  const npmGyp = process.env.npm_config_node_gyp;
  if (npmGyp && existsSync(npmGyp)) return [process.execPath, [npmGyp]];
  const local = path.join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(local)) return [process.execPath, [local]];
  const bundled = path.join(
    path.dirname(process.execPath),
    '..',
    'lib',
    'node_modules',
    'npm',
    'node_modules',
    'node-gyp',
    'bin',
    'node-gyp.js',
  );
  if (existsSync(bundled)) return [process.execPath, [bundled]];
  return undefined;
}
const gyp = nodeGyp();
if (!gyp)
  skip(
    "node-gyp not found (neither npm_config_node_gyp from npm, node_modules/node-gyp, nor npm's bundled copy)",
    'npm',
  );
const gypArgs = ['rebuild', '--jobs=max'];
// Build against the headers of the node that runs us (no download): npm passes them as
// npm_config_nodedir; otherwise they sit in <prefix>/include/node beside the binary.
const prefix = path.resolve(path.dirname(process.execPath), '..');
if (!process.env.npm_config_nodedir && existsSync(path.join(prefix, 'include', 'node', 'node_api.h')))
  gypArgs.push(`--nodedir=${prefix}`);
const [cmd, args] = gyp;
// Captured whole (for the log); --verbose prints it when the build ends.
const r = spawnSync(cmd, [...args, ...gypArgs], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'pipe'],
  encoding: 'utf8',
  maxBuffer: 64 << 20,
});
if (verbose) process.stderr.write(`${r.stdout ?? ''}${r.stderr ?? ''}`);
writeLog(
  `${cmd} ${[...args, ...gypArgs].join(' ')}\n${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? `${r.error.message}\n` : ''}exit status ${r.status}\n`,
);
if (r.status !== 0) {
  if (!verbose) {
    const lines = `${r.stderr ?? ''}${r.stdout ?? ''}`
      .split('\n')
      .filter((l) => /error/i.test(l))
      .slice(0, 2);
    skip(`compilation failed${lines.length ? `: ${lines.join(' | ').trim()}` : ''}`);
  }
  console.error(`iptlb: native addon build failed; log: ${log}`);
  process.exit(1);
}
console.error(
  `iptlb: native addon built from source: ${path.join(root, 'build', 'Release')}/iptlb_{core,xt,nft}.node (log: ${log})`,
);
