/**
 * Issue 5's promises, each a test that can fail: no gap during changes, crash safety, concurrent
 * resets, privileges. Long variants: IPTLB_SOAK=1 (npm run soak) uses the full counts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { VIP, cli, describePairs, ok, runSteps, type Proc } from './common.js';
import { pairOf } from '../harness/pair.js';
import { planNftChange } from '../../src/engines/nft/plan.js';
import { renderNft } from '../../src/engines/nft/render.js';
import { validateProfile } from '../../src/model/profile.js';

const SOAK = !!process.env.IPTLB_SOAK;
const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;

/**
 * Runs the no-gap fixture (`mode`: none, 'mixed' or 'affinity'): every reset lands, enough connections ran, none
 * failed.
 */
async function noGap(ex: string, resets: number, minOk: number, mode?: string): Promise<void> {
  const r = (await runJsonInFreshNetns(fixture('nogap.js'), [ex, String(resets), ...(mode ? [mode] : [])], {
    timeoutMs: 300_000,
  })) as {
    resets: number;
    ok: number;
    failures: number;
    errorsSample: string[];
  };
  assert.equal(r.resets, resets);
  assert.ok(r.ok > minOk, `only ${r.ok} connections were made during the resets`);
  assert.equal(r.failures, 0, `failed connections: ${JSON.stringify(r.errorsSample)}`);
}

describePairs('reliability', ({ name: ex }) => {
  // Rounds: IPTLB_SOAK=1 runs every pair in full; CI fewer, to stay within minutes (the suite is
  // CPU-bound on 2 cores, and a client that connects without pause takes a core of its own), the spawn
  // executor's fewest, as its commits are whole processes (iptables-legacy-restore, nft, ipset, conntrack).
  const spawned = pairOf(ex).executor === 'spawn';
  const rounds = (soak: number, native: number, spawn: number): number => (SOAK ? soak : spawned ? spawn : native);
  // On the spawn pairs the mixed and affinity runs below change the destinations as this one does
  // (and more), so in CI this one runs on the native pairs only.
  const resets = rounds(500, 300, 60);
  if (SOAK || !spawned)
    test(`no gap: ${resets} consecutive resets that change the destinations while a client connects without pause: zero failures`, () =>
      noGap(ex, resets, 100));

  test('no gap with weights and round-robin: resets that change weights (some drained) and the scheduler while a client connects: zero failures', () =>
    noGap(ex, rounds(500, 100, 40), 30, 'mixed'));

  test('no gap with session affinity: resets that switch affinity on and off, change its timeout, the weights and the scheduler while a client connects: zero failures', () =>
    noGap(ex, rounds(500, 100, 40), 30, 'affinity'));

  test('crash safety: SIGKILL at random moments of apply/reset/delete never leaves half a profile, a broken state file or a held lock', async () => {
    const kills = rounds(200, 40, 30);
    const r = (await runJsonInFreshNetns(fixture('crash.js'), [ex, String(kills)], { timeoutMs: 600_000 })) as {
      killed: number;
      problems: string[];
      problemCount: number;
      firstProblem?: unknown;
    };
    assert.equal(r.problemCount, 0, `${r.problems.join('\n')}\nfirst: ${JSON.stringify(r.firstProblem, null, 1)}`);
    assert.ok(r.killed > kills / 4, `only ${r.killed} of ${kills} runs were killed mid-way`);
  });

  if (pairOf(ex).engine === 'nft')
    test('a delete after a move killed between its two steps leaves nothing of the profile (-run -delete and delete), the other profile keeps serving', async () => {
      const two = '127.0.0.1:9001,127.0.0.1:9002';
      const at = (n: string, vip: string, dest: string, ...more: string[]): ReturnType<typeof cli> =>
        cli(ex, '-run', `-profile=${n}`, `-src-addr=${vip}:80`, `-dest-addr=${dest}`, ...more);
      // The first step of two moves (a: 2 -> 3 destinations; c: random -> round-robin), as a process killed after
      // committing it leaves the kernel; the state file keeps the old versions.
      const v = (name: string, source: string, destination: string, scheduler?: string) =>
        validateProfile({ name, source, destination: destination.split(','), ...(scheduler ? { scheduler } : {}) });
      const b = v('b', '127.100.0.2:80', two);
      const prev = new Map([
        ['a', v('a', '127.100.0.1:80', two)],
        ['b', b],
        ['c', v('c', '127.100.0.3:80', two)],
      ]);
      const next = new Map([
        ['a', v('a', '127.100.0.1:80', `${two},127.0.0.1:9003`)],
        ['b', b],
        ['c', v('c', '127.100.0.3:80', two, 'round-robin')],
      ]);
      const steps = planNftChange(prev, next, ['a', 'c']);
      assert.equal(steps.length, 2, 'a two-step move');
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003] },
        at('a', '127.100.0.1', two),
        at('b', '127.100.0.2', two),
        at('c', '127.100.0.3', two),
        { op: 'write', file: '$WORK/step1.nft', text: renderNft(steps[0]!) },
        { op: 'sh', argv: ['nft', '-f', '$WORK/step1.nft'] },
        { op: 'sh', argv: ['nft', 'list', 'table', 'ip', 'iptlb'] },
        cli(ex, '-run', '-delete', '-profile=a'),
        cli(ex, 'delete', 'c'),
        { op: 'sh', argv: ['nft', 'list', 'table', 'ip', 'iptlb'] },
        cli(ex, 'status', '--json'),
        { op: 'tcp', vip: '127.100.0.1', port: 80, count: 5 },
        { op: 'tcp', vip: '127.100.0.3', port: 80, count: 5 },
        { op: 'tcp', vip: '127.100.0.2', port: 80, count: 20 },
      ]);
      for (const i of [1, 2, 3, 5, 7, 8]) ok(r[i], `step ${i}`);
      // Both versions were in the kernel: a in two dispatch sets, c's round-robin rule beside its element.
      assert.match(r[6].stdout, /set out_tcp_2 [^}]*127\.100\.0\.1 \. 80/s);
      assert.match(r[6].stdout, /set out_tcp_3 [^}]*127\.100\.0\.1 \. 80/s);
      assert.match(r[6].stdout, /comment "iptlb:c"/);
      assert.doesNotMatch(r[9].stdout, /127\.100\.0\.[13]\b|iptlb:[ac]"/, 'nothing of a or c left');
      assert.equal(r[10].code, 0, `status exited ${r[10].code} (3: drift): ${r[10].stdout}`);
      const st = JSON.parse(r[10].stdout) as { inSync: boolean; profiles: { name: string; status: string }[] };
      assert.equal(st.inSync, true, r[10].stdout);
      assert.deepEqual(
        st.profiles.map((p) => `${p.name}:${p.status}`),
        ['b:in-sync'],
      );
      // Nothing serves the deleted addresses (no listener on port 80: refused); b's does.
      assert.equal(r[11].failures, 5, 'a deleted address still served');
      assert.equal(r[12].failures, 5, 'a deleted address still served');
      assert.equal(r[13].failures, 0, JSON.stringify(r[13].errors));
    });

  // The lock's doing, a layer above the executor (aboveExecutor in common.ts): native pairs in CI.
  if (SOAK || !spawned)
    test('concurrent resets of one profile: the kernel and the state file agree at the end', async () => {
      const runs = Array.from({ length: 16 }, (_, i) => [
        ...pairOf(ex).flags,
        '-state-file=$WORK/state.db',
        '-q',
        '-run',
        '-reset',
        '-profile=web',
        `-src-addr=${VIP}:80`,
        `-dest-addr=127.0.0.1:${9000 + i}`,
      ]);
      const r = await runSteps([{ op: 'parallel-cli', runs }, cli(ex, 'status', '--json')]);
      r[0].forEach((p: Proc) => ok(p));
      const status = JSON.parse(r[1].stdout);
      assert.equal(r[1].code, 0, r[1].stdout);
      assert.equal(status.inSync, true);
    });

  test('without CAP_NET_ADMIN: one line that says so, exit 1, nothing created', async () => {
    const r = await runSteps([
      {
        op: 'sh',
        argv: [
          'setpriv',
          '--inh-caps=-net_admin',
          '--bounding-set=-net_admin',
          '--',
          process.execPath,
          '$CLI',
          ...pairOf(ex).flags,
          '-state-file=$WORK/x/state.db',
          '-run',
          '-profile=web',
          `-src-addr=${VIP}:80`,
          '-dest-addr=127.0.0.1:9001',
        ],
      },
      { op: 'sh', argv: ['ls', '$WORK'] },
    ]);
    assert.equal(r[0].code, 1, r[0].stderr);
    assert.equal(r[0].stderr.trim().split('\n').length, 1);
    assert.match(r[0].stderr, /CAP_NET_ADMIN/);
    assert.doesNotMatch(r[1].stdout, /\bx\b/, 'no state directory created');
  });

  const ops = rounds(1000, 600, 100);
  test(`foreign rules untouched (${ex}): ${ops} random operations and the deletion of every profile leave iptables-save byte-identical`, async () => {
    const r = (await runJsonInFreshNetns(fixture('foreign.js'), [ex, String(ops)], { timeoutMs: 300_000 })) as {
      applied: number;
      deleted: number;
      changedMidway: boolean;
      identical: boolean;
      diff: string;
    };
    assert.ok(r.applied > ops / 2 && r.deleted > 10, JSON.stringify(r));
    assert.ok(r.changedMidway, 'iptlb did write rules in between');
    assert.ok(r.identical, r.diff);
  });
});
