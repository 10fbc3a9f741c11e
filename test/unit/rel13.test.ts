/**
 * Issue 13 ("Reliability, round two"), the points that need no root: each test failed before the fix.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { open, IptlbError, serializeState, validateProfile } from '../../src/index.js';
import { main } from '../../src/cli.js';
import { CLI_PATH } from '../harness/env.js';

function tmpdir(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'iptlb-rel13-'));
}

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n') });
  return { code, out, err };
}

function manyProfiles(n: number): string {
  const list = [];
  for (let i = 0; i < n; i++) {
    list.push(validateProfile({ name: `p${i}`, source: `127.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}:80`, destination: ['127.0.0.1:9001', '127.0.0.1:9002'] }));
  }
  return serializeState(list);
}

test('3: list --json of 1,000 profiles into a slow pipe: every byte arrives, valid JSON, exit 0', () => {
  const dir = tmpdir();
  try {
    const state = path.join(dir, 'state.db');
    writeFileSync(state, manyProfiles(1000), { mode: 0o600 });
    // The reader starts reading 1 s after the CLI has written: far more than a pipe's 64 KiB waits.
    const r = spawnSync('sh', ['-c', `"${process.execPath}" "${CLI_PATH}" list --json --state-file "${state}" | (sleep 1; cat > "${dir}/out")`], {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    assert.equal(r.status, 0, r.stderr);
    const out = spawnSync('cat', [`${dir}/out`], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout;
    assert.ok(out.length > 65536 * 2, `only ${out.length} bytes arrived`);
    const parsed = JSON.parse(out) as unknown[];
    assert.equal(parsed.length, 1000);
    // The exit status survives the wait for the pipe.
    const bad = spawnSync('sh', ['-c', `"${process.execPath}" "${CLI_PATH}" list --json --state-file "${state}" --bogus | (sleep 0.2; cat >/dev/null); exit 0`], { encoding: 'utf8' });
    assert.equal(bad.status, 0);
    const code = spawnSync(process.execPath, [CLI_PATH, 'list', '--bogus'], { encoding: 'utf8' });
    assert.equal(code.status, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('5: every open() option is validated: a typed EUSAGE naming the option, before anything is chosen', async () => {
  const cases: [unknown, string][] = [
    [null, 'options'],
    [42, 'options'],
    ['x', 'options'],
    [{ engine: 'bogus' }, 'engine'],
    [{ engine: 42 }, 'engine'],
    [{ executor: 'x' }, 'executor'],
    [{ lockWaitMs: -5 }, 'lockWaitMs'],
    [{ lockWaitMs: 1.5 }, 'lockWaitMs'],
    [{ lockWaitMs: '100' }, 'lockWaitMs'],
    [{ lockWaitMs: Infinity }, 'lockWaitMs'],
    [{ stateFile: 42 }, 'stateFile'],
    [{ stateFile: '' }, 'stateFile'],
    [{ stateFile: true }, 'stateFile'],
    [{ stateFile: 'a\0b' }, 'stateFile'],
    [{ log: 'yes' }, 'log'],
    [{ keepConntrack: 1 }, 'keepConntrack'],
    [{ coalesce: 'no' }, 'coalesce'],
    [{ driftCheckMs: 5 }, 'driftCheckMs'],
    [{ driftCheckMs: '100' }, 'driftCheckMs'],
    [{ statefile: '/x' }, 'statefile'],
  ];
  for (const [opts, field] of cases) {
    await assert.rejects(
      () => open(opts as never),
      (e: unknown) => e instanceof IptlbError && e.code === 'EUSAGE' && e.field === field && e.message.startsWith(`${field}:`) && !e.message.includes('\n'),
      `open(${String(JSON.stringify(opts))}) names ${field}`,
    );
  }
});

test('12: -state-file= (empty) is a usage error, nothing read or written', async () => {
  for (const args of [['list', '-state-file='], ['-state-file=', '-profile=web', '-src-addr=127.0.0.9:80', '-dest-addr=127.0.0.1:9001'], ['doctor', '--state-file=']]) {
    const r = await cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, /^iptlb: error: state-file: must not be empty/);
  }
});
