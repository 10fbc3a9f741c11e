/**
 * HealthChecker: runs the health checks of every profile that has one, and drains (weight 0) the
 * destinations found down through the core's {@link HealthOverlay}. One scheduler (a min-heap of due
 * times and a single timer) for all destinations; an endpoint several profiles share with the same
 * check is probed once; at most one probe in flight per destination; each
 * destination's next check is due one interval after its last one started, jittered by ±10 %, and
 * the first checks are spread over the first interval, so many profiles do not probe in lock-step.
 *
 * Transitions: `fall` consecutive failures → down (drained); `rise` consecutive successes → up.
 * A destination starts `unchecked`, which the kernel treats as up (its configured weight). The
 * transitions of one interval are committed together, in one transaction per address family (the
 * state file is never written for them): a transition opens a commit window that stays open while
 * other destinations are part way through a failure (or success) streak, until each has crossed its
 * threshold or broken its streak, at most the checks they still need (a few intervals); with no
 * other destination part way, the commit is at once. Transitions decided while a commit is in flight
 * go in the next one.
 */
import { EventEmitter } from 'node:events';
import { parseEndpoint } from '../model/address.js';
import type { Core, TransactionResult } from '../core/core.js';
import type { Profile } from '../model/types.js';
import { sameHealth, type HealthConfig } from './config.js';
import {
  CHECKER_LOCK_SUFFIX,
  checkerLockOf,
  effectiveProfile,
  healthFileOf,
  publisherOf,
  publishingHere,
  type DestinationHealth,
  type DestinationHealthInfo,
} from './effective.js';
import { tryLockBeside, type HeldLock } from '../platform/lock.js';
import type { Probe } from './probe.js';
import { createProber, type Prober } from './native-probe.js';
import * as fsp from '../platform/fsp.js';
import { apart, callApart, inheritedKey, INHERITED, IptlbError } from '../model/errors.js';
import { show } from '../model/profile.js';

export interface HealthCheckerOptions {
  /** One line per transition and per failed commit. Default: none. */
  log?: (line: string) => void;
  /**
   * Wait this long more after the commit window closes (see the class comment) before committing, ms. Default 0.
   */
  batchMs?: number;
  /**
   * Commit windows: a transition waits for the destinations part way through a streak (default true). false: commit
   * each transition at once (only those decided while a commit is in flight go together).
   */
  windows?: boolean;
  /** How often the profiles are re-read (new, changed or deleted profiles), ms. Default 1000. */
  refreshMs?: number;
  /**
   * Publish the health beside the state file (`<state file>.health.json`), so one-shot `iptlb status`
   * shows it and `iptlb sync`/`apply` keep drained destinations drained. Default true when the core
   * has a state file. A checker that publishes holds `<state file>.health.lock` while it runs: one
   * per state file ({@link HealthChecker.start} refuses a second with ELOCK).
   */
  publish?: boolean;
  /**
   * How often the published file is written again, ms, with new check times or none (at once after a transition too).
   * Default 2000. Followers stop following a file not written for {@link staleAfterOf}(publishMs): its checker is
   * stopped or hung.
   */
  publishMs?: number;
  /** On stop, give the kernel back the configured weights (nobody checks any more). Default true. */
  restoreOnStop?: boolean;
  /** Jitter of the interval, as a fraction. Default 0.1. */
  jitter?: number;
  /**
   * Scheduler tick, ms: due checks are started at the next multiple of it, so one timer and one hand-over to the
   * prober serve every check due within it (at 1,000 checks/s: 100 ticks/s rather than 1,000). Default 10; 0: a timer
   * per due time.
   */
  tickMs?: number;
  /**
   * Who sends tcp probes: `native` (the addon's prober thread), `node` (Node sockets), or `auto` (the default: native
   * when the addon loads, else Node, logged once). http probes always use Node sockets.
   */
  prober?: 'auto' | 'native' | 'node';
  /** @internal tests and benchmarks: the probe function (replaces the prober) and the random source. */
  probe?: Probe;
  random?: () => number;
}

const ONE_DAY_MS = 86_400_000;
/** Each option's check: undefined when fine, else what it must be. */
const CHECKER_OPTIONS: Record<keyof HealthCheckerOptions, (v: unknown) => string | undefined> = {
  log: (v) => (typeof v === 'function' ? undefined : 'must be a function (line: string) => void'),
  batchMs: (v) => wholeIn(v, 0, ONE_DAY_MS, 'ms'),
  windows: (v) => (typeof v === 'boolean' ? undefined : 'must be true or false'),
  refreshMs: (v) => wholeIn(v, 10, ONE_DAY_MS, 'ms'),
  publish: (v) => (typeof v === 'boolean' ? undefined : 'must be true or false'),
  publishMs: (v) => wholeIn(v, 10, ONE_DAY_MS, 'ms'),
  restoreOnStop: (v) => (typeof v === 'boolean' ? undefined : 'must be true or false'),
  jitter: (v) =>
    typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= 1 ? undefined : 'must be a fraction from 0 to 1',
  tickMs: (v) => wholeIn(v, 0, 1000, 'ms'),
  prober: (v) => (v === 'auto' || v === 'native' || v === 'node' ? undefined : 'must be one of auto, native, node'),
  probe: (v) => (typeof v === 'function' ? undefined : 'must be a function'),
  random: (v) => (typeof v === 'function' ? undefined : 'must be a function'),
};

function wholeIn(v: unknown, min: number, max: number, unit: string): string | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max
    ? undefined
    : `must be a whole number of ${unit} from ${min} to ${max}`;
}

/**
 * Checks a {@link HealthCheckerOptions} object: an unknown key or a bad value is an `EUSAGE` error
 * naming it (`prefix` + key: `health.refreshMs` for `open({ health })`). A refresh every 0 ms, say,
 * would re-read the state file in a loop.
 */
export function validateCheckerOptions(opts: unknown, prefix = ''): void {
  if (opts === undefined) return;
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new IptlbError('EUSAGE', `${prefix || 'options'}: must be an object of HealthChecker options`, {
      field: prefix ? prefix.replace(/\.$/, '') : 'options',
    });
  const inherited = inheritedKey(opts, Object.keys(CHECKER_OPTIONS));
  if (inherited !== undefined)
    throw new IptlbError('EUSAGE', `${prefix}${inherited}: ${INHERITED}`, { field: `${prefix}${inherited}` });
  for (const [k, v] of Object.entries(opts)) {
    const check = (CHECKER_OPTIONS as Record<string, ((v: unknown) => string | undefined) | undefined>)[k];
    if (!check)
      throw new IptlbError(
        'EUSAGE',
        `${prefix}${k}: unknown option (known: ${Object.keys(CHECKER_OPTIONS).join(', ')})`,
        { field: `${prefix}${k}` },
      );
    if (v === undefined) continue;
    const why = check(v);
    if (why)
      throw new IptlbError('EUSAGE', `${prefix}${k}: ${why}, got ${show(v)}`, {
        field: `${prefix}${k}`,
      });
  }
}

/** A transition of one destination. */
export interface HealthEvent {
  profile: string;
  destination: string;
  state: DestinationHealth;
  previous: DestinationHealth;
  /** Why: the last failure's reason, or `n successful checks`. */
  reason: string;
  /** ms since the epoch. */
  at: number;
}

/** One destination as {@link HealthChecker.states} reports it. */
export interface DestinationHealthState extends DestinationHealthInfo {
  profile: string;
  destination: string;
  /** Whether the kernel has it drained now. */
  drained: boolean;
  checks: number;
  failures: number;
}

/** What the checker needs of its owner: the core, a way to commit, and where events go. */
export interface HealthHost {
  core: Core;
  commit(): Promise<TransactionResult>;
  /**
   * The profiles whose destinations are checked: those the kernel is meant to hold. Default: the
   * core's (its state file, or its in-memory profiles). Watch mode gives the last version of the
   * file it applied, with a commit planned against them: the file may be ahead of the kernel.
   */
  profiles?(): Promise<ReadonlyMap<string, Profile>>;
  emit?(e: HealthEvent): void;
  /** Whether the handle this host belongs to is closed (a metrics server then reads nothing through it). */
  closed?(): boolean;
  /**
   * Makes the kernel match the profiles with this checker's drains again (a handle's `sync()`): asked when this
   * process runs again after not running for longer than its file's staleAfterMs, during which other processes did
   * not follow the file and a sync of theirs may have given the kernel back the weights it drained.
   */
  resync?(): Promise<unknown>;
}

interface Entry {
  key: string;
  profile: string;
  destination: string;
  host: string;
  port: number;
  cfg: HealthConfig;
  state: DestinationHealth;
  since?: number;
  okRun: number;
  failRun: number;
  lastCheck?: number;
  lastError?: string;
  removed: boolean;
  checks: number;
  failures: number;
  target?: Target;
}

/**
 * One probe target: destinations of several profiles with the same endpoint and check share it, so
 * an endpoint is probed once per interval however many profiles balance to it. Each destination
 * still counts its own rise and fall from the shared results.
 */
interface Target {
  key: string;
  host: string;
  port: number;
  cfg: HealthConfig;
  entries: Set<Entry>;
  due: number;
  heap: number;
  inFlight: boolean;
  removed: boolean;
}

export class HealthChecker extends EventEmitter<{ health: [HealthEvent]; error: [Error] }> {
  private readonly host: HealthHost;
  private readonly log: (line: string) => void;
  private readonly probeFn?: Probe;
  private readonly proberKind: 'auto' | 'native' | 'node';
  private prober?: Prober;
  private readonly random: () => number;
  private readonly jitter: number;
  private readonly tickMs: number;
  private readonly batchMs: number;
  private readonly refreshMs: number;
  private readonly publishMs: number;
  /** What the published file promises: written again within this long while this checker runs (staleAfterOf). */
  readonly staleAfterMs: number;
  /** When the publish timer last ran (Date.now()): a longer gap than staleAfterMs is a process that did not run. */
  private beatAt = 0;
  private readonly restoreOnStop: boolean;
  private readonly publishFile?: string;
  /** The health file the core followed before start() (it follows it again after stop()). */
  private followedBefore?: string;
  /** Held from start() to the end of stop() by a checker that publishes ({@link checkerLockOf}). */
  private checkerLock?: HeldLock;
  private entries = new Map<string, Entry>();
  private byProfile = new Map<string, { cfg: HealthConfig; profile: Profile; entries: Entry[]; down: Set<string> }>();
  private heap: Target[] = [];
  private targets = new Map<string, Target>();
  /** The wall clock at the scheduler's last reading, and how far it has been set back in all ({@link clock}). */
  private wallAt = -Infinity;
  private setBack = 0;
  private timer?: NodeJS.Timeout;
  private timerAt = Infinity;
  private running = false;
  private committing = false;
  /** The flush under way while `committing`: what stop() waits for (no polling: a mocked clock would never fire it). */
  private flushing?: Promise<void>;
  private flushAgain = false;
  /** The check of a transition decided while a commit was in flight: it opens (and bounds) the next window. */
  private flushAgainOpener?: HealthConfig;
  private flushTimer?: NodeJS.Timeout;
  private readonly windows: boolean;
  /** The open commit window: the targets still part way through a streak, and its deadline. */
  private window?: { waiting: Set<Target>; timer: NodeJS.Timeout; opened: number };
  private refreshTimer?: NodeJS.Timeout;
  private publishTimer?: NodeJS.Timeout;
  /** The write of the health file under way (stop() waits for it before removing the file). */
  private publishing?: Promise<void>;
  private dirty = false;
  private inFlight = 0;
  /** Counts the stops: an answer to a probe of an earlier run is ignored. */
  private run = 0;
  /** The last reason a refresh or a commit failed for, while it keeps failing (logged once). */
  private readFailure?: string;
  private commitFailure?: string;
  /** Counters for metrics: checks and failed checks per profile, health commits. */
  readonly counters = {
    checks: new Map<string, number>(),
    failures: new Map<string, number>(),
    commits: 0,
    commitFailures: 0,
    probes: 0,
  };

  /** @param target an {@link Iptlb} handle (its commits go through its group commit) or a {@link HealthHost}. */
  constructor(target: { healthHost(): HealthHost } | HealthHost, opts: HealthCheckerOptions = {}) {
    super();
    validateCheckerOptions(opts);
    // (`in` on null or a string was a TypeError; `{}` failed on its missing core.)
    const t = target as unknown as Record<string, unknown> | null;
    if (typeof t?.healthHost !== 'function' && (typeof t?.core !== 'object' || typeof t?.commit !== 'function'))
      throw new IptlbError('EUSAGE', `iptlb: HealthChecker takes a handle of open(), got ${show(target)}`, {
        field: 'iptlb',
      });
    this.host = 'healthHost' in target ? target.healthHost() : target;
    this.log = opts.log ? apart(opts.log) : () => {};
    if (opts.probe) this.probeFn = opts.probe;
    this.proberKind = opts.prober ?? 'auto';
    this.random = opts.random ?? Math.random;
    this.jitter = opts.jitter ?? 0.1;
    this.tickMs = opts.tickMs ?? 10;
    this.batchMs = opts.batchMs ?? 0;
    this.windows = opts.windows ?? true;
    this.refreshMs = opts.refreshMs ?? 1000;
    this.publishMs = opts.publishMs ?? 2000;
    this.staleAfterMs = staleAfterOf(this.publishMs);
    this.restoreOnStop = opts.restoreOnStop ?? true;
    const sp = this.host.core.statePath;
    if ((opts.publish ?? true) && sp !== null) this.publishFile = healthFileOf(sp);
  }

  /**
   * Reads the profiles and starts checking. A checker that publishes (the default, with a state file)
   * first takes the state file's checker lock ({@link checkerLockOf}): while another process (or
   * another checker of this one) checks that state file, it refuses to start (ELOCK), and nothing
   * changes.
   */
  async start(): Promise<void> {
    if (this.running) return;
    const sp = this.host.core.statePath;
    if (this.publishFile && sp !== null && !this.checkerLock) {
      const lock = await tryLockBeside(sp, CHECKER_LOCK_SUFFIX);
      if (!lock) {
        const pid = publisherOf(this.publishFile);
        throw new IptlbError(
          'ELOCK',
          `health checks: ${pid === process.pid ? `another checker of this process (${pid})` : pid !== undefined ? `process ${pid}` : 'another process'} already checks the destinations of ${sp} (it holds ${checkerLockOf(sp)}); one process checks a state file, two would undo each other's drains: stop that one, or run this one without health checks`,
          { field: 'health' },
        );
      }
      if (this.running) {
        lock.release(); // a concurrent start() won
        return;
      }
      this.checkerLock = lock;
    }
    try {
      this.prober ??= createProber(
        { prober: this.proberKind, ...(this.probeFn ? { probe: this.probeFn } : {}) },
        this.log,
      );
    } catch (e) {
      // Not started (the native prober asked for is unavailable): the checker lock goes back now, as
      // stop() would give it back (stop() of a checker that never ran does nothing). Kept, it refused
      // every later checker of this state file, and without the addon its flock child kept the process alive.
      this.checkerLock?.release();
      this.checkerLock = undefined;
      throw e;
    }
    this.running = true;
    // Started again after a stop(): afresh, as a new checker. What the last run knew was kept, and so nothing was
    // checked again: its refresh found every profile known, scheduled nothing and armed no timer (and the targets of
    // the probes stop() dropped were in no heap), while stop() had given the kernel back the weights of the drains.
    this.forgetRun();
    // Another handle of this process on the state file follows the file like another process's.
    if (this.checkerLock && this.publishFile) publishingHere(this.publishFile, true);
    // This process decides the health now: stop following another's published file (followed again after stop()).
    this.followedBefore = this.host.core.health.following;
    this.host.core.health.follow(undefined);
    await this.refresh();
    // Stopped while the profiles were read: stop() has removed the file and given the lock back; arm nothing,
    // publish nothing (a file written now would name this live process as the checker of the state file).
    if (!this.running) return;
    if (!this.probeFn)
      this.log(
        this.prober.kind === 'native'
          ? 'health: tcp checks sent by the native prober (one thread, epoll), http checks by Node sockets'
          : 'health: tcp and http checks sent by Node sockets',
      );
    const tick = (): void => {
      if (!this.running) return;
      this.keepCheckerLock()
        .then(() => this.refresh())
        .then(
          () => {
            if (this.readFailure !== undefined && this.byProfile.size > 0)
              this.log('health: the profiles can be read again');
            this.readFailure = undefined;
          },
          (e: Error) => {
            // Said once, and again only when the reason changes (the refresh runs every second); not
            // at all while no profile has checks (watch mode says it for itself).
            if (e.message !== this.readFailure && this.byProfile.size > 0)
              this.log(
                `health: cannot read the profiles (${e.message}); checks go on with the profiles read before, drains wait until it can be read`,
              );
            this.readFailure = e.message;
          },
        )
        .finally(() => {
          if (this.running) this.refreshTimer = setTimeout(tick, this.refreshMs);
        });
    };
    this.refreshTimer = setTimeout(tick, this.refreshMs);
    if (this.publishFile) {
      // Written every publishMs, changed or not: the file's updatedAt says that this checker runs. One that stops
      // running (SIGSTOP, a frozen cgroup, a hung event loop) while its pid lives leaves a file that ages, and
      // followers stop following it after staleAfterMs.
      const pub = (): void => {
        if (!this.running) return;
        const now = Date.now();
        if (now - this.beatAt > this.staleAfterMs) this.resumed(now - this.beatAt);
        this.beatAt = now;
        void this.publishNow();
        this.publishTimer = setTimeout(pub, this.publishMs);
      };
      this.beatAt = Date.now();
      this.publishTimer = setTimeout(pub, this.publishMs);
      await this.publishNow();
    }
  }

  /**
   * The publish timer ran `gapMs` after its last run, more than staleAfterMs: this process did not run meanwhile
   * (stopped, frozen, hung), its file went stale, and other processes stopped following it: a sync or apply of theirs
   * may have given the kernel back the weights this checker drained. Said; a host that can ({@link HealthHost.resync}:
   * a handle's checker) brings the kernel back in step at once, else a drift check of the kernel (iptlb watch's
   * periodic check, `sync()`) commits the drains again.
   */
  private resumed(gapMs: number): void {
    const resync = this.host.resync;
    this.log(
      `health: this process did not run for ${(gapMs / 1000).toFixed(1)} s (stopped, frozen or hung): its health file was stale and other processes did not follow it meanwhile; ${resync ? 'a sync of theirs may have undone its drains: syncing the kernel' : 'a sync of theirs may have undone its drains until the next drift check'}`,
    );
    if (!resync) return;
    resync.call(this.host).then(
      () => this.log('health: kernel in step with the checks again after the pause'),
      (e: Error) =>
        this.log(`health: could not sync after the pause (${e.message}); the next drift check or \`iptlb sync\` will`),
    );
  }

  /** Said once while the checker lock's file at the path is another checker's (see {@link keepCheckerLock}). */
  private saidLockTaken = false;

  /**
   * Before each refresh: the checker lock's file removed or replaced while this checker holds it (a tmp
   * cleaner, a person) would let a checker started now lock the new file and check the same state file.
   * So each refresh asks whether the path still names the file held (one lstat) and, when not, locks the
   * file now at the path instead (creating it). When another checker got there first, that is said once,
   * and the lock is asked for again at each refresh until it is free.
   */
  private async keepCheckerLock(): Promise<void> {
    const sp = this.host.core.statePath;
    if (!this.publishFile || sp === null) return;
    const held = this.checkerLock;
    if (held && held.stillAtPath?.() !== false) return;
    // (This process's turn at the path is the held lock's: given back first, or the new file would look busy.)
    held?.release();
    this.checkerLock = undefined;
    const again = await tryLockBeside(sp, CHECKER_LOCK_SUFFIX).catch(() => undefined);
    if (!this.running || this.checkerLock) {
      again?.release(); // stopped meanwhile
      return;
    }
    if (again) {
      this.checkerLock = again;
      this.saidLockTaken = false;
      this.log(`health: ${checkerLockOf(sp)} was removed or replaced while this checker held it; locked it again`);
      return;
    }
    if (this.saidLockTaken) return;
    this.saidLockTaken = true;
    this.log(
      `health: ${checkerLockOf(sp)} was removed or replaced while this checker held it, and another checker holds the new file: two checkers of one state file undo each other's drains; stop one (this one takes the lock again once it is free)`,
    );
  }

  /** Stops checking, waits for probes in flight; by default gives the kernel back the configured weights. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    for (const t of [this.timer, this.flushTimer, this.refreshTimer, this.publishTimer, this.window?.timer])
      if (t) clearTimeout(t);
    this.window = undefined;
    this.timer = undefined;
    this.timerAt = Infinity;
    // Probes in flight are dropped, not waited for (a timeout may be long: a stop must not wait for
    // it); their answers, if any still come, belong to a stopped run and are ignored.
    this.run++;
    this.inFlight = 0;
    for (const t of this.targets.values()) t.inFlight = false;
    try {
      const prober = this.prober;
      this.prober = undefined;
      prober?.close();
      while (this.flushing) await this.flushing;
      if (this.restoreOnStop) {
        for (const name of this.byProfile.keys()) this.host.core.health.forget(name);
        if (this.host.core.health.hasPending) {
          try {
            await this.host.commit();
            this.log('health: stopped; configured weights given back to the kernel');
          } catch (e) {
            this.log(
              `health: stopped; could not give back the configured weights (${(e as Error).message}); run \`iptlb sync\``,
            );
          }
        }
      }
    } finally {
      // Whatever failed above, this process checks the state file no more: its file and lock go (after a write of
      // it under way, which would otherwise put it back).
      while (this.publishing) await this.publishing;
      if (this.publishFile) {
        publishingHere(this.publishFile, false);
        await fsp.unlink(this.publishFile).catch(() => {});
      }
      this.checkerLock?.release();
      this.checkerLock = undefined;
      // This process checks nothing now: its handle follows the file another process publishes again, as one that
      // never ran a checker does (it followed none, and its apply or sync undid the drains of a watch started since).
      if (this.followedBefore !== undefined) this.host.core.health.follow(this.followedBefore);
      this.followedBefore = undefined;
    }
  }

  /** Forgets the destinations, targets and counters of an earlier run ({@link states} shows them until a start). */
  private forgetRun(): void {
    for (const t of this.targets.values()) t.removed = true;
    for (const e of this.entries.values()) e.removed = true;
    this.heap = [];
    this.targets.clear();
    this.entries.clear();
    this.byProfile.clear();
    this.counters.checks.clear();
    this.counters.failures.clear();
  }

  /** Who sends the tcp probes while running: `native` (the addon's prober) or `node`; undefined when stopped. */
  get probing(): 'native' | 'node' | undefined {
    return this.prober?.kind;
  }

  /** Every checked destination, by profile then destination order. */
  states(): DestinationHealthState[] {
    const out: DestinationHealthState[] = [];
    for (const [name, p] of this.byProfile) {
      const drained = this.host.core.health.committedDown(name);
      for (const e of p.entries) {
        out.push({
          profile: name,
          destination: e.destination,
          state: e.state,
          ...(e.since !== undefined ? { since: e.since } : {}),
          ...(e.lastCheck !== undefined ? { lastCheck: e.lastCheck } : {}),
          ...(e.lastError !== undefined ? { lastError: e.lastError } : {}),
          drained: !!drained?.has(e.destination) && effectiveProfile(p.profile, drained) !== p.profile,
          checks: e.checks,
          failures: e.failures,
        });
      }
    }
    return out;
  }

  /** Re-reads the profiles: adds, changes and removes checks. */
  async refresh(): Promise<void> {
    const state = this.host.profiles ? await this.host.profiles() : await this.host.core.readState();
    const now = this.clock();
    const seen = new Set<string>();
    let changed = false;
    for (const p of state.values()) {
      if (!p.health) continue;
      seen.add(p.name);
      const cur = this.byProfile.get(p.name);
      if (cur && cur.profile === p) continue;
      if (cur && sameHealth(cur.cfg, p.health) && cur.profile.destination.join() === p.destination.join()) {
        cur.profile = p;
        continue;
      }
      // New or changed: (re)build its entries, keeping what is known of destinations it still has.
      const old = new Map((cur?.entries ?? []).map((e) => [e.destination, e]));
      const entries: Entry[] = [];
      for (const d of p.destination) {
        const ep = parseEndpoint(d);
        if (typeof ep === 'string') continue;
        const prev = old.get(d);
        const keep = prev && sameHealth(prev.cfg, p.health);
        if (prev) {
          old.delete(d);
          if (!keep) this.detach(prev);
        }
        const e: Entry = keep
          ? prev
          : {
              key: `${p.name}\0${d}`,
              profile: p.name,
              destination: d,
              host: p.health.address ?? ep.ip,
              port: p.health.port ?? ep.port,
              cfg: p.health,
              state: prev?.state ?? 'unchecked',
              okRun: 0,
              failRun: 0,
              removed: false,
              checks: prev?.checks ?? 0,
              failures: prev?.failures ?? 0,
              ...(prev?.since !== undefined ? { since: prev.since } : {}),
            };
        entries.push(e);
        this.entries.set(e.key, e);
        if (!keep) this.attach(e, now);
      }
      for (const e of old.values()) this.removeEntry(e);
      const down = new Set(entries.filter((e) => e.state === 'down').map((e) => e.destination));
      this.byProfile.set(p.name, { cfg: p.health, profile: p, entries, down });
      // Both counters exist from the start at 0 (a rate over the first failures needs the 0 before them).
      for (const c of [this.counters.checks, this.counters.failures]) if (!c.has(p.name)) c.set(p.name, 0);
      this.host.core.health.setDown(p.name, down);
      this.syncInfo(p.name);
      changed = true;
    }
    for (const [name, p] of this.byProfile) {
      if (seen.has(name)) continue;
      for (const e of p.entries) this.removeEntry(e);
      this.byProfile.delete(name);
      this.host.core.health.forget(name);
      // A profile no longer checked has no series (a later one of that name counts from 0 again).
      this.counters.checks.delete(name);
      this.counters.failures.delete(name);
      changed = true;
    }
    if (changed && this.host.core.health.hasPending) this.requestFlush();
  }

  private syncInfo(profile: string): void {
    const p = this.byProfile.get(profile);
    if (!p) return;
    const m = new Map<string, DestinationHealthInfo>();
    for (const e of p.entries) {
      m.set(e.destination, {
        state: e.state,
        ...(e.since !== undefined ? { since: e.since } : {}),
        ...(e.lastCheck !== undefined ? { lastCheck: e.lastCheck } : {}),
        ...(e.lastError !== undefined ? { lastError: e.lastError } : {}),
      });
    }
    this.host.core.health.info.set(profile, m);
  }

  private removeEntry(e: Entry): void {
    e.removed = true;
    this.detach(e);
    this.entries.delete(e.key);
  }

  /** Puts `e` on the target of its endpoint and check (created, and first due within one interval, when new). */
  private attach(e: Entry, now: number): void {
    const c = e.cfg;
    const key = `${c.kind} ${e.host} ${e.port} ${c.intervalMs} ${c.timeoutMs} ${c.path ?? ''} ${c.expect ?? ''}`;
    let t = this.targets.get(key);
    if (!t) {
      t = {
        key,
        host: e.host,
        port: e.port,
        cfg: c,
        entries: new Set(),
        due: now + this.random() * c.intervalMs,
        heap: -1,
        inFlight: false,
        removed: false,
      };
      this.targets.set(key, t);
      this.schedule(t);
    }
    t.entries.add(e);
    e.target = t;
  }

  private detach(e: Entry): void {
    const t = e.target;
    if (!t) return;
    e.target = undefined;
    t.entries.delete(e);
    if (t.entries.size === 0) {
      t.removed = true;
      this.unschedule(t);
      this.targets.delete(t.key);
      this.settled(t);
    }
  }

  // --- scheduler: a binary min-heap on `due`, one timer for its head --------------------------

  /**
   * The scheduler's time (due times, the tick, commit windows): Date.now(), except that it never goes back. A wall
   * clock set back (an NTP step, `date -s`) left every due time in the future by the step, and the timers (which are
   * monotonic) waited that long: set back an hour, no destination was checked for an hour, and one that died meanwhile
   * stayed in the kernel. Now the step is added back (the times shown, lastCheck and since, stay the wall clock's).
   */
  private clock(): number {
    const wall = Date.now();
    if (wall < this.wallAt) this.setBack += this.wallAt - wall;
    this.wallAt = wall;
    return wall + this.setBack;
  }

  private schedule(e: Target): void {
    e.heap = this.heap.length;
    this.heap.push(e);
    this.up(e.heap);
    this.arm();
  }
  private unschedule(e: Target): void {
    const i = e.heap;
    if (i < 0) return;
    const last = this.heap.pop()!;
    e.heap = -1;
    if (last !== e) {
      this.heap[i] = last;
      last.heap = i;
      this.down(i);
      this.up(last.heap);
    }
  }
  private up(i: number): void {
    const h = this.heap;
    const x = h[i];
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p].due <= x.due) break;
      h[i] = h[p];
      h[i].heap = i;
      i = p;
    }
    h[i] = x;
    x.heap = i;
  }
  private down(i: number): void {
    const h = this.heap;
    const n = h.length;
    const x = h[i];
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && h[c + 1].due < h[c].due) c++;
      if (h[c].due >= x.due) break;
      h[i] = h[c];
      h[i].heap = i;
      i = c;
    }
    h[i] = x;
    x.heap = i;
  }
  private popMin(): Target {
    const h = this.heap;
    const top = h[0];
    const last = h.pop()!;
    if (h.length) {
      h[0] = last;
      last.heap = 0;
      this.down(0);
    }
    top.heap = -1;
    return top;
  }

  /** Arms the single timer for the earliest due check. */
  private arm(): void {
    if (!this.running || this.heap.length === 0) return;
    const due = this.heap[0].due;
    const at = this.tickMs > 0 ? Math.ceil(due / this.tickMs) * this.tickMs : due;
    if (this.timer && at >= this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => this.fire(), Math.max(0, at - this.clock()));
  }

  private fire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    if (!this.running) return;
    const now = this.clock();
    while (this.heap.length && this.heap[0].due <= now) this.check(this.popMin(), now);
    this.prober?.flush(); // the probes due in this tick, handed over in one call
    this.arm();
  }

  /** One probe of `t` (never two at once: the next is scheduled when this one ends). */
  private check(t: Target, now: number): void {
    t.inFlight = true;
    this.inFlight++;
    const cfg = t.cfg;
    const run = this.run;
    this.prober!.start(
      {
        kind: cfg.kind,
        host: t.host,
        port: t.port,
        timeoutMs: cfg.timeoutMs,
        ...(cfg.path ? { path: cfg.path } : {}),
        ...(cfg.expect ? { expect: cfg.expect } : {}),
      },
      (error) => {
        if (run === this.run) this.results(t, now, error);
      },
    );
  }

  private results(t: Target, started: number, error: string | undefined): void {
    t.inFlight = false;
    this.inFlight--;
    if (t.removed || !this.running) return;
    this.counters.probes++;
    const now = this.clock();
    const wall = Date.now(); // (what status shows: the wall clock's time)
    for (const e of t.entries) this.result(e, wall, error);
    if (this.window?.waiting.has(t) && !this.unsettled(t)) this.settled(t);
    // Next check: one interval after this one started, ±jitter, never before now.
    const j = 1 + this.jitter * (2 * this.random() - 1);
    t.due = Math.max(now, started + t.cfg.intervalMs * j);
    this.schedule(t);
  }

  private result(e: Entry, now: number, error: string | undefined): void {
    if (e.removed) return;
    e.lastCheck = now;
    e.checks++;
    this.counters.checks.set(e.profile, (this.counters.checks.get(e.profile) ?? 0) + 1);
    this.dirty = true;
    let next: DestinationHealth | undefined;
    if (error === undefined) {
      e.okRun++;
      e.failRun = 0;
      delete e.lastError;
      if (e.state === 'unchecked' || (e.state === 'down' && e.okRun >= e.cfg.rise)) next = 'up';
    } else {
      e.failRun++;
      e.okRun = 0;
      e.failures++;
      e.lastError = error;
      this.counters.failures.set(e.profile, (this.counters.failures.get(e.profile) ?? 0) + 1);
      if (e.state !== 'down' && e.failRun >= e.cfg.fall) next = 'down';
    }
    const info = this.host.core.health.info.get(e.profile);
    if (next && next !== e.state) {
      const previous = e.state;
      e.state = next;
      e.since = now;
      const p = this.byProfile.get(e.profile)!;
      const reason =
        next === 'down'
          ? `${e.failRun} failed check(s), last: ${error}`
          : `${previous === 'unchecked' ? 1 : e.okRun} successful check(s)`;
      const ev: HealthEvent = {
        profile: e.profile,
        destination: e.destination,
        state: next,
        previous,
        reason,
        at: now,
      };
      if (next === 'down' || previous === 'down') {
        const down = new Set(p.down);
        if (next === 'down') down.add(e.destination);
        else down.delete(e.destination);
        p.down = down;
        this.host.core.health.setDown(e.profile, down);
        const eff = effectiveProfile(p.profile, down);
        // Every destination that takes connections (configured weight above 0) is down.
        const weight = (d: string): number => p.profile.weights?.[d] ?? 1;
        const active = p.profile.destination.filter((d) => weight(d) > 0);
        const all = eff === p.profile && next === 'down' && active.length > 0 && active.every((d) => down.has(d));
        this.log(
          `health ${e.profile} ${e.destination}: ${next} after ${reason}; ` +
            (next === 'down'
              ? weight(e.destination) === 0
                ? 'its configured weight is 0: nothing to drain'
                : all
                  ? 'every destination is down: keeping all of them (health.allDown: keep)'
                  : eff === null
                    ? 'every destination is down: profile drained (health.allDown: drain)'
                    : 'drained (weight 0: no new connections)'
              : 'back at its configured weight'),
        );
        this.requestFlush(e.cfg);
      }
      // (unchecked -> up changes nothing in the kernel and is not logged: at start it is every destination.)
      this.host.emit?.(ev);
      this.emitApart('health', ev);
    }
    // What status and the published file show, updated in place (O(1) per check).
    const i = info?.get(e.destination);
    if (i) {
      i.state = e.state;
      if (e.since !== undefined) i.since = e.since;
      i.lastCheck = now;
      if (e.lastError !== undefined) i.lastError = e.lastError;
      else delete i.lastError;
    }
  }

  // --- commits -------------------------------------------------------------------------------

  /**
   * A commit is needed: after the commit in flight, or when the commit window closes, or at once. `opener`: the check
   * of a destination whose transition asks for it, which opens a commit window and bounds it ({@link windowSpan});
   * without it (a profile added, changed or removed) the commit goes at once.
   */
  private requestFlush(opener?: HealthConfig): void {
    if (!this.running) return;
    if (this.committing) {
      this.flushAgain = true;
      // The transitions decided meanwhile open a window after the commit, bounded by the tightest of their checks.
      if (
        opener &&
        (!this.flushAgainOpener || windowSpan(opener, this.jitter) < windowSpan(this.flushAgainOpener, this.jitter))
      )
        this.flushAgainOpener = opener;
      return;
    }
    if (this.flushTimer || this.window) return;
    if (opener && this.windows) this.openWindow(opener);
    if (!this.window) this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      void this.flush();
    }, this.batchMs);
  }

  /**
   * Checks still to come of `t` that could end a streak part way (0: none is part way): a destination up or unchecked
   * with failures in a row but fewer than `fall`, or a down one with successes in a row but fewer than `rise`.
   */
  private unsettled(t: Target): number {
    let n = 0;
    for (const e of t.entries) {
      if (e.removed) continue;
      if (e.state !== 'down' && e.failRun > 0 && e.failRun < e.cfg.fall) n = Math.max(n, e.cfg.fall - e.failRun);
      else if (e.state === 'down' && e.okRun > 0 && e.okRun < e.cfg.rise) n = Math.max(n, e.cfg.rise - e.okRun);
    }
    return n;
  }

  /**
   * Opens a commit window when some destinations are part way through a streak: the commit waits until each has
   * crossed its threshold or broken its streak, at most the checks each still needs (interval + jitter each, plus a
   * timeout). Scans every target once per window. The window never outlasts what one of the transition's own
   * destinations (checked as `cfg` says) could need: (max(fall, rise) - 1) intervals + jitter, plus its timeout. So a
   * profile checked every hour, part way through a streak, does not hold back for an hour the drain of a destination
   * checked every second (a target not checked again within that bound is not waited for).
   */
  private openWindow(cfg: HealthConfig): void {
    const now = this.clock();
    const cap = now + windowSpan(cfg, this.jitter);
    const waiting = new Set<Target>();
    let until = now;
    for (const t of this.targets.values()) {
      const n = this.unsettled(t);
      if (n === 0) continue;
      const next = t.heap >= 0 ? Math.max(now, t.due) : now; // in flight: its result is due within the timeout
      if (next > cap) continue;
      waiting.add(t);
      until = Math.max(until, next + (n - 1) * t.cfg.intervalMs * (1 + this.jitter) + t.cfg.timeoutMs + 1);
    }
    until = Math.min(until, cap);
    if (waiting.size === 0) return;
    this.window = { waiting, opened: now, timer: setTimeout(() => this.closeWindow(), until - now) };
  }

  private settled(t: Target): void {
    const w = this.window;
    if (!w || !w.waiting.delete(t) || w.waiting.size > 0) return;
    this.closeWindow();
  }

  private closeWindow(): void {
    if (!this.window) return;
    clearTimeout(this.window.timer);
    this.window = undefined;
    if (this.running) this.scheduleFlush();
  }

  private flush(): Promise<void> {
    if (!this.host.core.health.hasPending) return Promise.resolve();
    const p: Promise<void> = this.commitPending().finally(() => {
      if (this.flushing === p) this.flushing = undefined;
    });
    this.flushing = p;
    return p;
  }

  /**
   * Emits an event of the checker without letting a listener's throw stop it: thrown again on its own, as an
   * uncaught exception (as the handle's listeners' are). A `health` listener that threw stopped every later
   * transition and commit, with an unhandled rejection per check.
   */
  private emitApart<K extends 'health' | 'error'>(event: K, arg: K extends 'health' ? HealthEvent : Error): void {
    callApart(() => (this.emit as (e: K, a: typeof arg) => boolean)(event, arg));
  }

  private async commitPending(): Promise<void> {
    this.committing = true;
    this.flushAgain = false;
    this.flushAgainOpener = undefined;
    try {
      const r = await this.host.commit();
      this.counters.commits++;
      if (this.commitFailure !== undefined) this.log('health: committing again');
      this.commitFailure = undefined;
      if (r.committed) this.log(`health: committed in ${r.commitMs.toFixed(2)} ms (${r.engine}/${r.executor})`);
      if (this.publishFile) await this.publishNow();
    } catch (e) {
      this.counters.commitFailures++;
      // Retried every second: said once per reason.
      if ((e as Error).message !== this.commitFailure)
        this.log(`health: commit failed (${(e as Error).message}); retrying every second`);
      this.commitFailure = (e as Error).message;
      if (this.listenerCount('error') > 0) this.emitApart('error', e as Error);
      this.committing = false;
      if (this.running) this.flushTimer = setTimeout(() => ((this.flushTimer = undefined), void this.flush()), 1000);
      return;
    }
    this.committing = false;
    const opener = this.flushAgainOpener;
    this.flushAgainOpener = undefined;
    if (this.flushAgain || this.host.core.health.hasPending) this.requestFlush(opener);
  }

  /** The last failure to write the health file, until a write succeeds: said once while it repeats. */
  private publishFailure: string | undefined;

  private publishNow(): Promise<void> {
    const file = this.publishFile;
    if (!file || !this.running) return Promise.resolve();
    this.dirty = false;
    // One write at a time, each after the one before (an older snapshot never renamed over a newer one); stop()
    // waits for the last before it removes the file, so a write under way does not put it back after the stop.
    const p: Promise<void> = (this.publishing ?? Promise.resolve())
      .then(() => this.host.core.health.publish(file, this.staleAfterMs))
      .then(
        () => (this.publishFailure = undefined),
        (e: Error) => {
          // Refreshed every publishMs: said once per reason (a read-only state directory failed every 2 s, forever).
          if (e.message !== this.publishFailure) this.log(`health: cannot write ${file} (${e.message})`);
          this.publishFailure = e.message;
        },
      )
      .finally(() => {
        if (this.publishing === p) this.publishing = undefined;
      });
    this.publishing = p;
    return p;
  }
}

/** The floor of {@link staleAfterOf}: a loaded machine's event loop may lag seconds behind its timers. */
export const STALE_FLOOR_MS = 10_000;

/**
 * How long a published health file is followed after it was written: five publish periods, at least
 * {@link STALE_FLOOR_MS} (10 s with the default publishMs of 2 s).
 */
export function staleAfterOf(publishMs: number): number {
  return Math.max(STALE_FLOOR_MS, 5 * publishMs);
}

/**
 * The longest a commit window opened by a transition of a destination checked as `cfg` says may last, ms: what another
 * destination of that check part way through a streak could still need, (max(fall, rise) - 1) intervals + jitter and a
 * timeout.
 */
function windowSpan(cfg: HealthConfig, jitter: number): number {
  return (Math.max(cfg.fall, cfg.rise) - 1) * cfg.intervalMs * (1 + jitter) + cfg.timeoutMs + 1;
}

/**
 * A host over a bare core (iptlb watch): each health commit is its own transaction (an empty change carrying the
 * health).
 */
export function coreHost(core: Core, emit?: (e: HealthEvent) => void): HealthHost {
  return {
    core,
    commit: () => core.transact(() => ({ upsert: [], remove: [] }), { run: true }),
    ...(emit ? { emit } : {}),
  };
}

/**
 * A host whose checks follow `held()`, the profiles the kernel was last brought in step with (watch
 * mode: the last version of the state file applied; none before one was). A health commit plans
 * against the state file as it is under the lock, but keeps the held version of a profile whose
 * version in the file the kernel does not hold (Core.transact's `holds`): it never carries a version
 * of the file that has not settled, and never undoes a change a one-shot `-run` committed since.
 */
export function heldHost(core: Core, held: () => ReadonlyMap<string, Profile> | undefined): HealthHost {
  const none: ReadonlyMap<string, Profile> = new Map();
  return {
    core,
    profiles: () => Promise.resolve(held() ?? none),
    commit: () => core.transact(() => ({ upsert: [], remove: [] }), { run: true, holds: held() ?? none }),
  };
}
