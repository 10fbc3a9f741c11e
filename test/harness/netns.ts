/**
 * Throwaway network namespaces. `runInFreshNetns` runs a child under `unshare -n` (its namespace
 * dies with it); `NetnsTopology` makes named namespaces joined by veth pairs for multi-host cases and
 * always deletes them.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: Record<string, string>;
  input?: string;
}

function collect(child: ChildProcess, opts: RunOptions, what: string): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n[harness] ${what} timed out after ${opts.timeoutMs} ms; killed`;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    if (child.stdin) child.stdin.end(opts.input ?? '');
  });
}

/** Runs `node script args…` in a new network namespace of its own (`unshare -n`), loopback up. */
export function runInFreshNetns(scriptPath: string, args: string[], opts: RunOptions = {}): Promise<ChildResult> {
  const argv = ['-n', '--', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"', process.execPath, scriptPath, ...args];
  const child = spawn('unshare', argv, {
    env: { ...process.env, ...opts.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return collect(child, opts, scriptPath);
}

/** Like runInFreshNetns, and parses the last stdout line as JSON; throws with stderr when the child failed. */
export async function runJsonInFreshNetns(scriptPath: string, args: string[], opts: RunOptions = {}): Promise<unknown> {
  const r = await runInFreshNetns(scriptPath, args, opts);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0) throw new Error(`${scriptPath} exited ${r.code ?? r.signal}:\n${r.stderr.slice(-4000)}\n${r.stdout.slice(-2000)}`);
  try {
    return JSON.parse(last);
  } catch {
    throw new Error(`${scriptPath} printed no JSON result:\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`);
  }
}

/** For child scripts already inside a namespace: bring the loopback interface up. */
export async function bringLoopbackUp(): Promise<void> {
  await execFileP('ip', ['link', 'set', 'lo', 'up']);
}

const PREFIX = 'iptlb-t-';

export interface Spawned {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first stdout line matching `re`. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<ChildResult>;
}

/** Named namespaces joined by veth pairs; `destroy()` removes everything it made. */
export class NetnsTopology {
  private readonly names = new Map<string, string>();
  private readonly children: Spawned[] = [];
  private links = 0;

  private constructor(private readonly id: string) {}

  static async create(hosts: string[]): Promise<NetnsTopology> {
    await NetnsTopology.cleanupStale();
    const t = new NetnsTopology(`${process.pid.toString(36)}${Math.random().toString(36).slice(2, 6)}`);
    try {
      for (const h of hosts) {
        const ns = `${PREFIX}${t.id}-${h}`;
        await execFileP('ip', ['netns', 'add', ns]);
        t.names.set(h, ns);
        await t.exec(h, ['ip', 'link', 'set', 'lo', 'up']);
      }
    } catch (e) {
      await t.destroy();
      throw e;
    }
    return t;
  }

  /** Deletes iptlb-t-* namespaces left by a run that crashed (not those of live processes of this run). */
  static async cleanupStale(): Promise<void> {
    const { stdout } = await execFileP('ip', ['netns', 'list']).catch(() => ({ stdout: '' }));
    for (const line of stdout.split('\n')) {
      const name = line.split(' ')[0];
      if (!name.startsWith(PREFIX)) continue;
      const pid = parseInt(name.slice(PREFIX.length).split('-')[0].slice(0, -4), 36);
      let alive = false;
      try {
        process.kill(pid, 0);
        alive = true;
      } catch {
        alive = false;
      }
      if (!alive) await execFileP('ip', ['netns', 'del', name]).catch(() => {});
    }
  }

  ns(host: string): string {
    const n = this.names.get(host);
    if (!n) throw new Error(`no host ${host}`);
    return n;
  }

  /** A veth pair between two hosts, addresses assigned, both ends up. */
  async link(a: string, b: string, opts: { aAddr: string; bAddr: string }): Promise<void> {
    const i = this.links++;
    const va = `v${this.id.slice(0, 6)}a${i}`;
    const vb = `v${this.id.slice(0, 6)}b${i}`;
    await execFileP('ip', ['link', 'add', va, 'netns', this.ns(a), 'type', 'veth', 'peer', 'name', vb, 'netns', this.ns(b)]);
    await this.exec(a, ['ip', 'addr', 'add', opts.aAddr, 'dev', va]);
    await this.exec(b, ['ip', 'addr', 'add', opts.bAddr, 'dev', vb]);
    await this.exec(a, ['ip', 'link', 'set', va, 'up']);
    await this.exec(b, ['ip', 'link', 'set', vb, 'up']);
  }

  async route(host: string, dst: string, via: string): Promise<void> {
    await this.exec(host, ['ip', 'route', 'add', dst, 'via', via]);
  }

  async sysctl(host: string, key: string, value: string): Promise<void> {
    await this.exec(host, ['sysctl', '-q', '-w', `${key}=${value}`]);
  }

  /** Runs a command in a host's namespace; rejects when it fails unless `allowFail`. */
  async exec(host: string, argv: string[], opts: RunOptions & { allowFail?: boolean } = {}): Promise<ChildResult> {
    const child = spawn('ip', ['netns', 'exec', this.ns(host), ...argv], { env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const r = await collect(child, opts, argv.join(' '));
    if (r.code !== 0 && !opts.allowFail) throw new Error(`[${host}] ${argv.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
    return r;
  }

  /** Starts a long-running command in a host's namespace. */
  spawn(host: string, argv: string[], env?: Record<string, string>): Spawned {
    const child = spawn('ip', ['netns', 'exec', this.ns(host), ...argv], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const closed = new Promise<ChildResult>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout: out, stderr: err })));
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
            if (child.exitCode !== null) return reject(new Error(`[${host}] ${argv.join(' ')} exited: ${err}`));
            if (Date.now() - t0 > timeoutMs) return reject(new Error(`[${host}] timed out waiting for ${re}: ${out} ${err}`));
            setTimeout(tick, 20);
          };
          tick();
        }),
      kill: async (signal = 'SIGTERM') => {
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        return closed;
      },
    };
    this.children.push(s);
    return s;
  }

  /** Kills what it spawned and deletes its namespaces. Idempotent. */
  async destroy(): Promise<void> {
    for (const c of this.children.splice(0)) await Promise.race([c.kill('SIGKILL'), new Promise((r) => setTimeout(r, 2000))]);
    for (const ns of this.names.values()) await execFileP('ip', ['netns', 'del', ns]).catch(() => {});
    this.names.clear();
  }
}
