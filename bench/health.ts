/**
 * Probe cost of health checks (issue 15): a HealthChecker over N destinations at a 1 s interval,
 * probing real local acceptors (a separate process, so its CPU is not counted), with the kernel side
 * faked (every destination stays up: no commits). Reports the checker process's CPU (user+system,
 * process.cpuUsage) as % of one core over a measured window, and the checks per second achieved.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Core } from '../src/core/core.js';
import { HealthChecker, coreHost } from '../src/health/checker.js';
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

/**
 * A child process accepting (and closing) connections on BASE..BASE+PORTS-1 on 127.0.0.1: the C
 * acceptor (bench/acceptor.c, compiled here with cc) when a compiler is present, else a node one
 * (which cannot accept 10,000 connections/s on a busy host: its refusals then show as failed checks).
 */
async function acceptors(): Promise<{ kind: string; stop: () => void }> {
  const src = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'acceptor.c');
  const bin = path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-acceptor-')), 'acceptor');
  if (spawnSync('cc', ['-O2', '-o', bin, src], { stdio: 'inherit' }).status === 0) {
    const child = spawn(bin, [String(BASE), String(PORTS)], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d) => String(d).includes('ready') && resolve());
      child.once('exit', (c) => reject(new Error(`acceptor exited ${c}`)));
    });
    return { kind: 'C acceptor (epoll, one thread)', stop: () => child.kill('SIGTERM') };
  }
  return { kind: 'node acceptor', stop: await nodeAcceptors() };
}

async function nodeAcceptors(): Promise<() => void> {
  const code = `
    const net = require('node:net');
    let n = 0;
    for (let p = ${BASE}; p < ${BASE + PORTS}; p++) {
      const s = net.createServer((c) => { c.on('error', () => {}); c.end('HTTP/1.0 200 OK\\r\\n\\r\\n'); });
      s.listen({ port: p, host: '127.0.0.1', backlog: 4096 }, () => { if (++n === ${PORTS}) process.stdout.write('ready\\n'); });
    }`;
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d) => String(d).includes('ready') && resolve());
    child.once('exit', (c) => reject(new Error(`acceptors exited ${c}`)));
  });
  return () => child.kill('SIGTERM');
}

/** One run: N destinations (profiles of 1000), interval 1 s; CPU over `windowMs` after one warm-up interval. */
async function run(
  n: number,
  endpoints: number,
  kind: 'tcp' | 'http',
  windowMs: number,
): Promise<{ cpuPct: number; userPct: number; checksPerSec: number; probesPerSec: number; failures: number }> {
  const core = new Core({ stateFile: false }, new NoKernel());
  const perProfile = 1000;
  const profiles = Array.from({ length: Math.ceil(n / perProfile) }, (_, i) =>
    validateProfile({
      name: `h${i}`,
      source: `127.200.${i >> 8}.${i & 255}:80`,
      destination: Array.from(
        { length: Math.min(perProfile, n - i * perProfile) },
        (_, k) => `127.0.0.1:${BASE + ((i * perProfile + k) % endpoints)}`,
      ),
      health: { kind, intervalMs: 1000, timeoutMs: 1000, ...(kind === 'http' ? { path: '/' } : {}) },
    }),
  );
  await core.transact(() => ({ upsert: profiles, remove: [] }), { run: true });
  const checker = new HealthChecker(coreHost(core), { publish: false, refreshMs: 1000 });
  await checker.start();
  await new Promise((r) => setTimeout(r, 1500)); // warm-up: the first checks spread over the first interval
  const checks0 = checker.states().reduce((a, s) => a + s.checks, 0);
  const fails0 = checker.states().reduce((a, s) => a + s.failures, 0);
  const probes0 = checker.counters.probes;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, windowMs));
  const c = process.cpuUsage(c0);
  const wall = performance.now() - t0;
  const states = checker.states();
  const checks = states.reduce((a, s) => a + s.checks, 0) - checks0;
  const failures = states.reduce((a, s) => a + s.failures, 0) - fails0;
  const probes = checker.counters.probes - probes0;
  const reasons = new Map<string, number>();
  for (const s of states) if (s.lastError) reasons.set(s.lastError, (reasons.get(s.lastError) ?? 0) + 1);
  if (reasons.size)
    process.stderr.write(
      `  (last errors: ${[...reasons]
        .slice(0, 3)
        .map(([k, v]) => `${v}× ${k}`)
        .join(', ')})\n`,
    );
  await checker.stop();
  return {
    cpuPct: ((c.user + c.system) / 1000 / wall) * 100,
    userPct: (c.user / 1000 / wall) * 100,
    checksPerSec: (checks / wall) * 1000,
    probesPerSec: (probes / wall) * 1000,
    failures,
  };
}

export async function benchHealth(log: (s: string) => void, runs = 3): Promise<Record<string, unknown>> {
  const acc = await acceptors();
  const stop = acc.stop;
  log(`health checks: probing ${PORTS} local ports served by a ${acc.kind} in another process (its CPU not counted)`);
  const out: Record<string, unknown> = { acceptor: acc.kind };
  try {
    for (const [n, endpoints, kind] of [
      [1000, 1000, 'tcp'],
      [10000, 10000, 'tcp'],
      [10000, 1000, 'tcp'],
      [1000, 1000, 'http'],
    ] as const) {
      const rs = [];
      for (let i = 0; i < runs; i++) rs.push(await run(n, endpoints, kind, 5000));
      const probeRate = rs.map((r) => r.probesPerSec).sort((a, b) => a - b);
      const cpu = rs.map((r) => r.cpuPct).sort((a, b) => a - b);
      const rate = rs.map((r) => r.checksPerSec).sort((a, b) => a - b);
      const user = rs.map((r) => r.userPct).sort((a, b) => a - b);
      const key = `${kind} @${n}${endpoints !== n ? ` over ${endpoints} endpoints` : ''}`;
      out[key] = {
        cpuPctMedian: cpu[(cpu.length - 1) >> 1],
        cpuPctMin: cpu[0],
        cpuPctMax: cpu[cpu.length - 1],
        userPctMedian: user[(user.length - 1) >> 1],
        checksPerSec: Math.round(rate[(rate.length - 1) >> 1]),
        probesPerSec: Math.round(probeRate[(probeRate.length - 1) >> 1]),
        failures: rs.reduce((a, r) => a + r.failures, 0),
      };
      log(
        `health checks, ${kind} at a 1 s interval, ${n} destinations${endpoints !== n ? ` (${n / endpoints} profiles sharing ${endpoints} endpoints)` : ''}: CPU ${cpu[(cpu.length - 1) >> 1].toFixed(1)} % of one core (min ${cpu[0].toFixed(1)}, max ${cpu[cpu.length - 1].toFixed(1)}, ${runs} runs of 5 s; user ${user[(user.length - 1) >> 1].toFixed(1)} %, the rest is kernel time, which on loopback includes the acceptor side's TCP handshake), ` +
          `${Math.round(rate[(rate.length - 1) >> 1])} checks/s by ${Math.round(probeRate[(probeRate.length - 1) >> 1])} probes/s, ${rs.reduce((a, r) => a + r.failures, 0)} failed`,
      );
    }
  } finally {
    stop();
  }
  return out;
}
