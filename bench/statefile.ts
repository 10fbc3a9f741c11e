/**
 * `npm run bench -- statefile`: the cost of the state file per change (issue 18). One 3-destination
 * profile applied through the library API, nft native, with N other profiles in the kernel and in
 * the state file: without a file, with the journal (the default of `open()`), and with the whole
 * YAML rewritten per change (`stateFoldMs: 0`, as before the journal). Every variant and size is
 * measured side by side in each run; figures are the median of the per-run medians with their
 * [min..max] over the runs.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { open } from '../src/index.js';
import { validateProfile } from '../src/model/profile.js';
import { serializeState } from '../src/core/state.js';
import type { Profile } from '../src/model/types.js';

export interface StateFileBenchDeps {
  /** The CLI (bin/iptlb.cjs). */
  cli: string;
  log: (s: string) => void;
  runs: number;
  sizes: number[];
  profile: (i: number) => Profile;
  /** Loads the profiles into table ip iptlb (not measured). */
  preloadNft: (profiles: Profile[]) => void;
  /** Loads the profiles into the x_tables nat table (not measured); needed when `cliEngines` has legacy. */
  preloadLegacy?: (profiles: Profile[]) => void;
  /** Engines of the CLI rows (default nft). */
  cliEngines?: ('nft' | 'legacy')[];
  /** Another build's CLI, measured beside this one on the same files (`--baseline-cli`). */
  baselineCli?: string;
  /** Only the CLI rows (`--cli-only`). */
  cliOnly?: boolean;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const VARIANTS = [
  { key: 'no file', stateFile: false as const },
  { key: 'journal', stateFile: true, foldMs: 1000 },
  { key: 'whole YAML', stateFile: true, foldMs: 0 },
];

/** Whether the sizes are those issue 18's targets name: from 0 to 10,000 profiles. */
const issueSizes = (sizes: readonly number[]): boolean => sizes[0] === 0 && sizes[sizes.length - 1] === 10000;

/** Applies profile p0 `n` times with changing destinations after a warm-up; the median call time. */
async function timeApplies(lb: Awaited<ReturnType<typeof open>>, base: Profile, n: number): Promise<number> {
  const at = (r: number): Profile =>
    validateProfile({ ...base, destination: [`127.0.0.1:${9001 + (r % 5)}`, '127.0.0.1:9010', '127.0.0.1:9011'] });
  for (let r = 0; r < 5; r++) await lb.apply(at(r + 1));
  const times: number[] = [];
  for (let r = 0; r < n; r++) {
    const t0 = performance.now();
    await lb.apply(at(r));
    times.push(performance.now() - t0);
  }
  return median(times);
}

export async function benchStateFile(d: StateFileBenchDeps): Promise<Record<string, unknown>> {
  if (d.cliOnly) return { cli: await benchCliSizes(d) };
  const per: Record<string, Record<string, number[]>> = {};
  for (const v of VARIANTS) per[v.key] = Object.fromEntries(d.sizes.map((n) => [String(n), []]));
  const loads: number[] = [];
  d.log(
    `statefile: median ms per apply of one profile (API, nft native, coalesce off), N other profiles in the kernel and the state file; ${d.runs} runs side by side`,
  );
  for (let run = 0; run < d.runs; run++) {
    loads.push(loadavg()[0]);
    for (const n of d.sizes) {
      const others = Array.from({ length: n }, (_, i) => d.profile(i + 1));
      for (const v of VARIANTS) {
        d.preloadNft(others);
        const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-sf-'));
        const file = path.join(dir, 'state.db');
        writeFileSync(file, serializeState(others), { mode: 0o600 });
        const lb = await open({
          stateFile: v.stateFile ? file : false,
          ...(v.stateFile ? { stateFoldMs: v.foldMs } : {}),
          engine: 'nft',
          executor: 'native',
          coalesce: false,
        });
        // The handle learns the N profiles (from the file; without one, by applying them once).
        if (!v.stateFile && n) await lb.apply(others);
        per[v.key][String(n)].push(await timeApplies(lb, d.profile(0), 41));
        await lb.close();
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }
  const out: Record<string, unknown> = { loadavg1: loads.map((l) => Number(l.toFixed(2))) };
  const fmt = (xs: number[]): string =>
    `${median(xs).toFixed(2)} [${Math.min(...xs).toFixed(2)}..${Math.max(...xs).toFixed(2)}]`;
  const lo = String(d.sizes[0]);
  const hi = String(d.sizes[d.sizes.length - 1]);
  for (const v of VARIANTS) {
    const rows = per[v.key];
    const ratios = rows[hi].map((x, i) => x / rows[lo][i]);
    out[v.key] = {
      ...Object.fromEntries(d.sizes.map((n) => [String(n), rows[String(n)].map((x) => Number(x.toFixed(3)))])),
      [`ratio ${hi}/${lo}`]: ratios.map((x) => Number(x.toFixed(2))),
    };
    d.log(
      `  ${v.key.padEnd(10)} ` +
        d.sizes.map((n) => `${n}: ${fmt(rows[String(n)])} ms`).join('  ') +
        `  | ${hi}/${lo} ${fmt(ratios)}x`,
    );
  }
  // Issue 18's target for the library with the state file (the journal, open()'s default): every
  // size's median at most 3 ms, and the largest size over the smallest at most 1.5 (median of the runs).
  if (issueSizes(d.sizes)) {
    const rows = per.journal;
    const worst = Math.max(...d.sizes.map((n) => median(rows[String(n)])));
    const ratio = median(rows[hi].map((x, i) => x / rows[lo][i]));
    const met = worst <= 3 && ratio <= 1.5;
    out.target = { met, worstMs: Number(worst.toFixed(2)), ratio: Number(ratio.toFixed(2)) };
    d.log(
      `  target (journal: at most 3 ms at every size, ${hi}/${lo} at most 1.50): ${met ? 'met' : 'not met'}; ` +
        `slowest size ${worst.toFixed(2)} ms, ${hi}/${lo} ${ratio.toFixed(2)}x`,
    );
  }
  d.log(`  load average (1 min) at the start of each run: ${loads.map((l) => l.toFixed(2)).join(', ')}`);
  out.cli = await benchCliSizes(d);
  return out;
}

/** Wall time of one process, ms (it must exit 0). */
function timeProcess(argv: string[]): number {
  const t0 = performance.now();
  const r = spawnSync(argv[0], argv.slice(1), { stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}`);
  return performance.now() - t0;
}

/**
 * The CLI's `-run -reset` of one profile (native executor, the whole process) with N other profiles
 * in the kernel and the state file, on each engine; `node -e 0` beside it, and with
 * `--baseline-cli <path>` another build's CLI (e.g. the tree before a change) on the same files,
 * interleaved. Median of 5 per size, engine and run; the ratios are per run.
 */
async function benchCliSizes(d: StateFileBenchDeps): Promise<Record<string, unknown>> {
  const engines = d.cliEngines ?? ['nft'];
  const clis: [string, string][] = [
    ['cli', d.cli],
    ...(d.baselineCli ? [['baseline', d.baselineCli] as [string, string]] : []),
  ];
  const per: Record<string, number[]> = { node: [] };
  const key = (c: string, e: string, n: number): string => `${c} ${e} ${n}`;
  for (const [c] of clis) for (const e of engines) for (const n of d.sizes) per[key(c, e, n)] = [];
  const loads: number[] = [];
  for (let run = 0; run < d.runs; run++) {
    loads.push(loadavg()[0]);
    const node: number[] = [];
    for (const e of engines) {
      for (const n of d.sizes) {
        const others = Array.from({ length: n }, (_, i) => d.profile(i + 1));
        if (e === 'nft') d.preloadNft(others);
        else d.preloadLegacy!(others);
        const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-sfcli-'));
        const file = path.join(dir, 'state.db');
        writeFileSync(file, serializeState(others), { mode: 0o600 });
        const t: Record<string, number[]> = Object.fromEntries(clis.map(([c]) => [c, []]));
        for (let r = 0; r < 5; r++) {
          node.push(timeProcess([process.execPath, '-e', '0']));
          clis.forEach(([c, cli], k) =>
            t[c].push(
              timeProcess([
                process.execPath,
                cli,
                `--engine=${e}`,
                '--executor=native',
                `-state-file=${file}`,
                '-q',
                '-run',
                '-reset',
                '-profile=p0',
                '-src-addr=127.100.0.0:8081',
                // Each call a change (another first destination than the call before, whichever CLI made
                // it): re-applying the profile the other CLI just applied would change nothing.
                `-dest-addr=127.0.0.1:${9001 + r * clis.length + k},127.0.0.1:9100`,
              ]),
            ),
          );
        }
        for (const [c] of clis) per[key(c, e, n)].push(median(t[c]));
        rmSync(dir, { recursive: true, force: true });
      }
    }
    per.node.push(median(node));
  }
  const fmt = (xs: number[], digits = 1): string =>
    `${median(xs).toFixed(digits)} [${Math.min(...xs).toFixed(digits)}..${Math.max(...xs).toFixed(digits)}]`;
  const lo = d.sizes[0];
  const hi = d.sizes[d.sizes.length - 1];
  const out: Record<string, unknown> = { node: per.node, loadavg1: loads.map((l) => Number(l.toFixed(2))) };
  d.log(
    `statefile cli: ms per \`iptlb -run -reset\` of one profile (native executor, whole process), N others in the kernel and the state file; ${d.runs} runs, median [min..max] of the per-run medians of 5\n` +
      `  node -e 0 ${fmt(per.node)}`,
  );
  for (const [c] of clis)
    for (const e of engines) {
      const rows = d.sizes.map((n) => per[key(c, e, n)]);
      const ratios = per[key(c, e, hi)].map((x, i) => x / per[key(c, e, lo)][i]);
      out[`${c} ${e}`] = {
        ...Object.fromEntries(d.sizes.map((n, i) => [String(n), rows[i].map((x) => Number(x.toFixed(1)))])),
        [`ratio ${hi}/${lo}`]: ratios.map((x) => Number(x.toFixed(2))),
      };
      d.log(
        `  ${`${c} ${e}`.padEnd(15)} ` +
          d.sizes.map((n, i) => `${n}: ${fmt(rows[i])}`).join('  ') +
          `  | ${hi}/${lo} ${fmt(ratios, 2)}x`,
      );
      // Issue 18's target for the CLI (nft): the largest size over the smallest at most 1.5, in the
      // median of the runs' ratios.
      if (c === 'cli' && e === 'nft' && issueSizes(d.sizes)) {
        const ratio = median(ratios);
        out.target = { met: ratio <= 1.5, ratio: Number(ratio.toFixed(2)) };
        d.log(
          `  cli target (nft, ${hi}/${lo} at most 1.50, median of the runs): ${ratio <= 1.5 ? 'met' : 'not met'}; ${ratio.toFixed(2)}x`,
        );
      }
    }
  d.log(`  load average (1 min) at the start of each run: ${loads.map((l) => l.toFixed(2)).join(', ')}`);
  return out;
}
