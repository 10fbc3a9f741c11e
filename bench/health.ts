/**
 * Probe cost of health checks (issue 15): a HealthChecker over N destinations at a 1 s interval,
 * probing real acceptors (bench/acceptor.c, a separate process), with the kernel side faked (every
 * destination stays up: no commits). The native prober (the addon's epoll thread) and the Node one
 * (a net.Socket per probe) side by side, against acceptors
 *   - on loopback (`lo`), in this namespace: the acceptor side's handshake runs in the prober's
 *     softirq context, so it may be charged to the prober;
 *   - behind a veth pair, in a namespace of their own (198.51.100.1 here, 198.51.100.2 there), as a
 *     real host's backends are on another machine.
 * Counted per run, over a 5 s window after a warm-up interval: the prober process's CPU (user and
 * system, getrusage: every thread, the native prober's included), the acceptor's (/proc/<pid>/stat),
 * and the whole machine's busy time (/proc/stat) minus its busy time in an idle window of the same
 * length just before (the machine is shared: read the spreads).
 */
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Core } from '../src/core/core.js';
import { HealthChecker, coreHost } from '../src/health/checker.js';
import { loadAddon } from '../src/platform/addon.js';
import { validateProfile } from '../src/model/profile.js';
import type { KernelView, Transaction } from '../src/model/types.js';
import type { LegacyExecutor } from '../src/engines/legacy/executor.js';

class NoKernel implements LegacyExecutor {
  readonly kind = 'spawn' as const;
  readonly engine = 'legacy' as const;
  async commit(_tx: Transaction) {
    return { durationMs: 0 };
  }
  async read(): Promise<KernelView> {
    return { chains: [], hookRules: [] };
  }
  async render(): Promise<string> {
    return '';
  }
}

const PORTS = 10000;
const BASE = 20000;
const WINDOW_MS = 5000;
const TICK = 100; // USER_HZ of /proc/<pid>/stat and /proc/stat

interface Acceptor {
  where: 'lo' | 'veth';
  host: string;
  pid: number;
  stop: () => void;
}

function compileAcceptor(): string {
  const src = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'acceptor.c');
  const bin = path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-acceptor-')), 'acceptor');
  if (spawnSync('cc', ['-O2', '-o', bin, src], { stdio: 'inherit' }).status !== 0)
    throw new Error('health bench: cannot compile bench/acceptor.c (cc)');
  return bin;
}

async function ready(child: ChildProcess): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => String(d).includes('ready') && resolve());
    child.once('exit', (c) => reject(new Error(`acceptor exited ${c}`)));
  });
}

/** The acceptor on 127.0.0.1 here, or in a namespace of its own behind a veth pair (198.51.100.2). */
async function startAcceptor(bin: string, where: 'lo' | 'veth'): Promise<Acceptor> {
  if (where === 'lo') {
    const child = spawn(bin, [String(BASE), String(PORTS)], { stdio: ['ignore', 'pipe', 'inherit'] });
    await ready(child);
    return { where, host: '127.0.0.1', pid: child.pid!, stop: () => child.kill('SIGTERM') };
  }
  // unshare execs the acceptor: child.pid is the acceptor, in its new namespace; it binds 0.0.0.0.
  const child = spawn('unshare', ['-n', '--', bin, String(BASE), String(PORTS), '0.0.0.0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await ready(child);
  const pid = String(child.pid);
  const ns = (...a: string[]): void => void execFileSync('nsenter', ['-t', pid, '-n', ...a]);
  execFileSync('ip', ['link', 'add', 'ihb0', 'type', 'veth', 'peer', 'name', 'ihb1', 'netns', pid]);
  execFileSync('ip', ['addr', 'add', '198.51.100.1/24', 'dev', 'ihb0']);
  execFileSync('ip', ['link', 'set', 'ihb0', 'up']);
  ns('ip', 'link', 'set', 'lo', 'up');
  ns('ip', 'addr', 'add', '198.51.100.2/24', 'dev', 'ihb1');
  ns('ip', 'link', 'set', 'ihb1', 'up');
  return {
    where,
    host: '198.51.100.2',
    pid: child.pid!,
    stop: () => {
      child.kill('SIGTERM');
      spawnSync('ip', ['link', 'del', 'ihb0']);
    },
  };
}

function procTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const x = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(x[11]) + Number(x[12]); // utime + stime
}
/** Busy ticks of the whole machine (every CPU: all but idle and iowait). */
function machineTicks(): number {
  const v = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  return v[0]! + v[1]! + v[2]! + v[5]! + v[6]! + v[7]!;
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Run {
  cpuPct: number;
  userPct: number;
  acceptorPct: number;
  machinePct: number;
  checksPerSec: number;
  failures: number;
}

/** One run: n destinations on n distinct endpoints (profiles of 1000), interval 1 s. */
async function run(n: number, kind: 'tcp' | 'http', prober: 'native' | 'node', acc: Acceptor): Promise<Run> {
  const core = new Core({ stateFile: false }, new NoKernel());
  const perProfile = 1000;
  const profiles = Array.from({ length: Math.ceil(n / perProfile) }, (_, i) =>
    validateProfile({
      name: `h${i}`,
      source: `127.200.${i >> 8}.${i & 255}:80`,
      destination: Array.from(
        { length: Math.min(perProfile, n - i * perProfile) },
        (_, k) => `${acc.host}:${BASE + ((i * perProfile + k) % PORTS)}`,
      ),
      health: { kind, intervalMs: 1000, timeoutMs: 1000, ...(kind === 'http' ? { path: '/' } : {}) },
    }),
  );
  await core.transact(() => ({ upsert: profiles, remove: [] }), { run: true });
  // Idle baseline of the machine, same length as the window.
  const m0 = machineTicks();
  const tb = performance.now();
  await sleep(WINDOW_MS);
  const idle = (machineTicks() - m0) / ((performance.now() - tb) / 1000);
  const checker = new HealthChecker(coreHost(core), { publish: false, refreshMs: 1000, prober });
  await checker.start();
  if (checker.probing !== prober && kind === 'tcp')
    throw new Error(`asked for the ${prober} prober, got ${checker.probing}`);
  await sleep(1500); // warm-up: the first checks spread over the first interval
  const sum = (k: 'checks' | 'failures'): number => checker.states().reduce((a, s) => a + s[k], 0);
  const checks0 = sum('checks');
  const fails0 = sum('failures');
  const c0 = process.cpuUsage();
  const a0 = procTicks(acc.pid);
  const mm0 = machineTicks();
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const c = process.cpuUsage(c0);
  const a = procTicks(acc.pid) - a0;
  const mm = machineTicks() - mm0;
  const wall = performance.now() - t0;
  const checks = sum('checks') - checks0;
  const failures = sum('failures') - fails0;
  const reasons = new Map<string, number>();
  for (const s of checker.states()) if (s.lastError) reasons.set(s.lastError, (reasons.get(s.lastError) ?? 0) + 1);
  if (reasons.size)
    process.stderr.write(
      `  (last errors: ${[...reasons]
        .slice(0, 3)
        .map(([k, v]) => `${v}× ${k}`)
        .join(', ')})\n`,
    );
  await checker.stop();
  const sec = wall / 1000;
  return {
    cpuPct: ((c.user + c.system) / 1000 / wall) * 100,
    userPct: (c.user / 1000 / wall) * 100,
    acceptorPct: (a / TICK / sec) * 100,
    machinePct: ((mm / sec - idle) / TICK) * 100,
    checksPerSec: checks / sec,
    failures,
  };
}

const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1]!;
const span = (xs: number[], d = 1): string =>
  `${med(xs).toFixed(d)} (${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)})`;

export async function benchHealth(log: (s: string) => void, runs = 3): Promise<Record<string, unknown>> {
  const bin = compileAcceptor();
  const native = loadAddon('core');
  const probers: ('native' | 'node')[] = native.ok && native.addon.HealthProber ? ['native', 'node'] : ['node'];
  if (probers.length === 1)
    log(`health checks: the native prober is not built (${(native as { detail: string }).detail})`);
  log(
    `health checks at a 1 s interval, ${runs} runs of ${WINDOW_MS / 1000} s each; CPU in % of one core: median (min–max). ` +
      `prober = this process (getrusage, every thread); acceptor = the C acceptor process; machine = the whole machine's busy time minus an idle window just before (shared machine: load ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')})`,
  );
  const out: Record<string, unknown> = {};
  for (const where of ['lo', 'veth'] as const) {
    const acc = await startAcceptor(bin, where);
    try {
      const rows: [number, 'tcp' | 'http', 'native' | 'node'][] = [];
      // The native rows first: the Node prober's graceful closes leave TIME_WAIT entries (60 s) on the acceptor's
      // ports, which make later SYNs to the same ports wait for a retransmission; the native prober's RSTs leave none.
      for (const p of probers) for (const n of [1000, 10000]) rows.push([n, 'tcp', p]);
      if (where === 'lo') rows.push([1000, 'http', 'node']);
      for (const [n, kind, prober] of rows) {
        const rs: Run[] = [];
        // Alternate nothing: the runs of one row back to back, rows side by side in one process.
        for (let i = 0; i < runs; i++) rs.push(await run(n, kind, prober, acc));
        const key = `${kind} ${n} ${where} ${kind === 'http' ? 'node' : prober}`;
        const pick = (k: keyof Run): number[] => rs.map((r) => r[k]);
        out[key] = Object.fromEntries(
          (['cpuPct', 'userPct', 'acceptorPct', 'machinePct', 'checksPerSec'] as const).map((k) => [
            k,
            { median: med(pick(k)), min: Math.min(...pick(k)), max: Math.max(...pick(k)) },
          ]),
        );
        (out[key] as Record<string, unknown>).failures = rs.reduce((a, r) => a + r.failures, 0);
        log(
          `health ${kind} ${String(n).padStart(5)} destinations on ${where.padEnd(4)} ${(kind === 'http' ? 'node' : prober).padEnd(6)}: ` +
            `prober ${span(pick('cpuPct'))} (user ${span(pick('userPct'))}), acceptor ${span(pick('acceptorPct'))}, ` +
            `machine ${span(pick('machinePct'))}; ${Math.round(med(pick('checksPerSec')))} checks/s, ${rs.reduce((a, r) => a + r.failures, 0)} failed`,
        );
      }
    } finally {
      acc.stop();
    }
  }
  return out;
}
