/**
 * Weights and round-robin (issue 8, parts 1 and 3) with real TCP traffic in fresh network
 * namespaces, on every engine × executor pair: a weighted split within a chi-square bound, a drained
 * destination that gets no new connection while a held-open one keeps working, and round-robin's
 * exact rotation, alone and with two profiles interleaved.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { assertSplit } from '../harness/stats.js';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { PAIRS } from './common.js';

const FX = new URL('./fixtures/weights.js', import.meta.url).pathname;
const run = (pair: string, mode: string): Promise<any> => runJsonInFreshNetns(FX, [pair, mode], { timeoutMs: 180_000 });
const countsOf = (split: { counts: Record<string, number> }, ports: number[]): number[] =>
  ports.map((p) => split.counts[`backend:${p}`] ?? 0);
const ok = (r: { code: number; stderr: string }, what: string): void => assert.equal(r.code, 0, `${what}: ${r.stderr}`);

/** `seq` repeats its first `n` entries, which are `n` distinct values: an exact rotation. */
function assertRotation(seq: number[], first: number[]): void {
  const n = first.length;
  assert.deepEqual(seq.slice(0, n), first, `the rotation starts with the destinations in list order: ${seq.join(',')}`);
  seq.forEach((v, i) =>
    assert.equal(v, seq[i % n], `connection ${i} went to ${v}, not ${seq[i % n]}: ${seq.join(',')}`),
  );
}

for (const pair of PAIRS) {
  describe(`weights and round-robin over ${pair.name}`, { skip: pair.skip }, () => {
    test('weights 1,2,3: 600 connections split 1:2:3 (chi-square); status counts each destination once, with its weight', async () => {
      const r = await run(pair.name, 'split');
      ok(r.apply, 'apply');
      assert.equal(r.split.failures, 0, JSON.stringify(r.split.errors));
      assertSplit(countsOf(r.split, [9001, 9002, 9003]), [1, 2, 3]);
      assert.equal(r.status.inSync, true, JSON.stringify(r.status));
      const d = r.status.profiles[0].destinations;
      assert.deepEqual(
        d.map((x: any) => [x.destination, x.weight]),
        [
          ['127.0.0.1:9001', undefined],
          ['127.0.0.1:9002', 2],
          ['127.0.0.1:9003', 3],
        ],
      );
      assert.deepEqual(
        d.map((x: any) => x.packets),
        countsOf(r.split, [9001, 9002, 9003]),
        'per-destination counters equal the connections each backend served',
      );
      assert.match(r.list, /127\.0\.0\.1:9001,127\.0\.0\.1:9002\*2,127\.0\.0\.1:9003\*3/);
      ok(r.plan, 'plan');
      assert.match(r.plan.stdout, /^# profile rot: 127\.0\.0\.1:9001\*2,127\.0\.0\.1:9002, scheduler round-robin\n/);
      assert.match(
        r.plan.stdout,
        pair.engine === 'nft'
          ? /numgen inc mod 3 offset 1000003 map @be_tcp comment "iptlb:rot"/
          : /--mode nth --every 3 --packet 0 -j DNAT/,
      );
      ok(r.apply2, 'apply');
      assert.match(
        r.list2,
        /rot\t127\.100\.0\.12:80\/tcp\tclient\t127\.0\.0\.1:9001\*2,127\.0\.0\.1:9002\tscheduler:round-robin/,
      );
    });

    test('weight 0 drains: no new connection reaches the destination, a held-open connection to it keeps working', async () => {
      const r = await run(pair.name, 'drain');
      ok(r.apply, 'apply');
      ok(r.drain, 'drain');
      assert.equal(r.before, `backend:${r.held} before`);
      assert.equal(r.split.failures, 0, JSON.stringify(r.split.errors));
      const other = r.held === 9001 ? 9002 : 9001;
      assert.deepEqual(countsOf(r.split, [r.held, other]), [0, 200]);
      assert.equal(
        r.after,
        `backend:${r.held} after`,
        'the existing connection still reaches its backend through the NAT',
      );
      assert.equal(r.status.inSync, true, JSON.stringify(r.status));
      const drained = r.status.profiles[0].destinations.find((x: any) => x.destination === `127.0.0.1:${r.held}`);
      assert.deepEqual(drained, { destination: `127.0.0.1:${r.held}`, packets: 0, bytes: 0, weight: 0 });
    });

    test('round-robin: 30 connections one after the other are an exact rotation; with weights 1,2 too; back to random', async () => {
      const r = await run(pair.name, 'rr');
      ok(r.apply, 'apply');
      assertRotation(r.seq, [9001, 9002, 9003]);
      assert.equal(r.status.inSync, true, JSON.stringify(r.status));
      assert.deepEqual(
        r.status.profiles[0].destinations.map((x: any) => x.packets),
        [10, 10, 10],
      );
      ok(r.weighted, 'weighted round-robin');
      assertRotation(r.weightedSeq, [9001, 9002, 9002]);
      assert.equal(r.weightedStatus.inSync, true, JSON.stringify(r.weightedStatus));
      assert.deepEqual(
        r.weightedStatus.profiles[0].destinations.map((x: any) => [x.packets, x.weight]),
        [
          [10, undefined],
          [20, 2],
        ],
      );
      ok(r.random, 'back to random');
      assert.equal(r.randomSplit.failures, 0, JSON.stringify(r.randomSplit.errors));
      // The split is random again, 1:1:2, and the round-robin rotation is gone (it would give 1:1:1).
      assert.equal(
        countsOf(r.randomSplit, [9001, 9002, 9003]).reduce((a, b) => a + b, 0),
        400,
      );
      assertSplit(countsOf(r.randomSplit, [9001, 9002, 9003]), [1, 1, 2]);
      assert.equal(r.randomStatus.inSync, true, JSON.stringify(r.randomStatus));
    });

    test('round-robin: two profiles on different virtual addresses, connections interleaved, each keeps its own rotation', async () => {
      const r = await run(pair.name, 'rr2');
      ok(r.a, 'apply a');
      ok(r.b, 'apply b');
      assertRotation(r.seqA, [9001, 9002, 9003]);
      assertRotation(r.seqB, [9004, 9005]);
      assert.equal(r.status.inSync, true, JSON.stringify(r.status));
    });
  });
}
