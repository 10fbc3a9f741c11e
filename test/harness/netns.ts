/**
 * Throwaway network namespaces.
 *
 *  - `runInFreshNetns` runs `unshare -n -- node script args…` (no shell): the child gets a network
 *    namespace of its own, with the loopback interface up, which dies with it.
 *  - `NetnsTopology` makes named namespaces (`ip netns add iptlb-t-<owner>.<rand>-<host>`) joined by
 *    veth pairs, for multi-host cases; `destroy()` kills what runs in them and deletes them, and
 *    `cleanupStale()` removes those left behind by a run that crashed.
 *
 * Nothing here touches the initial network namespace: veth pairs are created from inside one of the
 * topology's namespaces with their peer placed directly into the other.
 */
import { spawn, spawnSync, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the harness killed the child because it ran past its time limit. */
  timedOut: boolean;
}

export interface RunOptions {
  /** Kill the child (and everything it started) after this long. Default 120 s for scripts, 60 s for exec. */
  timeoutMs?: number;
  /** Added to (and overriding) the parent's environment. */
  env?: Record<string, string>;
  /** Written to the child's stdin, which is then closed (always closed, also without input). */
  input?: string;
}

export interface FreshNetnsOptions extends RunOptions {
  /** Bring `lo` up before the script starts (default true; done by a `--import` preload, no shell). */
  loopback?: boolean;
  /** Extra node options placed before the script, e.g. ['--expose-gc']. */
  nodeArgs?: string[];
}

/** Pids of every descendant of `pid` (from /proc), deepest last. */
function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid)!.push(Number(e));
    } catch {
      /* gone */
    }
  }
  const out: number[] = [];
  const todo = [pid];
  while (todo.length && out.length < 10_000) {
    for (const c of children.get(todo.shift()!) ?? []) {
      out.push(c);
      todo.push(c);
    }
  }
  return out;
}

/** SIGKILLs a child and everything below it (a timed-out test must not leave a namespace alive). */
function killTree(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const all = [child.pid, ...descendants(child.pid)];
  for (const p of all) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

function collect(child: ChildProcess, opts: RunOptions, what: string, defaultTimeoutMs: number): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const limit = opts.timeoutMs ?? defaultTimeoutMs;
    const timer = setTimeout(() => {
      timedOut = true;
      stderr += `\n[harness] ${what} timed out after ${limit} ms; killed with everything it started`;
      killTree(child);
    }, limit);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`[harness] could not start ${what}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
    if (child.stdin) {
      child.stdin.on('error', () => {}); // EPIPE when the child does not read its input
      child.stdin.end(opts.input ?? '');
    }
  });
}

const PRELOAD = pathToFileURL(fileURLToPath(new URL('./netns-preload.js', import.meta.url))).href;

/**
 * Runs `unshare -n -- <node> scriptPath args…` — a new network namespace of its own, which dies with
 * the child — with `lo` up (unless `loopback: false`). Resolves with the exit status and output (it
 * does not reject on a non-zero exit); kills the child and its descendants after `timeoutMs`
 * (default 120 s).
 */
export function runInFreshNetns(
  scriptPath: string,
  args: string[],
  opts: FreshNetnsOptions = {},
): Promise<ChildResult> {
  const loopback = opts.loopback ?? true;
  const node = [
    process.execPath,
    ...(loopback ? ['--import', PRELOAD] : []),
    ...(opts.nodeArgs ?? []),
    scriptPath,
    ...args,
  ];
  // A state-file registry of its own (src/core/registry.ts): a namespace's inode is reused once
  // another is gone, and the registry is keyed by it.
  const registry = newRegistry();
  // And a temporary directory of its own, removed with it: what a fixture makes under os.tmpdir() goes
  // too, also when the test runs without scripts/run-tests.js (which removes its run's TMPDIR).
  const tmp = mkdtempSync(path.join(tmpdir(), 'iptlb-child-'));
  chmodSync(tmp, 0o1777); // as /tmp: a fixture run as another user (setpriv) can use it too
  const child = spawn('unshare', ['-n', '--', ...node], {
    env: {
      ...process.env,
      IPTLB_REGISTRY_DIR: registry,
      TMPDIR: tmp,
      ...opts.env,
      ...(loopback ? { IPTLB_HARNESS_LO_UP: '1' } : {}),
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return collect(child, opts, scriptPath, 120_000).finally(() => {
    rmSync(registry, { recursive: true, force: true });
    rmSync(tmp, { recursive: true, force: true });
  });
}

/** A fresh directory for IPTLB_REGISTRY_DIR. */
function newRegistry(): string {
  return mkdtempSync(path.join(tmpdir(), 'iptlb-registry-'));
}

/**
 * Like runInFreshNetns, and parses the LAST non-empty stdout line as JSON. Throws (with the child's
 * stderr and stdout tails) when the child exited non-zero, was killed, or printed no JSON last.
 */
export async function runJsonInFreshNetns<T = unknown>(
  scriptPath: string,
  args: string[],
  opts: FreshNetnsOptions = {},
): Promise<T> {
  const r = await runInFreshNetns(scriptPath, args, opts);
  const tails = `--- stderr (tail):\n${r.stderr.slice(-4000)}\n--- stdout (tail):\n${r.stdout.slice(-2000)}`;
  if (r.code !== 0)
    throw new Error(
      `${scriptPath} ${args.join(' ')} ${r.timedOut ? 'timed out' : `exited ${r.code ?? r.signal}`}\n${tails}`,
    );
  const last = r.stdout.trimEnd().split('\n').pop() ?? '';
  try {
    return JSON.parse(last) as T;
  } catch {
    throw new Error(`${scriptPath} printed no JSON result on its last stdout line\n${tails}`);
  }
}

/** For child scripts already inside a namespace: bring the loopback interface up (idempotent). */
export async function bringLoopbackUp(): Promise<void> {
  await execFileP('ip', ['link', 'set', 'lo', 'up'], { timeout: 10_000 });
}

export const NETNS_PREFIX = 'iptlb-t-';
const HOST_RE = /^[a-z][a-z0-9_]{0,15}$/i;

export interface Spawned {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /**
   * Resolves with the first stdout line matching `re`; rejects if the process exits first or after `timeoutMs` (10 s).
   */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves when the process exits; kills it (SIGKILL) after `timeoutMs` (default 60 s). */
  wait(timeoutMs?: number): Promise<ChildResult>;
  /** Sends `signal` (SIGTERM) and resolves when it exited; SIGKILL after `graceMs` (5 s). */
  kill(signal?: NodeJS.Signals, graceMs?: number): Promise<ChildResult>;
}

const live = new Set<NetnsTopology>();
let exitHook = false;

/** Named namespaces joined by veth pairs; `destroy()` removes everything it made. */
export class NetnsTopology {
  private readonly names = new Map<string, string>();
  private readonly children: Spawned[] = [];
  private readonly devs = new Map<string, number>();
  private destroyed = false;
  /** The state-file registry of its namespaces (see runInFreshNetns). */
  private readonly registry = newRegistry();

  private constructor(readonly id: string) {}

  /**
   * One namespace per host (`iptlb-t-<pid36>.<rand>-<host>`), loopback up. Removes stale namespaces
   * of crashed runs first. On failure, deletes what it made and rethrows.
   */
  static async create(hosts: string[]): Promise<NetnsTopology> {
    for (const h of hosts)
      if (!HOST_RE.test(h)) throw new Error(`host name ${JSON.stringify(h)}: letters, digits, _ (at most 16)`);
    if (new Set(hosts).size !== hosts.length) throw new Error(`duplicate host names: ${hosts.join(', ')}`);
    await NetnsTopology.cleanupStale();
    const t = new NetnsTopology(`${process.pid.toString(36)}.${randomBytes(3).toString('hex')}`);
    live.add(t);
    if (!exitHook) {
      exitHook = true;
      process.on('exit', () => {
        for (const x of live) x.destroySync();
      });
    }
    try {
      for (const h of hosts) {
        const ns = `${NETNS_PREFIX}${t.id}-${h}`;
        await execFileP('ip', ['netns', 'add', ns], { timeout: 10_000 });
        t.names.set(h, ns);
        await t.exec(h, ['ip', 'link', 'set', 'lo', 'up']);
      }
    } catch (e) {
      await t.destroy();
      throw e;
    }
    return t;
  }

  /** `create` + `fn` + `destroy` (always). */
  static async with<T>(hosts: string[], fn: (t: NetnsTopology) => Promise<T>): Promise<T> {
    const t = await NetnsTopology.create(hosts);
    try {
      return await fn(t);
    } finally {
      await t.destroy();
    }
  }

  /**
   * Deletes `iptlb-t-*` namespaces older than this run: those whose creating process is gone (its
   * pid is in the name), and unparseable ones created before this process started. Processes still
   * inside them are killed first (anything in an iptlb-t namespace was started by a test). Returns
   * the names it deleted.
   */
  static async cleanupStale(): Promise<string[]> {
    const { stdout } = await execFileP('ip', ['netns', 'list'], { timeout: 10_000 }).catch(() => ({ stdout: '' }));
    const startedAt = Date.now() - process.uptime() * 1000;
    const deleted: string[] = [];
    for (const line of stdout.split('\n')) {
      const name = line.trim().split(/\s+/)[0];
      if (!name?.startsWith(NETNS_PREFIX)) continue;
      const m = /^([0-9a-z]+)\.[0-9a-f]+-/.exec(name.slice(NETNS_PREFIX.length));
      let stale: boolean;
      if (m) {
        const pid = parseInt(m[1], 36);
        stale = pid !== process.pid && !alive(pid);
      } else {
        let mtime = Infinity;
        try {
          mtime = statSync(`/run/netns/${name}`).mtimeMs;
        } catch {
          /* keep */
        }
        stale = mtime < startedAt;
      }
      if (!stale) continue;
      await killNetnsPids(name);
      await execFileP('ip', ['netns', 'del', name], { timeout: 10_000 }).then(
        () => deleted.push(name),
        () => {},
      );
    }
    return deleted;
  }

  /** The namespace name of a host. */
  ns(host: string): string {
    const n = this.names.get(host);
    if (!n) throw new Error(`no host ${host} in this topology (${[...this.names.keys()].join(', ')})`);
    return n;
  }

  get hosts(): string[] {
    return [...this.names.keys()];
  }

  private devName(host: string, peer: string): string {
    const base = `to-${peer}`.slice(0, 12);
    const k = `${host}/${base}`;
    const n = this.devs.get(k) ?? 0;
    this.devs.set(k, n + 1);
    return n ? `${base}${n}` : base;
  }

  /**
   * A veth pair between two hosts (`to-<b>` in a, `to-<a>` in b), addresses assigned (CIDR), both
   * ends up. Created from inside a's namespace with the peer placed straight into b's.
   */
  async link(a: string, b: string, opts: { aAddr: string; bAddr: string }): Promise<{ aDev: string; bDev: string }> {
    const aDev = this.devName(a, b);
    const bDev = this.devName(b, a);
    await this.exec(a, ['ip', 'link', 'add', aDev, 'type', 'veth', 'peer', 'name', bDev, 'netns', this.ns(b)]);
    await this.exec(a, ['ip', 'addr', 'add', opts.aAddr, 'dev', aDev]);
    await this.exec(b, ['ip', 'addr', 'add', opts.bAddr, 'dev', bDev]);
    await this.exec(a, ['ip', 'link', 'set', aDev, 'up']);
    await this.exec(b, ['ip', 'link', 'set', bDev, 'up']);
    return { aDev, bDev };
  }

  /** `ip route add dst via via` in host's namespace (dst may be `default`). */
  async route(host: string, dst: string, via: string): Promise<void> {
    await this.exec(host, ['ip', 'route', 'add', dst, 'via', via]);
  }

  /** `sysctl -w key=value` in host's namespace (net.* keys are per namespace, e.g. net.ipv4.ip_forward). */
  async sysctl(host: string, key: string, value: string | number): Promise<void> {
    if (!key.startsWith('net.'))
      throw new Error(`sysctl ${key}: only per-namespace net.* keys (others would change the machine)`);
    await this.exec(host, ['sysctl', '-q', '-w', `${key}=${value}`]);
  }

  /** Runs `ip netns exec NS argv…`; rejects when it fails unless `allowFail`. Default time limit 60 s. */
  async exec(host: string, argv: string[], opts: RunOptions & { allowFail?: boolean } = {}): Promise<ChildResult> {
    const child = spawn('ip', ['netns', 'exec', this.ns(host), ...argv], {
      env: { ...process.env, IPTLB_REGISTRY_DIR: this.registry, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const r = await collect(child, opts, `[${host}] ${argv.join(' ')}`, 60_000);
    if (r.code !== 0 && !opts.allowFail) {
      throw new Error(
        `[${host}] ${argv.join(' ')} ${r.timedOut ? 'timed out' : `exited ${r.code ?? r.signal}`}: ${r.stderr.trim()}${r.stdout.trim() ? `\nstdout: ${r.stdout.trim().slice(-2000)}` : ''}`,
      );
    }
    return r;
  }

  /** Starts a long-running command in host's namespace; `destroy()` kills it if still running. */
  spawn(host: string, argv: string[], env?: Record<string, string>): Spawned {
    const child = spawn('ip', ['netns', 'exec', this.ns(host), ...argv], {
      env: { ...process.env, IPTLB_REGISTRY_DIR: this.registry, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.stdin!.on('error', () => {});
    let spawnError: Error | undefined;
    const closed = new Promise<ChildResult>((resolve) => {
      child.on('error', (e) => {
        spawnError = e;
        resolve({ code: -1, signal: null, stdout: out, stderr: err + e.message, timedOut: false });
      });
      child.on('close', (code, signal) => resolve({ code, signal, stdout: out, stderr: err, timedOut: false }));
    });
    const exited = (): boolean => child.exitCode !== null || child.signalCode !== null || spawnError !== undefined;
    const what = `[${host}] ${argv.join(' ')}`;
    const s: Spawned = {
      child,
      stdout: () => out,
      stderr: () => err,
      waitFor: (re, timeoutMs = 10_000) =>
        new Promise((resolve, reject) => {
          const t0 = Date.now();
          const tick = (): void => {
            const line = out.split('\n').find((l) => re.test(l));
            if (line !== undefined) return resolve(line);
            if (exited()) return reject(new Error(`${what} exited before printing ${re}: ${err.trim()}`));
            if (Date.now() - t0 > timeoutMs)
              return reject(
                new Error(
                  `${what}: timed out after ${timeoutMs} ms waiting for ${re}; stdout: ${out.slice(-1000)} stderr: ${err.slice(-1000)}`,
                ),
              );
            setTimeout(tick, 20);
          };
          tick();
        }),
      wait: async (timeoutMs = 60_000) => {
        let timer: NodeJS.Timeout | undefined;
        let timedOut = false;
        const r = await Promise.race([
          closed,
          new Promise<ChildResult>((resolve) => {
            timer = setTimeout(() => {
              timedOut = true;
              killTree(child);
              void closed.then(resolve);
            }, timeoutMs);
          }),
        ]);
        clearTimeout(timer);
        return { ...r, timedOut };
      },
      kill: async (signal = 'SIGTERM', graceMs = 5000) => {
        if (exited()) return closed;
        child.kill(signal);
        let timer: NodeJS.Timeout | undefined;
        const r = await Promise.race([
          closed,
          new Promise<ChildResult>((resolve) => {
            timer = setTimeout(() => {
              killTree(child);
              void closed.then(resolve);
            }, graceMs);
          }),
        ]);
        clearTimeout(timer);
        return r;
      },
    };
    this.children.push(s);
    return s;
  }

  /** Kills what it spawned (and anything else inside its namespaces), deletes the namespaces. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of this.children.splice(0)) await c.kill('SIGKILL', 2000);
    for (const ns of this.names.values()) {
      await killNetnsPids(ns);
      await execFileP('ip', ['netns', 'del', ns], { timeout: 10_000 }).catch(() => {});
    }
    this.names.clear();
    rmSync(this.registry, { recursive: true, force: true });
    live.delete(this);
  }

  /** Last-resort synchronous cleanup at process exit, for topologies a test forgot to destroy. */
  private destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of this.children) killTree(c.child);
    for (const ns of this.names.values()) {
      const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 5000 }).stdout ?? '';
      for (const p of pids.split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(p), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      spawnSync('ip', ['netns', 'del', ns], { timeout: 5000 });
    }
    rmSync(this.registry, { recursive: true, force: true });
    live.delete(this);
  }
}

function alive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** SIGKILLs every process inside one of our (`iptlb-t-*`) namespaces. */
async function killNetnsPids(ns: string): Promise<void> {
  if (!ns.startsWith(NETNS_PREFIX)) return;
  const { stdout } = await execFileP('ip', ['netns', 'pids', ns], { timeout: 10_000 }).catch(() => ({ stdout: '' }));
  for (const p of stdout.split(/\s+/).filter(Boolean)) {
    const pid = Number(p);
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
