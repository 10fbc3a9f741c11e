/**
 * Legacy-engine performance rows of `npm run bench` (issue 18): runs inside bench.ts's namespace.
 *
 *  - `dataplane`: new TCP connections/s to an address that is NOT a virtual address (127.0.0.1, a C
 *    acceptor), from a C client, with 1 and with 10,000 client profiles in the nat table, in the
 *    gated layout (src/engines/legacy/gate.ts) and in the layout before it (every profile's jump in nat OUTPUT).
 *    Each case has a namespace of its own, loaded once; rounds measure the four back to back in short
 *    slices (order reversed every other round); the rows are the per-round ratios 10,000 / 1, of the
 *    client's CPU per connection (the primary figure: other load disturbs it least) and of the rate.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { planProfile, planTransaction } from '../src/engines/legacy/plan.js';
import { renderRestore, renderRule } from '../src/engines/legacy/restore.js';
import { GATE_SET, elementOf } from '../src/engines/legacy/gate.js';
import type { Profile } from '../src/model/types.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** bench/c in the source tree (dist/bench/… → ../../bench/c). */
const C_DIR = path.resolve(HERE, '..', '..', 'bench', 'c');

export interface BenchIo {
  log(s: string): void;
  runs: number;
  profile(i: number): Profile;
}

/** `file args` run in network namespace `ns` (`ip netns exec`), or in this one. */
const inNs = (ns: string | undefined, file: string, args: string[]): [string, string[]] =>
  ns ? ['ip', ['netns', 'exec', ns, file, ...args]] : [file, args];
const run = (ns: string | undefined, file: string, args: string[], opts: { input?: string } = {}): Buffer =>
  execFileSync(...inNs(ns, file, args), { ...opts, maxBuffer: 1 << 30 });

/** Removes iptlb's (and everything else's) legacy nat rules and every ipset of this namespace (or of `ns`). */
export function flushLegacy(ns?: string): void {
  run(ns, 'iptables-legacy', ['-t', 'nat', '-F']);
  run(ns, 'iptables-legacy', ['-t', 'nat', '-X']);
  spawnSync(...inNs(ns, 'ipset', ['destroy']));
}

/**
 * Loads `profiles` into the legacy nat table as iptlb lays them out (the gate set first, then one
 * iptables-legacy-restore), or with `oldLayout` as iptlb did before the gate (jumps in nat OUTPUT).
 * Not measured.
 */
export function preloadLegacy(profiles: Profile[], oldLayout = false, ns?: string): void {
  flushLegacy(ns);
  if (profiles.length === 0) return;
  if (oldLayout) {
    const out = ['*nat'];
    const plans = profiles.map(planProfile);
    for (const p of plans) out.push(`:${p.chain.name} - [0:0]`);
    for (const p of plans) for (const r of p.chain.rules) out.push(`-A ${p.chain.name} ${renderRule(r)}`);
    for (const p of plans) for (const h of p.hookRules) out.push(`-A ${h.chain} ${renderRule(h.rule)}`);
    out.push('COMMIT', '');
    run(ns, 'iptables-legacy-restore', ['--noflush'], { input: out.join('\n') });
    return;
  }
  const tx = planTransaction(profiles, []);
  const set = GATE_SET.ipv4;
  const elements = new Set(tx.hookRules.map((h) => elementOf(h.rule)).filter((e): e is string => e !== null));
  run(ns, 'ipset', ['-exist', 'restore'], {
    input:
      [`create ${set} hash:ip,port family inet maxelem 1048576`, ...[...elements].map((e) => `add ${set} ${e}`)].join(
        '\n',
      ) + '\n',
  });
  run(ns, 'iptables-legacy-restore', ['--noflush'], { input: renderRestore(tx, { chains: [], hookRules: [] }) });
}

/** Compiles bench/c/<name>.c with cc into `dir`; returns the binary's path. */
function compile(name: string, dir: string): string {
  const out = path.join(dir, name);
  execFileSync('cc', ['-O2', '-o', out, path.join(C_DIR, `${name}.c`)]);
  return out;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const spread = (xs: number[], digits = 2): string =>
  `median ${median(xs).toFixed(digits)} (min ${Math.min(...xs).toFixed(digits)}, max ${Math.max(...xs).toFixed(digits)})`;

export async function benchDataplane(io: BenchIo): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-connrate-'));
  const bin = compile('connrate', dir);
  const N = 10_000;
  const big = Array.from({ length: N }, (_, i) => io.profile(i + 1));
  // One throwaway network namespace per case, loaded once: the cases are then measured in short
  // interleaved slices with no table reload between them (a reload of 10,000 profiles costs seconds
  // of CPU and leaves the kernel freeing the old table while the next case runs).
  const cases: [string, () => Profile[], boolean][] = [
    ['gate @1', () => big.slice(0, 1), false],
    ['gate @10000', () => big, false],
    ['old @1', () => big.slice(0, 1), true],
    ['old @10000', () => big, true],
  ];
  const ns = (i: number): string => `iptlb-dp-${process.pid}-${i}`;
  const acceptors: ChildProcess[] = [];
  // `IPTLB_BENCH_PIN=1`: the client on CPU 0 and the acceptor on CPU 1 (taskset).
  const pin = process.env.IPTLB_BENCH_PIN === '1';
  const pinned = (cpu: number, file: string, args: string[]): [string, string[]] =>
    pin ? ['taskset', ['-c', String(cpu), file, ...args]] : [file, args];
  try {
    for (let i = 0; i < cases.length; i++) {
      execFileSync('ip', ['netns', 'add', ns(i)]);
      run(ns(i), 'ip', ['link', 'set', 'lo', 'up']);
      // Every connection is a conntrack entry; RST-closed ones linger 10 s in CLOSE by default, and
      // the client would cycle through its ports within a run: settings of that namespace only.
      run(ns(i), 'sysctl', [
        '-q',
        '-w',
        'net.netfilter.nf_conntrack_tcp_timeout_close=1',
        'net.ipv4.ip_local_port_range=1024 65000',
      ]);
      preloadLegacy(cases[i][1](), cases[i][2], ns(i));
      const a = spawn(...inNs(ns(i), ...pinned(1, bin, ['accept', '127.0.0.1', '7999'])), {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      acceptors.push(a);
      await new Promise<void>((resolve, reject) => {
        a.stdout!.once('data', () => resolve());
        a.once('exit', (c) => reject(new Error(`connrate accept exited ${c}`)));
      });
    }
    await new Promise((res) => setTimeout(res, 1000)); // let the kernel settle after the loads
    const ms = Number(process.env.IPTLB_BENCH_CONN_MS ?? 400);
    const rounds = io.runs * 4;
    let lastCpuUs = 0;
    const rate = (i: number): number => {
      spawnSync(...inNs(ns(i), 'conntrack', ['-F']), { stdio: 'ignore' });
      run(ns(i), ...pinned(0, bin, ['connect', '127.0.0.1', '7999', '50'])); // warm up
      const [ok, failed, elapsed, cpu] = run(ns(i), ...pinned(0, bin, ['connect', '127.0.0.1', '7999', String(ms)]))
        .toString()
        .trim()
        .split(' ')
        .map(Number);
      if (failed > ok / 100) throw new Error(`connrate: ${failed} of ${ok + failed} connections failed`);
      lastCpuUs = (cpu * 1000) / ok;
      return (ok / elapsed) * 1000;
    };
    const rates: Record<string, number[]> = {};
    const cpuPerConn: Record<string, number[]> = {};
    const ratios: Record<string, number[]> = { gate: [], old: [] };
    /** Client CPU µs per connection at 1 profile / at 10,000 (the inverse, so it reads like the rate ratio). */
    const cpuRatios: Record<string, number[]> = { gate: [], old: [] };
    for (let r = 0; r < rounds; r++) {
      // Alternate the order between rounds, so a trend in the machine's load does not favour one case.
      const order = r % 2 ? [3, 2, 1, 0] : [0, 1, 2, 3];
      const got: Record<string, number> = {};
      const cpu: Record<string, number> = {};
      for (const i of order) {
        const name = cases[i][0];
        got[name] = rate(i);
        cpu[name] = lastCpuUs;
        (rates[name] ??= []).push(got[name]);
        (cpuPerConn[name] ??= []).push(lastCpuUs);
      }
      ratios.gate.push(got['gate @10000'] / got['gate @1']);
      ratios.old.push(got['old @10000'] / got['old @1']);
      cpuRatios.gate.push(cpu['gate @1'] / cpu['gate @10000']);
      cpuRatios.old.push(cpu['old @1'] / cpu['old @10000']);
    }
    io.log(
      `legacy data plane, new TCP connections/s to a NON-virtual address (C client → C acceptor on 127.0.0.1, one namespace per case loaded once, ${rounds} interleaved rounds of ${ms} ms per case${pin ? ', client pinned to CPU 0, acceptor to CPU 1' : ''}):\n` +
        Object.entries(rates)
          .map(
            ([k, v]) =>
              `  ${k.padEnd(12)} ${spread(v, 0)} conn/s   client CPU per connection ${spread(cpuPerConn[k], 1)} µs`,
          )
          .join('\n') +
        `\n  CPU ratio (per round, CPU per connection at 1 profile / at 10,000; 1.00 = no cost), gated layout: ${spread(cpuRatios.gate)}   layout before the gate: ${spread(cpuRatios.old)}` +
        `\n  rate ratio (per round, 10,000 / 1 profiles), gated layout: ${spread(ratios.gate)}   layout before the gate: ${spread(ratios.old)}`,
    );
    return { rounds, ms, pin, rates, ratios, cpuPerConnUs: cpuPerConn, cpuRatios };
  } finally {
    for (const a of acceptors) a.kill('SIGKILL');
    for (let i = 0; i < cases.length; i++) spawnSync('ip', ['netns', 'del', ns(i)], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `lockwait`: legacy native apply (one 3-destination profile reset, library API, no state file) at
 * 1,000 profiles, alone and beside another writer of the nat table that loops
 * `iptables-legacy-restore --noflush -w` on a chain of its own (as Docker or kube-proxy do). Each run
 * measures both back to back; rows are medians per run and their ratio.
 */
export async function benchLockWait(
  io: BenchIo & { open: (o: object) => Promise<{ apply(p: Profile): Promise<unknown>; close(): Promise<void> }> },
): Promise<Record<string, unknown>> {
  const N = 1000;
  const profiles = Array.from({ length: N }, (_, i) => io.profile(i + 1));
  preloadLegacy(profiles);
  execFileSync('iptables-legacy', ['-t', 'nat', '-N', 'FOREIGN']);
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-lockwait-'));
  const rules = path.join(dir, 'foreign.rules');
  execFileSync('bash', ['-c', `printf '*nat\\n:FOREIGN - [0:0]\\n-A FOREIGN -j RETURN\\nCOMMIT\\n' > ${rules}`]);
  const lb = await io.open({ stateFile: false, engine: 'legacy', executor: 'native', coalesce: false });
  const applies = async (count: number): Promise<number[]> => {
    const t: number[] = [];
    for (let k = 0; k < count; k++) {
      const p = { ...io.profile(0), destination: [`127.0.0.1:${9001 + (k % 5)}`, '127.0.0.1:9010', '127.0.0.1:9011'] };
      const t0 = performance.now();
      await lb.apply(p as Profile);
      t.push(performance.now() - t0);
    }
    return t;
  };
  await applies(20); // warm up
  const alone: number[] = [];
  const beside: number[] = [];
  const besidePoll: number[] = [];
  const rounds: number[] = [];
  const APPLIES = Number(process.env.IPTLB_BENCH_LOCK_APPLIES ?? 40);
  const besideWriter = async (): Promise<{ t: number; n: number }> => {
    const writer = spawn(
      'bash',
      [
        '-c',
        `n=0; trap 'echo $n; exit 0' TERM; while :; do iptables-legacy-restore --noflush -w < ${rules}; n=$((n+1)); done`,
      ],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    let out = '';
    writer.stdout!.on('data', (d) => (out += d));
    await new Promise((res) => setTimeout(res, 300));
    const t = median(await applies(APPLIES));
    writer.kill('SIGTERM');
    await new Promise((res) => writer.once('close', res));
    return { t, n: Number(out.trim()) || 0 };
  };
  for (let r = 0; r < io.runs; r++) {
    alone.push(median(await applies(APPLIES)));
    const b = await besideWriter();
    beside.push(b.t);
    rounds.push(b.n);
    // The same beside the writer with the wait of earlier versions (LOCK_NB polled with a backoff).
    process.env.IPTLB_XTLOCK_WAIT = 'poll';
    besidePoll.push((await besideWriter()).t);
    delete process.env.IPTLB_XTLOCK_WAIT;
  }
  await lb.close();
  flushLegacy();
  rmSync(dir, { recursive: true, force: true });
  const ratios = alone.map((a, i) => beside[i] / a);
  const ratiosPoll = alone.map((a, i) => besidePoll[i] / a);
  io.log(
    `legacy native apply at ${N} profiles (median of ${APPLIES} per case, ${io.runs} runs), alone vs beside a loop of iptables-legacy-restore --noflush -w on a foreign chain:\n` +
      `  alone ${spread(alone, 2)} ms   beside ${spread(beside, 2)} ms   beside, earlier backoff poll ${spread(besidePoll, 2)} ms\n` +
      `  ratio beside/alone ${spread(ratios)} (per run: ${ratios.map((x) => x.toFixed(1)).join(' ')}; foreign commits meanwhile: ${rounds.join(' ')})   with the earlier backoff poll ${spread(ratiosPoll)} (per run: ${ratiosPoll.map((x) => x.toFixed(1)).join(' ')})`,
  );
  return { alone, beside, besidePoll, ratios, ratiosPoll, foreignRounds: rounds };
}

/**
 * `rss`: resident memory of a process holding 10,000 profiles (state file synced into the kernel,
 * then one apply), legacy and nft, of an empty instance, and of a bare Node process; each a fresh
 * child (bench/rss-child.ts, with --expose-gc) in a network namespace of its own, the four of a run
 * side by side, `runs` runs. Two figures each: settled (600 ms after the last change, after a forced
 * GC) and idle (IPTLB_BENCH_RSS_IDLE_MS, default 20 s, after it, no forced GC since; see rss-child.ts).
 */
export async function benchRss(io: BenchIo & { flush: () => void }): Promise<Record<string, unknown>> {
  const child = path.join(HERE, 'rss-child.js');
  const cases: [string, string[]][] = [
    ['bare node', ['0', 'legacy', 'bare']],
    ['empty instance (legacy)', ['0', 'legacy']],
    ['empty instance (nft)', ['0', 'nft']],
    ['legacy 10,000', ['10000', 'legacy']],
    ['nft 10,000', ['10000', 'nft']],
  ];
  const run = (args: string[]): Promise<[number, number]> =>
    new Promise((resolve, reject) => {
      const c = spawn(
        'unshare',
        ['-n', 'sh', '-c', 'ip link set lo up && exec "$@"', 'sh', process.execPath, '--expose-gc', child, ...args],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let out = '';
      c.stdout!.on('data', (d) => (out += d));
      c.on('error', reject);
      c.on('close', (code) => {
        const v = out.trim().split(' ').map(Number);
        if (code !== 0 || v.length !== 2 || v.some((x) => !Number.isFinite(x)))
          reject(new Error(`rss-child ${args.join(' ')} exited ${code}: ${out}`));
        else resolve([v[0], v[1]]);
      });
    });
  const settled: Record<string, number[]> = {};
  const idle: Record<string, number[]> = {};
  for (let r = 0; r < io.runs; r++) {
    const got = await Promise.all(cases.map(([, args]) => run(args)));
    cases.forEach(([name], i) => {
      (settled[name] ??= []).push(got[i][0]);
      (idle[name] ??= []).push(got[i][1]);
    });
  }
  const bare = { settled: median(settled['bare node']), idle: median(idle['bare node']) };
  io.log(
    `RSS (MiB) of a process holding profiles (${io.runs} runs of fresh processes, the ${cases.length} of a run side by side, each in its own namespace):\n` +
      `  ${''.padEnd(24)} settled (0.9 s after the last change, forced GC)      idle (${Number(process.env.IPTLB_BENCH_RSS_IDLE_MS ?? 20000) / 1000} s after it, no forced GC)\n` +
      Object.keys(settled)
        .map(
          (k) =>
            `  ${k.padEnd(24)} ${spread(settled[k], 1).padEnd(34)} ${k === 'bare node' ? '        ' : `+${(median(settled[k]) - bare.settled).toFixed(1).padStart(5)}  `}` +
            `    ${spread(idle[k], 1).padEnd(34)} ${k === 'bare node' ? '' : `+${(median(idle[k]) - bare.idle).toFixed(1)}`}`,
        )
        .join('\n'),
  );
  return { settled, idle };
}
