/**
 * After a change removes destinations, the kernel's conntrack table still holds flows of the virtual
 * address that were DNATed to them (a UDP flow keeps going there for as long as it is active). This
 * removes them with one `conntrack -D` per removed destination, after the kernel accepted the change.
 */
import { spawn } from 'node:child_process';
import { parseEndpoint } from './address.js';
import { findBinary } from './executors/spawn.js';
import type { Profile, Protocol } from './types.js';

export interface StaleFlows {
  protocol: Protocol;
  source: string;
  destination: string;
}

/**
 * Destinations that `next` no longer sends the virtual address of `old` to — for udp and sctp only,
 * as kube-proxy does: their flows have no end, while an established TCP connection to a drained
 * destination is left to finish (and costs no process spawn on the hot path).
 */
export function staleFlows(old: Profile, next: Profile | undefined): StaleFlows[] {
  if (old.protocol === 'tcp') return [];
  const kept = next && next.source === old.source && next.protocol === old.protocol ? new Set(next.destination) : new Set<string>();
  return old.destination.filter((d) => !kept.has(d)).map((destination) => ({ protocol: old.protocol, source: old.source, destination }));
}

function run(file: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('error', (e) => resolve({ code: -1, out: e.message }));
    c.on('close', (code) => resolve({ code, out }));
  });
}

/** Deletes the flows; returns one log line per destination that had any, or why it could not. */
export async function flushStaleFlows(flows: StaleFlows[]): Promise<string[]> {
  if (flows.length === 0) return [];
  const bin = findBinary('conntrack');
  if (!bin) return [`conntrack: not installed; flows to ${flows.length} removed destination(s) live until they expire (apt-get install -y conntrack)`];
  const lines: string[] = [];
  for (const f of flows) {
    const vip = parseEndpoint(f.source);
    const dst = parseEndpoint(f.destination);
    if (typeof vip === 'string' || typeof dst === 'string') continue;
    const args = ['-D', '-p', f.protocol, '--orig-dst', vip.ip, '--orig-port-dst', String(vip.port), '--reply-src', dst.ip, '--reply-port-src', String(dst.port)];
    const r = await run(bin, args);
    const m = /(\d+) flow entries have been deleted/.exec(r.out);
    if (m && m[1] !== '0') lines.push(`conntrack: removed ${m[1]} flow(s) of ${f.source}/${f.protocol} to ${f.destination}`);
    else if (!m) lines.push(`conntrack: could not remove flows of ${f.source}/${f.protocol} to ${f.destination}: ${r.out.trim().split('\n')[0]}`);
  }
  return lines;
}
