/**
 * runInFreshNetns, backends, traffic and stats together, WITHOUT iptlb: a child in a namespace of
 * its own writes a DNAT split with plain iptables-legacy and sends real TCP/UDP traffic through it.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { skipReason } from '../harness/env.js';
import { runInFreshNetns, runJsonInFreshNetns } from '../harness/netns.js';
import { assertSplit } from '../harness/stats.js';
import { countsFor, type Split } from '../harness/traffic.js';

const skip = skipReason();
const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;
const PORTS = [9001, 9002, 9003];

/** Whether pid is a running process (a zombie awaiting its reaper counts as dead). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/**
 * The host's (initial namespace's) iptables, strictly read only. Plain `iptables-legacy-save`
 * dumps only the tables that already exist there (/proc/net/ip_tables_names); `-t nat` must NOT be
 * used here: looking a legacy table up by name instantiates it in that namespace.
 */
function hostTables(): string {
  try {
    return execFileSync('iptables-legacy-save', [], {
      encoding: 'utf8',
      timeout: 20_000,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
  } catch {
    return '';
  }
}

describe('runInFreshNetns', { skip }, () => {
  test(
    'the child has a namespace of its own with only lo, up; args, env and stdin reach it',
    { timeout: 30_000 },
    async () => {
      const r = await runJsonInFreshNetns<{
        argv: string[];
        stdin: string;
        marker: string | null;
        extra: string | null;
        links: { name: string; up: boolean }[];
      }>(fixture('probe-env.js'), ['info', 'a b', '$HOME', '; true'], {
        input: 'hello\n',
        env: { SELFTEST_EXTRA: 'x' },
        timeoutMs: 20_000,
      });
      assert.deepEqual(r.argv, ['a b', '$HOME', '; true'], 'arguments pass verbatim (no shell)');
      assert.equal(r.stdin, 'hello\n');
      assert.equal(r.extra, 'x');
      assert.equal(r.marker, null, 'the preload removes its marker');
      assert.deepEqual(r.links, [{ name: 'lo', up: true }]);
    },
  );

  test('loopback: false leaves lo down', { timeout: 30_000 }, async () => {
    const r = await runJsonInFreshNetns<{ links: { name: string; up: boolean }[] }>(fixture('probe-env.js'), ['info'], {
      loopback: false,
      timeoutMs: 20_000,
    });
    assert.deepEqual(r.links, [{ name: 'lo', up: false }]);
  });

  test('a child past its time limit is killed together with what it started', { timeout: 30_000 }, async () => {
    const t0 = Date.now();
    const r = await runInFreshNetns(fixture('probe-env.js'), ['hang'], { timeoutMs: 1500 });
    assert.ok(Date.now() - t0 < 10_000);
    assert.equal(r.timedOut, true);
    assert.equal(r.signal, 'SIGKILL');
    assert.match(r.stderr, /timed out after 1500 ms/);
    const { grandchild } = JSON.parse(r.stdout.trim()) as { grandchild: number };
    for (let i = 0; i < 50 && alive(grandchild); i++) await new Promise((res) => setTimeout(res, 50));
    assert.equal(alive(grandchild), false, `grandchild ${grandchild} still alive`);
  });

  test(
    'runJsonInFreshNetns: a failing child throws with its stderr; no JSON throws too',
    { timeout: 30_000 },
    async () => {
      await assert.rejects(
        runJsonInFreshNetns(fixture('probe-env.js'), ['fail']),
        /exited 3[\s\S]*deliberate failure, details here/,
      );
      await assert.rejects(runJsonInFreshNetns(fixture('probe-env.js'), ['nojson']), /no JSON result[\s\S]*not json/);
      const r = await runInFreshNetns(fixture('probe-env.js'), ['fail']);
      assert.equal(r.code, 3);
      assert.equal(r.timedOut, false);
    },
  );
});

interface SplitOut {
  proto: string;
  before: Split;
  rules: string[];
  split: Split;
  ms: number;
  served: Record<string, number>;
  peers: Record<string, string[]>;
}

describe('a plain iptables-legacy DNAT split in a fresh namespace (no iptlb)', { skip }, () => {
  for (const proto of ['tcp', 'udp'] as const) {
    test(
      `${proto}: 300 probes through 127.100.0.10:8081 split evenly over 3 backends, none lost`,
      { timeout: 90_000 },
      async () => {
        const before = hostTables();
        const r = await runJsonInFreshNetns<SplitOut>(fixture('split.js'), [proto, '300'], { timeoutMs: 60_000 });
        // Control: without the rules nothing answers.
        assert.equal(r.before.failures, 5, `before the rules: ${JSON.stringify(r.before)}`);
        assert.equal(r.rules.filter((l) => l.includes('DNAT')).length, 3, r.rules.join('\n'));
        assert.equal(r.split.failures, 0, JSON.stringify(r.split.errors));
        assert.deepEqual(
          Object.keys(r.split.counts).sort(),
          PORTS.map((p) => `backend:${p}`),
        );
        assertSplit(countsFor(r.split, PORTS), [1, 1, 1]);
        assertSplit(r.split.counts, Object.fromEntries(PORTS.map((p) => [`backend:${p}`, 1])));
        // The backends saw every probe, from the loopback address.
        assert.deepEqual(
          PORTS.map((p) => r.served[p]),
          countsFor(r.split, PORTS),
        );
        for (const p of PORTS) assert.deepEqual(r.peers[p], ['127.0.0.1']);
        // Nothing leaked into this machine's own table.
        const after = hostTables();
        assert.equal(after.includes('SELFTEST') || after.includes('127.100.0.10'), false, after);
        assert.equal(before.includes('SELFTEST'), false);
      },
    );
  }
});
