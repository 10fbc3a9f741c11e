/**
 * Real traffic through a virtual address: which backend answered each TCP connection or UDP
 * datagram. Every loop is bounded in count and time.
 */
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';

export interface Split {
  /** Answers per backend id (`backend:<port>`). */
  counts: Record<string, number>;
  failures: number;
  errors: string[];
}

function oneTcp(host: string, port: number, timeoutMs: number, localAddress?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = connect({ host, port, ...(localAddress ? { localAddress } : {}) });
    let data = '';
    c.setEncoding('utf8');
    c.setTimeout(timeoutMs, () => c.destroy(new Error(`timeout after ${timeoutMs} ms`)));
    c.on('data', (d: string) => (data += d));
    c.on('end', () => resolve(data.trim()));
    c.on('error', reject);
  });
}

async function pool(count: number, concurrency: number, fn: () => Promise<string>): Promise<Split> {
  const out: Split = { counts: {}, failures: 0, errors: [] };
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      next++;
      try {
        const id = await fn();
        out.counts[id] = (out.counts[id] ?? 0) + 1;
      } catch (e) {
        out.failures++;
        if (out.errors.length < 10) out.errors.push((e as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return out;
}

export function tcpSplit(vip: string, port: number, count: number, opts: { concurrency?: number; timeoutMs?: number; sourceAddress?: string } = {}): Promise<Split> {
  return pool(count, opts.concurrency ?? 16, () => oneTcp(vip, port, opts.timeoutMs ?? 2000, opts.sourceAddress));
}

function oneUdp(host: string, port: number, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    const timer = setTimeout(() => {
      s.close();
      reject(new Error(`no udp reply within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('message', (msg) => {
      clearTimeout(timer);
      s.close();
      resolve(msg.toString().trim());
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      s.close();
      reject(e);
    });
    s.send('probe', port, host);
  });
}

/** One datagram per probe, each from a fresh socket (a new source port, so a new conntrack entry). */
export function udpSplit(vip: string, port: number, count: number, opts: { concurrency?: number; timeoutMs?: number } = {}): Promise<Split> {
  return pool(count, opts.concurrency ?? 16, () => oneUdp(vip, port, opts.timeoutMs ?? 2000));
}

export interface Continuous {
  /** Stops after the connection in flight; returns what happened. */
  stop(): Promise<{ ok: number; failures: number; errorsSample: string[] }>;
}

/** Opens connections one after another, without pause, until stopped (at most 10 minutes). */
export function continuousTcp(vip: string, port: number, opts: { intervalMs?: number; timeoutMs?: number; concurrency?: number } = {}): Continuous {
  let stopped = false;
  let ok = 0;
  let failures = 0;
  const errorsSample: string[] = [];
  const deadline = Date.now() + 600_000;
  const loop = async (): Promise<void> => {
    while (!stopped && Date.now() < deadline) {
      try {
        await oneTcp(vip, port, opts.timeoutMs ?? 2000);
        ok++;
      } catch (e) {
        failures++;
        if (errorsSample.length < 10) errorsSample.push((e as Error).message);
      }
      if (opts.intervalMs) await new Promise((r) => setTimeout(r, opts.intervalMs));
    }
  };
  const loops = Array.from({ length: opts.concurrency ?? 2 }, loop);
  return {
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
      return { ok, failures, errorsSample };
    },
  };
}
