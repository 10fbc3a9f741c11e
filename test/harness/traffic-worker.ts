/**
 * Backends and continuous clients on a thread of their own (a `worker_threads` worker), so that
 * the code under test keeps the main thread's event loop to itself. With the clients in the same
 * loop, every commit waits behind hundreds of connection callbacks: a no-gap fixture then ran 4×
 * slower and spent 5–8 s of CPU more on a 500-reset run. Here the traffic and the commits run
 * truly side by side, on two threads.
 *
 * Main thread: `const t = await startTrafficWorker(ports)` (backends listen), `await t.start(clients)`
 * (clients run), then `await t.stop()` for the results.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { startTcpBackends, type Backends } from './backends.js';
import { continuousTcp, type Continuous, type ContinuousResult } from './traffic.js';

/** A continuous client: `continuousTcp(vip, port, options)` on the worker's thread. */
export interface WorkerClient {
  vip: string;
  port: number;
  options?: Parameters<typeof continuousTcp>[2];
}

export interface TrafficWorkerResult {
  /** One result per client, in the order given. */
  clients: ContinuousResult[];
  /** Connections served per backend port. */
  served: Record<number, number>;
}

export interface TrafficWorker {
  /** Starts continuous clients; resolves once they run. */
  start(clients: WorkerClient[]): Promise<void>;
  /** Stops the clients (connections in flight finish), closes the backends and ends the worker. */
  stop(): Promise<TrafficWorkerResult>;
}

/**
 * Starts the worker with TCP backends on 127.0.0.1 at `backends` (each answers `backend:<port>\n`);
 * resolves once they listen.
 */
export function startTrafficWorker(backends: number[]): Promise<TrafficWorker> {
  const w = new Worker(new URL(import.meta.url), { workerData: { backends } });
  // Each request waits for the worker's next answer of its kind; a worker that dies fails them all.
  const waiting = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  const ask = <T>(kind: string, msg?: unknown): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      waiting.set(kind, { resolve: resolve as (v: unknown) => void, reject });
      if (msg !== undefined) w.postMessage(msg);
    });
  const fail = (e: Error): void => {
    for (const x of waiting.values()) x.reject(e);
    waiting.clear();
  };
  w.on('message', (m: { kind: string; value?: unknown }) => {
    const x = waiting.get(m.kind);
    waiting.delete(m.kind);
    x?.resolve(m.value);
  });
  w.on('error', fail);
  w.on('exit', (code) => fail(new Error(`traffic worker exited (code ${code}) before it answered`)));
  const tw: TrafficWorker = {
    start: (clients) => ask<void>('started', { op: 'start', clients }),
    stop: () => ask<TrafficWorkerResult>('stopped', { op: 'stop' }),
  };
  return ask<void>('ready').then(() => tw);
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  const { backends: ports } = workerData as { backends: number[] };
  const backends: Backends | undefined = ports.length ? await startTcpBackends(ports) : undefined;
  const clients: Continuous[] = [];
  port.on('message', async (m: { op: 'start'; clients: WorkerClient[] } | { op: 'stop' }) => {
    if (m.op === 'start') {
      clients.push(...m.clients.map((c) => continuousTcp(c.vip, c.port, c.options)));
      port.postMessage({ kind: 'started' });
      return;
    }
    const results = await Promise.all(clients.map((c) => c.stop()));
    const served = backends?.served() ?? {};
    await backends?.close();
    port.postMessage({ kind: 'stopped', value: { clients: results, served } });
    port.close();
  });
  port.postMessage({ kind: 'ready' });
}
