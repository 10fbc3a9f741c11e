#!/usr/bin/env node
// Bundles the CLI into one minified CommonJS file, dist/iptlb.cjs, so that `iptlb` starts as fast as
// Node itself (one file to read and compile, no ESM graph to resolve). `yaml` stays external: it is
// loaded only for state files outside the canonical layout.
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { cpSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { STAMP, buildDigest } from './build-sources.js';

// node:child_process (with net, stream, dgram… behind it) costs a start-up ~10% of Node's own, and
// is needed only to spawn a process (commander's executable subcommands, the flock fallback,
// conntrack, the spawn executor). In the bundle it is a stand-in whose properties load the real
// module on first use.
const childProcessKeys = Object.keys(createRequire(import.meta.url)('node:child_process'));
const lazyChildProcess = {
  name: 'lazy-child-process',
  setup(b) {
    b.onResolve({ filter: /^(node:)?child_process$/ }, (a) =>
      a.namespace === 'lazy-child-process'
        ? { path: 'node:child_process', external: true }
        : { path: 'child_process', namespace: 'lazy-child-process' },
    );
    b.onLoad({ filter: /.*/, namespace: 'lazy-child-process' }, () => ({
      loader: 'js',
      contents: `let m;
for (const k of ${JSON.stringify(childProcessKeys)}) {
  Object.defineProperty(module.exports, k, { enumerable: true, get: () => (m || (m = require('node:child_process')))[k] });
}`,
    }));
  },
};

// node:module (with Node's ESM loader and source-map support behind it) is imported only for
// createRequire(import.meta.url), and import.meta.url is the bundle's own file: in the CLI bundle
// that is the bundle's own require, which loads nothing more.
const ownRequire = {
  name: 'own-require',
  setup(b) {
    b.onResolve({ filter: /^(node:)?module$/ }, () => ({ path: 'module', namespace: 'own-require' }));
    b.onLoad({ filter: /.*/, namespace: 'own-require' }, () => ({
      loader: 'js',
      contents: 'module.exports = { createRequire: () => require };',
    }));
  },
};

const { BUNDLE_WRAPPER_HEAD, BUNDLE_WRAPPER_TAIL } = createRequire(import.meta.url)('../bin/load-bundle.cjs');
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// What this build is made of (scripts/build-sources.js), taken before anything is written; recorded
// once everything is, so that a build that fails half-way leaves no record of itself.
const digest = buildDigest(root);
rmSync(path.join(root, STAMP), { force: true });
await build({
  entryPoints: [path.join(root, 'src', 'cli', 'main.ts')],
  outfile: path.join(root, 'dist', 'iptlb.cjs'),
  bundle: true,
  minify: true,
  platform: 'node',
  format: 'cjs',
  target: 'node18',
  // import('yaml') becomes a require(): the bundle is run through vm.Script (see bin/load-bundle.cjs),
  // where a dynamic import() would need a loader callback.
  supported: { 'dynamic-import': false },
  external: ['yaml', 'etcd3', 'cockatiel'],
  // import.meta.url as a getter: the bundle's own paths come from __filename (paths.ts) and its
  // createRequire ignores the URL (own-require below), so the URL is rarely read and not worth a URL
  // built at every start (a difference too small to measure in a whole start).
  define: { __IPTLB_BUNDLE_FILE__: '__filename', 'import.meta.url': '__IPTLB_IMPORT_META.url' },
  // The file is the CommonJS wrapper function itself, as bin/load-bundle.cjs compiles it: the source V8
  // compiles is then the string read from the file, not that string joined to a wrapper, which V8 would
  // copy whole into a flat string first (about 80 of a start's page faults, each ~12 µs on this VM).
  banner: {
    js: `${BUNDLE_WRAPPER_HEAD}const __IPTLB_IMPORT_META = { get url() { return require("node:url").pathToFileURL(__filename).href; } };`,
  },
  footer: { js: BUNDLE_WRAPPER_TAIL },
  logLevel: 'warning',
  plugins: [lazyChildProcess, ownRequire],
});

// V8's code cache for the bundle, made in a fresh process (see scripts/code-cache.cjs).
const cached = spawnSync(process.execPath, [path.join(root, 'scripts', 'code-cache.cjs')], { stdio: 'inherit' });

// The library as CommonJS (dist/index.cjs), for require('iptlb'): the same sources, dependencies left
// to require(). Its types are the ESM declarations copied under dist/cjs/, whose package.json says
// "commonjs", so TypeScript reads them as the CommonJS module they describe.
// Both library bundles: the same sources, dependencies left to the runtime's require() or import.
const library = {
  entryPoints: [path.join(root, 'src', 'index.ts')],
  bundle: true,
  platform: 'node',
  target: 'node18',
  packages: 'external',
  logLevel: 'warning',
};
await build({
  ...library,
  outfile: path.join(root, 'dist', 'index.cjs'),
  format: 'cjs',
  // import.meta.url as a getter: the bundle's own paths come from __filename (paths.ts) and its
  // createRequire ignores the URL (own-require below), so the URL is rarely read and not worth a URL
  // built at every start (a difference too small to measure in a whole start).
  define: { __IPTLB_BUNDLE_FILE__: '__filename', 'import.meta.url': '__IPTLB_IMPORT_META.url' },
  banner: {
    js: 'const __IPTLB_IMPORT_META = { get url() { return require("node:url").pathToFileURL(__filename).href; } };',
  },
});
// The library for import 'iptlb' (dist/index.mjs): the CommonJS bundle itself, re-exported by name.
// One copy of the library per process, whichever way it is loaded: an application (or two of its
// dependencies) that both imports and requires iptlb shares one IptlbError (instanceof holds across
// them), one addon loader (a missing addon is said once) and one commit queue per handle. It is one
// file too: loading the ~100 files of dist/src/ one by one cost an importing process about 6 MiB of
// resident memory (Node's ESM loader resolving each import) and their start-up time; dist/src/ stays
// for the types.
const names = JSON.parse(
  spawnSync(
    process.execPath,
    [
      '-e',
      `process.stdout.write(JSON.stringify(Object.keys(require(${JSON.stringify(path.join(root, 'dist', 'index.cjs'))}))))`,
    ],
    { encoding: 'utf8' },
  ).stdout,
);
// Loaded with require(), not `import lib from './index.cjs'`: an import of a CommonJS file has Node
// parse it for its export names (cjs-module-lexer, a WebAssembly instance) and keep an ES module
// facade of it, about 11 MiB of resident memory for this bundle against about 2 through require()
// (an empty instance measured +12.7 MiB over bare Node through the import, against the +8 allowed).
writeFileSync(
  path.join(root, 'dist', 'index.mjs'),
  `import { createRequire } from 'node:module';\nconst lib = createRequire(import.meta.url)('./index.cjs');\nexport const { ${names.join(', ')} } = lib;\n`,
);
const cjsTypes = path.join(root, 'dist', 'cjs');
rmSync(cjsTypes, { recursive: true, force: true });
cpSync(path.join(root, 'dist', 'src'), cjsTypes, { recursive: true, filter: (f) => !/\.(js|js\.map)$/.test(f) });
writeFileSync(path.join(cjsTypes, 'package.json'), '{ "type": "commonjs" }\n');

// The man page, from the CLI's own --help texts (scripts/man.js).
const man = spawnSync(process.execPath, [path.join(root, 'scripts', 'man.js')], { stdio: 'inherit' });
if (cached.status === 0 && man.status === 0) writeFileSync(path.join(root, STAMP), `${digest}\n`);
