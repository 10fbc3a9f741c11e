/**
 * The probes: a TCP connect, or a raw HTTP/1.0 GET over one TCP connection (no agent, no keep-alive).
 * Each resolves on success and rejects with a one-line reason. They run from the process's own
 * network namespace and source address (the kernel picks it, as for any local connection).
 */
import { nodeNet } from '../platform/builtins.js';
import { parseExpect } from './config.js';

export interface ProbeTarget {
  kind: 'tcp' | 'http';
  host: string;
  port: number;
  timeoutMs: number;
  path?: string;
  expect?: string;
}

/** A probe; `signal` aborts it (its socket and timer go at once, and it rejects). */
export type Probe = (t: ProbeTarget, signal?: AbortSignal) => Promise<void>;

export const probe: Probe = (t, signal) =>
  new Promise<void>((resolve, reject) => {
    let done = false;
    const sock = nodeNet().connect({ host: t.host, port: t.port, noDelay: true });
    const abort = (): void => finish('stopped');
    const finish = (err?: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', abort);
      sock.destroy();
      if (err === undefined) resolve();
      else reject(new Error(err));
    };
    signal?.addEventListener('abort', abort, { once: true });
    const timer = setTimeout(
      () => finish(`no ${t.kind === 'http' ? 'answer' : 'connection'} within ${t.timeoutMs} ms`),
      t.timeoutMs,
    );
    sock.once('error', (e: NodeJS.ErrnoException) =>
      finish(`${e.code ?? 'error'}${e.syscall ? ` (${e.syscall})` : ''}`),
    );
    sock.once('close', () =>
      finish(t.kind === 'http' ? 'connection closed before a status line' : 'connection closed'),
    );
    if (t.kind === 'tcp') {
      sock.once('connect', () => finish());
      return;
    }
    const [lo, hi] = parseExpect(t.expect ?? '200-399') ?? [200, 399];
    sock.once('connect', () => {
      const host = t.host.includes(':') ? `[${t.host}]` : t.host;
      sock.write(
        `GET ${t.path ?? '/'} HTTP/1.0\r\nHost: ${host}:${t.port}\r\nUser-Agent: iptlb-health\r\nConnection: close\r\n\r\n`,
      );
    });
    let head = '';
    sock.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1');
      // (The status line ends at CRLF; a bare LF, which some servers send and curl accepts, too.)
      const eol = head.indexOf('\n');
      if (eol < 0 && head.length < 512) return;
      // The code is three digits and ends there: `HTTP/1.1 2000` was read as 200 (a healthy verdict for a server that
      // does not speak HTTP right).
      const m = /^HTTP\/1\.[01] ([0-9]{3})(?:[ \r\n]|$)/.exec(head);
      if (!m) return finish('answer is not HTTP');
      const code = Number(m[1]);
      finish(code >= lo && code <= hi ? undefined : `HTTP ${code} (expected ${t.expect ?? '200-399'})`);
    });
  });
