'use strict';
// Loads the CLI bundle (dist/iptlb.cjs) the way require() would, but through vm.Script so that V8
// can take the code cache written at build time (dist/iptlb.cjs.cache, see scripts/code-cache.cjs).
// Without a cache, or with one V8 rejects (another Node version, another bundle), it simply compiles.
//
// V8 (11.3, Node 20) takes a script's file name from the code cache, not from the compile: stack traces
// of a cached bundle named the file the cache was made for (the build machine's dist/iptlb.cjs), not the
// one that ran. The cache file therefore starts with that path and a NUL byte, and a cache made for
// another path is not used (the bundle is compiled, about 5 ms more); npm's install script makes the
// cache again where the package is installed (scripts/install.js).
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
// Module.createRequire, without loading node:module (which brings Node's ESM loader along).
const createRequire = module.constructor.createRequire;

/** Compiles and runs the bundle as a CommonJS module; returns the script (for its cache) and the exports. */
function compileBundle(file, cachedData) {
  const source = fs.readFileSync(file, 'utf8');
  const wrapped = `(function (exports, require, module, __filename, __dirname) { ${source}\n})`;
  const script = new vm.Script(wrapped, { filename: file, cachedData });
  const mod = { exports: {}, filename: file, id: file, loaded: false };
  script.runInThisContext().call(mod.exports, mod.exports, createRequire(file), mod, file, path.dirname(file));
  mod.loaded = true;
  return { script, exports: mod.exports };
}

/** The cache file's contents for `file`: its path, a NUL byte, then V8's data. */
function cacheFileData(file, data) {
  return Buffer.concat([Buffer.from(`${file}\0`, 'utf8'), data]);
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
  return raw.subarray(end + 1);
}

/** The bundle's exports, with the code cache when there is one for this path. */
function loadBundle(file) {
  const cachedData = readCache(file);
  if (!cachedData) return require(file); // no cache (or one made for another path): plain require
  return compileBundle(file, cachedData).exports;
}

module.exports = { cacheFileData, compileBundle, loadBundle, readCache };
