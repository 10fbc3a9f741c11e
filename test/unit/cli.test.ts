import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normalizeArgv, main } from '../../src/cli.js';

test('Go-style flags: one or two dashes, =value or a space, booleans with =true/=false (last wins)', () => {
  assert.deepEqual(normalizeArgv(['-src-addr=1.2.3.4:5', '--dest-addr', 'x', '-run', '-reset=true']), ['--src-addr=1.2.3.4:5', '--dest-addr', 'x', '--run', '--reset']);
  assert.deepEqual(normalizeArgv(['-run', '-run=false']), []);
  assert.deepEqual(normalizeArgv(['-run=false', '-run']), ['--run']);
  assert.deepEqual(normalizeArgv(['list', '-q', '--', '-run']), ['list', '-q', '--', '-run']);
  assert.throws(() => normalizeArgv(['-run=maybe']), /run/);
});

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n') });
  return { code, out, err };
}

test('usage errors exit 2 with one line; help exits 0 and lists the original flags and subcommands', async () => {
  const help = await cli(['--help']);
  assert.equal(help.code, 0);
  for (const word of ['--src-addr', '--dest-addr', '--rules-backend', '--use-state', 'apply', 'delete', 'list', 'show', 'plan', 'doctor', 'status', 'sync', 'watch']) {
    assert.ok(help.out.includes(word), `help mentions ${word}`);
  }
  const bad = await cli(['-bogus']);
  assert.equal(bad.code, 2);
  assert.equal(bad.err.trim().split('\n').length, 1);
  assert.match(bad.err, /^iptlb: error: unknown option/);
  const conflict = await cli(['-use-state', '-src-addr=1.2.3.4:5']);
  assert.equal(conflict.code, 2);
  assert.match(conflict.err, /-use-state cannot be combined/);
  const noRun = await cli(['-delete', '-profile=x']);
  assert.equal(noRun.code, 2);
  assert.match(noRun.err, /-delete needs -run/);
});

test('the CLI bundle is started with its V8 code cache, which V8 accepts; without it the bundle still loads', async () => {
  const { createRequire } = await import('node:module');
  const { readFileSync } = await import('node:fs');
  const path = await import('node:path');
  const { PROJECT_ROOT } = await import('../harness/env.js');
  const load = createRequire(import.meta.url)(path.join(PROJECT_ROOT, 'bin', 'load-bundle.cjs')) as {
    compileBundle(file: string, cache?: Buffer): { script: { cachedDataRejected?: boolean }; exports: { main: unknown } };
  };
  const bundle = path.join(PROJECT_ROOT, 'dist', 'iptlb.cjs');
  const cached = load.compileBundle(bundle, readFileSync(`${bundle}.cache`));
  assert.equal(cached.script.cachedDataRejected, false, 'npm run build writes a cache this Node accepts');
  assert.equal(typeof cached.exports.main, 'function');
  const stale = load.compileBundle(bundle, Buffer.from('not a code cache'));
  assert.equal(stale.script.cachedDataRejected, true);
  assert.equal(typeof stale.exports.main, 'function', 'a rejected cache only costs the compile');
});
