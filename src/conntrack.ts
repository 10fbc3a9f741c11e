/**
 * After a change removes destinations, the kernel's conntrack table still holds flows of the virtual
 * address that were DNATed to them: a UDP flow keeps going there for as long as it is active, and a
 * TCP client still retransmitting its SYN keeps knocking at the removed destination. This deletes
 * those entries after the kernel accepted the change: over ctnetlink inside the native addon
 * (`conntrackFlush`) when the change went through the native executor, else with `conntrack -D`.
 */
import { spawn } from 'node:child_process';
import { parseEndpoint } from './address.js';
import { findBinary } from './executors/spawn.js';
import { loadAddon, type ConntrackFlow, type NativeAddon } from './native/addon.js';
import type { Profile, Protocol } from './types.js';

export interface StaleFlows {
  protocol: Protocol;
  source: string;
  destination: string;
}

/**
 * Destinations that `next` no longer sends the virtual address of `old` to. For udp and sctp every
 * flow to them is deleted (their flows have no end); for tcp only half-open ones (SYN_SENT,
 * SYN_RECV): an established TCP connection to a drained destination is left to finish, as
 * kube-proxy does.
 */
export function staleFlows(old: Profile, next: Profile | undefined): StaleFlows[] {
  const kept = next && next.source === old.source && next.protocol === old.protocol ? new Set(next.destination) : new Set<string>();
  return old.destination.filter((d) => !kept.has(d)).map((destination) => ({ protocol: old.protocol, source: old.source, destination }));
}

export interface FlushOptions {
  /** Delete over netlink with the native addon (when it loads); otherwise, or when `false`, spawn `conntrack -D`. */
  native?: boolean;
  /** The addon to use instead of loading it (tests). */
  addon?: Pick<NativeAddon, 'conntrackFlush'>;
  /** The spawner to use instead of running the `conntrack` binary (tests): resolves with exit code and output. */
  run?: (args: string[]) => Promise<{ code: number | null; out: string }>;
}

/** The tcp states `conntrack -D --state` is run with (one state per run) when spawning. */
export const HALF_OPEN_STATES = ['SYN_SENT', 'SYN_RECV'] as const;

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

const what = (f: StaleFlows): string => `${f.source}/${f.protocol} to ${f.destination}`;

/** The line for `deleted` entries of `f` (and `kept` established tcp connections), or none when there is nothing to say. */
function removedLine(f: StaleFlows, deleted: number, kept?: number): string | undefined {
  const left = kept ? `${kept} established connection(s) left to finish` : '';
  if (deleted === 0) return left ? `conntrack: ${left} (${what(f)})` : undefined;
  return `conntrack: removed ${deleted} ${f.protocol === 'tcp' ? 'half-open ' : ''}flow(s) of ${what(f)}${left ? `; ${left}` : ''}`;
}

async function flushNative(addon: Pick<NativeAddon, 'conntrackFlush'>, flows: StaleFlows[]): Promise<string[]> {
  const asked: { f: StaleFlows; spec: ConntrackFlow }[] = [];
  for (const f of flows) {
    const vip = parseEndpoint(f.source);
    const dst = parseEndpoint(f.destination);
    if (typeof vip === 'string' || typeof dst === 'string') continue;
    asked.push({ f, spec: { protocol: f.protocol, vip: { ip: vip.ip, port: vip.port }, destination: { ip: dst.ip, port: dst.port } } });
  }
  if (asked.length === 0) return [];
  try {
    const r = await addon.conntrackFlush(asked.map((a) => a.spec));
    return asked.flatMap(({ f }, i) => removedLine(f, r.flows[i]?.deleted ?? 0, r.flows[i]?.kept) ?? []);
  } catch (e) {
    const err = e as Error & { code?: string };
    const why = `${err.code ? `${err.code}: ` : ''}${String(err.message ?? e).split('\n')[0]}`;
    return asked.map(({ f }) => `conntrack: could not remove flows of ${what(f)}: ${why}`);
  }
}

async function flushSpawned(flows: StaleFlows[], runner?: FlushOptions['run']): Promise<string[]> {
  let exec = runner;
  if (!exec) {
    const bin = findBinary('conntrack');
    if (!bin) return [`conntrack: not installed; flows to ${flows.length} removed destination(s) live until they expire (apt-get install -y conntrack)`];
    exec = (args) => run(bin, args);
  }
  const lines: string[] = [];
  for (const f of flows) {
    const vip = parseEndpoint(f.source);
    const dst = parseEndpoint(f.destination);
    if (typeof vip === 'string' || typeof dst === 'string') continue;
    const args = ['-D', '-p', f.protocol, '--orig-dst', vip.ip, '--orig-port-dst', String(vip.port), '--reply-src', dst.ip, '--reply-port-src', String(dst.port)];
    // tcp: only entries still in their handshake; established connections are left to finish.
    const runs = f.protocol === 'tcp' ? HALF_OPEN_STATES.map((s) => [...args, '--state', s]) : [args];
    let deleted = 0;
    let failure: string | undefined;
    for (const a of runs) {
      const r = await exec(a);
      const m = /(\d+) flow entries have been deleted/.exec(r.out);
      if (m) deleted += Number(m[1]);
      else failure ??= r.out.trim().split('\n')[0];
    }
    if (failure !== undefined) lines.push(`conntrack: could not remove flows of ${what(f)}: ${failure}`);
    else {
      const line = removedLine(f, deleted);
      if (line) lines.push(line);
    }
  }
  return lines;
}

/** Deletes the flows; returns one log line per destination that had any, or why it could not. */
export async function flushStaleFlows(flows: StaleFlows[], opts: FlushOptions = {}): Promise<string[]> {
  if (flows.length === 0) return [];
  if (opts.addon) return flushNative(opts.addon, flows);
  if (opts.native) {
    const loaded = loadAddon();
    if (loaded.ok) return flushNative(loaded.addon, flows);
  }
  return flushSpawned(flows, opts.run);
}
