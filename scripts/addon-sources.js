// What the native addon in build/Release/ was built from: a digest of its sources (binding.gyp and
// native/), the node that built it and the compiler's environment. `npm run build:addon` records it
// beside the binaries (build/Release/iptlb-sources.sha256); when the digest still matches, `npm run
// prebuilds` copies those binaries and `npm run build:addon` (and the install script in a clone)
// leaves them, instead of compiling the same sources a second time (--fresh compiles anyway).
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

export const STAMP = path.join('build', 'Release', 'iptlb-sources.sha256');

/** The files under `rel` (a file or a directory of `root`), sorted, as paths relative to `root`. */
export function walk(root, rel) {
  const p = path.join(root, rel);
  if (!statSync(p).isDirectory()) return [rel];
  return readdirSync(p)
    .sort()
    .flatMap((f) => walk(root, path.join(rel, f)));
}

/** The digest of what a build of the addon in `root` depends on. */
export function sourcesDigest(root) {
  const h = createHash('sha256');
  for (const v of [process.version, process.platform, process.arch]) h.update(`${v}\0`);
  for (const k of ['CC', 'CXX', 'CFLAGS', 'CXXFLAGS', 'CPPFLAGS', 'LDFLAGS'])
    h.update(`${k}=${process.env[k] ?? ''}\0`);
  // The headers built against, as build-addon.js picks them: npm's nodedir (npm passes it to the
  // scripts it runs), else the ones beside this node. So a script run by npm and the same one run with
  // node directly (the tests run prebuild.js so) agree when both mean the same headers.
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  const nodedir =
    process.env.npm_config_nodedir || (existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : '');
  h.update(`nodedir=${nodedir ? path.resolve(nodedir) : ''}\0`);
  for (const f of [...walk(root, 'binding.gyp'), ...walk(root, 'native')]) {
    h.update(`${f}\0`);
    h.update(readFileSync(path.join(root, f)));
    h.update('\0');
  }
  return h.digest('hex');
}

/**
 * build/Release/ when `npm run build:addon` made it from the sources as they are now (its stamp
 * matches: the same binding.gyp, native/, node and compiler environment) and each of its three files
 * loads in this node; undefined otherwise.
 */
export function currentBuild(root) {
  const dir = path.join(root, 'build', 'Release');
  let recorded;
  try {
    recorded = readFileSync(path.join(root, STAMP), 'utf8').trim();
  } catch {
    return undefined;
  }
  const files = ['core', 'xt', 'nft'].map((p) => path.join(dir, `iptlb_${p}.node`));
  if (!files.every((f) => existsSync(f)) || recorded !== sourcesDigest(root)) return undefined;
  const req = createRequire(import.meta.url);
  try {
    for (const f of files) req(f);
  } catch {
    return undefined;
  }
  return dir;
}
