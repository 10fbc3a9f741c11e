/**
 * /metrics exposition: the hand-written writer (src/metrics/server.ts renderMetrics) against
 * prom-client (issue 15: "use prom-client unless measured cheaper otherwise"), for 10 profiles of
 * 1,000 destinations with health checks (10,000 destinations: 80,000 samples). The kernel read is
 * left out (both would do the same status() read): the reports are made once and handed to both.
 * Each variant runs in a child process of its own (`node dist/bench/metrics.js hand|prom`): CPU per
 * scrape (process.cpuUsage over 50 scrapes, after 5 warm-up ones) and RSS (after the scrapes, and its
 * growth over a child that built the same reports and loaded nothing else).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Core } from '../src/core/core.js';
import type { ProfileReport } from '../src/model/report.js';
import type * as Prom from 'prom-client';
import { renderMetrics } from '../src/metrics/server.js';

const PROFILES = 10;
const PER = 1000;

function reports(): ProfileReport[] {
  return Array.from(
    { length: PROFILES },
    (_, i) =>
      ({
        name: `p${i}`,
        status: 'in-sync',
        destinations: Array.from({ length: PER }, (_, k) => ({
          destination: `10.${i}.${k >> 8}.${k & 255}:8080`,
          packets: 1000 + k,
          bytes: 60000 + k,
          weight: 1,
          health: k % 10 ? 'up' : 'down',
          ...(k % 10 ? {} : { effectiveWeight: 0 }),
        })),
      }) as unknown as ProfileReport,
  );
}

async function promScraper(rs: ProfileReport[]): Promise<() => Promise<string>> {
  const prom = await import('prom-client');
  const reg = new prom.Registry();
  const lab = ['profile', 'destination'] as const;
  // Values come from the kernel at scrape time: set in collect(), as a prom-client user would.
  let current = rs;
  const g = (name: string, help: string, labelNames: readonly string[], set: (m: Prom.Gauge<string>) => void) =>
    new prom.Gauge({
      name,
      help,
      labelNames,
      registers: [reg],
      collect() {
        this.reset();
        set(this);
      },
    });
  const c = (name: string, help: string, value: (d: ProfileReport['destinations'][number]) => number) =>
    new prom.Counter({
      name,
      help,
      labelNames: lab,
      registers: [reg],
      collect() {
        this.reset();
        for (const r of current)
          for (const d of r.destinations) this.inc({ profile: r.name, destination: d.destination }, value(d));
      },
    });
  g('iptlb_kernel_read_success', 'read ok', [], (m) => m.set(1));
  g('iptlb_profiles', 'profiles', [], (m) => m.set(current.length));
  g('iptlb_profile_in_sync', 'in sync', ['profile', 'orphan'], (m) => {
    for (const r of current) m.set({ profile: r.name }, r.status === 'in-sync' ? 1 : 0);
  });
  c('iptlb_destination_packets_total', 'packets', (d) => d.packets);
  c('iptlb_destination_bytes_total', 'bytes', (d) => d.bytes);
  g('iptlb_destination_weight', 'weight', lab, (m) => {
    for (const r of current)
      for (const d of r.destinations) m.set({ profile: r.name, destination: d.destination }, d.weight ?? 1);
  });
  g('iptlb_destination_effective_weight', 'effective weight', lab, (m) => {
    for (const r of current)
      for (const d of r.destinations)
        m.set({ profile: r.name, destination: d.destination }, d.effectiveWeight ?? d.weight ?? 1);
  });
  g('iptlb_destination_health', 'health', [...lab, 'state'], (m) => {
    for (const r of current)
      for (const d of r.destinations)
        for (const s of ['up', 'down', 'unchecked'])
          m.set({ profile: r.name, destination: d.destination, state: s }, d.health === s ? 1 : 0);
  });
  return async () => {
    current = rs;
    return reg.metrics();
  };
}

async function child(variant: string): Promise<void> {
  const rs = reports();
  const core = { statusReport: async () => ({ inSync: true, profiles: rs }) } as unknown as Core;
  const scrape =
    variant === 'prom' ? await promScraper(rs) : variant === 'hand' ? () => renderMetrics({ core }) : async () => '';
  let bytes = 0;
  for (let i = 0; i < 5; i++) bytes = (await scrape()).length;
  const times: number[] = [];
  for (let i = 0; i < 50; i++) {
    const c0 = process.cpuUsage();
    await scrape();
    const c = process.cpuUsage(c0);
    times.push((c.user + c.system) / 1000);
  }
  times.sort((a, b) => a - b);
  process.stdout.write(
    JSON.stringify({ ms: times[25], msMin: times[0], msMax: times[49], rss: process.memoryUsage().rss, bytes }) + '\n',
  );
}

interface Res {
  ms: number;
  msMin: number;
  msMax: number;
  rss: number;
  bytes: number;
}

export async function benchMetrics(log: (s: string) => void, runs = 3): Promise<Record<string, unknown>> {
  const self = fileURLToPath(import.meta.url);
  const one = (v: string): Res => {
    const r = spawnSync(process.execPath, [self, v], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`metrics bench ${v}: ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Res;
  };
  const out: Record<string, unknown> = {};
  const res: Record<string, Res[]> = { none: [], hand: [], prom: [] };
  for (let i = 0; i < runs; i++) for (const v of ['none', 'hand', 'prom']) res[v]!.push(one(v)); // interleaved
  const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1]!;
  const base = med(res.none!.map((r) => r.rss));
  for (const v of ['hand', 'prom']) {
    const rs = res[v]!;
    const ms = rs.map((r) => r.ms);
    const rss = rs.map((r) => (r.rss - base) / 2 ** 20);
    out[v] = { scrapeMs: med(ms), scrapeMsMin: Math.min(...ms), scrapeMsMax: Math.max(...ms), rssMiB: med(rss) };
    log(
      `metrics, ${PROFILES * PER} destinations, ${v === 'hand' ? 'hand-written writer' : 'prom-client 15.1.3   '}: ` +
        `CPU per scrape ${med(ms).toFixed(1)} ms (median of ${runs} runs' medians; min ${Math.min(...ms).toFixed(1)}, max ${Math.max(...ms).toFixed(1)}), ` +
        `RSS +${med(rss).toFixed(1)} MiB (${Math.min(...rss).toFixed(1)}–${Math.max(...rss).toFixed(1)}) over a process without a writer, ${rs[0]!.bytes} bytes of text`,
    );
  }
  return out;
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2]) await child(process.argv[2]);
