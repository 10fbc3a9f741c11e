/**
 * `npm run bench -- fleet`: 3 simulated hosts (each its own network namespace, agent + backends, see
 * fleet-host.ts) following a 3-member etcd cluster (members on unix sockets, --unsafe-no-fsync).
 * Figures: put → committed on every host, put → first balanced connection on every host (p50/p99
 * over the puts), a list + apply of 10,000 profiles on one host, and that agent's RSS.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { EtcdStore } from '../src/fleet/store.js';
import { profileKey } from '../src/fleet/reconcile.js';

const HOST = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fleet-host.js');
const P = '/iptlb/v1/';
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};
const prof = (i: number) => ({
  name: `p${i}`,
  source: `127.101.${Math.floor(i / 250)}.${(i % 250) + 1}:8080`,
  destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
});

interface Host {
  proc: ChildProcess;
  lines: { line: string; at: number }[];
  waiters: { re: RegExp; resolve: (at: number) => void }[];
}
function startHost(dir: string, endpoint: string, name: string): Host {
  const proc = spawn(
    'unshare',
    [
      '-n',
      '--',
      'sh',
      '-c',
      'ip link set lo up && exec "$0" "$@"',
      process.execPath,
      HOST,
      endpoint,
      name,
      path.join(dir, `${name}.db`),
      'native',
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const h: Host = { proc, lines: [], waiters: [] };
  createInterface({ input: proc.stdout! }).on('line', (line) => {
    const at = performance.now();
    h.lines.push({ line, at });
    h.waiters = h.waiters.filter((w) => (w.re.test(line) ? (w.resolve(at), false) : true));
  });
  return h;
}
function next(h: Host, re: RegExp, ms = 30_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`bench fleet: no ${re} within ${ms} ms`)), ms);
    h.waiters.push({ re, resolve: (at) => (clearTimeout(t), resolve(at)) });
  });
}

export async function benchFleet(log: (s: string) => void, results: Record<string, unknown>, puts = 50): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-bench-etcd-'));
  const members = ['m1', 'm2', 'm3'];
  const initial = members.map((m) => `${m}=unix://${m}p:1`).join(',');
  const etcd = members.map((m) =>
    spawn(
      '/usr/bin/etcd',
      [
        '--name',
        m,
        '--data-dir',
        path.join(dir, m),
        '--unsafe-no-fsync',
        '--listen-client-urls',
        `unix://${m}c:1`,
        '--advertise-client-urls',
        `unix://${m}c:1`,
        '--listen-peer-urls',
        `unix://${m}p:1`,
        '--initial-advertise-peer-urls',
        `unix://${m}p:1`,
        '--initial-cluster',
        initial,
        '--log-level',
        'error',
      ],
      { cwd: dir, stdio: 'ignore' },
    ),
  );
  const ep = (m: string): string => `unix://${dir}/${m}c:1`;
  const hosts: Host[] = [];
  const store = await EtcdStore.connect({ endpoints: [ep('m1')] });
  try {
    for (let end = Date.now() + 15_000; ;) {
      try {
        await store.revision();
        break;
      } catch (e) {
        if (Date.now() > end) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    for (const [i, m] of members.entries()) hosts.push(startHost(dir, ep(m), `h${i + 1}`));
    await Promise.all(hosts.map((h) => next(h, /^committed/)));
    const committed: number[] = [];
    const balanced: number[] = [];
    for (let i = 0; i < puts; i++) {
      const p = prof(i);
      const vip = p.source;
      for (const h of hosts) h.proc.stdin!.write(`probe ${vip}\n`);
      await new Promise((r) => setTimeout(r, 20)); // the probes are running
      const c = hosts.map((h) => next(h, /^committed/));
      const b = hosts.map((h) => next(h, new RegExp(`^balanced ${vip.replace(/\./g, '\\.')}$`)));
      const t0 = performance.now();
      await store.txn([{ put: profileKey(P, p.name), value: JSON.stringify(p) }]);
      committed.push(Math.max(...(await Promise.all(c))) - t0);
      balanced.push(Math.max(...(await Promise.all(b))) - t0);
    }
    const fmt = (xs: number[]) => ({
      p50: +pct(xs, 50).toFixed(1),
      p99: +pct(xs, 99).toFixed(1),
      max: +Math.max(...xs).toFixed(1),
      min: +Math.min(...xs).toFixed(1),
    });
    const fc = fmt(committed);
    const fb = fmt(balanced);
    log(
      `fleet, 3 hosts on a 3-member etcd (unix sockets), ${puts} puts: put → committed on every host p50 ${fc.p50} ms, p99 ${fc.p99} ms (min ${fc.min}, max ${fc.max}); put → first balanced connection on every host p50 ${fb.p50} ms, p99 ${fb.p99} ms (min ${fb.min}, max ${fb.max})`,
    );
    for (const h of hosts) h.proc.stdin!.write('stop\n');
    await Promise.all(
      hosts.map((h) => new Promise((r) => (h.proc.exitCode !== null ? r(null) : h.proc.once('exit', r)))),
    );
    hosts.length = 0;

    // 10,000 profiles: a fresh agent (empty kernel) lists them in pages and applies them in one transaction.
    const N = 10_000;
    for (let i = 0; i < N; i += 128) {
      const ops = [];
      for (let j = i; j < Math.min(N, i + 128); j++)
        ops.push({ put: profileKey(P, `p${j}`), value: JSON.stringify(prof(j)) });
      await store.txn(ops);
    }
    const big: number[] = [];
    const whole: number[] = [];
    const rss: number[] = [];
    for (let r = 0; r < 3; r++) {
      const name = `big${r}`;
      const t0 = performance.now();
      const h = startHost(dir, ep('m1'), name);
      hosts.push(h);
      const at = await next(h, new RegExp(`^committed \\d+ ${N} `), 60_000);
      const line = h.lines.find((l) => new RegExp(`^committed \\d+ ${N} `).test(l.line))!.line;
      big.push(Number(line.split(' ')[3]));
      h.proc.stdin!.write('rss\n');
      rss.push(
        Number(
          (
            await new Promise<string>((res) => {
              void next(h, /^rss /).then(() => res(h.lines[h.lines.length - 1]!.line));
            })
          ).split(' ')[1],
        ),
      );
      h.proc.stdin!.write('stop\n');
      await new Promise((res) => (h.proc.exitCode !== null ? res(null) : h.proc.once('exit', res)));
      hosts.pop();
      whole.push(at - t0);
    }
    log(
      `fleet, list (pages of 1,000 at one revision) + apply of 10,000 profiles in one transaction, fresh agent and empty kernel (nft/native): diff + kernel commit + state file ${big.map((x) => x.toFixed(0)).join(', ')} ms; process start → committed (node start, connect, list, validate, commit) ${whole.map((x) => x.toFixed(0)).join(', ')} ms (3 runs); agent RSS after it ${rss.map((x) => (x / 2 ** 20).toFixed(0)).join(', ')} MiB`,
    );
    results.fleet = {
      putCommittedMs: fc,
      putBalancedMs: fb,
      puts,
      commit10kMs: big,
      start10kCommittedMs: whole,
      rss10kBytes: rss,
    };
  } finally {
    for (const h of hosts) h.proc.kill('SIGKILL');
    await store.close();
    for (const e of etcd) e.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}
