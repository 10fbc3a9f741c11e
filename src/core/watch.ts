/**
 * `iptlb watch`: keeps the kernel in step with the state file. A change to the file (the directory
 * is watched, as a file replaced by rename is a new file) is applied once the file has settled: no
 * change of its identity (inode, size, times) for `settleMs`, and it parses as a whole. A file still
 * being written in place, or an empty or half-written one, is never applied while it changes; a
 * writer should write a temporary file in the same directory and rename it over the state file (as
 * iptlb does), which the watcher sees as one change of complete content. A periodic check
 * re-applies rules someone else flushed (it too waits while the file is changing); SIGHUP checks at
 * once. SIGTERM/SIGINT stop the watcher and leave the rules and the state file as they are. An
 * append to the state file's journal (see journal.ts) is a change like a rewrite of the file.
 * A file that is absent or does not parse is not applied (said once per version): the kernel keeps
 * the last version applied, and the periodic check and SIGHUP repair drift toward that version; the
 * flows of destinations a new version removes are cleaned up as a change's are.
 */
import { existsSync, lstatSync, statSync, watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import type { Core } from './core.js';
import type { Profile } from '../model/types.js';
import { stateVersion } from './state.js';
import { journalPath } from './journal.js';
import { countDrifted } from './orphans.js';
import type { ProfileReport } from '../model/report.js';

export interface WatchOptions {
  /** Periodic drift check, ms. Default 5000. */
  intervalMs?: number;
  /** Debounce after a file event, ms. Default 20. */
  debounceMs?: number;
  /** How long the file must stay unchanged before it is applied, ms. Default 1000. */
  settleMs?: number;
  log: (line: string) => void;
  /** The file's identity (tests); default: device, inode, size, times and mode, null when absent. */
  version?: (file: string) => Promise<string | null>;
  /**
   * Told of every sync: how many profiles were out of step and whether it committed, or its error and
   * how many profiles it had found out of step before it failed (metrics).
   */
  onSync?: (r: { drifted: number; committed: boolean; commitMs: number } | Error, drifted?: number) => void;
}

export const DEFAULT_SETTLE_MS = 1000;

/**
 * How many profiles a sync found out of step: each report not in sync counts once per profile. An
 * orphan belongs to the profile whose it is (its rules' owner, `rule:<name>` on nft, or the virtual
 * address of a profile of the version synced or of the one before it: on nft a profile whose
 * destinations changed leaves its address's element in the set of its old size, an orphan beside
 * its own `modified`), so one changed profile counts once on either engine; an orphan no such profile
 * had counts once (once also when both address families' tables hold it).
 */
export function driftedProfiles(
  reports: readonly Pick<ProfileReport, 'name' | 'status'>[],
  profiles: ReadonlyMap<string, Profile>,
  previous?: ReadonlyMap<string, Profile>,
): number {
  const n = countDrifted(reports, previous, profiles);
  return n.profiles + n.leftovers;
}

export interface Watcher {
  /** Checks now (as SIGHUP does), without waiting for the file to settle. */
  check(reason: string): Promise<void>;
  /** The state file changed (as a file-system event says): applied once it has settled and parses. */
  changed(): void;
  /** Stops watching; rules and state stay as they are. */
  stop(): Promise<void>;
  /** Resolves when stopped. */
  done: Promise<void>;
  /** The profiles of the last version of the file applied (what the kernel should hold); undefined before one was. */
  applied(): ReadonlyMap<string, Profile> | undefined;
  /** Why the file is not applied while its last read found it absent (/healthz says it); undefined when it exists. */
  missing(): string | undefined;
  /**
   * While the file has changed since the watch last looked, or within its settle time of a change: the profiles of the
   * version last applied, which the kernel holds until the file settles (/healthz compares the kernel with them then);
   * undefined otherwise, and before a version was applied.
   */
  unsettled(): Promise<ReadonlyMap<string, Profile> | undefined>;
}

type WatchedCore = Pick<Core, 'statePath' | 'sync' | 'readState'>;

export function startWatch(core: WatchedCore, opts: WatchOptions): Watcher {
  const w = new StateFileWatcher(core, opts);
  w.start();
  return {
    check: (reason) => w.check(reason),
    changed: () => w.changed(),
    stop: () => w.stop(),
    done: w.done,
    applied: () => w.lastApplied,
    missing: () => w.missing,
    unsettled: () => w.unsettled(),
  };
}

/**
 * The watcher's steps: a file event is debounced (`changed`), the file is looked at until it has stayed the same
 * for the settle time and parses (`settled`), then one sync at a time applies that version (`check`).
 */
class StateFileWatcher {
  private readonly intervalMs: number;
  private readonly debounceMs: number;
  private readonly settleMs: number;
  private readonly version: (file: string) => Promise<string | null>;
  private readonly file: string;
  private running: Promise<void> | null = null;
  private again = false;
  /** Why the next sync runs: the last check asked for (`start`, `SIGHUP`, `periodic check`, …). */
  private reason = 'start';
  private stopped = false;
  private debounce: NodeJS.Timeout | null = null;
  private settleTimer: NodeJS.Timeout | null = null;
  private timer: NodeJS.Timeout | null = null;
  private fsw: FSWatcher | null = null;
  /** The identity (device, inode, birth time) of the directory `fsw` watches (symbolic links followed). */
  private dirId: string | null = null;
  private stopResolve!: () => void;
  readonly done = new Promise<void>((r) => (this.stopResolve = r));
  /** The file's identity as last observed, and since when (Date.now()) it has been so. */
  private seen: string | null | undefined;
  private seenAt = -Infinity;
  /** The identity of a file that did not parse (logged once per version). */
  private unparsed: string | null | undefined;
  /** Set while the last read of the file found it absent: why it is not applied. */
  missing: string | undefined;
  /** The file version the next sync may apply (set by a settled check); undefined: any (start, SIGHUP). */
  private applyOnly: string | null | undefined;
  private readonly onHup = (): void => void this.hup();
  /** The next sync brings the kernel back to the version last applied, without reading the file. */
  private holdApplied = false;
  /** The profiles of the last version of the file applied (the kernel was brought in step with them). */
  private applied: ReadonlyMap<string, Profile> | undefined;
  /**
   * The last sync's failure (its drift lines and error message), until a sync succeeds: logged once
   * while it repeats.
   */
  private lastError: string | undefined;

  get lastApplied(): ReadonlyMap<string, Profile> | undefined {
    return this.applied;
  }

  constructor(
    private readonly core: WatchedCore,
    private readonly opts: WatchOptions,
  ) {
    this.intervalMs = opts.intervalMs ?? 5000;
    this.debounceMs = opts.debounceMs ?? 20;
    this.settleMs = opts.settleMs ?? DEFAULT_SETTLE_MS;
    this.version = opts.version ?? stateVersion;
    if (core.statePath === null) throw new Error('watch needs a state file');
    this.file = core.statePath;
  }

  /** Watches the directory, arms the periodic check and SIGHUP, and applies the file as it is. */
  start(): void {
    this.watchDir(true);
    this.timer = setInterval(() => void this.settled('periodic check'), this.intervalMs);
    process.on('SIGHUP', this.onHup);
    // At start the file is what the last writer left, settled unless it (or its journal) changed
    // within the settle time: a watch (re)started while a writer rewrites the file in place waits.
    void (async () => {
      this.seen = await this.versionOrUnreadable();
      this.seenAt = this.lastWritten();
      if (Date.now() - this.seenAt >= this.settleMs) await this.check('start');
      else await this.settled('start');
    })();
  }

  /**
   * When the file or its journal last changed, on this watcher's clock (`Date.now()`, which tests
   * mock: the age is taken on the real clock); -Infinity when neither exists.
   */
  private lastWritten(): number {
    let t = -Infinity;
    for (const f of [this.file, journalPath(this.file)]) {
      try {
        const st = lstatSync(f);
        t = Math.max(t, st.mtimeMs, st.ctimeMs);
      } catch {
        /* absent */
      }
    }
    const age = performance.timeOrigin + performance.now() - t;
    return Date.now() - Math.max(0, age);
  }

  /**
   * SIGHUP (`systemctl reload`): a check now. A file that has settled is applied; one that is still
   * changing (a writer part way through an in-place rewrite) is not applied half-written: the kernel
   * is brought back to the version last applied now, and the file waits for its settle time.
   */
  private async hup(): Promise<void> {
    if (this.stopped) return;
    const { version, wait } = await this.observe();
    if (wait === 0) return this.check('SIGHUP', version);
    this.armSettle(wait);
    if (this.applied) await this.check('SIGHUP', undefined, true);
  }

  /**
   * Watches the state file's directory, again when it is no longer the one watched: a directory removed
   * and made again (config management), or a symbolic link in the path swapped to another (a Kubernetes
   * ConfigMap volume's `..data`). The watch of the old one saw nothing more, and each change waited for
   * the periodic check. Called at start and by every look at the file (a file event, the periodic check).
   */
  private watchDir(first = false): void {
    if (this.stopped) return;
    const dir = path.dirname(this.file);
    let id: string | null = null;
    try {
      const st = statSync(dir);
      id = `${st.dev}:${st.ino}:${st.birthtimeMs}`;
    } catch {
      /* absent for now: the directory above is watched for it */
    }
    if (this.fsw && id === this.dirId) return;
    this.fsw?.close();
    this.fsw = null;
    this.dirId = id;
    if (id === null) return this.watchAbove(dir);
    const base = path.basename(this.file);
    const journalName = path.basename(journalPath(this.file));
    this.arm(
      dir,
      (name) => {
        // The YAML, or its journal (a library handle's appends: see journal.ts); or the directory itself
        // (removed, or renamed): looked at again at once, and a new one (which may have the inode number
        // back) watched then.
        if (name === path.basename(dir)) this.unarm();
        return name === null || name === base || name === journalName || name === path.basename(dir);
      },
      first,
    );
  }

  /**
   * The state file's directory is gone: the nearest directory above it that exists is watched for the
   * next one down to appear (config management making it again), then the directory itself.
   */
  private watchAbove(dir: string): void {
    let child = dir;
    let up = path.dirname(dir);
    while (!existsSync(up) && path.dirname(up) !== up) {
      child = up;
      up = path.dirname(up);
    }
    this.arm(up, (name) => name === null || name === path.basename(child), false);
    // Made between the look and the watch: looked at again.
    if (existsSync(child)) this.changed();
  }

  /** Watches `dir`; a name `relevant` says is of the state file makes a look at it. */
  private arm(dir: string, relevant: (name: string | null) => boolean, first: boolean): void {
    try {
      const fsw = watch(dir, { persistent: true }, (_event, name) => {
        if (relevant(name)) this.changed();
      });
      fsw.on('error', () => {
        if (this.fsw === fsw) this.fsw = null;
        fsw.close();
      });
      this.fsw = fsw;
    } catch (e) {
      if (first)
        this.opts.log(
          `watch: cannot watch ${dir} (${(e as Error).message}); relying on the ${this.intervalMs} ms check`,
        );
    }
  }

  /** Stops the watch of a directory that went: the next look watches what is there then. */
  private unarm(): void {
    this.fsw?.close();
    this.fsw = null;
  }

  /** One sync at a time; a check while one runs makes it run again (for the latest version asked for). */
  async check(reason: string, settledVersion?: string | null, holdApplied = false): Promise<void> {
    if (this.stopped) return;
    this.applyOnly = settledVersion;
    this.holdApplied = holdApplied;
    // The sync that runs next is told by the name of the last check asked for (the log line says why it ran).
    this.reason = reason;
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.syncOnce(this.reason);
      } while (this.again && !this.stopped);
    })();
    try {
      await this.running;
    } finally {
      this.running = null;
    }
  }

  /**
   * One sync. Only the version that settled (and parsed) is applied: one rewritten since waits for its
   * own settle. A file that is absent or does not parse is not applied: the kernel keeps the last
   * version applied, and drift is repaired toward that version (nothing, before one was applied).
   */
  private async syncOnce(reason: string): Promise<void> {
    // What the sync found out of step: logged as found, unless the last sync failed, when it is held
    // back with its outcome (see lastError).
    const drift: string[] = [];
    const found: Pick<ProfileReport, 'name' | 'status'>[] = [];
    // The profiles the sync compares with, and the version applied before it (to count what it found).
    let counted: { profiles: ReadonlyMap<string, Profile>; previous?: ReadonlyMap<string, Profile> } | undefined;
    const heldBack: string[] = [];
    const driftLog = (l: string): void => {
      drift.push(l);
      if (this.lastError === undefined) this.opts.log(l);
      else heldBack.push(l);
    };
    try {
      const only = this.applyOnly;
      const file = this.holdApplied ? { version: null, why: 'held' } : await this.readFile();
      if (file.why !== undefined && !this.applied) return;
      const held = file.why !== undefined ? this.applied : undefined;
      // The version read is applied only while it is the file (asked under the lock), and, after a
      // settle, only if it is the version that settled: one rewritten since waits for its own settle.
      if (!held && only !== undefined && file.version !== only) return;
      counted = { profiles: held ?? file.profiles!, ...(this.applied ? { previous: this.applied } : {}) };
      const r = await this.core.sync({
        quietWhenInSync: true,
        driftLog,
        onDrift: (d) => found.push(d),
        ...(held
          ? { profiles: held }
          : {
              profiles: file.profiles!,
              ...(this.applied ? { previous: this.applied } : {}),
              guard: async () => (await this.versionOrUnreadable()) === file.version,
            }),
      });
      for (const l of heldBack) this.opts.log(l);
      if (r.skipped) return;
      const previous = this.applied;
      if (!held && r.state) this.applied = r.state;
      this.opts.onSync?.({
        drifted: driftedProfiles(r.before, held ?? file.profiles!, previous),
        committed: r.committed,
        commitMs: r.commitMs,
      });
      if (r.committed)
        this.opts.log(
          held
            ? `watch: ${reason}: kernel brought back to the last version of ${this.file} applied, which cannot be applied now (${r.commitMs.toFixed(2)} ms)`
            : `watch: ${reason}: kernel brought in step with ${this.file} (${r.commitMs.toFixed(2)} ms)`,
        );
      this.lastError = undefined;
    } catch (e) {
      this.opts.onSync?.(
        e as Error,
        counted && found.length ? driftedProfiles(found, counted.profiles, counted.previous) : 0,
      );
      // Said once while it repeats (a check every few seconds that meets the same refusal, over the same
      // drift: a rule of another tool in iptlb's nft base chain refuses every repair), again when it changes.
      const message = (e as Error).message;
      const failure = [...drift, message].join('\n');
      if (failure !== this.lastError) {
        for (const l of heldBack) this.opts.log(l);
        this.opts.log(`watch: ${reason}: ${message}`);
      }
      this.lastError = failure;
    }
  }

  /**
   * The file read once: its version (taken before the read) and its profiles, or why it cannot be
   * applied (absent, or it does not parse), logged once per version. An absent file is not "no
   * profiles": a file removed before a new one is copied in, or a wrong path, would remove every rule
   * (an empty state file, `{}`, does that on purpose).
   */
  private async readFile(): Promise<{ version: string | null; profiles?: Map<string, Profile>; why?: string }> {
    const version = await this.versionOrUnreadable();
    let why: string | undefined;
    let profiles: Map<string, Profile> | undefined;
    if (version === null) why = `it does not exist (an empty state file, {}, is how to remove every profile)`;
    else
      try {
        profiles = await this.core.readState();
      } catch (e) {
        // The writer's advice fits a file read part way through its writing, not the refusal of the file
        // whatever it holds: its mode, its owner, a symbolic link ("refusing to use it", "… to follow it").
        const m = (e as Error).message;
        why = /; refusing to /.test(m) ? m : `${m} (write a temporary file and rename it over the state file)`;
      }
    const kept = this.applied ? 'the kernel keeps the last version applied' : 'the kernel is left as it is';
    // Absent: /healthz says so (a status read takes an absent file for "no profiles", and answered 200).
    this.missing = version === null ? `state file ${this.file} is not applied: ${why}; ${kept}` : undefined;
    if (why === undefined) {
      this.unparsed = undefined;
      return { version, profiles: profiles! };
    }
    if (this.unparsed !== version) {
      this.unparsed = version;
      this.opts.log(`watch: ${this.file} is not applied: ${why}; ${kept}`);
    }
    return { version, why };
  }

  private async versionOrUnreadable(): Promise<string | null> {
    try {
      return await this.version(this.file);
    } catch {
      return 'unreadable';
    }
  }

  /**
   * Looks at the file: the version seen, and the ms it has still to stay unchanged before it counts
   * as settled (0: settled).
   */
  private async observe(): Promise<{ version: string | null; wait: number }> {
    this.watchDir();
    const v = await this.versionOrUnreadable();
    const now = Date.now();
    if (v !== this.seen) {
      this.seen = v;
      this.seenAt = now;
    }
    return { version: v, wait: Math.max(0, this.settleMs - (now - this.seenAt)) };
  }

  /** See {@link Watcher.unsettled}. Looks at the file's version (one stat) without counting it as seen. */
  async unsettled(): Promise<ReadonlyMap<string, Profile> | undefined> {
    if (!this.applied || this.stopped) return undefined;
    const v = await this.versionOrUnreadable();
    return v !== this.seen || Date.now() - this.seenAt < this.settleMs ? this.applied : undefined;
  }

  private armSettle(ms: number): void {
    if (this.settleTimer) clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(
      () => {
        this.settleTimer = null;
        void this.settled('state file changed');
      },
      Math.max(1, ms),
    );
  }

  /**
   * Applies the file if it has settled and parses as a whole; else waits for it. Only the version
   * this call saw settle may be applied: checks run side by side (a file event, the periodic check),
   * and one that looked before a writer truncated the file must not apply what another saw after.
   */
  private async settled(reason: string): Promise<void> {
    if (this.stopped) return;
    const { version, wait } = await this.observe();
    if (wait > 0) return this.armSettle(wait);
    // (A version that cannot be applied is said so once, and the kernel held to the last one applied.)
    await this.check(reason, version);
  }

  /** The state file changed (as a file-system event says): debounced, then applied once settled. */
  changed(): void {
    if (this.stopped) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = null;
      void this.settled('state file changed');
    }, this.debounceMs);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.debounce) clearTimeout(this.debounce);
    if (this.settleTimer) clearTimeout(this.settleTimer);
    this.fsw?.close();
    process.off('SIGHUP', this.onHup);
    if (this.running) await this.running.catch(() => {});
    this.opts.log("watch: stopped; the state file and the profiles' rules stay as they are");
    this.stopResolve();
  }
}
