/**
 * cli.ts: the CLI run in this process gives what the process gives (exit code, stdout, stderr), also
 * for calls made at once. Only commands that touch no kernel (strace: no netlink or raw socket, no
 * child): no root needed, and nothing of this machine is read.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { cliInProcess, cliProcess } from '../harness/cli.js';

test('the CLI in this process and as a process: the same code, stdout and stderr', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-cli-selftest-'));
  const state = `-state-file=${path.join(dir, 'state.db')}`;
  try {
    const cases = [
      ['--version'],
      ['help', 'apply'],
      ['bogus'],
      [state, 'list'],
      [state, '-run', '-profile=web', '-src-addr=127.100.0.10:80', '-dest-addr=127.0.0.1:99999'],
      [state, 'apply', '--profile=web', '--src-addr=127.100.0.10', '--dest-addr=127.0.0.1:9001'],
      [state, 'delete'],
    ];
    const codes = new Set<number | null>();
    for (const args of cases) {
      const inside = await cliInProcess(args);
      const outside = await cliProcess(args);
      assert.deepEqual(inside, outside, args.join(' '));
      codes.add(inside.code);
    }
    // Both kinds of run were compared: successes and refusals.
    assert.ok(codes.has(0) && codes.has(2), [...codes].join(','));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// That calls run one after another is cli.ts's promise chain; what a test can see from outside is that
// calls made at once each get their own output and code.
test('calls made at once in this process each get their own output and exit code', async () => {
  const runs = await Promise.all([['--version'], ['bogus'], ['help']].map((a) => cliInProcess(a)));
  assert.deepEqual(
    runs.map((r) => r.code),
    [0, 2, 0],
  );
  assert.match(runs[1].stderr, /unknown command "bogus"/);
  assert.match(runs[2].stdout, /Usage: iptlb/);
});
