'use strict';
// Loads the CLI bundle (dist/iptlb.cjs) the way require() would, but through vm.Script so that V8
// can take the code cache written at build time (dist/iptlb.cjs.cache, see scripts/code-cache.cjs).
// Without a cache, or with one V8 rejects (another Node version, another bundle), it simply compiles.
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

/** The bundle's exports, with the code cache when there is one. */
function loadBundle(file) {
  let cachedData;
  try {
    cachedData = fs.readFileSync(`${file}.cache`);
  } catch {
    return require(file); // no cache: plain require
  }
  return compileBundle(file, cachedData).exports;
}

module.exports = { compileBundle, loadBundle };
