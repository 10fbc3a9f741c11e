#!/usr/bin/env node
'use strict';
// Writes dist/iptlb.cjs.cache: V8's code cache for the CLI bundle, holding the bytecode of every
// function that a few harmless commands run (help, version, flag parsing, validation, reading and
// writing a state file in a temporary directory; nothing touches the kernel or loads the addon).
// bin/iptlb.cjs hands it to V8, which then skips compiling those functions: about 5 ms of CPU per
// start on the 2-core reference machine. V8 ignores a cache made by another Node/V8 version or for
// another bundle, so a stale file costs only its read. The file starts with the path of the bundle
// it was made for (V8 keeps that name for stack traces: see bin/load-bundle.cjs); npm's install
// script runs this again where the package is installed (scripts/install.js).
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { cacheFileData, compileBundle } = require('../bin/load-bundle.cjs');

const dist = path.resolve(__dirname, '..', 'dist');
const file = path.join(dist, 'iptlb.cjs');

async function main() {
  const { script, exports } = compileBundle(file, undefined);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'iptlb-code-cache-'));
  const state = path.join(tmp, 'state.db');
  const quiet = { out: () => {}, err: () => {} };
  // Commands that need neither root nor the kernel: changes without -run only touch the state file.
  const runs = [
    ['--help'],
    ['--version'],
    ['-profile=web', '-src-addr=127.100.0.10:80', '-dest-addr=127.0.0.1:9001,127.0.0.1:9002', `-state-file=${state}`],
    ['-profile=dns', '-src-addr=127.100.0.10:53', '-dest-addr=127.0.0.1:9053', '-protocol=udp', `-state-file=${state}`],
    ['list', `--state-file=${state}`],
    ['list', '--json', `--state-file=${state}`],
    ['-profile=web', '-delete', `-state-file=${state}`],
    ['-profile=bad!', '-src-addr=127.100.0.10:80', '-dest-addr=127.0.0.1:9001', `-state-file=${state}`],
    ['-run', '-profile=x', '-src-addr=nowhere', '-dest-addr=127.0.0.1:9001', `-state-file=${state}`],
  ];
  const saved = process.exitCode;
  try {
    for (const argv of runs) await exports.main(argv, quiet);
  } finally {
    process.exitCode = saved;
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  // Written whole under another name, then renamed: a run meanwhile reads the old cache or the new.
  const tmpCache = `${file}.cache.${process.pid}`;
  fs.writeFileSync(tmpCache, cacheFileData(file, script.createCachedData()));
  fs.renameSync(tmpCache, `${file}.cache`);
}

main().catch((e) => {
  // The CLI works without the cache (it is only slower to start): say why and go on.
  process.stderr.write(`iptlb: no code cache for the CLI bundle (${e && e.message ? e.message : e})\n`);
  try {
    fs.rmSync(`${file}.cache`, { force: true });
  } catch {}
});
