/**
 * Backends for child scripts running inside a namespace: TCP servers that answer each connection
 * with `backend:<port>` and close, UDP sockets that answer each datagram likewise. Each records the
 * peers it saw, so a test can tell whether MASQUERADE happened.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';

export interface Backends {
  /** Remote addresses seen by the backend on `port`, one per connection or datagram. */
  peers(port: number): string[];
  close(): Promise<void>;
}

export async function startTcpBackends(ports: number[], host = '127.0.0.1'): Promise<Backends> {
  const servers: Server[] = [];
  const seen = new Map<number, string[]>(ports.map((p) => [p, []]));
  const sockets = new Set<Socket>();
  for (const port of ports) {
    const s = createServer((c) => {
      sockets.add(c);
      c.on('close', () => sockets.delete(c));
      c.on('error', () => {});
      seen.get(port)!.push(c.remoteAddress ?? '?');
      c.end(`backend:${port}\n`);
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen({ port, host, backlog: 1024 }, () => resolve());
    });
    servers.push(s);
  }
  return {
    peers: (p) => seen.get(p) ?? [],
    close: async () => {
      for (const c of sockets) c.destroy();
      await Promise.all(servers.map((s) => new Promise((r) => s.close(() => r(null)))));
    },
  };
}

export async function startUdpBackends(ports: number[], host = '127.0.0.1'): Promise<Backends> {
  const sockets: UdpSocket[] = [];
  const seen = new Map<number, string[]>(ports.map((p) => [p, []]));
  for (const port of ports) {
    const s = createSocket('udp4');
    s.on('message', (_msg, rinfo) => {
      seen.get(port)!.push(rinfo.address);
      s.send(`backend:${port}\n`, rinfo.port, rinfo.address);
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(port, host, () => resolve());
    });
    sockets.push(s);
  }
  return {
    peers: (p) => seen.get(p) ?? [],
    close: async () => {
      await Promise.all(sockets.map((s) => new Promise((r) => s.close(() => r(null)))));
    },
  };
}
