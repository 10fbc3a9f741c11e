/**
 * Who sends the probes. `tcp` checks go to the native prober of the iptlb_core addon
 * (native/health/prober.h: one thread, one epoll set, non-blocking connects closed with an RST, the
 * timeouts kept on that thread); the scheduler hands over the probes due in one tick in one call,
 * and the results come back in batches. `http` checks (a request and an answer per probe) stay on
 * Node sockets ({@link probe}). Without the addon (not built, or IPTLB_NO_NATIVE=1), every probe
 * uses Node sockets, and the process logs that once.
 */
import { setMaxListeners } from 'node:events';
import { ipv4Problem, ipv6Groups } from '../model/address.js';
import { nodeOs } from '../platform/builtins.js';
import { loadAddon, PROBE_JOB_BYTES, type NativeHealthProber } from '../platform/addon.js';
import { probe as nodeProbe, type Probe, type ProbeTarget } from './probe.js';
import { IptlbError } from '../model/errors.js';

/** Sends probes for the scheduler: start() queues one, flush() (end of a scheduler tick) sends what was queued. */
export interface Prober {
  /** `native` (the addon's prober for tcp, Node for http) or `node` (Node sockets for everything). */
  readonly kind: 'native' | 'node';
  /** Starts a probe; `done` is called once, with undefined on success or a one-line reason. */
  start(t: ProbeTarget, done: (error: string | undefined) => void): void;
  /** Hands over the probes start() queued since the last flush. */
  flush(): void;
  /** Stops; probes in flight are dropped (their `done` is never called). */
  close(): void;
}

/** Every probe through a promise-returning function (Node sockets by default; tests inject their own). */
export class PromiseProber implements Prober {
  readonly kind = 'node' as const;
  private closed = false;
  /** Aborts the probes in flight when closed (their sockets and timers go at once). */
  private readonly stop = new AbortController();
  constructor(private readonly fn: Probe = nodeProbe) {
    // Every probe in flight listens on this one signal: more than 10 at once (http checks, or tcp ones without the
    // addon, of a dozen destinations) drew Node's "MaxListenersExceededWarning: Possible EventTarget memory leak
    // detected" on stderr, though each probe removes its listener when it ends.
    setMaxListeners(0, this.stop.signal);
  }
  start(t: ProbeTarget, done: (error: string | undefined) => void): void {
    this.fn(t, this.stop.signal).then(
      () => !this.closed && done(undefined),
      (err: Error) => !this.closed && done(err?.message ?? String(err)),
    );
  }
  flush(): void {}
  close(): void {
    this.closed = true;
    this.stop.abort();
  }
}

/** errno numbers to names, made on first use (node:os is loaded only then). */
let errnoNames: Map<number, string> | undefined;
function errnoNamesOf(): Map<number, string> {
  if (errnoNames) return errnoNames;
  errnoNames = new Map<number, string>();
  for (const [name, n] of Object.entries(nodeOs().constants.errno)) if (!errnoNames.has(n)) errnoNames.set(n, name);
  return errnoNames;
}

/** The 28-byte job of `host`:`port` (id and timeout written per probe), or a reason it cannot be one. */
export function encodeJob(host: string, port: number): Buffer | string {
  if (!Number.isInteger(port) || port < 1 || port > 65535) return `port ${port}: must be from 1 to 65535`;
  const b = Buffer.alloc(PROBE_JOB_BYTES);
  b.writeUInt16LE(port, 8);
  if (!host.includes(':')) {
    if (ipv4Problem(host) !== null) return `${host}: not an IPv4 or IPv6 address`;
    b[10] = 4;
    host.split('.').forEach((o, i) => (b[12 + i] = Number(o)));
    return b;
  }
  const g = ipv6Groups(host);
  if (!g) return `${host}: not an IPv4 or IPv6 address`;
  b[10] = 6;
  g.forEach((v, i) => b.writeUInt16BE(v, 12 + 2 * i));
  return b;
}

/** Text of a native result: undefined for success, else the reason as the Node prober words it. */
export function nativeReason(errno: number, timeoutMs: number): string | undefined {
  if (errno === 0) return undefined;
  if (errno === nodeOs().constants.errno.ETIMEDOUT) return `no connection within ${timeoutMs} ms`;
  return `${errnoNamesOf().get(errno) ?? `errno ${errno}`} (connect)`;
}

interface Pending {
  done: (error: string | undefined) => void;
  timeoutMs: number;
}

/** tcp checks on the addon's prober, http checks on Node sockets. */
export class NativeProber implements Prober {
  readonly kind = 'native' as const;
  private readonly native: NativeHealthProber;
  private readonly http: PromiseProber;
  private readonly jobs = new Map<string, Buffer | string>();
  private readonly pending = new Map<number, Pending>();
  private queue: Buffer[] = [];
  private nextId = 1;

  constructor(ctor: new (cb: (r: Int32Array) => void) => NativeHealthProber, http: Probe = nodeProbe) {
    this.native = new ctor((r) => this.results(r));
    this.http = new PromiseProber(http);
  }

  start(t: ProbeTarget, done: (error: string | undefined) => void): void {
    if (t.kind !== 'tcp') return this.http.start(t, done);
    const key = `${t.host} ${t.port}`;
    let tpl = this.jobs.get(key);
    if (tpl === undefined) {
      if (this.jobs.size >= 100_000) this.jobs.clear();
      tpl = encodeJob(t.host, t.port);
      this.jobs.set(key, tpl);
    }
    if (typeof tpl === 'string') {
      queueMicrotask(() => done(tpl));
      return;
    }
    const id = this.nextId;
    this.nextId = id >= 0x7fffffff ? 1 : id + 1;
    const job = Buffer.allocUnsafe(PROBE_JOB_BYTES);
    tpl.copy(job);
    job.writeUInt32LE(id, 0);
    job.writeUInt32LE(Math.max(1, Math.min(3_600_000, Math.round(t.timeoutMs))), 4);
    this.pending.set(id, { done, timeoutMs: t.timeoutMs });
    this.queue.push(job);
  }

  flush(): void {
    if (this.queue.length === 0) return;
    const batch = this.queue.length === 1 ? this.queue[0]! : Buffer.concat(this.queue);
    this.queue = [];
    this.native.probe(batch);
  }

  close(): void {
    this.queue = [];
    this.pending.clear();
    this.native.close();
    this.http.close();
  }

  private results(r: Int32Array): void {
    for (let i = 0; i + 1 < r.length; i += 2) {
      const p = this.pending.get(r[i]!);
      if (!p) continue;
      this.pending.delete(r[i]!);
      p.done(nativeReason(r[i + 1]!, p.timeoutMs));
    }
  }
}

let fallbackLogged = false;

/**
 * The prober a checker uses: `native` when the addon's core part loads (the default), else Node sockets, saying so
 * once per process through `log`. `probe` (tests, benchmarks) forces a promise prober over that function.
 */
export function createProber(
  opts: { prober?: 'auto' | 'native' | 'node'; probe?: Probe },
  log: (line: string) => void,
  load: typeof loadAddon = loadAddon,
): Prober {
  if (opts.probe) return new PromiseProber(opts.probe);
  const want = opts.prober ?? 'auto';
  if (want === 'node') return new PromiseProber();
  const loaded = load('core');
  const ctor = loaded.ok ? loaded.addon.HealthProber : undefined;
  if (ctor) return new NativeProber(ctor);
  const why = loaded.ok ? 'the addon has no HealthProber' : `${loaded.reason}: ${loaded.detail}`;
  if (want === 'native')
    throw new IptlbError('ENATIVE', `health.prober: the native prober is unavailable (${why})`, {
      field: 'health.prober',
    });
  if (!fallbackLogged) {
    fallbackLogged = true;
    log(`health: native prober unavailable (${why}); tcp checks use Node sockets (more CPU per probe)`);
  }
  return new PromiseProber();
}

/** @internal tests: log the fallback again. */
export function resetFallbackLog(): void {
  fallbackLogged = false;
}
