/**
 * scripts/build-sources.js: the record of what dist/ was built from, which scripts/setup.sh trusts to
 * skip a build. A source changed, added or removed, or an output missing, must make it ask for one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { PROJECT_ROOT } from '../harness/env.js';

interface BuildSources {
  STAMP: string;
  buildDigest(root: string): string;
  currentBuild(root: string): boolean;
}

test('a build is current only while its sources, its outputs and its record agree', async () => {
  const m = (await import(pathToFileURL(path.join(PROJECT_ROOT, 'scripts', 'build-sources.js')).href)) as BuildSources;
  const root = mkdtempSync(path.join(tmpdir(), 'iptlb-build-sources-'));
  try {
    const put = (f: string, text: string) => {
      mkdirSync(path.dirname(path.join(root, f)), { recursive: true });
      writeFileSync(path.join(root, f), text);
    };
    put('src/a.ts', 'export const a = 1;\n');
    put('package.json', '{}\n');
    for (const f of ['dist/iptlb.cjs', 'dist/iptlb.cjs.cache', 'dist/index.cjs', 'dist/index.mjs', 'dist/iptlb.1'])
      put(f, '');
    assert.equal(m.currentBuild(root), false, 'no record: not current');
    const record = () => put(m.STAMP, `${m.buildDigest(root)}\n`);
    record();
    assert.equal(m.currentBuild(root), true, 'recorded just now');
    put('src/a.ts', 'export const a = 2;\n');
    assert.equal(m.currentBuild(root), false, 'a source changed');
    record();
    put('test/b.test.ts', '');
    assert.equal(m.currentBuild(root), false, 'a source added (in a directory that was not there)');
    record();
    unlinkSync(path.join(root, 'test', 'b.test.ts'));
    assert.equal(m.currentBuild(root), false, 'a source removed');
    record();
    assert.equal(m.currentBuild(root), true);
    unlinkSync(path.join(root, 'dist', 'index.cjs'));
    assert.equal(m.currentBuild(root), false, 'an output missing');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
