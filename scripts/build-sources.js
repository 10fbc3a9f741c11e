#!/usr/bin/env node
// What dist/ was built from: a digest of the TypeScript sources and of everything else `npm run build`
// reads (tsconfig.json, the package files, the bundler's scripts), and the node that built it.
// `npm run build` records it last (dist/.build-sources.sha256, written by scripts/bundle.js once
// everything else is written); scripts/setup.sh (the README's quick start, the test command, CI) runs
// `node scripts/build-sources.js --current` and builds only when it fails, instead of running tsc and
// the bundler again over sources they have just built (about 15 s of CPU on a 2-core machine).
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { walk } from './addon-sources.js';

export const STAMP = path.join('dist', '.build-sources.sha256');

/** What a build reads, besides node_modules (package-lock.json stands for it). */
const INPUTS = [
  'src',
  'test',
  'bench',
  'examples',
  'bin',
  'tsconfig.json',
  'package.json',
  'package-lock.json',
  'scripts/bundle.js',
  'scripts/code-cache.cjs',
  'scripts/man.js',
];

/** What `npm run build` makes that the tests and the CLI use: a dist/ without one is not built. */
const OUTPUTS = ['dist/iptlb.cjs', 'dist/iptlb.cjs.cache', 'dist/index.cjs', 'dist/index.mjs', 'dist/iptlb.1'];

/** The digest of what a build of dist/ in `root` depends on. */
export function buildDigest(root) {
  const h = createHash('sha256');
  h.update(`${process.version}\0`);
  for (const f of INPUTS.filter((i) => existsSync(path.join(root, i))).flatMap((i) => walk(root, i))) {
    h.update(`${f}\0`);
    h.update(readFileSync(path.join(root, f)));
    h.update('\0');
  }
  return h.digest('hex');
}

/** Whether dist/ was built from the sources as they are now, with this node, and holds its outputs. */
export function currentBuild(root) {
  let recorded;
  try {
    recorded = readFileSync(path.join(root, STAMP), 'utf8').trim();
  } catch {
    return false;
  }
  return OUTPUTS.every((f) => existsSync(path.join(root, f))) && recorded === buildDigest(root);
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv.includes('--current')) {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  process.exit(currentBuild(root) ? 0 : 1);
}
