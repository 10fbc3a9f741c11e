/**
 * Chi-square goodness of fit, for checking that traffic splits as the weights say. The regularised
 * incomplete gamma function is computed as in Numerical Recipes (series for x < a+1, Lentz's
 * continued fraction otherwise); ln Γ by the Lanczos approximation (g = 7, n = 9).
 */
import { AssertionError } from 'node:assert';

const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
];

/** ln Γ(x) for x > 0 (reflection below 0.5); about 15 significant digits. */
export function lnGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - lnGamma(1 - x);
  x -= 1;
  let a = LANCZOS[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += LANCZOS[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

const EPS = 1e-15;
const TINY = 1e-300;
const ITMAX = 10_000;

/** P(a, x) by its series; converges fast for x < a + 1. */
function gammaPSeries(a: number, x: number): number {
  let ap = a;
  let del = 1 / a;
  let sum = del;
  for (let n = 0; n < ITMAX; n++) {
    ap += 1;
    del *= x / ap;
    sum += del;
    if (Math.abs(del) < Math.abs(sum) * EPS) break;
  }
  return sum * Math.exp(-x + a * Math.log(x) - lnGamma(a));
}

/** Q(a, x) by its continued fraction (modified Lentz); converges fast for x ≥ a + 1. */
function gammaQContinuedFraction(a: number, x: number): number {
  let b = x + 1 - a;
  let c = 1 / TINY;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < ITMAX; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < TINY) d = TINY;
    c = b + an / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < EPS) break;
  }
  return Math.exp(-x + a * Math.log(x) - lnGamma(a)) * h;
}

function checkGammaArgs(a: number, x: number): void {
  if (!(a > 0) || !Number.isFinite(a)) throw new RangeError(`incomplete gamma: a must be > 0, got ${a}`);
  if (!(x >= 0)) throw new RangeError(`incomplete gamma: x must be >= 0, got ${x}`);
}

/** Regularised lower incomplete gamma P(a, x) = γ(a, x) / Γ(a). */
export function gammaP(a: number, x: number): number {
  checkGammaArgs(a, x);
  if (x === 0) return 0;
  if (x === Infinity) return 1;
  return x < a + 1 ? gammaPSeries(a, x) : 1 - gammaQContinuedFraction(a, x);
}

/** Regularised upper incomplete gamma Q(a, x) = Γ(a, x) / Γ(a) = 1 − P(a, x). */
export function gammaQ(a: number, x: number): number {
  checkGammaArgs(a, x);
  if (x === 0) return 1;
  if (x === Infinity) return 0;
  return x < a + 1 ? 1 - gammaPSeries(a, x) : gammaQContinuedFraction(a, x);
}

/** Upper tail of the chi-square distribution: P(X ≥ statistic) for `df` degrees of freedom. */
export function chiSquarePValue(statistic: number, df: number): number {
  if (!(df > 0)) throw new RangeError(`chi-square: df must be > 0, got ${df}`);
  if (Number.isNaN(statistic)) return NaN;
  if (statistic <= 0) return 1;
  return Math.min(1, Math.max(0, gammaQ(df / 2, statistic / 2)));
}

export interface ChiSquare {
  statistic: number;
  /** Categories with a non-zero expected count, minus one (at least 1). */
  df: number;
  pValue: number;
  /** Expected count of each category for the observed total. */
  expected: number[];
}

/**
 * Pearson's chi-square test of `observed` counts against counts in proportion to `expectedWeights`.
 * A category with weight 0 that received anything makes the statistic infinite (p = 0).
 */
export function chiSquare(observed: number[], expectedWeights: number[]): ChiSquare {
  if (observed.length !== expectedWeights.length)
    throw new RangeError(`chi-square: ${observed.length} counts but ${expectedWeights.length} weights`);
  if (observed.some((o) => !(o >= 0) || !Number.isFinite(o)))
    throw new RangeError(`chi-square: counts must be finite and >= 0: ${JSON.stringify(observed)}`);
  if (expectedWeights.some((w) => !(w >= 0) || !Number.isFinite(w)))
    throw new RangeError(`chi-square: weights must be finite and >= 0: ${JSON.stringify(expectedWeights)}`);
  const wsum = expectedWeights.reduce((a, b) => a + b, 0);
  if (!(wsum > 0)) throw new RangeError('chi-square: the weights sum to 0');
  const total = observed.reduce((a, b) => a + b, 0);
  const expected = expectedWeights.map((w) => (total * w) / wsum);
  let statistic = 0;
  let categories = 0;
  observed.forEach((o, i) => {
    const e = expected[i];
    if (expectedWeights[i] > 0) {
      categories++;
      if (e > 0) statistic += ((o - e) * (o - e)) / e;
    } else if (o > 0) {
      statistic = Infinity;
    }
  });
  const df = Math.max(categories - 1, 1);
  return { statistic, df, pValue: statistic === Infinity ? 0 : chiSquarePValue(statistic, df), expected };
}

/**
 * Throws an AssertionError naming the counts and the expected counts when the observed split does
 * not fit the weights: p < alpha (default 1e-6), a backend with weight > 0 got nothing, one with
 * weight 0 got something, or nothing was counted at all.
 *
 * Two forms: arrays in the same order (`assertSplit([98, 103, 99], [1, 1, 1])`), or records keyed
 * by backend id (`assertSplit(split.counts, { 'backend:9001': 1, 'backend:9002': 2 })`) — then any
 * answer from an id not in the weights (an unexpected backend, a garbled reply) fails too.
 */
export function assertSplit(
  counts: number[],
  expectedWeights: number[],
  opts?: { alpha?: number; message?: string },
): ChiSquare;
export function assertSplit(
  counts: Record<string, number>,
  expectedWeights: Record<string, number>,
  opts?: { alpha?: number; message?: string },
): ChiSquare;
export function assertSplit(
  counts: number[] | Record<string, number>,
  expectedWeights: number[] | Record<string, number>,
  opts: { alpha?: number; message?: string } = {},
): ChiSquare {
  // The suite checks about 40 random splits a run (each engine x executor pair): at 1e-4, one run in
  // about 250 failed on chance alone. A split that is wrong (a probability computed for another
  // weight, a destination skipped) is off by far more than either bound can tell apart with a few
  // hundred connections: p far below 1e-10.
  const alpha = opts.alpha ?? 1e-6;
  let names: string[];
  let obs: number[];
  let w: number[];
  if (Array.isArray(counts) && Array.isArray(expectedWeights)) {
    names = counts.map((_, i) => `#${i}`);
    obs = counts;
    w = expectedWeights;
  } else if (!Array.isArray(counts) && !Array.isArray(expectedWeights)) {
    names = [...new Set([...Object.keys(expectedWeights), ...Object.keys(counts)])];
    obs = names.map((k) => counts[k] ?? 0);
    w = names.map((k) => expectedWeights[k] ?? 0);
  } else {
    throw new TypeError('assertSplit: counts and weights must both be arrays or both be records');
  }
  const r = chiSquare(obs, w);
  const total = obs.reduce((a, b) => a + b, 0);
  const problems: string[] = [];
  if (total === 0) problems.push('nothing was counted');
  names.forEach((n, i) => {
    if (w[i] > 0 && obs[i] === 0 && total > 0) problems.push(`${n} got nothing`);
    if (w[i] === 0 && obs[i] > 0) problems.push(`${n} has weight 0 but got ${obs[i]}`);
  });
  if (r.pValue < alpha) problems.push(`p = ${r.pValue.toExponential(2)} < alpha ${alpha}`);
  if (problems.length) {
    const table = names
      .map(
        (n, i) =>
          `  ${n.padEnd(18)} observed ${String(obs[i]).padStart(7)}   expected ${r.expected[i].toFixed(1).padStart(9)}   (weight ${w[i]})`,
      )
      .join('\n');
    throw new AssertionError({
      message:
        `${opts.message ? opts.message + ': ' : ''}traffic split does not fit the weights (${problems.join('; ')})\n` +
        `${table}\n  chi-square ${r.statistic.toFixed(3)}, df ${r.df}, p ${r.pValue.toExponential(3)}, total ${total}`,
      actual: obs,
      expected: r.expected.map((e) => Math.round(e * 10) / 10),
      operator: 'assertSplit',
    });
  }
  return r;
}
