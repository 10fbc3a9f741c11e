/**
 * The package's entry points (issue 18): `import 'iptlb'` is one ESM bundle, dist/index.mjs, made by
 * `npm run build`; it exports exactly what src/index.ts does and imports none of the files under
 * dist/src/ (only packages and Node built-ins).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { PROJECT_ROOT } from '../harness/env.js';
import * as source from '../../src/index.js';

test('package.json: import gives dist/index.mjs, require dist/index.cjs, both shipped', () => {
  const pkg = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.exports['.'].import.default, './dist/index.mjs');
  assert.equal(pkg.exports['.'].require.default, './dist/index.cjs');
  assert.ok(pkg.files.includes('dist/index.mjs'));
  assert.ok(pkg.files.includes('dist/index.cjs'));
});

test('dist/index.mjs exports what src/index.ts exports, and imports no file of dist/src/', () => {
  const file = path.join(PROJECT_ROOT, 'dist', 'index.mjs');
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const m = await import(${JSON.stringify(pathToFileURL(file).href)}); process.stdout.write(JSON.stringify(Object.keys(m).sort()));`,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), Object.keys(source).sort());
  // Only packages and Node built-ins are left to import: no relative specifier at all.
  const specifiers = [...readFileSync(file, 'utf8').matchAll(/^import\b[^'"]*['"]([^'"]+)['"]/gm)].map((m) => m[1]);
  assert.ok(specifiers.length > 0);
  assert.deepEqual(
    specifiers.filter((s) => s.startsWith('.') || s.startsWith('/')),
    [],
  );
});
