/**
 * The seam between health checks and the transaction core: an overlay of runtime destination
 * states. The state file keeps the configured profiles; the kernel gets *effective* ones, where a
 * destination that health checks found down has weight 0 (drained: no new connections, established
 * ones keep working). Every kernel plan and every kernel comparison of {@link Core} (apply, delete,
 * status, sync, drift) goes through {@link HealthOverlay.begin} or {@link HealthOverlay.kernelState},
 * so a drained destination is neither reported as "modified" nor repaired back.
 *
 * Two sets of down destinations per profile: `committed` (what the kernel holds) and `desired` (what
 * the checker decided). A transaction plans from the committed effective profiles to the desired
 * ones: health changes ride along with any change, and a health-only change is a transaction whose
 * profile change is empty. The state file is never written for a health change.
 *
 * A process that does not run checks (a one-shot CLI) can follow the overlay another process
 * publishes beside the state file ({@link healthFileOf}), so its status, sync and apply plan the same
 * effective profiles.
 */
import { pidAlive, pidIdentity } from '../platform/pid.js';
import { readFileSync, statSync } from 'node:fs';
import * as fsp from '../platform/fsp.js';
import * as path from 'node:path';
import type { Profile } from '../model/types.js';
import type { DestinationCounters, HealthFileStatus } from '../model/report.js';

export type DestinationHealth = 'up' | 'down' | 'unchecked';

/** What is known of one destination's checks. Times are ms since the epoch. */
export interface DestinationHealthInfo {
  state: DestinationHealth;
  /** When the state last changed. */
  since?: number;
  /** When the last check finished. */
  lastCheck?: number;
  /** Why the last check failed (absent after a success). */
  lastError?: string;
}

/** The file another process publishes its health in: beside the state file, `<state file>.health.json`. */
export function healthFileOf(statePath: string): string {
  return `${statePath}.health.json`;
}

/**
 * The lock the process that checks a state file's destinations holds while it runs its checks,
 * beside the state file: `<state file>.health.lock`. One checker per state file: a second one would
 * publish its own view over the first's, and give the kernel back the weights the first drained when
 * it stops.
 */
export function checkerLockOf(statePath: string): string {
  return `${statePath}${CHECKER_LOCK_SUFFIX}`;
}
export const CHECKER_LOCK_SUFFIX = '.health.lock';

/** The pid of the live process that published `file` ({@link healthFileOf}), if any (this one included). */
export function publisherOf(file: string): number | undefined {
  try {
    const data = JSON.parse(readFileSync(file, 'utf8')) as Partial<PublishedHealth>;
    const pid = data?.pid;
    return typeof pid === 'number' && (pid === process.pid || writerRuns(pid, data.pidStart)) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The files a running checker of this process publishes (its checker lock held). Another handle of
 * this process on the same state file follows such a file as it follows another process's: its
 * `apply` and `sync` keep that checker's drains. A file that names this process and that no running
 * checker of it publishes (one left by a checker that could not remove it) is ignored.
 */
const publishedHere = new Set<string>();

/** Records that a checker of this process publishes `file` (`on`), or no longer does. */
export function publishingHere(file: string, on: boolean): void {
  if (on) publishedHere.add(file);
  else publishedHere.delete(file);
}

type DownSets = Map<string, ReadonlySet<string>>;

const effCache = new WeakMap<Profile, { down: ReadonlySet<string>; eff: Profile | null }>();

/**
 * The profile the kernel gets when `down` destinations are down: each at weight 0; when every
 * destination that takes connections is down, the profile itself (`allDown: keep`, the default) or
 * null (`allDown: drain`: no rules at all). Profiles without a health check are never changed.
 */
export function effectiveProfile(p: Profile, down: ReadonlySet<string> | undefined): Profile | null {
  if (!down || down.size === 0 || !p.health) return p;
  const hit = effCache.get(p);
  if (hit && hit.down === down) return hit.eff;
  let active = 0;
  const drained: string[] = [];
  for (const d of p.destination) {
    const w = p.weights?.[d] ?? 1;
    if (w === 0) continue;
    active++;
    if (down.has(d)) drained.push(d);
  }
  let eff: Profile | null;
  if (drained.length === 0) eff = p;
  else if (drained.length === active) eff = p.health.allDown === 'drain' ? null : p;
  else {
    const weights: Record<string, number> = { ...(p.weights ?? {}) };
    for (const d of drained) weights[d] = 0;
    eff = Object.freeze({ ...p, weights: Object.freeze(weights) });
  }
  effCache.set(p, { down, eff });
  return eff;
}

/** The part of a transaction the kernel sees. */
export interface KernelPart<C extends { upsert: Profile[]; remove: string[] }> {
  /** Effective profiles the kernel holds now. */
  state: Map<string, Profile>;
  /** Effective change to commit. */
  change: C;
  /** Call once the kernel holds the change: the desired health is then the committed one. */
  done(): void;
}

export class HealthOverlay {
  private committed: DownSets = new Map();
  private desired: DownSets = new Map();
  /** Profiles whose desired set differs from the committed one. */
  private pending = new Set<string>();
  /** Per profile and destination: what the checks found (shown by status, metrics, the published file). */
  readonly info = new Map<string, Map<string, DestinationHealthInfo>>();
  private followFile?: string;
  private followVersion?: string;
  /** Where a follower says that it stops following a stale file ({@link refresh}); set by the core that logs. */
  log?: (line: string) => void;
  /** The version of the followed file last said to be stale (said once per version). */
  private saidStale?: string;

  /** Whether anything is drained or about to be (nothing to do for the core otherwise). */
  get active(): boolean {
    return this.committed.size > 0 || this.pending.size > 0;
  }

  /** Sets the destinations of `profile` that are down (the checker's decision); an empty set: all up. */
  setDown(profile: string, down: ReadonlySet<string>): void {
    if (down.size === 0) this.desired.delete(profile);
    else this.desired.set(profile, down);
    const now = this.desired.get(profile);
    if (!sameSet(now, this.committed.get(profile))) this.pending.add(profile);
    else this.pending.delete(profile);
  }

  /** Forgets a profile (deleted, or its check removed). */
  forget(profile: string): void {
    this.setDown(profile, new Set());
    this.info.delete(profile);
  }

  /** The destinations of `profile` drained in the kernel. */
  committedDown(profile: string): ReadonlySet<string> | undefined {
    return this.committed.get(profile);
  }

  /** Whether a health change waits for its commit. */
  get hasPending(): boolean {
    return this.pending.size > 0;
  }

  /** The effective profiles the kernel holds: `state` itself when nothing is drained. */
  kernelState(state: Map<string, Profile>): Map<string, Profile> {
    if (this.committed.size === 0) return state;
    let out: Map<string, Profile> | undefined;
    for (const [name, down] of this.committed) {
      const p = state.get(name);
      if (!p) continue;
      const e = effectiveProfile(p, down);
      if (e === p) continue;
      out ??= new Map(state);
      if (e) out.set(name, e);
      else out.delete(name);
    }
    return out ?? state;
  }

  /**
   * The kernel's part of a transaction that changes `state` by `change`: from the committed
   * effective profiles to the desired ones, with the profiles whose health changed added.
   */
  begin<C extends { upsert: Profile[]; remove: string[] }>(state: Map<string, Profile>, change: C): KernelPart<C> {
    if (!this.active) return { state, change, done: () => {} };
    const kstate = this.kernelState(state);
    const upsert: Profile[] = [];
    const remove: string[] = [];
    const touched = new Set<string>();
    for (const p of change.upsert) {
      touched.add(p.name);
      const e = effectiveProfile(p, this.desired.get(p.name));
      if (e) upsert.push(e);
      else if (kstate.has(p.name)) remove.push(p.name);
    }
    for (const n of change.remove) {
      touched.add(n);
      if (kstate.has(n) || !state.has(n)) remove.push(n);
    }
    const pending = [...this.pending];
    for (const n of pending) {
      if (touched.has(n)) continue;
      const p = state.get(n);
      if (!p) continue;
      const before = kstate.get(n);
      const after = effectiveProfile(p, this.desired.get(n));
      if (before === after) continue;
      if (after) upsert.push(after);
      else if (before) remove.push(n);
    }
    const kchange = { ...change, upsert, remove };
    // What this transaction plans: the desired sets now (more may be decided while it commits).
    const planned = new Map<string, ReadonlySet<string> | undefined>();
    for (const n of [...touched, ...pending]) planned.set(n, this.desired.get(n));
    return {
      state: kstate,
      change: kchange,
      done: () => {
        for (const [n, d] of planned) {
          if (d && d.size) this.committed.set(n, d);
          else this.committed.delete(n);
          if (sameSet(this.desired.get(n), this.committed.get(n))) this.pending.delete(n);
          else this.pending.add(n);
        }
      },
    };
  }

  /**
   * Reports of `status` compared against {@link kernelState}, told in the configured terms: the
   * configured weight, the effective one when it differs, and each destination's health.
   */
  annotate<R extends { name: string; destinations: DestinationCounters[] }>(
    reports: R[],
    state: Map<string, Profile>,
    kstate: Map<string, Profile>,
    omitted: (p: Profile) => R,
  ): R[] {
    const out: R[] = [];
    for (const r of reports) {
      const p = state.get(r.name);
      if (p?.health) this.annotateOne(r, p, kstate.get(r.name) ?? null);
      out.push(r);
    }
    if (kstate !== state) {
      for (const p of state.values()) {
        if (!kstate.has(p.name)) {
          const r = omitted(p);
          this.annotateOne(r, p, null);
          out.push(r);
        }
      }
      out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    }
    return out;
  }

  private annotateOne(
    r: { name: string; status?: string; detail?: string; destinations: DestinationCounters[] },
    p: Profile,
    eff: Profile | null,
  ): void {
    const info = this.info.get(p.name);
    const down = this.committed.get(p.name);
    const allDown = !!down?.size && p.destination.every((d) => (p.weights?.[d] ?? 1) === 0 || down.has(d));
    if (eff === p && allDown && r.status === 'in-sync' && r.detail === undefined) {
      r.detail = 'every destination is down: all kept (health.allDown: keep)';
    }
    for (const d of r.destinations) {
      const configured = p.weights?.[d.destination] ?? 1;
      const effective = eff ? (eff.weights?.[d.destination] ?? 1) : 0;
      if (configured !== 1) d.weight = configured;
      else delete d.weight;
      if (effective !== configured) d.effectiveWeight = effective;
      const i = info?.get(d.destination);
      d.health = i?.state ?? 'unchecked';
      if (i?.lastCheck !== undefined) d.lastCheck = new Date(i.lastCheck).toISOString();
      if (i?.lastError !== undefined) d.lastError = i.lastError;
    }
  }

  // --- publishing and following -----------------------------------------------------------

  /** The overlay as the published file holds it: what the kernel holds, and what the checks found. */
  snapshot(staleAfterMs?: number): PublishedHealth {
    const profiles: PublishedHealth['profiles'] = Object.create(null); // a profile may be named `__proto__`
    for (const [name, m] of this.info) {
      const destinations: Record<string, DestinationHealthInfo> = {};
      for (const [d, i] of m) destinations[d] = i;
      profiles[name] = { drained: [...(this.committed.get(name) ?? [])], destinations };
    }
    for (const [name, down] of this.committed)
      if (!profiles[name]) profiles[name] = { drained: [...down], destinations: {} };
    const start = (ownIdentity ??= pidIdentity(process.pid) ?? '');
    return {
      version: 1,
      pid: process.pid,
      ...(start ? { pidStart: start } : {}),
      updatedAt: Date.now(),
      ...(staleAfterMs !== undefined ? { staleAfterMs } : {}),
      profiles,
    };
  }

  /**
   * Writes {@link snapshot} to `file` atomically (temp file + rename). `staleAfterMs`: the writer promises to write
   * the file again within this long while it runs; a follower stops following a file older than that.
   */
  async publish(file: string, staleAfterMs?: number): Promise<void> {
    const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}`);
    await fsp.writeFile(tmp, JSON.stringify(this.snapshot(staleAfterMs)) + '\n', { mode: 0o644 });
    await fsp.rename(tmp, file);
  }

  /** The file followed ({@link follow}), if any. */
  get following(): string | undefined {
    return this.followFile;
  }

  /** Follows the file another (live) process publishes: {@link refresh} loads it when it changed. */
  follow(file: string | undefined): void {
    this.followFile = file;
    this.followVersion = undefined;
  }

  /**
   * Follow mode: loads the published file when it changed. A file whose writer is no longer running
   * (or is this process, where no checker of it publishes the file now) is ignored: nobody checks
   * health then, and the configured weights hold.
   */
  refresh(): void {
    if (!this.followFile) return;
    let version: string | undefined;
    try {
      const st = statSync(this.followFile, { bigint: true });
      version = `${st.ino}:${st.mtimeNs}:${st.size}`;
    } catch {
      version = undefined;
    }
    if (version === this.followVersion && version !== undefined) {
      if (this.writerPid === undefined) {
        // Not followed: a stale file's writer that has died since is said so (one pid check, for such files only).
        const seen = this.seen;
        if (seen?.state === 'stale' && !writerRuns(seen.pid, seen.pidStart)) seen.state = 'not-running';
        return;
      }
      if (writerRuns(this.writerPid, this.writerStart) && !this.staleNow(version, this.writerPid)) return;
    }
    this.followVersion = version;
    this.committed = new Map();
    this.desired = new Map();
    this.pending.clear();
    this.info.clear();
    this.writerPid = undefined;
    this.writerStart = undefined;
    this.writerUpdatedAt = undefined;
    this.writerStaleAfterMs = undefined;
    this.seen = undefined;
    if (version === undefined) return;
    let data: PublishedHealth;
    try {
      data = JSON.parse(readFileSync(this.followFile, 'utf8')) as PublishedHealth;
    } catch {
      return;
    }
    if (data?.version !== 1 || typeof data.pid !== 'number' || !isRecord(data.profiles)) return;
    const seen: SeenFile = {
      state: 'not-running',
      pid: data.pid,
      pidStart: data.pidStart,
      ...(isTime(data.updatedAt) ? { updatedAt: data.updatedAt } : {}),
      ...(isStaleAfter(data.staleAfterMs) ? { staleAfterMs: data.staleAfterMs } : {}),
      profiles: data.profiles,
    };
    this.seen = seen;
    if ((data.pid === process.pid && !publishedHere.has(this.followFile)) || !writerRuns(data.pid, data.pidStart))
      return;
    // A writer that runs but has not written its file for longer than it promised (stopped by SIGSTOP, a frozen
    // cgroup, a hung event loop): nobody checks the destinations now. Files of writers before 2026-12-07 have no
    // staleAfterMs (and were written only when a check changed something): the pid alone decides for them.
    if (isTime(data.updatedAt) && isStaleAfter(data.staleAfterMs)) {
      this.writerUpdatedAt = data.updatedAt;
      this.writerStaleAfterMs = data.staleAfterMs;
      seen.state = 'stale';
      if (this.staleNow(version, data.pid)) return;
    }
    seen.state = 'followed';
    this.writerPid = data.pid;
    this.writerStart = data.pidStart;
    // Written by iptlb, but read defensively: a part of a wrong shape (a hand edit, another version) is
    // ignored rather than failing every command that reads the file.
    for (const [name, p] of Object.entries(data.profiles as Record<string, unknown>)) {
      if (!isRecord(p)) continue;
      const drained = Array.isArray(p.drained) ? p.drained.filter((d): d is string => typeof d === 'string') : [];
      if (drained.length) {
        const s = new Set(drained);
        this.committed.set(name, s);
        this.desired.set(name, s);
      }
      const m = new Map<string, DestinationHealthInfo>();
      if (isRecord(p.destinations))
        for (const [d, i] of Object.entries(p.destinations)) {
          const info = healthInfoOf(i);
          if (info) m.set(d, info);
        }
      this.info.set(name, m);
    }
  }
  private writerPid?: number;
  private writerStart?: string;
  /** The followed file as last read (whether followed or not), for {@link fileStatus}. */
  private seen?: SeenFile;

  /**
   * The followed file as the last {@link refresh} found it: followed, or not and why (`iptlb status --json`'s
   * `healthFile`, the metrics' `iptlb_health_file_*`); undefined when this overlay follows no file, or there is none
   * of iptlb's shape. Costs nothing more than that refresh (its age is taken from the clock now). With `state` (the
   * profiles compared), `drained` lists only what the file's drains took out of the kernel: a file holds each profile's
   * down destinations, also those every-destination-down kept (`allDown: keep`) and those configured at weight 0.
   */
  fileStatus(state?: ReadonlyMap<string, Profile>): HealthFileStatus | undefined {
    const s = this.seen;
    if (!s || !this.followFile) return undefined;
    const out: HealthFileStatus = { file: this.followFile, state: s.state, pid: s.pid };
    if (s.updatedAt !== undefined) {
      out.updatedAt = new Date(s.updatedAt).toISOString();
      out.ageMs = Date.now() - s.updatedAt;
    }
    if (s.staleAfterMs !== undefined) out.staleAfterMs = s.staleAfterMs;
    if (s.state !== 'followed') {
      const drained: Record<string, string[]> = {};
      let any = false;
      for (const [name, p] of Object.entries(s.profiles)) {
        if (!isRecord(p) || !Array.isArray(p.drained)) continue;
        let d = p.drained.filter((x): x is string => typeof x === 'string');
        const profile = state?.get(name);
        if (profile && d.length) {
          const eff = effectiveProfile(profile, new Set(d));
          d = eff === profile ? [] : d.filter((x) => tookOut(profile, eff, x));
        }
        if (!d.length) continue;
        // A plain object for the API's callers; defined, not assigned: a profile may be named `__proto__`.
        Object.defineProperty(drained, name, { value: d, enumerable: true, writable: true, configurable: true });
        any = true;
      }
      if (any) out.drained = drained;
    }
    return out;
  }
  private writerUpdatedAt?: number;
  private writerStaleAfterMs?: number;

  /**
   * Whether the followed file (this version of it, by `pid`) is older than its writer promised: no more than
   * `staleAfterMs` from its `updatedAt`, either way (a clock set back makes a file look new; its writer, when it runs,
   * writes it again with the new time within its period). Said once per version of the file.
   */
  private staleNow(version: string, pid: number): boolean {
    if (this.writerUpdatedAt === undefined || this.writerStaleAfterMs === undefined) return false;
    const age = Date.now() - this.writerUpdatedAt;
    if (Math.abs(age) <= this.writerStaleAfterMs) return false;
    if (this.saidStale !== version) {
      this.saidStale = version;
      this.log?.(
        age > 0
          ? `health: not following ${this.followFile}: process ${pid} runs but has not written it for ${(age / 1000).toFixed(1)} s (it writes it again within ${(this.writerStaleAfterMs / 1000).toFixed(1)} s while it checks: stopped, frozen or hung); nobody checks the destinations, the configured weights hold`
          : `health: not following ${this.followFile}: process ${pid} wrote it ${(-age / 1000).toFixed(1)} s ahead of this clock (the clock was set back since, and it has not written it again within ${(this.writerStaleAfterMs / 1000).toFixed(1)} s); the configured weights hold`,
      );
    }
    return true;
  }
}

/** Whether destination `d` of `p` takes connections and `eff`, the profile the kernel gets, gives it none. */
function tookOut(p: Profile, eff: Profile | null, d: string): boolean {
  if (!p.destination.includes(d) || (p.weights?.[d] ?? 1) === 0) return false;
  return eff === null || (eff.weights?.[d] ?? 1) === 0;
}

/** The followed file as {@link HealthOverlay.refresh} last read it. */
interface SeenFile {
  state: HealthFileStatus['state'];
  pid: number;
  pidStart: unknown;
  updatedAt?: number;
  staleAfterMs?: number;
  profiles: Record<string, unknown>;
}

/** A bound a writer promises ({@link PublishedHealth.staleAfterMs}): a whole number of ms, at least one. */
function isStaleAfter(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1;
}

let ownIdentity: string | undefined;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A time (ms since the epoch) a Date can show. */
function isTime(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v) && Math.abs(v) <= 8.64e15;
}

/** A destination's info as a published file holds it, or undefined when it is not of that shape. */
function healthInfoOf(i: unknown): DestinationHealthInfo | undefined {
  if (!isRecord(i) || (i.state !== 'up' && i.state !== 'down' && i.state !== 'unchecked')) return undefined;
  return {
    state: i.state,
    ...(isTime(i.since) ? { since: i.since } : {}),
    ...(isTime(i.lastCheck) ? { lastCheck: i.lastCheck } : {}),
    ...(typeof i.lastError === 'string' ? { lastError: i.lastError } : {}),
  };
}

/**
 * Whether the process that wrote the file still runs: its pid is alive and, when the file says when
 * it started, it is that process (a pid reused after a crash or a reboot is not).
 */
function writerRuns(pid: number, start: unknown): boolean {
  if (!pidAlive(pid)) return false;
  return typeof start !== 'string' || pidIdentity(pid) === start;
}

export interface PublishedHealth {
  version: 1;
  pid: number;
  /** The writer's boot id and start time ({@link pidIdentity}); absent from files of older versions. */
  pidStart?: string;
  /** When it was written (ms since the epoch, the writer's clock). */
  updatedAt: number;
  /**
   * The writer writes the file again within this long (ms) while it runs and checks; a file not written for longer
   * (by either clock's reading) is not followed: its writer is stopped or hung. Absent from files of older versions,
   * which are followed while their writer's pid runs.
   */
  staleAfterMs?: number;
  profiles: Record<string, { drained: string[]; destinations: Record<string, DestinationHealthInfo> }>;
}

function sameSet(a: ReadonlySet<string> | undefined, b: ReadonlySet<string> | undefined): boolean {
  if (!a || a.size === 0) return !b || b.size === 0;
  if (!b || a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}
