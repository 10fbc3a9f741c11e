/**
 * Backends for child scripts running inside a namespace: TCP servers that answer each connection
 * with their id (`backend:<port>\n`) and close, UDP sockets that answer each datagram likewise.
 * Each records the remote address of every peer, so a test can tell whether MASQUERADE happened
 * (did the backend see the client's address, or the proxy's?).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';

export interface Backends {
  /** The ports served, in the order given. */
  readonly ports: number[];
  /** Remote addresses seen by the backend on `port`, one per connection or datagram, in order. */
  peers(port: number): string[];
  /** Connections (TCP) or datagrams (UDP) served per port. */
  served(): Record<number, number>;
  /** Stops serving and releases the ports. Idempotent. */
  close(): Promise<void>;
}

/** The id a backend on `port` answers with (without the newline), as counted by traffic.ts. */
export function backendId(port: number): string {
  return `backend:${port}`;
}

function bindError(kind: string, host: string, port: number, e: Error): Error {
  return new Error(`${kind} backend ${host}:${port}: ${e.message}`);
}

/** TCP servers on host:port for each port (host: 127.0.0.1, 0.0.0.0, or an interface address). */
export async function startTcpBackends(ports: number[], host = '127.0.0.1'): Promise<Backends> {
  const servers: Server[] = [];
  const seen = new Map<number, string[]>(ports.map((p) => [p, []]));
  const sockets = new Set<Socket>();
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      for (const c of sockets) c.destroy();
      await Promise.all(servers.map((s) => new Promise((r) => s.close(() => r(null)))));
    })());
  try {
    for (const port of ports) {
      const s = createServer((c) => {
        sockets.add(c);
        c.on('close', () => sockets.delete(c));
        c.on('error', () => {});
        seen.get(port)!.push(c.remoteAddress?.replace(/^::ffff:/, '') ?? '?');
        c.end(`${backendId(port)}\n`);
      });
      await new Promise<void>((resolve, reject) => {
        s.once('error', (e) => reject(bindError('tcp', host, port, e)));
        s.listen({ port, host, backlog: 1024 }, () => resolve());
      });
      servers.push(s);
    }
  } catch (e) {
    await close();
    throw e;
  }
  return {
    ports: [...ports],
    peers: (p) => [...(seen.get(p) ?? [])],
    served: () => Object.fromEntries([...seen].map(([p, a]) => [p, a.length])),
    close,
  };
}

/** UDP sockets on host:port for each port (an IPv6 host too), replying to every datagram with their id. */
export async function startUdpBackends(ports: number[], host = '127.0.0.1'): Promise<Backends> {
  const sockets: UdpSocket[] = [];
  const seen = new Map<number, string[]>(ports.map((p) => [p, []]));
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= Promise.all(sockets.map((s) => new Promise((r) => s.close(() => r(null))))).then(() => {}));
  try {
    for (const port of ports) {
      const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      sockets.push(s);
      s.on('message', (_msg, rinfo) => {
        seen.get(port)!.push(rinfo.address);
        s.send(`${backendId(port)}\n`, rinfo.port, rinfo.address);
      });
      await new Promise<void>((resolve, reject) => {
        s.once('error', (e) => reject(bindError('udp', host, port, e)));
        s.bind(port, host, () => resolve());
      });
      s.on('error', () => {});
    }
  } catch (e) {
    await close();
    throw e;
  }
  return {
    ports: [...ports],
    peers: (p) => [...(seen.get(p) ?? [])],
    served: () => Object.fromEntries([...seen].map(([p, a]) => [p, a.length])),
    close,
  };
}
