'use strict';
// Loads the CLI bundle (dist/iptlb.cjs) the way require() would, but through vm.Script so that V8
// can take the code cache written at build time (dist/iptlb.cjs.cache, see scripts/code-cache.cjs).
// Without a cache, or with one V8 rejects (another Node version, another bundle), it simply compiles.
//
// V8 (11.3, Node 20) takes a script's file name from the code cache, not from the compile: stack traces
// of a cached bundle named the file the cache was made for (the build machine's dist/iptlb.cjs), not the
// one that ran. The cache file therefore starts with that path and NUL bytes up to the next multiple
// of 8 (V8 copies cached data that is not 8-byte aligned before reading it: 350 KB of fresh memory,
// about 50 page faults), and a cache made for another path is not used (the bundle is compiled, about
// 5 ms more); npm's install script makes the cache again where the package is installed
// (scripts/install.js).
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
// Module.createRequire, without loading node:module (which brings Node's ESM loader along).
const createRequire = module.constructor.createRequire;

// The bundle's file is a CommonJS module's wrapper function (scripts/bundle.js writes these around
// it), so that V8 compiles the very string read from the file: wrapping it here made a joined string
// that V8 copied whole before compiling. A file without them (a bundle built otherwise) is wrapped here.
const BUNDLE_WRAPPER_HEAD = '(function (exports, require, module, __filename, __dirname) {\n';
const BUNDLE_WRAPPER_TAIL = '\n})';

/** Compiles and runs the bundle as a CommonJS module; returns the script (for its cache) and the exports. */
function compileBundle(file, cachedData) {
  const read = fs.readFileSync(file, 'utf8');
  const source = read.startsWith(BUNDLE_WRAPPER_HEAD) ? read : `${BUNDLE_WRAPPER_HEAD}${read}${BUNDLE_WRAPPER_TAIL}`;
  const script = new vm.Script(source, { filename: file, cachedData });
  const mod = { exports: {}, filename: file, id: file, loaded: false };
  script.runInThisContext().call(mod.exports, mod.exports, createRequire(file), mod, file, path.dirname(file));
  mod.loaded = true;
  return { script, exports: mod.exports };
}

/** The cache file's contents for `file`: its path, NUL bytes up to a multiple of 8, then V8's data. */
function cacheFileData(file, data) {
  const name = Buffer.from(`${file}\0`, 'utf8');
  return Buffer.concat([name, Buffer.alloc(dataOffset(name.length - 1) - name.length), data]);
}

/** Where V8's data starts in a cache file whose path ends (at its NUL) at `end`: the next multiple of 8. */
function dataOffset(end) {
  return (end + 8) & ~7;
}

/** V8's data of the cache of `file` when it was made for this very path; undefined otherwise. */
function readCache(file) {
  let raw;
  try {
    raw = fs.readFileSync(`${file}.cache`);
  } catch {
    return undefined;
  }
  const end = raw.indexOf(0);
  if (end < 0 || raw.toString('utf8', 0, end) !== file) return undefined;
  // readFileSync's buffer of a file this size is an allocation of its own, so the offset aligns the data.
  return raw.subarray(dataOffset(end));
}

/** The bundle's exports, with the code cache when there is one for this path. */
function loadBundle(file) {
  // Without a cache (or with one made for another path) V8 compiles it.
  return compileBundle(file, readCache(file)).exports;
}

module.exports = { BUNDLE_WRAPPER_HEAD, BUNDLE_WRAPPER_TAIL, cacheFileData, compileBundle, loadBundle, readCache };
