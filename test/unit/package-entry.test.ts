/**
 * The package's entry points (issue 18): `import 'iptlb'` is dist/index.mjs, made by `npm run build`:
 * the CommonJS bundle dist/index.cjs re-exported by name, so it exports exactly what src/index.ts does,
 * loads none of the files under dist/src/, and a process that both imports and requires iptlb has one
 * copy of it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { PROJECT_ROOT } from '../harness/env.js';
import { typeCheckConsumer } from '../harness/types-project.js';
import * as source from '../../src/index.js';

test('package.json: import gives dist/index.mjs, require dist/index.cjs, both shipped', () => {
  const pkg = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.exports['.'].import.default, './dist/index.mjs');
  assert.equal(pkg.exports['.'].require.default, './dist/index.cjs');
  assert.ok(pkg.files.includes('dist/index.mjs'));
  assert.ok(pkg.files.includes('dist/index.cjs'));
});

test('dist/index.mjs exports what src/index.ts exports, as the CommonJS bundle: one copy of the library per process', () => {
  const file = path.join(PROJECT_ROOT, 'dist', 'index.mjs');
  const cjs = path.join(PROJECT_ROOT, 'dist', 'index.cjs');
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const m = await import(${JSON.stringify(pathToFileURL(file).href)});
       const { createRequire } = await import('node:module');
       const c = createRequire(import.meta.url)(${JSON.stringify(cjs)});
       const e = new c.IptlbError('EUSAGE', 'x');
       process.stdout.write(JSON.stringify({ keys: Object.keys(m).sort(), same: Object.keys(m).every((k) => m[k] === c[k]), instance: e instanceof m.IptlbError }));`,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { keys: string[]; same: boolean; instance: boolean };
  assert.deepEqual(out.keys, Object.keys(source).sort());
  // import and require give the same objects: an IptlbError from one is an instance of the other's.
  assert.equal(out.same, true);
  assert.equal(out.instance, true);
  // It loads the CommonJS bundle and nothing else (no file of dist/src/), through require(): an import
  // of a CommonJS file has Node parse it for its names and keep a facade (about 11 MiB more RSS).
  const text = readFileSync(file, 'utf8');
  const specifiers = [...text.matchAll(/^import\b[^'"]*['"]([^'"]+)['"]/gm)].map((m) => m[1]);
  assert.deepEqual(specifiers, ['node:module']);
  assert.deepEqual(
    [...text.matchAll(/createRequire\(import\.meta\.url\)\(['"]([^'"]+)['"]\)/g)].map((m) => m[1]),
    ['./index.cjs'],
  );
});

test('the shipped declarations type-check in a user project whose lib has esnext.disposable (target esnext, @types/node 22+)', () => {
  // TypeScript 5.6+ types ReadonlyMap's iterators MapIterator, which esnext.disposable (brought by target esnext,
  // and by @types/node 22+, which npm hoists into every project installing iptlb through etcd3's protobufjs) makes
  // need [Symbol.dispose]: a class declared `implements ReadonlyMap` with IterableIterator methods was refused.
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-types-'));
  try {
    mkdirSync(path.join(dir, 'node_modules'));
    symlinkSync(PROJECT_ROOT, path.join(dir, 'node_modules', 'iptlb'));
    const tsc = typeCheckConsumer(dir, { lib: ['esnext'] });
    assert.equal(tsc.status, 0, tsc.output);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
