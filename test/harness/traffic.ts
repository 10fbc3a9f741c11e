/**
 * Real traffic through a virtual address: which backend answered each TCP connection or UDP
 * datagram. Every loop is bounded in count and time: each probe has its own time limit, and a
 * probe that gets no answer, an empty answer or an error counts as a failure (no retries).
 */
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';

export interface Split {
  /** Answers per backend id (`backend:<port>`, as backends.ts answers). */
  counts: Record<string, number>;
  /** Probes that failed (refused, reset, timed out, empty answer). */
  failures: number;
  /** The first few failure messages. */
  errors: string[];
}

export interface SplitOptions {
  /** Probes in flight at once (default 16). */
  concurrency?: number;
  /** Time limit of one probe in ms (default 2000). */
  timeoutMs?: number;
  /** Local address to send from (e.g. a client host's veth address). */
  sourceAddress?: string;
}

const MAX_ERRORS = 10;
const MAX_ANSWER = 4096;

/** One TCP connection: resolves with the trimmed answer (the backend id) once the server closes. */
export function tcpProbe(host: string, port: number, timeoutMs = 2000, localAddress?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = connect({ host, port, ...(localAddress ? { localAddress } : {}) });
    let data = '';
    let done = false;
    const finish = (e: Error | null, v?: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      c.destroy();
      if (e) reject(e);
      else resolve(v!);
    };
    // A wall-clock limit for the whole exchange (setTimeout on the socket only measures idleness).
    // The message says how far the exchange got: a handshake that never completed (a SYN lost or
    // unanswered) and a connection that completed but got no answer (its packets lost after the
    // handshake, or a stalled backend) have different causes.
    const timer = setTimeout(() => {
      const how = c.connecting
        ? 'handshake not completed'
        : `connected from port ${c.localPort ?? '?'}, ${data.length} byte(s) received`;
      finish(new Error(`tcp ${host}:${port}: no complete answer within ${timeoutMs} ms (${how})`));
    }, timeoutMs);
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      data += d;
      if (data.length > MAX_ANSWER) finish(new Error(`tcp ${host}:${port}: answer longer than ${MAX_ANSWER} bytes`));
    });
    c.on('end', () => {
      const id = data.trim();
      finish(id ? null : new Error(`tcp ${host}:${port}: connection closed without an answer`), id);
    });
    c.on('error', (e: NodeJS.ErrnoException) => finish(new Error(`tcp ${host}:${port}: ${e.code ?? e.message}`)));
  });
}

/** One datagram from a fresh socket (new source port, so a new conntrack entry); resolves with the reply. */
export function udpProbe(host: string, port: number, timeoutMs = 2000, localAddress?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    let done = false;
    const finish = (e: Error | null, v?: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        s.close();
      } catch {
        /* closed */
      }
      if (e) reject(e);
      else resolve(v!);
    };
    const timer = setTimeout(
      () => finish(new Error(`udp ${host}:${port}: no reply within ${timeoutMs} ms`)),
      timeoutMs,
    );
    s.on('message', (msg) => {
      const id = msg.toString('utf8').trim();
      finish(id ? null : new Error(`udp ${host}:${port}: empty reply`), id);
    });
    s.on('error', (e: NodeJS.ErrnoException) => finish(new Error(`udp ${host}:${port}: ${e.code ?? e.message}`)));
    const send = (): void =>
      s.send('probe\n', port, host, (e) => {
        if (e) finish(new Error(`udp ${host}:${port}: send: ${(e as NodeJS.ErrnoException).code ?? e.message}`));
      });
    if (localAddress) s.bind(0, localAddress, send);
    else send();
  });
}

async function pool(count: number, concurrency: number, fn: () => Promise<string>): Promise<Split> {
  if (!Number.isInteger(count) || count < 0) throw new Error(`count must be a non-negative integer, got ${count}`);
  const out: Split = { counts: {}, failures: 0, errors: [] };
  let started = 0;
  const worker = async (): Promise<void> => {
    while (started < count) {
      started++;
      try {
        const id = await fn();
        out.counts[id] = (out.counts[id] ?? 0) + 1;
      } catch (e) {
        out.failures++;
        if (out.errors.length < MAX_ERRORS) out.errors.push((e as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, count)) }, worker));
  return out;
}

/** Opens `count` real TCP connections to vip:port and counts which backend answered each. */
export function tcpSplit(vip: string, port: number, count: number, opts: SplitOptions = {}): Promise<Split> {
  return pool(count, opts.concurrency ?? 16, () => tcpProbe(vip, port, opts.timeoutMs ?? 2000, opts.sourceAddress));
}

/** Sends `count` datagrams, each from a fresh socket, and counts which backend replied to each. */
export function udpSplit(vip: string, port: number, count: number, opts: SplitOptions = {}): Promise<Split> {
  return pool(count, opts.concurrency ?? 16, () => udpProbe(vip, port, opts.timeoutMs ?? 2000, opts.sourceAddress));
}

/** Counts in the order of `ports` (0 for a backend that never answered), for stats.assertSplit. */
export function countsFor(split: Pick<Split, 'counts'>, ports: number[]): number[] {
  return ports.map((p) => split.counts[`backend:${p}`] ?? 0);
}

export interface ContinuousResult {
  ok: number;
  failures: number;
  /** The first few failures, each prefixed with the ms since start (`+123ms …`). */
  errorsSample: string[];
  /** Answers per backend id. */
  counts: Record<string, number>;
  /** Wall time from start to stop, ms. */
  elapsedMs: number;
}

export interface Continuous {
  /** Stops once the connections in flight finish (each is bounded by timeoutMs); returns what happened. */
  stop(): Promise<ContinuousResult>;
  /** What happened so far, without stopping. */
  snapshot(): ContinuousResult;
}

/**
 * Keeps opening connections to vip:port one after another (in `concurrency` loops, default 2),
 * without pause unless `intervalMs`, until `stop()` — used to prove there is no gap while rules
 * change. Stops by itself after `maxDurationMs` (default 10 minutes).
 */
export function continuousTcp(
  vip: string,
  port: number,
  opts: {
    intervalMs?: number;
    timeoutMs?: number;
    concurrency?: number;
    maxDurationMs?: number;
    sourceAddress?: string;
    /**
     * Each connection from the next of these addresses in turn (instead of `sourceAddress`). One
     * address opening connections without pause reuses its source ports within seconds, while the
     * kernel still remembers the previous connection on that port (its TIME_WAIT socket, its conntrack
     * entry): about 1 connection in 10,000 then waits for a SYN retransmission, 1 s or more, whatever
     * the rules (docs/reliability.md). Spread over many addresses, no port comes round again in a test.
     */
    sourceAddresses?: readonly string[];
  } = {},
): Continuous {
  let stopped = false;
  const t0 = Date.now();
  const r: ContinuousResult = { ok: 0, failures: 0, errorsSample: [], counts: {}, elapsedMs: 0 };
  const deadline = t0 + (opts.maxDurationMs ?? 600_000);
  const sources = opts.sourceAddresses;
  let next = 0;
  const loop = async (): Promise<void> => {
    while (!stopped && Date.now() < deadline) {
      try {
        const from = sources?.length ? sources[next++ % sources.length] : opts.sourceAddress;
        const id = await tcpProbe(vip, port, opts.timeoutMs ?? 2000, from);
        r.ok++;
        r.counts[id] = (r.counts[id] ?? 0) + 1;
      } catch (e) {
        r.failures++;
        if (r.errorsSample.length < MAX_ERRORS) r.errorsSample.push(`+${Date.now() - t0}ms ${(e as Error).message}`);
      }
      if (opts.intervalMs) await new Promise((res) => setTimeout(res, opts.intervalMs));
      else await new Promise((res) => setImmediate(res)); // let the code under test run between connections
    }
  };
  const loops = Array.from({ length: opts.concurrency ?? 2 }, loop);
  const snapshot = (): ContinuousResult => ({
    ...r,
    errorsSample: [...r.errorsSample],
    counts: { ...r.counts },
    elapsedMs: Date.now() - t0,
  });
  return {
    snapshot,
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
      return snapshot();
    },
  };
}
