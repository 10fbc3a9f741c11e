/**
 * `iptlb demo`: the quick start, from an installed package (`sudo npx iptlb demo`). Inside a
 * throwaway network namespace (it re-runs itself under `unshare -n`, so this machine's own
 * interfaces and netfilter tables are never touched): three real TCP backends on 127.0.0.1, a real
 * profile applied with this iptlb CLI, N real connections through the virtual address, the split
 * printed with a chi-square test against an even split, then the profile deleted and the tables
 * shown empty. Exit status 0 only when every connection was answered and nothing was left behind.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { findBinary } from '../platform/spawn.js';
import { nodeOs } from '../platform/builtins.js';

type Out = { out: (s: string) => void; err: (s: string) => void };

export interface DemoOptions {
  connections: number;
  /** argv[1] of this process: the CLI file run again for the steps and under unshare. */
  cli: string;
}

const VIP = '127.100.0.10';
const PORT = 8081;
const PORTS = [9001, 9002, 9003];
const idOf = (port: number): string => `backend-${port}`;

/** Runs a command with a time limit; never throws. */
function run(
  cmd: string,
  args: string[],
  env?: NodeJS.ProcessEnv,
  timeoutMs = 60_000,
): { status: number | null; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, env: env ?? process.env });
  return {
    status: r.status,
    out: r.stdout ?? '',
    err: (r.stderr ?? '') + (r.error ? `${cmd}: ${r.error.message}\n` : ''),
  };
}

/** Sockets the backends accepted, destroyed at the end so that closing the servers never waits on one. */
const accepted = new Set<net.Socket>();

async function startBackends(): Promise<net.Server[]> {
  const servers: net.Server[] = [];
  for (const port of PORTS) {
    const s = net.createServer((c) => {
      accepted.add(c);
      c.on('close', () => accepted.delete(c));
      c.on('error', () => c.destroy());
      c.end(idOf(port));
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => resolve());
    });
    servers.push(s);
  }
  return servers;
}

/** One connection: the id the backend answered, or an error. */
function probe(timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ host: VIP, port: PORT });
    let data = '';
    const timer = setTimeout(() => c.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    c.setEncoding('utf8');
    c.on('data', (d) => (data += d));
    c.on('end', () => {
      clearTimeout(timer);
      c.destroy();
      if (data) resolve(data);
      else reject(new Error('empty answer'));
    });
    c.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

async function split(
  n: number,
  concurrency = 8,
): Promise<{ counts: Map<string, number>; failures: number; errors: string[] }> {
  const counts = new Map<string, number>();
  const errors = new Set<string>();
  let failures = 0;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      try {
        const id = await probe(3000);
        counts.set(id, (counts.get(id) ?? 0) + 1);
      } catch (e) {
        failures++;
        errors.add((e as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { counts, failures, errors: [...errors] };
}

/** Chi-square of `counts` against an even split; with 3 backends df = 2 and p = exp(-x/2). */
function chiSquare(counts: number[]): { statistic: number; df: number; pValue: number } {
  const total = counts.reduce((a, b) => a + b, 0);
  const e = total / counts.length;
  const statistic = counts.reduce((a, c) => a + (c - e) ** 2 / e, 0);
  return { statistic, df: counts.length - 1, pValue: Math.exp(-statistic / 2) };
}

/** This process's network namespace (`net:[4026531840]`), or '' when /proc cannot tell. */
function ownNetns(): string {
  try {
    return readlinkSync('/proc/self/ns/net');
  } catch {
    return '';
  }
}

/**
 * Whether this process is the demo re-run by {@link inNamespace}: `IPTLB_DEMO_IN_NETNS` names the
 * namespace it was started from, and this one is another. A variable left in the environment (or
 * set by hand) is not enough: the demo never changes the namespace it was started in.
 */
export function inOwnNamespace(env: NodeJS.ProcessEnv = process.env, own = ownNetns()): boolean {
  const from = env.IPTLB_DEMO_IN_NETNS;
  return !!from && !!own && from.startsWith('net:') && from !== own;
}

/** Runs the demo again inside a new network namespace (`unshare -n`); its exit status. */
function inNamespace(o: DemoOptions, io: Out): number {
  if (process.getuid?.() !== 0) {
    io.err('iptlb: error: demo: run it as root (sudo): it creates a throwaway network namespace');
    return 1;
  }
  const r = spawnSync('unshare', ['-n', '--', process.execPath, o.cli, 'demo', `--connections=${o.connections}`], {
    stdio: 'inherit',
    env: { ...process.env, IPTLB_DEMO_IN_NETNS: ownNetns() || 'unknown' },
    timeout: 180_000,
  });
  if (r.error) io.err(`iptlb: error: demo: could not run unshare -n (util-linux): ${r.error.message}`);
  return r.status ?? 1;
}

/** iptlb's rules in either engine: legacy nat rule lines (when iptables is installed), then table ip iptlb. */
function rules(): string[] {
  const save = findBinary('iptables-legacy-save')
    ? run('iptables-legacy-save', ['-t', 'nat'])
        .out.split('\n')
        .filter((l) => l.startsWith('-A '))
    : [];
  const nft = findBinary('nft') ? run('nft', ['list', 'table', 'ip', 'iptlb']) : { status: 1, out: '' };
  return [...save, ...(nft.status === 0 ? nft.out.trimEnd().split('\n') : [])];
}

type Say = (s?: string) => void;
type Iptlb = (args: string[]) => ReturnType<typeof run>;

/** Step 2: the profile, applied with the original's flags; how it committed; the rules it wrote. */
function applyStep(say: Say, iptlb: Iptlb, state: string): void {
  const doctor = iptlb(['doctor', `--state-file=${state}`]);
  const how = doctor.out.split('\n').filter((l) => /^(engine|executor):/.test(l));
  const apply = [
    '-run',
    '-profile=demo',
    `-src-addr=${VIP}:${PORT}`,
    `-dest-addr=${PORTS.map((p) => `127.0.0.1:${p}`).join(',')}`,
    `-state-file=${state}`,
  ];
  say(`2. Balance the virtual address ${VIP}:${PORT} over them with a real iptlb profile:`);
  say(`   $ iptlb ${apply.join(' ')}`);
  const applied = iptlb(apply);
  for (const l of (applied.err + applied.out).trim().split('\n').filter(Boolean)) say(`   ${l}`);
  if (applied.status !== 0) throw new Error(`iptlb exited ${applied.status}; the profile was not applied`);
  say();
  if (how.length) {
    say('   How it committed (from `iptlb doctor`):');
    for (const l of how) say(`   ${l}`);
    say();
  }
  say('   The rules it wrote:');
  for (const l of rules()) say(`   ${l}`);
  say();
}

/** Step 3: n real connections through the virtual address, the split printed with its chi-square; true when clean. */
async function splitStep(say: Say, n: number): Promise<boolean> {
  say(`3. Open ${n} real TCP connections to ${VIP}:${PORT} and count who answered:`);
  const t0 = performance.now();
  const s = await split(n);
  const ms = Math.round(performance.now() - t0);
  const counts = PORTS.map((p) => s.counts.get(idOf(p)) ?? 0);
  const chi = chiSquare(counts);
  say();
  say('   backend           connections   share');
  PORTS.forEach((p, i) =>
    say(
      `   127.0.0.1:${p}    ${String(counts[i]).padStart(11)}   ${((100 * counts[i]!) / n).toFixed(1).padStart(5)} %`,
    ),
  );
  const other = [...s.counts].filter(([k]) => !PORTS.some((p) => idOf(p) === k));
  for (const [k, v] of other) say(`   (unexpected answer ${JSON.stringify(k)}: ${v})`);
  say(`   failed            ${String(s.failures).padStart(11)}`);
  say();
  say(`   ${n} connections in ${ms} ms. Expected share: 33.3 % each.`);
  say(
    `   Chi-square against an even split: ${chi.statistic.toFixed(2)} (df ${chi.df}), p-value ${chi.pValue.toFixed(3)}`,
  );
  say(
    `   (a p-value above ~0.001 means the split is consistent with 1/3 each${chi.pValue < 0.001 ? ' — this one is NOT' : ''})`,
  );
  for (const e of s.errors) say(`   error: ${e}`);
  say();
  return s.failures === 0 && other.length === 0;
}

/** Step 4: the profile deleted; true when no rule of iptlb is left. */
function deleteStep(say: Say, iptlb: Iptlb, state: string): boolean {
  const del = ['-run', '-delete', '-profile=demo', `-state-file=${state}`];
  say('4. Delete the profile:');
  say(`   $ iptlb ${del.join(' ')}`);
  const deleted = iptlb(del);
  for (const l of (deleted.err + deleted.out).trim().split('\n').filter(Boolean)) say(`   ${l}`);
  const after = rules();
  say(`   afterwards: ${after.length ? '' : 'no rule of iptlb left in either engine'}`);
  for (const l of after) say(`   ${l}`);
  say();
  return deleted.status === 0 && after.length === 0;
}

export async function demo(o: DemoOptions, io: Out): Promise<number> {
  if (!Number.isInteger(o.connections) || o.connections < 1 || o.connections > 100_000) {
    io.err(
      `iptlb: error: connections: ${JSON.stringify(String(o.connections))} must be a whole number from 1 to 100000`,
    );
    return 2;
  }
  const from = process.env.IPTLB_DEMO_IN_NETNS;
  // Not the re-run (a value inNamespace does not write, as a stale `1`, is not taken for one either).
  if (from === undefined || (from !== 'unknown' && !from.startsWith('net:'))) return inNamespace(o, io);
  if (!inOwnNamespace()) {
    io.err(
      from === 'unknown' || !ownNetns()
        ? 'iptlb: error: demo: cannot tell its network namespace (/proc/self/ns/net): not run'
        : 'iptlb: error: demo: unshare -n left it in the namespace it was started in: not run',
    );
    return 1;
  }
  const say: Say = (s = '') => io.out(s);
  const dir = mkdtempSync(path.join(nodeOs().tmpdir(), 'iptlb-demo-'));
  const state = path.join(dir, 'state.db');
  // The state-file registry (src/core/registry.ts) of this throwaway namespace goes with it.
  process.env.IPTLB_REGISTRY_DIR = path.join(dir, 'registry');
  const iptlb: Iptlb = (args) => run(process.execPath, [o.cli, ...args]);
  let servers: net.Server[] = [];
  try {
    const lo = run('ip', ['link', 'set', 'lo', 'up']);
    if (lo.status !== 0) throw new Error(`ip link set lo up (iproute2): ${lo.err.trim()}`);
    say('iptlb demo — everything below happens in a throwaway network namespace;');
    say("this machine's own interfaces and netfilter rules are not touched.");
    say();
    servers = await startBackends();
    say(`1. Three backends listen on ${PORTS.map((p) => `127.0.0.1:${p}`).join(', ')};`);
    say(`   each answers every connection with its id ("${idOf(PORTS[0]!)}") and closes.`);
    say();
    applyStep(say, iptlb, state);
    const balanced = await splitStep(say, o.connections);
    const removed = deleteStep(say, iptlb, state);
    const good = balanced && removed;
    say(good ? 'Demo OK.' : 'Demo FAILED (see above).');
    return good ? 0 : 1;
  } catch (e) {
    io.err(`iptlb: error: demo: ${(e as Error).message}`);
    return 1;
  } finally {
    for (const c of accepted) c.destroy();
    await Promise.all(servers.map((sv) => new Promise((r) => sv.close(r))));
    rmSync(dir, { recursive: true, force: true });
  }
}
