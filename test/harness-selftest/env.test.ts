/** env.ts: paths and the support probe (no root needed). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { CLI_PATH, PROJECT_ROOT, kernelTestSupport, skipReason } from '../harness/env.js';

test('PROJECT_ROOT is the package root, also from dist/test/harness', () => {
  assert.ok(path.isAbsolute(PROJECT_ROOT));
  assert.notEqual(path.basename(PROJECT_ROOT), 'dist');
  assert.equal(JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')).name, 'iptlb');
  assert.equal(CLI_PATH, path.join(PROJECT_ROOT, 'bin', 'iptlb.cjs'));
});

test('kernelTestSupport: ok, or a reason usable as a skip message; cached', () => {
  const s = kernelTestSupport();
  assert.equal(kernelTestSupport(), s);
  if (s.ok) assert.equal(skipReason(), false);
  else {
    assert.ok(s.reason.length > 10);
    assert.equal(skipReason(), s.reason);
  }
  if (process.getuid?.() !== 0) assert.equal(s.ok, false);
});
