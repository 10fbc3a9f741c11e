/** Chi-square goodness of fit, for checking that traffic splits as the weights say. */

function lnGamma(x: number): number {
  // Lanczos approximation (g = 7, n = 9).
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lnGamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/** Regularised upper incomplete gamma Q(a, x): series for x < a+1, continued fraction otherwise. */
export function gammaQ(a: number, x: number): number {
  if (x <= 0) return 1;
  if (x < a + 1) {
    let sum = 1 / a;
    let term = sum;
    for (let n = 1; n < 1000; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-15) break;
    }
    return 1 - sum * Math.exp(-x + a * Math.log(x) - lnGamma(a));
  }
  let b = x + 1 - a;
  let c = 1e300;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 1000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (Math.abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 1e-15) break;
  }
  return Math.exp(-x + a * Math.log(x) - lnGamma(a)) * h;
}

export function chiSquare(observed: number[], expectedWeights: number[]): { statistic: number; df: number; pValue: number } {
  const total = observed.reduce((a, b) => a + b, 0);
  const wsum = expectedWeights.reduce((a, b) => a + b, 0);
  let statistic = 0;
  let df = -1;
  observed.forEach((o, i) => {
    const e = (total * expectedWeights[i]) / wsum;
    if (e > 0) {
      statistic += ((o - e) * (o - e)) / e;
      df++;
    }
  });
  df = Math.max(df, 1);
  return { statistic, df, pValue: gammaQ(df / 2, statistic / 2) };
}

/** Throws a readable error when the counts do not fit the weights (p < alpha) or a weighted backend got nothing. */
export function assertSplit(counts: number[], expectedWeights: number[], opts: { alpha?: number } = {}): void {
  const alpha = opts.alpha ?? 1e-4;
  const r = chiSquare(counts, expectedWeights);
  const starved = counts.some((c, i) => c === 0 && expectedWeights[i] > 0);
  if (starved || r.pValue < alpha) {
    throw new Error(
      `split does not fit: counts ${JSON.stringify(counts)} vs weights ${JSON.stringify(expectedWeights)}: ` +
        `chi2=${r.statistic.toFixed(2)} df=${r.df} p=${r.pValue.toExponential(2)}${starved ? ' (a backend got nothing)' : ''}`,
    );
  }
}
