#!/usr/bin/env node
// `npm run prebuilds`: the addon's three files, stripped, in prebuilds/<platform>-<arch>/, which
// `npm pack` ships (see "files" in package.json). When build/Release/ was made by `npm run
// build:addon` from the sources as they are now, its files are copied; otherwise (or with --fresh)
// the addon is built from source first. Run by `prepack`, so a packed tarball always carries the
// binaries of the tree it was packed from; the binaries are not committed to git.
// libstdc++ stays a shared library: linking it statically (-static-libstdc++ -static-libgcc) was
// measured here to raise the glibc the files need from 2.34 to 2.36 (Debian 12's libstdc++.a calls
// arc4random) and to grow them 2-3x; docs/install.md lists what the prebuilt files need.
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { STAMP, currentBuild } from './addon-sources.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PARTS = ['core', 'xt', 'nft'];

let from = process.argv.includes('--fresh') ? undefined : currentBuild(root);
let work;
if (from) {
  console.error(`iptlb: build/Release/ was built from these sources (${STAMP}): copying it`);
} else {
  // Built in a scratch copy of the sources, so build/ (which the tests and the CLI load) is never
  // half-made while this runs.
  work = mkdtempSync(path.join(tmpdir(), 'iptlb-prebuild-'));
  for (const f of ['binding.gyp', 'package.json', 'native', 'scripts'])
    cpSync(path.join(root, f), path.join(work, f), { recursive: true });
  symlinkSync(path.join(root, 'node_modules'), path.join(work, 'node_modules'));
  const r = spawnSync(process.execPath, [path.join(work, 'scripts', 'build-addon.js'), '--verbose'], {
    stdio: ['ignore', process.argv.includes('--quiet') ? 'ignore' : 'inherit', 'inherit'],
  });
  if (r.status !== 0) {
    console.error(`iptlb: prebuild failed; log: ${path.join(work, 'build', 'build-addon.log')}`);
    process.exit(r.status ?? 1);
  }
  from = path.join(work, 'build', 'Release');
}
const out = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
for (const p of PARTS) {
  const dst = path.join(out, `iptlb_${p}.node`);
  copyFileSync(path.join(from, `iptlb_${p}.node`), dst);
  spawnSync('strip', ['--strip-unneeded', dst], { stdio: 'inherit' });
}
if (work) rmSync(work, { recursive: true, force: true });
console.error(`iptlb: prebuilt ${out}/iptlb_{core,xt,nft}.node`);
