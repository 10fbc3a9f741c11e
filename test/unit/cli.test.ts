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
