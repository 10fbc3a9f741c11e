/** stats.ts against known values (no root needed). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AssertionError } from 'node:assert';
import { assertSplit, chiSquare, chiSquarePValue, gammaP, gammaQ, lnGamma } from '../harness/stats.js';

const close = (actual: number, expected: number, tol: number, what = ''): void =>
  assert.ok(Math.abs(actual - expected) <= tol, `${what} ${actual} is not within ${tol} of ${expected}`);

test('lnGamma: factorials and Γ(1/2)', () => {
  let f = 1;
  for (let n = 1; n <= 25; n++) {
    if (n > 1) f *= n - 1;
    close(lnGamma(n), Math.log(f), 1e-10 * Math.max(1, Math.log(f)), `lnGamma(${n})`);
  }
  close(lnGamma(0.5), Math.log(Math.sqrt(Math.PI)), 1e-13, 'lnGamma(0.5)');
  close(lnGamma(1.5), Math.log(Math.sqrt(Math.PI) / 2), 1e-13, 'lnGamma(1.5)');
});

test('chi-square p-values from tables (critical values at 5 %, 1 %, 0.1 %)', () => {
  const table: [number, number, number][] = [
    // [statistic, df, p]
    [3.841458820694124, 1, 0.05],
    [6.634896601021214, 1, 0.01],
    [10.827566170662733, 1, 0.001],
    [5.991464547107979, 2, 0.05],
    [7.814727903251178, 3, 0.05],
    [11.344866730144373, 3, 0.01],
    [18.307038053275146, 10, 0.05],
    [23.209251158954356, 10, 0.01],
    [124.34211340400407, 100, 0.05],
    [1074.679448803441, 1000, 0.05],
  ];
  for (const [x, df, p] of table) close(chiSquarePValue(x, df), p, p * 1e-6, `chi2(${x}, df ${df})`);
  close(chiSquarePValue(3.84, 1), 0.05, 1e-4, 'brief example 3.84 df 1');
  assert.equal(chiSquarePValue(0, 3), 1);
});

test('df 2 has the closed form p = exp(-x/2); df 1 agrees with P + Q = 1 everywhere', () => {
  for (const x of [0.001, 0.1, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 300]) {
    const p = chiSquarePValue(x, 2);
    assert.ok(
      Math.abs(p - Math.exp(-x / 2)) <= 1e-12 + 1e-10 * Math.exp(-x / 2),
      `df 2, x ${x}: ${p} vs ${Math.exp(-x / 2)}`,
    );
    for (const a of [0.5, 1, 2.5, 7, 40]) close(gammaP(a, x) + gammaQ(a, x), 1, 1e-12, `P+Q a ${a} x ${x}`);
  }
  // Q(1, x) = e^-x; tiny tails keep relative precision (the continued fraction, not 1 - P).
  close(gammaQ(1, 50) / Math.exp(-50), 1, 1e-10, 'Q(1,50) relative');
  assert.throws(() => gammaQ(0, 1), RangeError);
  assert.throws(() => gammaQ(1, -1), RangeError);
});

test('chiSquare: statistic, df and expected counts', () => {
  const even = chiSquare([100, 100, 100], [1, 1, 1]);
  assert.deepEqual([even.statistic, even.df, even.pValue], [0, 2, 1]);
  const r = chiSquare([150, 100, 50], [1, 1, 1]);
  close(r.statistic, 50, 1e-12);
  close(r.pValue, Math.exp(-25), 1e-20);
  const w = chiSquare([30, 70], [1, 3]); // expected 25, 75
  close(w.statistic, 25 / 25 + 25 / 75, 1e-12);
  assert.deepEqual(w.expected, [25, 75]);
  // A zero-weight category does not count towards df, and any hit there is impossible.
  assert.equal(chiSquare([50, 50, 0], [1, 1, 0]).df, 1);
  assert.equal(chiSquare([50, 49, 1], [1, 1, 0]).pValue, 0);
  assert.throws(() => chiSquare([1, 2], [1]), RangeError);
  assert.throws(() => chiSquare([1, 2], [0, 0]), RangeError);
});

test('assertSplit: passes a fair split, fails readably otherwise', () => {
  assert.equal(assertSplit([98, 103, 99], [1, 1, 1]).df, 2);
  assertSplit({ 'backend:9001': 95, 'backend:9002': 205 }, { 'backend:9001': 1, 'backend:9002': 2 });
  const fails = (fn: () => unknown, re: RegExp): void => {
    assert.throws(fn, (e: unknown) => {
      assert.ok(e instanceof AssertionError, String(e));
      assert.match(e.message, re);
      return true;
    });
  };
  fails(() => assertSplit([150, 100, 50], [1, 1, 1]), /p = .* < alpha[\s\S]*observed +150 +expected +100\.0/);
  // p is fine (0.22) but a backend was never chosen.
  fails(() => assertSplit([0, 3, 3], [1, 1, 1]), /#0 got nothing/);
  fails(() => assertSplit([50, 49, 1], [1, 1, 0]), /#2 has weight 0 but got 1/);
  fails(() => assertSplit([0, 0], [1, 1]), /nothing was counted/);
  fails(
    () => assertSplit({ 'backend:9001': 100, 'backend:9002': 100, '': 1 }, { 'backend:9001': 1, 'backend:9002': 1 }),
    /"?" has weight 0|has weight 0 but got 1/,
  );
  fails(() => assertSplit([60, 40], [1, 1], { alpha: 0.1, message: 'strict' }), /^strict: /);
  assert.throws(() => assertSplit([1, 2] as never, { a: 1 } as never), TypeError);
});

test('calibration: p < 0.05 about 5 % of the time for fair multinomial samples (seeded)', () => {
  let s = 0x9e3779b9;
  const rand = (): number => {
    // mulberry32
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const weights = [1, 2, 3, 4];
  const cum = [0.1, 0.3, 0.6, 1];
  const trials = 2000;
  let rejected = 0;
  for (let t = 0; t < trials; t++) {
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 300; i++) {
      const u = rand();
      counts[cum.findIndex((c) => u < c)]++;
    }
    if (chiSquare(counts, weights).pValue < 0.05) rejected++;
  }
  const rate = rejected / trials;
  assert.ok(rate > 0.035 && rate < 0.065, `rejection rate ${rate}`);
});
