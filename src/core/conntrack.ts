/**
 * After a change removes destinations, the kernel's conntrack table still holds flows of the virtual
 * address that were DNATed to them: a UDP flow keeps going there for as long as it is active, and a
 * TCP client still retransmitting its SYN keeps knocking at the removed destination. This deletes
 * those entries after the kernel accepted the change: over ctnetlink inside the native addon
 * (`conntrackFlush`) when the change went through the native executor, else with `conntrack -D`.
 * IPv4 and IPv6 profiles alike (`[v6]:port` endpoints: `conntrack -D -f ipv6`).
 */
import { childProcess } from '../platform/builtins.js';
import { closeSync, openSync, readSync } from 'node:fs';
import { parseEndpoint, type Endpoint } from '../model/address.js';
import { findBinary } from '../platform/spawn.js';
import { loadAddon, type ConntrackFlow, type NativeAddon } from '../platform/addon.js';
import type { Profile, Protocol } from '../model/types.js';
import { sameProfile } from '../model/profile.js';

export interface StaleFlows {
  protocol: Protocol;
  source: string;
  /** The destination the flows were DNATed to; the virtual address itself for {@link untranslatedFlows}. */
  destination: string;
  /** Flows to the destination a health check drained (told so in the log). */
  drained?: boolean;
}

/**
 * Destinations that `next` no longer sends the virtual address of `old` to. For udp and sctp every
 * flow to them is deleted (their flows have no end); for tcp only those the destination has not
 * answered (SYN_SENT): an established TCP connection to a drained destination is left to finish, as
 * kube-proxy does.
 */
export function staleFlows(old: Profile, next: Profile | undefined): StaleFlows[] {
  // Validated profiles hold canonical endpoint text, so comparing text compares addresses.
  const same = next !== undefined && next.protocol === old.protocol && next.source === old.source;
  let gone = old.destination;
  if (same) {
    const kept = new Set(next.destination);
    gone = gone.filter((d) => !kept.has(d));
  }
  return gone.map((destination) => ({ protocol: old.protocol, source: old.source, destination }));
}

/**
 * The destinations the kernel served (`before`: every virtual address, protocol and destination iptlb's rules DNATed
 * to, as {@link Engine.served} reads them) that a replacement of the kernel's objects took out: `iptlb sync` and a
 * profile applied again (`-use-state -run`), which make the kernel match the state file whatever it held, not an
 * earlier version of the profile. A pair goes when the profile now at its address and protocol (in `profiles`) does
 * not list its destination (a destination it drains, weight 0, keeps its flows), or when no profile is there now,
 * unless `only` is set (then only the addresses of `profiles` are looked at: what the replacement did not touch stays).
 * Pairs at an address of `keep` (another state file's profiles, left as the kernel holds them) never go.
 */
export function replacedFlows(
  before: readonly StaleFlows[],
  profiles: Iterable<Profile>,
  opts: { keep?: Iterable<Profile>; only?: boolean } = {},
): (StaleFlows & { profile: string })[] {
  const mine = new Map<string, Profile>();
  for (const p of profiles) mine.set(`${p.protocol} ${p.source}`, p);
  const theirs = new Set<string>();
  for (const p of opts.keep ?? []) theirs.add(`${p.protocol} ${p.source}`);
  const out: (StaleFlows & { profile: string })[] = [];
  const seen = new Set<string>();
  for (const b of before) {
    const key = `${b.protocol} ${b.source}`;
    if (theirs.has(key) || b.destination === b.source) continue;
    const now = mine.get(key);
    if (now ? now.destination.includes(b.destination) : opts.only) continue;
    const pair = `${key} ${b.destination}`;
    if (seen.has(pair)) continue;
    seen.add(pair);
    out.push({ protocol: b.protocol, source: b.source, destination: b.destination, profile: now?.name ?? '' });
  }
  return out;
}

/**
 * The pairs the kernel served before a commit (`before`, as {@link Engine.served} reads them) that it does not serve
 * after it (`after`), for the conntrack cleanup of profiles applied again as the state file has them (`-use-state
 * -run`, a profile recorded without `-run`): the kernel may have held another version of them, which no version of
 * the state file names. A destination the profile now at that address (in `profiles`) still lists (drained, weight 0)
 * keeps its flows.
 */
export function unservedFlows(
  before: readonly StaleFlows[],
  after: readonly StaleFlows[],
  profiles: () => Iterable<Profile>,
): (StaleFlows & { profile: string })[] {
  const key = (f: StaleFlows): string => `${f.protocol} ${f.source} ${f.destination}`;
  const still = new Set(after.map(key));
  const gone = before.filter((f) => !still.has(key(f)));
  return gone.length ? replacedFlows(gone, profiles()) : [];
}

/**
 * Flows of `p`'s virtual address that no rule translated: made while the kernel held no rule for it
 * (before a first apply, while a profile was deleted or drained whole, before a reboot's `-use-state
 * -run` or a sync's repair). A UDP client that keeps sending would match such an entry for as long as
 * it sends, and never be balanced; a TCP client retransmitting its SYN likewise. The entry's reply
 * comes from the virtual address itself, so these are the flows "DNATed to the virtual address":
 * for udp and sctp every one, for tcp those not answered (SYN_SENT), as for removed destinations. An
 * established connection to a real service on that address (server mode) is left to finish.
 */
export function untranslatedFlows(p: Profile): StaleFlows {
  return { protocol: p.protocol, source: p.source, destination: p.source };
}

/**
 * Destinations a health check drained: those `before` gave connections to (weight above 0) that
 * `after` gives none, and that `configured` does (its own weight above 0: not the operator's drain,
 * whose flows are left alone). `after` undefined: the whole profile left the kernel
 * (`health.allDown: drain`). Their backends do not answer checks: their UDP flows would go nowhere.
 */
export function drainedFlows(configured: Profile, before: Profile, after: Profile | undefined): StaleFlows[] {
  if (before.source !== configured.source || before.protocol !== configured.protocol) return [];
  const weight = (p: Profile, d: string): number => (p.destination.includes(d) ? (p.weights?.[d] ?? 1) : 0);
  return before.destination
    .filter((d) => weight(before, d) > 0 && weight(configured, d) > 0 && (!after || weight(after, d) === 0))
    .map((destination) => ({ protocol: before.protocol, source: before.source, destination, drained: true }));
}

/**
 * The conntrack entries a committed change leaves wrong, for the janitor: flows to destinations that
 * `change` removes from profiles of `state` (what they were) and `next` (what they are now); flows to
 * destinations a health check drained (the kernel's part of the change, `kernel`, gives them weight 0
 * or drops the profile); and flows of a virtual address the kernel starts serving that no rule
 * translated before: a new profile, one moved to another address, one the health checks bring back,
 * and one applied again unchanged, which is how a reboot's `-use-state -run` and a profile recorded
 * without `-run` reach the kernel.
 */
export function changeFlows(
  change: { upsert: readonly Profile[]; remove: readonly string[] },
  state: ReadonlyMap<string, Profile>,
  next: ReadonlyMap<string, Profile>,
  kernel: {
    state: ReadonlyMap<string, Profile>;
    change: { upsert: readonly Profile[]; remove: readonly string[] };
  },
): (StaleFlows & { profile: string })[] {
  const out: (StaleFlows & { profile: string })[] = [];
  const add = (flows: StaleFlows[], profile: string): void => {
    for (const f of flows) out.push({ ...f, profile });
  };
  // Profiles the change applies again as they are (not the health checks' own upserts).
  const again = new Set<string>();
  for (const p of change.upsert) {
    const old = state.get(p.name);
    if (old) add(staleFlows(old, p), p.name);
    if (old && (old === p || sameProfile(old, p))) again.add(p.name);
  }
  for (const n of change.remove) {
    const old = state.get(n);
    if (old) add(staleFlows(old, next.get(n)), n);
  }
  for (const e of kernel.change.upsert) {
    const before = kernel.state.get(e.name);
    const configured = next.get(e.name);
    if (before && configured) add(drainedFlows(configured, before, e), e.name);
    const served = before !== undefined && before.source === e.source && before.protocol === e.protocol;
    if (!served || again.has(e.name)) add([untranslatedFlows(e)], e.name);
  }
  for (const n of kernel.change.remove) {
    const before = kernel.state.get(n);
    const configured = next.get(n);
    if (before && configured) add(drainedFlows(configured, before, undefined), n);
  }
  return out;
}

/**
 * The parsed virtual address and destination of `f`, or undefined when either is unparseable or they are of two
 * families (nothing can match).
 */
function flowEndpoints(f: StaleFlows): { vip: Readonly<Endpoint>; dst: Readonly<Endpoint> } | undefined {
  const vip = parseEndpoint(f.source);
  const dst = parseEndpoint(f.destination);
  if (typeof vip === 'string' || typeof dst === 'string' || vip.family !== dst.family) return undefined;
  return { vip, dst };
}

export interface FlushOptions {
  /** Delete over netlink with the native addon (when it loads); otherwise, or when `false`, spawn `conntrack -D`. */
  native?: boolean;
  /** The addon to use instead of loading it (tests). */
  addon?: Pick<NativeAddon, 'conntrackFlush'>;
  /** The spawner to use instead of running the `conntrack` binary (tests): resolves with exit code and output. */
  run?: (args: string[]) => Promise<{ code: number | null; out: string }>;
  /** The pause between listing half-open tcp entries and deleting them, when spawning (tests). */
  sleep?: (ms: number) => Promise<void>;
}

/** The tcp state whose entries are deleted: the destination has not answered. */
export const HALF_OPEN_STATE = 'SYN_SENT';

/**
 * Spawning, a half-open tcp entry is deleted only if it was already half-open this long before (ms): listed first,
 * deleted after the pause, each by its own tuple and only if still in SYN_SENT then. The `conntrack` tool deletes
 * what its own dump saw, so a handshake that completes between its dump and its delete is cut (its later packets are
 * no longer translated). A live destination answers a SYN in well under this; one that has not answered for this
 * long is the case the cleanup is for, and its client retransmits its SYN only after 1 s. The addon waits as long
 * before it deletes by tuple (kHalfOpenGraceMs in native/conntrack/conntrack.cc): keep the two equal.
 */
export const HALF_OPEN_GRACE_MS = 250;

/** Above this many half-open entries of one flow (a dead destination under load), one delete for the whole flow. */
export const HALF_OPEN_ONE_BY_ONE_MAX = 16;

/** The original source (client) address and port of each entry `conntrack -L` printed. */
export function listedClients(out: string): { ip: string; port: number }[] {
  const found: { ip: string; port: number }[] = [];
  for (const line of out.split('\n')) {
    const m = /\bsrc=(\S+) dst=\S+ sport=(\d+)/.exec(line);
    if (m) found.push({ ip: m[1], port: Number(m[2]) });
  }
  return found;
}

function run(file: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const c = childProcess().spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('error', (e) => resolve({ code: -1, out: e.message }));
    c.on('close', (code) => resolve({ code, out }));
  });
}

const what = (f: StaleFlows): string =>
  f.destination === f.source
    ? `${f.source}/${f.protocol} made before its rules (never balanced)`
    : `${f.source}/${f.protocol} to ${f.destination}${f.drained ? ' (drained: its health check failed)' : ''}`;

/**
 * The line for `deleted` entries of `f` (and `kept` established tcp connections), or none when there is nothing to say.
 */
function removedLine(f: StaleFlows, deleted: number, kept?: number): string | undefined {
  const left = kept ? `${kept} established connection(s) left to finish` : '';
  if (deleted === 0) return left ? `conntrack: ${left} (${what(f)})` : undefined;
  return `conntrack: removed ${deleted} ${f.protocol === 'tcp' ? 'half-open ' : ''}flow(s) of ${what(f)}${left ? `; ${left}` : ''}`;
}

async function flushNative(addon: Pick<NativeAddon, 'conntrackFlush'>, flows: StaleFlows[]): Promise<string[]> {
  const asked: { f: StaleFlows; spec: ConntrackFlow }[] = [];
  for (const f of flows) {
    const ends = flowEndpoints(f);
    if (!ends) continue;
    const { vip, dst } = ends;
    asked.push({
      f,
      spec: { protocol: f.protocol, vip: { ip: vip.ip, port: vip.port }, destination: { ip: dst.ip, port: dst.port } },
    });
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

async function flushSpawned(
  flows: StaleFlows[],
  runner?: FlushOptions['run'],
  sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
): Promise<string[]> {
  let exec = runner;
  if (!exec) {
    const bin = findBinary('conntrack');
    if (!bin)
      return [
        `conntrack: not installed; flows to ${flows.length} removed destination(s) live until they expire (apt-get install -y conntrack)`,
      ];
    exec = (args) => run(bin, args);
  }
  const deletedIn = (out: string): number | undefined => {
    const m = /(\d+) flow entries have been deleted/.exec(out);
    return m ? Number(m[1]) : undefined;
  };
  const firstLine = (out: string): string => out.trim().split('\n')[0];
  interface Work {
    f: StaleFlows;
    /** The flow's selectors (family, protocol, virtual address, destination). */
    args: string[];
    deleted: number;
    failure?: string;
    /** tcp: the clients of the entries listed half-open. */
    clients?: { ip: string; port: number }[];
  }
  const work: Work[] = [];
  for (const f of flows) {
    const ends = flowEndpoints(f);
    if (!ends) continue;
    const { vip, dst } = ends;
    const args = [
      ...(vip.family === 'ipv6' ? ['-f', 'ipv6'] : []),
      '-p',
      f.protocol,
      '--orig-dst',
      vip.ip,
      '--orig-port-dst',
      String(vip.port),
      '--reply-src',
      dst.ip,
      '--reply-port-src',
      String(dst.port),
    ];
    const w: Work = { f, args, deleted: 0 };
    work.push(w);
    if (f.protocol !== 'tcp') {
      // udp and sctp: every entry.
      const r = await exec(['-D', ...args]);
      const n = deletedIn(r.out);
      if (n === undefined) w.failure = firstLine(r.out);
      else w.deleted = n;
      continue;
    }
    // tcp: only entries still in their handshake; established connections are left to finish. Listed now, deleted
    // after the pause if still half-open (HALF_OPEN_GRACE_MS).
    const r = await exec(['-L', ...args, '--state', HALF_OPEN_STATE]);
    if (!/flow entries have been shown/.test(r.out)) w.failure = firstLine(r.out);
    else w.clients = listedClients(r.out);
  }
  const halfOpen = work.filter((w) => w.clients?.length);
  if (halfOpen.length) await sleep(HALF_OPEN_GRACE_MS);
  for (const w of halfOpen) {
    const clients = w.clients!;
    const runs =
      clients.length > HALF_OPEN_ONE_BY_ONE_MAX
        ? [['-D', ...w.args, '--state', HALF_OPEN_STATE]]
        : clients.map((c) => ['-D', ...w.args, '-s', c.ip, '--sport', String(c.port), '--state', HALF_OPEN_STATE]);
    for (const a of runs) {
      const r = await exec(a);
      const n = deletedIn(r.out);
      if (n === undefined) w.failure ??= firstLine(r.out);
      else w.deleted += n;
    }
  }
  const lines: string[] = [];
  for (const w of work) {
    if (w.failure !== undefined) lines.push(`conntrack: could not remove flows of ${what(w.f)}: ${w.failure}`);
    else {
      const line = removedLine(w.f, w.deleted);
      if (line) lines.push(line);
    }
  }
  return lines;
}

const COUNT_FILE = '/proc/sys/net/netfilter/nf_conntrack_count';
/** The open count file of this process's network namespace (close-on-exec, as Node opens every file). */
const count: { fd?: number; buf: Buffer } = { buf: Buffer.alloc(32) };

/**
 * The number of conntrack entries of this process's network namespace (`nf_conntrack_count`, a
 * per-namespace sysctl); 0 when the file is absent (conntrack is not loaded: there is no table).
 * `undefined` when it cannot be read otherwise.
 */
export function conntrackEntries(): number | undefined {
  // Asked after every commit: the file is kept open and read again at offset 0 (a sysctl prints its
  // current value on every read from the start), one pread instead of open + fstat + read + close.
  try {
    count.fd ??= openSync(COUNT_FILE, 'r');
    const len = readSync(count.fd, count.buf, 0, count.buf.length, 0);
    const n = len > 0 ? Number(count.buf.toString('latin1', 0, len)) : NaN;
    return Number.isInteger(n) ? n : undefined;
  } catch (e) {
    // Opened again next time (conntrack may be loaded, or come back, meanwhile).
    if (count.fd !== undefined) {
      try {
        closeSync(count.fd);
      } catch {
        // gone already
      }
      count.fd = undefined;
    }
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 0 : undefined;
  }
}

/** Deletes the flows; returns one log line per destination that had any, or why it could not. */
export async function flushStaleFlows(flows: StaleFlows[], opts: FlushOptions = {}): Promise<string[]> {
  if (flows.length === 0) return [];
  if (opts.addon) return flushNative(opts.addon, flows);
  // Checked here, in TS, before any call: an empty table (or none) has nothing to find, and every
  // dump walks the kernel's whole conntrack hash table (~10 ms at 262,144 buckets, however few
  // entries there are), as does every `conntrack -D`. (The addon checks it again on its worker
  // thread, for its other callers.)
  if (!opts.run && conntrackEntries() === 0) return [];
  if (opts.native) {
    const loaded = loadAddon('core');
    if (loaded.ok) return flushNative(loaded.addon, flows);
  }
  return flushSpawned(flows, opts.run, opts.sleep);
}

/** The longest wait between two flushes, ms. */
const PACE_MAX_MS = 100;

/** Flows a change left stale, with the profile they were of and how to delete them. */
export interface StalePair extends StaleFlows {
  /** The profile the destination was removed from (looked up again right before the flush). */
  profile: string;
  /** Delete over netlink with the native addon (the change went through the native executor). */
  native: boolean;
}

export interface JanitorOptions {
  /** Receives the log lines of each flush (as {@link flushStaleFlows} returns them). */
  log: (line: string) => void;
  /** The profiles as the kernel has them now (health drains applied), read right before each flush. */
  current: () => ReadonlyMap<string, Profile> | Promise<ReadonlyMap<string, Profile>>;
  /** The flush to use instead of {@link flushStaleFlows} (tests). */
  flush?: (flows: StaleFlows[], native: boolean) => Promise<string[]>;
  /** How many times as long as the last flush took to wait before the next one. Default 3. */
  pace?: number;
  /**
   * The namespace's conntrack entry count instead of {@link conntrackEntries} (default with `flush`: unknown, so always
   * flush).
   */
  entries?: () => number | undefined;
  /** The clock that times a flush, ms (tests; default `performance.now`). */
  now?: () => number;
}

/**
 * The conntrack cleanup of one {@link Core}, off the commit path: each accepted change hands its
 * stale pairs over with {@link add} and returns at once; at most one flush runs at a time, and the
 * pairs that arrive meanwhile go into the next one (one call for all of them, the same pair once).
 * Right before a flush, the pairs whose destination is again a destination of that virtual
 * address's current profile are dropped: a change re-added it, and its new flows must not be cut.
 */
export class ConntrackJanitor {
  private pending = new Map<string, StalePair>();
  private running?: Promise<void>;
  /**
   * Flushes run (calls of the flush, one per executor kind present), pairs handed to them, pairs dropped as live again.
   */
  readonly stats = { flushes: 0, pairs: 0, dropped: 0 };

  private readonly entries: () => number | undefined;
  private readonly pace: number;
  private readonly now: () => number;
  /** Callers waiting in {@link idle}: no pacing wait while there are any. */
  private hurry = 0;
  /** Ends the current pacing wait. */
  private wake?: () => void;

  constructor(private readonly opts: JanitorOptions) {
    this.entries = opts.entries ?? (opts.flush ? () => undefined : conntrackEntries);
    this.pace = opts.pace ?? 3;
    this.now = opts.now ?? (() => performance.now());
  }

  /**
   * Whether the changes committed now can have left stale entries: not when the namespace's table
   * is empty (or absent) right after the commit, as every entry to a removed destination was made
   * before it. One read of nf_conntrack_count; the caller skips working out the pairs when false.
   */
  needed(): boolean {
    return this.entries() !== 0;
  }

  /** Queues `pairs` for the next flush and starts one unless one is running. */
  add(pairs: StalePair[]): void {
    for (const p of pairs) {
      const key = `${p.protocol} ${p.source} ${p.destination}`;
      // the same pair again: the newest wins (profile name, executor kind), in its first place
      this.pending.set(key, p);
    }
    if (this.pending.size && !this.running) this.running = this.drain();
  }

  /** Resolves when nothing is queued or being flushed (flushing what is queued without pacing). */
  async idle(): Promise<void> {
    this.hurry++;
    try {
      this.wake?.();
      while (this.running) await this.running;
    } finally {
      this.hurry--;
    }
  }

  /** Pairs queued and not yet flushed. */
  get queued(): number {
    return this.pending.size;
  }

  private async drain(): Promise<void> {
    try {
      // Let the change's promise settle (and the next change start) before the first flush.
      await new Promise<void>((resolve) => setImmediate(resolve));
      while (this.pending.size) {
        const batch = [...this.pending.values()];
        this.pending.clear();
        let live: StalePair[];
        try {
          live = this.stillStale(batch, await this.opts.current());
        } catch {
          live = batch; // the profiles could not be read: flush them all, as before this was deferred
        }
        this.stats.dropped += batch.length - live.length;
        const t0 = this.now();
        for (const native of [true, false]) {
          const flows = live
            .filter((p) => p.native === native)
            .map(({ protocol, source, destination, drained }) => ({
              protocol,
              source,
              destination,
              ...(drained ? { drained } : {}),
            }));
          if (!flows.length) continue;
          this.stats.flushes++;
          this.stats.pairs += flows.length;
          let lines: string[];
          try {
            lines = await (this.opts.flush ?? ((f, n) => flushStaleFlows(f, { native: n })))(flows, native);
          } catch (e) {
            lines = [
              `conntrack: could not remove flows of ${flows.length} removed destination(s): ${String((e as Error)?.message ?? e).split('\n')[0]}`,
            ];
          }
          for (const line of lines) this.opts.log(line);
        }
        // Paced: a dump keeps a core busy in the kernel for its whole walk, which the commits of a
        // churn need; so wait `pace` times as long as this flush took before the next one (the
        // changes of that time are coalesced into it), at most PACE_MAX_MS.
        const gap = Math.min((this.now() - t0) * this.pace, PACE_MAX_MS);
        if (this.pending.size && gap >= 1 && !this.hurry) {
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, gap);
            this.wake = () => (clearTimeout(t), resolve());
          });
          this.wake = undefined;
        }
      }
    } finally {
      this.running = undefined;
    }
  }

  /** `batch` without the pairs whose destination the virtual address's current profile has again. */
  private stillStale(batch: StalePair[], profiles: ReadonlyMap<string, Profile>): StalePair[] {
    let byAddress: Map<string, Profile> | undefined; // built only when a profile is not found by its name
    const owner = (p: StalePair): Profile | undefined => {
      const named = profiles.get(p.profile);
      if (named && named.source === p.source && named.protocol === p.protocol) return named;
      if (!byAddress) {
        byAddress = new Map();
        for (const q of profiles.values()) byAddress.set(`${q.protocol} ${q.source}`, q);
      }
      return byAddress.get(`${p.protocol} ${p.source}`);
    };
    return batch.filter((p) => {
      const o = owner(p);
      if (!o?.destination.includes(p.destination)) return true;
      // A drained destination is live again once the kernel gives it connections again.
      return p.drained === true && (o.weights?.[p.destination] ?? 1) === 0;
    });
  }
}
