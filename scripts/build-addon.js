#!/usr/bin/env node
// Builds the native addon (build/Release/iptlb.node). Run by `npm install`/`npm ci` (soft: a missing
// toolchain or library never fails the install; the spawn executor is used instead and
// `iptlb doctor` says why) and by `npm run build:addon` (--verbose: full output, fails loudly).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const verbose = process.argv.includes('--verbose');
const FIX = 'apt-get install -y libiptc-dev libxtables-dev libnftnl-dev libmnl-dev pkg-config g++ make python3 && npm run build:addon';

function skip(reason) {
  console.error(`iptlb: native addon not built (${reason}); the spawn executor (iptables-legacy-restore) will be used. Fix: ${FIX}`);
  process.exit(verbose ? 1 : 0);
}

if (process.platform !== 'linux') skip(`${process.platform} has no netfilter`);
const pc = spawnSync('pkg-config', ['--exists', 'libiptc', 'libip6tc', 'xtables', 'libnftnl', 'libmnl']);
if (pc.error) skip('pkg-config is not installed');
if (pc.status !== 0) skip('libiptc/libip6tc/libxtables/libnftnl/libmnl development files are missing');
const localGyp = path.join(root, 'node_modules', '.bin', 'node-gyp');
const gypArgs = ['rebuild', '--jobs=max'];
// Build against the headers of the node that runs us (no download): npm passes them as
// npm_config_nodedir; otherwise they sit in <prefix>/include/node beside the binary.
const prefix = path.resolve(path.dirname(process.execPath), '..');
if (!process.env.npm_config_nodedir && existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) gypArgs.push(`--nodedir=${prefix}`);
const [cmd, args] = existsSync(localGyp) ? [localGyp, gypArgs] : ['npm', ['exec', '--yes', '--', 'node-gyp', ...gypArgs]];
const r = spawnSync(cmd, args, { cwd: root, stdio: verbose ? 'inherit' : 'pipe', encoding: 'utf8' });
if (r.status !== 0) {
  if (!verbose) {
    const lines = `${r.stderr ?? ''}${r.stdout ?? ''}`.split('\n').filter((l) => /error/i.test(l)).slice(0, 2);
    skip(`compilation failed${lines.length ? `: ${lines.join(' | ').trim()}` : ''}`);
  }
  console.error('iptlb: native addon build failed');
  process.exit(1);
}
if (verbose) console.error(`iptlb: native addon built: ${path.join(root, 'build', 'Release', 'iptlb.node')}`);
