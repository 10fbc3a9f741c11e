/**
 * The transaction core shared by the library API and the CLI: under the state-file lock, read the
 * state, decide the change, commit it to the kernel in one transaction per address family, and only
 * then write the state. Everything engine-specific is behind the {@link Engine} seam
 * (src/engines/): the core never asks which engine it drives.
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { apart, IptlbError } from '../model/errors.js';
import { validateOpenOptions } from './options.js';
import { fsFailure } from '../platform/fsafety.js';
import { executorChoiceOf } from '../engines/executors.js';
import { engineChoiceOf, enginesHolding, originalNftChains, selectEngine, splitLine } from '../engines/select.js';
import {
  engineRecordOf,
  engineRecordText,
  engineRecordVersion,
  movingMarkerExists,
  movingMarkerOf,
  nftMoveMarkerExists,
  nftMoveMarkerOf,
  nftMoveMarkerText,
  readNftMoveMarker,
  writeNftMoveMarker,
  readEngineRecord,
  writeEngineRecord,
  writeMovingMarker,
} from './engine-record.js';
import { DEFAULT_LOCK_WAIT_MS, lockStateFile, lockWaiters, type HeldLock } from '../platform/lock.js';
import {
  checkConflicts,
  ConflictIndex,
  familyOfProfile,
  profilesOf,
  sameProfile,
  show,
  validateName,
  validateProfile,
  weightOf,
} from '../model/profile.js';
import { IndexedState, indexStateBytes } from './state-index.js';
import {
  fileVersionOf,
  readState as readStateFile,
  readStateFull,
  resolveStatePath,
  stateFileExists,
  stateVersion,
  stateVersionSync,
  writeState,
} from './state.js';
import { checkRegistryEnv, dropEntry, otherStateFiles, registerStateFile } from './registry.js';
import { countDrifted, orphanAddress, orphanNames } from './orphans.js';
import {
  appendRecord,
  closeJournal,
  journalPath,
  prepareAppend,
  profileBody,
  removeJournal,
  type JournalAt,
  type JournalRecord,
  type PreparedAppend,
  type RawState,
} from './journal.js';
import { capsMessage, missingCaps } from '../platform/caps.js';
import { noteChange } from '../platform/heap.js';
import {
  ConntrackJanitor,
  changeFlows,
  replacedFlows,
  staleFlows,
  unservedFlows,
  untranslatedFlows,
  type StaleFlows,
} from './conntrack.js';
import type { ForeignObjects, OtherStateFile, ProfileReport, StatusReport } from '../model/report.js';
import {
  ChangedProfiles,
  FAMILIES,
  shapesOf,
  type Change,
  type Engine,
  type FamilyCommit,
  type FamilyPlan,
  type PlanContext,
} from '../engines/engine.js';
import { createEngine, engineNeeds, engineOver } from '../engines/registry.js';
import type {
  AfterCommit,
  EngineChoice,
  EngineName,
  ExecutorChoice,
  Family,
  Profile,
  ProfileInput,
} from '../model/types.js';
import type { AnyTransaction, AnyView, Executor, KeepOthers, ServedPair } from '../engines/engine.js';
import { HealthOverlay } from '../health/effective.js';

export { FAMILIES, type Change } from '../engines/engine.js';

function countV6(state: ReadonlyMap<string, Profile>): number {
  let n = 0;
  const shapes = shapesOf(state);
  if (shapes) {
    for (const [p, k] of shapes) if (familyOfProfile(p) === 'ipv6') n += k;
    return n;
  }
  for (const p of state.values()) if (familyOfProfile(p) === 'ipv6') n++;
  return n;
}

/**
 * The part of `change` that concerns family `f`: its profiles upserted, and the removal of every
 * profile whose current version (in `state`) is of `f` and is deleted or moves to the other family.
 */
export function changeOfFamily(change: Change, state: ReadonlyMap<string, Profile>, f: Family): Change {
  const upsert: Profile[] = [];
  const remove: string[] = [];
  for (const p of change.upsert) {
    if (familyOfProfile(p) === f) upsert.push(p);
    else {
      const old = state.get(p.name);
      if (old && familyOfProfile(old) === f) remove.push(p.name);
    }
  }
  for (const n of change.remove) {
    const old = state.get(n);
    if (old ? familyOfProfile(old) === f : f === 'ipv4') remove.push(n);
  }
  return { upsert, remove };
}

/** Whether `change` changes anything of `state`. */
function changedBy(state: ReadonlyMap<string, Profile>, change: Change): boolean {
  return (
    change.remove.some((n) => state.has(n)) ||
    change.upsert.some((p) => !state.has(p.name) || !sameProfile(state.get(p.name)!, p))
  );
}

/** Applies `change` to `map` in place, noting each profile before and after in `edits`. */
function applyChange(
  map: Map<string, Profile>,
  change: Change,
  edits: [Profile | undefined, Profile | undefined][],
): void {
  for (const n of change.remove) {
    edits.push([map.get(n), undefined]);
    map.delete(n);
  }
  for (const p of change.upsert) {
    edits.push([map.get(p.name), p]);
    map.set(p.name, p);
  }
}

/** The state's version read now (on this thread), or one never seen when it cannot be read (then it is read again). */
function knownVersion(file: string): string | null {
  try {
    return stateVersionSync(file);
  } catch {
    return `unknown ${Math.random()}`;
  }
}

/** Options of {@link open}. */
export interface OpenOptions {
  /**
   * State file path. Default: env `IPTLB_STATE_FILE`, else `local/state.db` relative to the working
   * directory. `false`: no file at all; profiles are kept in memory by this handle (for agents whose
   * source of truth is elsewhere: no fsync and no file lock per change).
   */
  stateFile?: string | false;
  /**
   * Executor: `native` (the addon), `spawn` (iptables-legacy-restore / nft -f) or `auto`. Default: env
   * `IPTLB_EXECUTOR`, else `auto`.
   */
  executor?: ExecutorChoice;
  /**
   * Engine: `legacy` (the x_tables nat table), `nft` (the nf_tables table `ip iptlb`) or `auto` (the
   * engine that already holds iptlb's rules; else nft when the host's iptables is the nf_tables
   * flavour or x_tables is missing; else legacy). Default: env `IPTLB_ENGINE`, else `auto`.
   */
  engine?: EngineChoice;
  /**
   * How long to wait for the state-file lock and the xtables lock, ms (0 to 86400000). Default 10000.
   * For the state-file lock it is how long it may stay with one holder: while it changes hands, a
   * waiter queued behind others waits on, up to six times this.
   */
  lockWaitMs?: number;
  /** Receives one line per action taken. Default: none. */
  log?: (line: string) => void;
  /**
   * Keep the conntrack entries of flows balanced to destinations a change removed. Default `false`:
   * they are deleted after the commit (udp and sctp: all of them; tcp: those not yet established), so
   * UDP flows and half-open TCP move to a live destination. Natively over netlink with the native
   * executor, else with `conntrack -D`.
   */
  keepConntrack?: boolean;
  /**
   * Where the state files of this host register (a directory per network namespace), so that one
   * state file's `sync` and `status` leave another's profiles alone: an absolute directory, or
   * `false` for none. Default: env `IPTLB_REGISTRY_DIR`, else `/run/iptlb/state-files`; none for a
   * handle without a state file or over an executor supplied by the caller.
   */
  stateRegistry?: string | false;
  /**
   * How a change reaches the state file, ms. 0: the whole YAML is rewritten (temp file, fsync,
   * rename) on every change, as the original does. Above 0: the change is appended to the journal
   * beside it (`<state file>.journal`, synced: durable when the call returns, O(change)) and the
   * journal is folded into the YAML at most this long after its first change, at `close()` and when
   * the process exits normally; see docs/state-file.md. Default: 0 for a bare `Core`, 1000 through `open()`.
   */
  stateFoldMs?: number;
}

/**
 * The longest a run of group commits keeps the state-file lock without giving it up once (see
 * {@link Core.beginLockWindow}), ms: a writer that waits for it without the queue lock (an older
 * iptlb) gets its turn at least this often.
 */
export const LOCK_WINDOW_MS = 100;

/** A journal larger than this is folded at once (whatever `stateFoldMs` says). */
export const FOLD_BYTES = 4 * 1024 * 1024;

/** Default {@link OpenOptions.stateFoldMs} of `open()`. */
export const DEFAULT_STATE_FOLD_MS = 1000;

/**
 * A fold that failed is tried again after `stateFoldMs` (at least this many ms), doubling with each
 * failure in a row up to {@link FOLD_RETRY_MAX_MS}.
 */
export const FOLD_RETRY_MIN_MS = 100;
export const FOLD_RETRY_MAX_MS = 60_000;

/** Cores with a journal not yet folded: folded when the process is about to exit normally. */
const unfolded = new Set<Core>();
let exitHook = false;
/** Set once the process is exiting: a fold that fails then is not tried again (the exit would never come). */
let exiting = false;
function foldBeforeExit(core: Core): void {
  if (exiting) return;
  unfolded.add(core);
  if (exitHook) return;
  exitHook = true;
  process.on('beforeExit', () => {
    exiting = true;
    for (const c of [...unfolded]) {
      unfolded.delete(c);
      c.foldState().catch(() => {});
    }
  });
}

/** What a Core last read of its state file (or wrote there): the profiles and where the files stood. */
interface CachedState {
  /** {@link stateVersion} of the files when read (a version never seen: re-read next time). */
  version: string | null;
  state: Map<string, Profile>;
  /** Identity of the YAML. */
  base: string;
  /** The valid journal over it, or null. */
  journal: JournalAt | null;
}

/** A change's journal record: the profiles it writes, whole, and the names it deletes. */
function recordOf(state: ReadonlyMap<string, Profile>, change: Change): JournalRecord {
  const set: RawState = Object.create(null); // a profile may be named `__proto__`
  const del: string[] = [];
  for (const n of change.remove) if (state.has(n) && !change.upsert.some((p) => p.name === n)) del.push(n);
  for (const p of change.upsert) set[p.name] = profileBody(p);
  return { ...(del.length ? { del } : {}), set };
}

/** What one transaction did. */
export interface TransactionResult {
  /** Profiles created or replaced. */
  applied: Profile[];
  /** Names of profiles deleted. */
  deleted: string[];
  /** Whether the kernel was changed (false when not running, or nothing to do). */
  committed: boolean;
  /** Whether the state file was rewritten. */
  stateWritten: boolean;
  /** Kernel commit time in ms (0 when nothing was committed). */
  commitMs: number;
  /** The executor that committed; `null` when the kernel was not touched (a state-only change). */
  executor: 'native' | 'spawn' | null;
  /** The engine that committed; `null` when the kernel was not touched. */
  engine: EngineName | null;
  /**
   * Set when iptlb's rules are in both engines after the change (a `migrate` killed between its install
   * and its removal: the copy in the other engine may still take the traffic): the line that says so and
   * which `migrate` keeps one copy. Asked only after such a migrate (a marker beside the state file).
   */
  split?: string;
}

/** The engine and executor in use, and why. */
export interface Selection {
  /** The engine, over its executor: what the core talks to. */
  provider: Engine;
  executor: Executor;
  reason: string;
  engine: EngineName;
  engineReason: string;
  /** Set when both engines hold iptlb objects. */
  engineWarning?: string;
  /** Set when a change through this engine would put iptlb's profiles in both engines: writers refuse with it. */
  refusal?: string;
}

/** Another state file's profile of a name this state file holds, at another address (see {@link Core.sync}). */
interface Contested {
  name: string;
  stateFile: string;
  profile: Profile;
}

/** `another state file, /a.db, holds a profile of this name at 127.0.0.1:80/tcp`. */
function contestedLine(c: Contested): string {
  return `another state file, ${c.stateFile}, holds a profile of this name at ${c.profile.source}/${c.profile.protocol}`;
}

/** What one family's part of a change planned and the kernel accepted (for undo and logging). */
interface DoneFamily {
  family: Family;
  state: ReadonlyMap<string, Profile>;
  change: Change;
  /** The executor wrote the journal's record after this commit (see {@link Core.journalAhead}). */
  appended?: FamilyCommit['appended'];
  /** The commit created the table with every profile of the state (see {@link FamilyCommit.created}). */
  created?: true;
}

/**
 * A state file that does not exist, refused by a command that reads it to decide what the kernel
 * should hold (`sync`, `migrate`, `-use-state -run`, their `plan`): an absent file is not "no
 * profiles" (a wrong path would remove every rule); an empty one, `{}`, is.
 */
export function absentStateFile(file: string): IptlbError {
  return new IptlbError(
    'ESTATE',
    `state-file: ${file} does not exist; nothing was changed (a wrong path, or the working directory for a relative one? an empty state file, {}, holds no profiles)`,
    { field: 'state-file' },
  );
}

export class Core {
  /** Absolute path of the state file, or `null` when profiles are kept in memory. */
  readonly statePath: string | null;
  private memory = new Map<string, Profile>();
  /** Counts changes of the in-memory profiles (memory mode), so callers can cache what they derive from them. */
  memoryGeneration = 0;
  readonly executorChoice: ExecutorChoice;
  readonly engineChoice: EngineChoice;
  readonly lockWaitMs: number;
  private readonly keepConntrack: boolean;
  /** {@link OpenOptions.stateFoldMs}. */
  readonly foldMs: number;
  private foldTimer?: NodeJS.Timeout;
  /** Folds that failed in a row (the retry's backoff); 0 after one that ran. */
  private foldFailures = 0;
  /** Counts changes of the cached file profiles (as memoryGeneration in memory mode). */
  private fileGeneration = 0;
  private selected?: Selection;
  private selecting?: Promise<Selection>;
  /**
   * The engine record's identity (see engine-record.ts) read before {@link selected} was chosen: when the record
   * is no longer so under the state-file lock, `migrate` moved the profiles since, and the engine is chosen again.
   */
  private selectedRecord?: string | null;
  private readonly injected: boolean;
  /** The state-file registry's directory (registry.ts): null for none, undefined for the default. */
  private readonly registry: string | null | undefined;
  private readonly log: (line: string) => void;
  private readonly logging: boolean;
  private queue: Promise<unknown> = Promise.resolve();
  /** Deletes the conntrack entries of removed destinations after the changes, off the commit path. */
  readonly conntrack: ConntrackJanitor;
  /**
   * The transactions the last change, sync or migration of this instance committed, in order, each
   * with the engine that committed it (a migration commits through both): what `--verbose` prints.
   * Empty when it committed nothing.
   */
  commits: { engine: Engine; tx: AnyTransaction }[] = [];
  /** The last of {@link commits}. */
  get lastTransaction(): AnyTransaction | undefined {
    return this.commits.at(-1)?.tx;
  }
  /**
   * Runtime health of destinations: the kernel gets effective profiles (down destinations drained), the state file the
   * configured ones.
   */
  readonly health = new HealthOverlay();

  /**
   * Reads the state file into an index of its text when it is as iptlb writes it (see
   * state-index.ts): for a one-shot change (the CLI), which looks up a few profiles of thousands and
   * writes the file back with its change spliced in. A long-lived handle builds every profile.
   */
  indexedReads = false;

  /** Executors supplied per engine (tests against fake kernels, embedders with their own): used instead of choosing. */
  private readonly supplied?: Partial<Record<EngineName, Executor>>;

  /**
   * @param injected an executor to use instead of choosing one, or one per engine (then the engine
   * is still chosen, among those given, and `migrate` can move between them).
   */
  constructor(opts: OpenOptions = {}, injected?: Executor | Partial<Record<EngineName, Executor>>) {
    validateOpenOptions(opts, true);
    // `open(options, 'native')` (the choice belongs in options.executor): a typed error, not the `in` operator's.
    if (injected !== undefined && injected !== null && (typeof injected !== 'object' || Array.isArray(injected))) {
      const got = Array.isArray(injected) ? 'an array' : (JSON.stringify(injected) ?? typeof injected);
      throw new IptlbError(
        'EUSAGE',
        `executor: the second argument must be an Executor object, got ${got} (to choose one: options.executor)`,
        { field: 'executor' },
      );
    }
    if (injected && 'commit' in injected) {
      const by = 'executor supplied by the caller';
      this.selected = {
        provider: engineOver(injected as Executor),
        executor: injected as Executor,
        reason: by,
        engine: (injected as Executor).engine,
        engineReason: by,
      };
    } else if (injected) {
      this.supplied = injected as Partial<Record<EngineName, Executor>>;
    }
    this.injected = !!injected;
    this.statePath = opts.stateFile === false ? null : resolveStatePath(opts.stateFile);
    this.executorChoice = opts.executor ?? executorChoiceOf(undefined);
    this.engineChoice = opts.engine ?? engineChoiceOf(undefined);
    this.lockWaitMs = opts.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS;
    this.keepConntrack = opts.keepConntrack ?? false;
    // null: none; undefined: the default directory (registry.ts).
    this.registry =
      this.statePath === null || opts.stateRegistry === false || (injected && opts.stateRegistry === undefined)
        ? null
        : opts.stateRegistry;
    if (this.registry === undefined) checkRegistryEnv();
    this.foldMs = opts.stateFoldMs ?? 0;
    this.log = opts.log ? apart(opts.log) : () => {};
    this.logging = opts.log !== undefined;
    if (this.logging) this.health.log = (line) => this.log(line);
    this.conntrack = new ConntrackJanitor({
      log: (line) => this.log(line),
      // As the kernel has them: a destination a health check drained has weight 0 there.
      current: async () => this.health.kernelState(this.statePath === null ? this.memory : await this.readState()),
    });
  }

  /**
   * Resolves when the conntrack cleanup of every change made so far is done. A change's promise
   * resolves before its cleanup (shortly after, coalesced with the next changes'); a one-shot
   * process (the CLI) awaits this before it exits.
   */
  conntrackIdle(): Promise<void> {
    return this.conntrack.idle();
  }

  /**
   * A commit is about to follow (the batch queue has more calls coming): let the engine prepare it
   * meanwhile, if it can (native legacy: take the xtables lock and copy the table out; see
   * prefetch.h in the addon). Returns whether it did.
   */
  prefetchCommit(): boolean {
    // Without a state file, or with its lock kept across the run of commits (the lock window): the
    // prepared commit holds the xtables lock until the next batch, and with a state file the next
    // batch first takes the state-file lock. Taking it again while holding the xtables lock would
    // invert the order a CLI takes them in (it would wait for us while we wait for it: a deadlock
    // that only the timeouts ended; issue 13, lock starvation). Within a window the state-file lock
    // is already held, and the window gives back what was prepared before it gives the lock up.
    if (this.statePath !== null && !this.window) return false;
    const provider = this.selected?.provider;
    const prepared = provider?.prefetch?.() ?? false;
    if (prepared) this.prefetchedBy = provider;
    return prepared;
  }

  /** Gives back what {@link prefetchCommit} prepared when no commit used it; resolves once given back. */
  releasePrefetch(): Promise<void> {
    const by = this.prefetchedBy;
    this.prefetchedBy = undefined;
    return by?.releasePrefetch?.() ?? Promise.resolve();
  }
  /**
   * The engine that may hold something prepared (see {@link prefetchCommit}): a release is owed to it
   * (even after `migrate` chose another engine) before the lock window ends.
   */
  private prefetchedBy?: Engine;

  /**
   * The state-file lock kept between the commits of a run (a drain of the commit queue): taken by the
   * run's first transaction, kept until another process waits for it, {@link LOCK_WINDOW_MS} have
   * passed, or the run ends.
   */
  private window?: { lock: HeldLock; since: number };
  /** Set by {@link beginLockWindow}: the next lock taken is kept as the window. */
  private keepLock = false;

  /**
   * The commit queue starts a run of group commits: from now on the state-file lock, once taken, is
   * kept between its commits (no lock round trip per commit, and the next commit can be prefetched
   * under it), until {@link lockWindowCheck} finds another process waiting for it or the run ends
   * ({@link endLockWindow}). Only when this process can see waiters without waiting (the native
   * addon): otherwise false, and each commit takes the lock as before.
   */
  beginLockWindow(): boolean {
    if (this.statePath === null || lockWaiters(this.statePath) === undefined) return false;
    this.keepLock = true;
    return true;
  }

  /**
   * Between two commits of a run: when another process waits for the kept state-file lock (or it was
   * kept {@link LOCK_WINDOW_MS}), gives back what was prefetched under it and then the lock. The
   * next commit takes it again, queued behind the waiter. Returns whether the lock is still kept.
   */
  lockWindowCheck(now = Date.now()): Promise<boolean> {
    return this.serial(async () => {
      const w = this.window;
      if (!w) return false;
      if (this.windowStays(w, now)) return true;
      await this.closeWindow();
      return false;
    });
  }

  /**
   * {@link lockWindowCheck}'s answer when it can be given now, without a turn of the serial queue:
   * true when nothing else is queued on this instance and the window stays (kept under
   * {@link LOCK_WINDOW_MS}, no other process waiting). Otherwise undefined: ask
   * {@link lockWindowCheck}. Under churn this lets the next commit's prefetch start before the
   * callers the last commit settled run their next calls (about 0.25 ms of JavaScript for 64).
   */
  lockWindowKeptNow(now = Date.now()): true | undefined {
    const w = this.window;
    return w && this.serialPending === 0 && this.windowStays(w, now) ? true : undefined;
  }

  /** Whether the lock window `w` is kept on: under {@link LOCK_WINDOW_MS} old, and no other process waiting. */
  private windowStays(w: { since: number }, now: number): boolean {
    return now - w.since < LOCK_WINDOW_MS && !lockWaiters(this.statePath!);
  }

  /** The run of commits ended: gives back what was prefetched, then the kept state-file lock. */
  endLockWindow(): Promise<void> {
    this.keepLock = false;
    return this.serial(async () => {
      this.keepLock = false;
      await this.releasePrefetch();
      await this.closeWindow();
    });
  }

  /** In the serial queue: what was prepared under the window first (the lock order), then its lock. */
  private async closeWindow(): Promise<void> {
    const w = this.window;
    if (!w) return;
    // Before the lock: a waiter that takes it next then takes the xtables lock (the lock order).
    await this.releasePrefetch();
    this.window = undefined;
    w.lock.release();
  }

  /** The engine and executor, chosen on first use (see {@link selectEngine}). */
  select(): Promise<Selection> {
    if (this.selected) return Promise.resolve(this.selected);
    this.selecting ??= (async () => {
      // Read before the kernel is asked: a migrate that ends after this read changes the record, and
      // the writer that selected here sees it under the lock (see selectionNow).
      const record = this.statePath === null ? undefined : readEngineRecord(engineRecordOf(this.statePath));
      const made = (name: EngineName): { engine: Engine } | { error: IptlbError } => {
        try {
          return { engine: this.engineFor(name).engine };
        } catch (e) {
          return { error: e instanceof IptlbError ? e : new IptlbError('EEXECUTOR', String(e)) };
        }
      };
      // A read that fails is an error, never "no rules": that would put the profiles in the other engine.
      const holds = async (name: EngineName): Promise<boolean> => {
        const where = name === 'legacy' ? 'the x_tables nat table' : 'table ip (or ip6) iptlb';
        const m = made(name);
        if ('error' in m) {
          // Executors supplied for one engine only: the other holds nothing this instance could touch. An nft
          // engine that cannot run here is not asked (nothing cheap says whether its table exists).
          if (this.supplied || name === 'nft') return false;
          throw new IptlbError(
            m.error.code,
            `engine: cannot tell whether ${where} holds iptlb rules: the ${name} engine cannot run here (${m.error.message}); fix that, or choose the engine with --engine nft`,
            { field: 'engine' },
          );
        }
        try {
          return await m.engine.holdsObjects();
        } catch (e) {
          const err = e instanceof IptlbError ? e : new IptlbError('EKERNEL', String((e as Error)?.message ?? e));
          throw new IptlbError(err.code, `engine: cannot tell whether ${where} holds iptlb rules: ${err.message}`, {
            field: 'engine',
            cause: e,
          });
        }
      };
      const e = await selectEngine(
        this.engineChoice,
        {
          legacyHasRules: () => holds('legacy'),
          nftHasRules: () => holds('nft'),
          ...this.fakeNat(),
          cannotRun: (name) => {
            if (this.supplied) return undefined;
            const m = made(name);
            return 'error' in m ? m.error.message : undefined;
          },
        },
        record?.engine ? { engine: record.engine, file: engineRecordOf(this.statePath!) } : undefined,
      );
      const { engine, reason, broken } = this.engineFor(e.engine);
      // Said once by each instance with a log (docs/install.md): what only doctor said before.
      if (broken && this.logging && !this.saidBroken.has(e.engine)) {
        this.saidBroken.add(e.engine);
        this.log(`${e.engine} engine: ${broken}; the spawn executor is used`);
      }
      const before = this.followed;
      if (before && before !== e.engine && record?.engine === e.engine)
        this.log(
          `${this.statePath}: \`iptlb migrate\` moved the profiles from the ${before} engine to ${e.engine}; following them`,
        );
      this.followed = e.engine;
      this.selectedRecord = record?.version ?? null;
      this.selected = {
        provider: engine,
        executor: engine.executor,
        reason,
        engine: e.engine,
        engineReason: e.reason,
        ...(e.warning ? { engineWarning: e.warning } : {}),
        ...(e.refusal ? { refusal: e.refusal } : {}),
      };
      return this.selected;
    })();
    this.selecting.catch(() => (this.selecting = undefined));
    return this.selecting;
  }
  /** Executors supplied per engine (fake kernels) answer without a nat table of this host's: asked whatever it has. */
  private fakeNat(): { natExists?: () => boolean } {
    return this.supplied ? { natExists: () => true } : {};
  }

  /** Whether the move marker of a killed migrate was there at the last look (see movingMarkerOf). */
  private markerSeen = false;

  /**
   * Whether the nft move marker (see nftMoveMarkerOf) was there at the last look, or this instance wrote it and has
   * not removed it (a two-step change of its own that failed after its first transaction).
   */
  private nftMoveLeft = false;

  /**
   * The profile versions the nft move marker holds for the change in flight: those of a marker found, then those of
   * every two-step plan committed since (each family's, and an undo's): each write holds them all, so the second
   * family's move (or an undo) does not drop the first family's from the marker.
   */
  private nftMoveVersions: Profile[] = [];

  /**
   * The versions of profiles the nft move marker holds (see PlanContext.interrupted): those that are profiles still
   * (a line that is not is skipped).
   */
  private async interruptedVersions(): Promise<Profile[]> {
    const out: Profile[] = [];
    for (const raw of readNftMoveMarker(this.statePath!)) {
      try {
        out.push(validateProfile(raw, { existing: true }));
      } catch {
        // not a profile: skipped
      }
    }
    // A version at an address another state file's profile holds now is not looked for: what the kernel holds there
    // is that profile's (the version never reached the kernel, its process killed or refused before the first
    // transaction, or a sync removed it since; a state file does not take an address the kernel serves for another).
    // Looked for, it was taken for this state file's and the replacement dropped the other's profile.
    if (!out.length || this.registry === null) return out;
    const taken = new Set<string>();
    for (const { file, exists } of otherStateFiles(this.statePath!, this.registry)) {
      if (!exists) continue;
      try {
        for (const p of (await readStateFile(file)).values()) taken.add(`${p.protocol} ${p.source}`);
      } catch {
        // unreadable: its profiles are not known here, as for a status
      }
    }
    return out.filter((p) => !taken.has(`${p.protocol} ${p.source}`));
  }

  /** The engine the last selection chose (to say when a later one follows a migrate elsewhere). */
  private followed?: EngineName;

  /**
   * The selection as it stands now: chosen again when the engine record changed since it was made (another
   * process's `migrate`). One lstat; none when `kept` (the state-file lock was kept since the last check, so
   * nothing could have changed it) or without a state file. Under the state-file lock for a writer.
   */
  private async selectionNow(kept = false): Promise<Selection> {
    const sel = await this.select();
    if (kept || this.statePath === null || (this.injected && !this.supplied)) return sel;
    if (engineRecordVersion(engineRecordOf(this.statePath)) === this.selectedRecord) return sel;
    if (this.selected === sel) {
      this.selected = undefined;
      this.selecting = undefined;
    }
    return this.select();
  }

  /** {@link selectionNow} for a change: refused when it would put iptlb's profiles in both engines. */
  private async writerSelection(kept: boolean): Promise<Selection> {
    const sel = await this.selectionNow(kept);
    if (sel.refusal) throw new IptlbError('ECONFLICT', sel.refusal, { field: 'engine' });
    return sel;
  }

  /**
   * When iptlb's objects are in both engines (a migrate killed between its two transactions, an older iptlb
   * or another tool): the line that says so and how to keep one copy; for `status`. `selectedHolds`: what a
   * status just read of the selected engine (whether it holds any of iptlb's objects), so that only the
   * other engine is asked (one `nft list tables` spawned, or a read of the x_tables nat table when it
   * exists, cost every status 40–50 ms more when both were asked); undefined: both are asked.
   */
  async engineSplit(selectedHolds?: boolean): Promise<string | undefined> {
    if (this.injected && !this.supplied) return undefined;
    if (selectedHolds === false) return undefined;
    const sel = await this.selectionNow();
    const holds = async (name: EngineName): Promise<boolean> => {
      if (selectedHolds && name === sel.engine) return true;
      try {
        return await this.engineFor(name).engine.holdsObjects();
      } catch {
        return false;
      }
    };
    const held = await enginesHolding({
      legacyHasRules: () => holds('legacy'),
      nftHasRules: () => holds('nft'),
      ...this.fakeNat(),
      ...(selectedHolds && sel.engine === 'legacy' ? { natExists: () => true } : {}),
    });
    return held.length > 1 ? splitLine(sel.engine) : undefined;
  }

  /** Engine `name` over the executor supplied for it, else over the one `executorChoice` selects. */
  private engineFor(name: EngineName): { engine: Engine; reason: string; broken?: string } {
    const supplied = this.supplied?.[name];
    if (supplied) return { engine: engineOver(supplied), reason: 'executor supplied by the caller' };
    if (this.supplied)
      throw new IptlbError('EUSAGE', `engine: no executor was supplied for the ${name} engine`, { field: 'engine' });
    return createEngine(name, this.executorChoice, { lockWaitMs: this.lockWaitMs });
  }

  /** The selection made by {@link select}; throws when it has not run yet. */
  get selection(): Selection {
    if (!this.selected) throw new Error('Core.selection read before select()');
    return this.selected;
  }

  /** Runs `fn` after every earlier call on this instance has finished. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    this.serialPending++;
    const p = this.queue.then(fn, fn);
    this.queue = p.then(
      () => void this.serialPending--,
      () => void this.serialPending--,
    );
    return p;
  }
  /** Calls of {@link serial} not finished yet. */
  private serialPending = 0;

  private cached?: CachedState;
  /**
   * What a reader (store false) read last, by the files' version: `top` and `status --watch` refresh every second, and
   * a file that did not change is not parsed again for each refresh. Never a transaction's map; dropped when one is
   * cached.
   */
  private readerCache?: { version: string; state: Map<string, Profile> };

  /**
   * The state file's profiles (the YAML and its journal). Parsed once and cached by the files'
   * identities (device, inode, size, times): read again only when another process has replaced,
   * edited or appended to them.
   */
  async readState(): Promise<Map<string, Profile>> {
    return new Map(await this.currentState(false));
  }

  /**
   * One profile of the state file (`iptlb show`): with the CLI's index (see state-index.ts), the file is
   * checked whole but only this profile is built, as a change builds only those it touches.
   */
  async stateProfile(name: string): Promise<Profile | undefined> {
    return (await this.currentState(false, true)).get(name);
  }

  /**
   * Whether the state file exists (the YAML or its journal); true for an instance that keeps its
   * profiles in memory.
   */
  async stateFileExists(): Promise<boolean> {
    if (this.statePath === null) return true;
    return (await stateVersion(this.statePath).catch(() => 'unreadable')) !== null;
  }

  /** Refuses a state file that does not exist ({@link absentStateFile}) when `required`. */
  private async requireStateFile(required: boolean | undefined): Promise<void> {
    if (required && !(await this.stateFileExists())) throw absentStateFile(this.statePath!);
  }

  /**
   * The profiles, not copied: the in-memory map, or the cached file state (callers must not change
   * it). Only the transactions and folds (`store`, in the serial queue, under the lock) replace the
   * cache: a reader beside them (list, the conntrack janitor, health) must not swap the map a
   * transaction has decided on.
   */
  private async currentState(store = true, indexed = store): Promise<Map<string, Profile>> {
    if (this.statePath === null) return this.memory;
    // Within a lock window (a run of commits keeping the lock) without the thread pool's round trip.
    const version = await (
      this.window ? Promise.resolve().then(() => stateVersionSync(this.statePath!)) : stateVersion(this.statePath)
    ).catch(() => undefined);
    if (version !== undefined && this.cached && this.cached.version === version) return this.cached.state;
    if (!store && version && this.readerCache?.version === version) return this.readerCache.state;
    const r = await readStateFull(this.statePath, this.indexedReads && indexed ? indexStateBytes : undefined);
    if (!store) {
      // (The version is taken before the read: if the files changed in between, the next call reads again.)
      if (version) this.readerCache = { version, state: r.profiles };
      return r.profiles;
    }
    this.readerCache = undefined;
    // The version is taken before the read: if the files changed in between, the next call reads again.
    closeJournal(this.cached?.journal);
    this.cached = {
      version: version === undefined ? `unknown ${Math.random()}` : version,
      state: r.profiles,
      base: r.base,
      journal: r.journal,
    };
    this.fileGeneration++;
    // A journal left by another handle (or one that died): folded on this handle's schedule. A core
    // that does not journal (the CLI) folds only when it writes, so reading commands write nothing.
    if (r.journal && this.foldMs > 0) this.scheduleFold();
    return r.profiles;
  }

  /**
   * Counts changes of the profiles this instance holds (in memory, or cached from the state file; a
   * re-read of the file counts too): what callers derive from them stays valid while it is unchanged.
   */
  get stateGeneration(): number {
    return this.statePath === null ? this.memoryGeneration : this.fileGeneration;
  }

  /** The generation of `state` when it is a long-lived map of this instance (memory, or the cached file state). */
  private generationOf(state: ReadonlyMap<string, Profile>): number | undefined {
    if (state === this.memory) return this.memoryGeneration;
    if (this.cached && state === this.cached.state) return this.fileGeneration;
    return undefined;
  }

  /**
   * Folds the journal into the YAML now, under the state-file lock: the YAML is written whole (as
   * with {@link OpenOptions.stateFoldMs} 0) and the journal removed. Returns whether there was one.
   */
  foldState(): Promise<boolean> {
    if (this.foldTimer) clearTimeout(this.foldTimer);
    this.foldTimer = undefined;
    unfolded.delete(this);
    const file = this.statePath;
    if (file === null) return Promise.resolve(false);
    return this.serial(async () => {
      // No journal: nothing to fold, and no lock to take (a handle that only read, or a path not yet
      // created, is left as it was: no directory, no lock file).
      if (!this.cached?.journal && !existsSync(journalPath(file))) return false;
      const lock = await this.lock();
      try {
        const state = await this.currentState();
        const c = this.cached!;
        if (!c.journal) {
          this.foldFailures = 0;
          return false;
        }
        this.cached = undefined;
        closeJournal(c.journal);
        const base = await writeState(file, state.values());
        await removeJournal(file);
        this.cached = { version: await stateVersion(file), state, base, journal: null };
        this.log(`state journal folded into ${file} (${state.size} profile(s))`);
        this.foldFailures = 0;
        return true;
      } finally {
        lock.release();
      }
    });
  }

  /**
   * A fold that failed (the lock busy for the whole wait, a full disk): the journal stays valid. The
   * fold is tried again after `stateFoldMs` (at least {@link FOLD_RETRY_MIN_MS}), doubling with each
   * failure in a row up to {@link FOLD_RETRY_MAX_MS}, unless `retry` is false (the handle is closing);
   * the exit folds it too.
   */
  foldFailed(e: Error, retry = true): void {
    this.foldFailures++;
    const again =
      retry && !exiting && !this.foldTimer
        ? Math.min(Math.max(this.foldMs, FOLD_RETRY_MIN_MS) * 2 ** (this.foldFailures - 1), FOLD_RETRY_MAX_MS)
        : undefined;
    this.log(
      `could not fold the state journal into ${this.statePath} (${e.message}); it stays, and ${again !== undefined ? `the fold is tried again in ${again} ms` : 'is folded at exit or by the next iptlb that writes the file'}`,
    );
    if (again !== undefined) this.scheduleFold(again);
    else foldBeforeExit(this);
  }

  private scheduleFold(ms = this.foldMs): void {
    if (this.foldTimer || this.statePath === null) return;
    this.foldTimer = setTimeout(
      () => {
        this.foldTimer = undefined;
        this.foldState().catch((e: Error) => this.foldFailed(e));
      },
      Math.max(ms, 1),
    );
    this.foldTimer.unref();
    foldBeforeExit(this);
  }

  /**
   * The transaction: lock → read state → decide → (kernel commit when `run`) → write state → unlock.
   * Nothing changes anywhere when `decide` throws or the kernel refuses.
   */
  transact(
    decide: (state: Map<string, Profile>) => Change,
    opts: {
      run: boolean;
      /**
       * For a change that records nothing (it must be empty): the health checks' commits in watch mode.
       * The profiles of the last version of the file the watch applied; the file may be ahead of it, not
       * yet settled (or refused). The commit plans against the state file as it is now, except a profile
       * whose version there the kernel does not hold (see {@link heldBase}).
       */
      holds?: ReadonlyMap<string, Profile>;
      /**
       * The change is decided from the state file's profiles (`-use-state -run`): a file that does not
       * exist is refused ({@link absentStateFile}) before anything is created or the kernel is read.
       */
      requireFile?: boolean;
      /**
       * `decide` has no effect but its result and its throws (the CLI's): where the state file does not
       * exist yet (a first change, a wrong path), it is called once against no profiles before the lock
       * makes the file's directory and lock files, so that bad input leaves nothing behind; a state
       * file that is not a file is refused then too, as a read would refuse it.
       */
      decideFirst?: boolean;
      /**
       * Profiles applied again as the state has them (the CLI's `-use-state -run`, a profile recorded
       * without `-run`): the kernel is read before and after the commit (when conntrack holds entries),
       * and the flows of destinations it served for them and no longer does are deleted (see
       * docs/conntrack.md). The kernel may have held another version of them, which no version of the
       * state file names.
       */
      cleanAgain?: boolean;
    },
  ): Promise<TransactionResult> {
    return this.serial(async () => {
      this.commits = [];
      await this.requireStateFile(opts.requireFile);
      // (The state is the YAML and its journal: a library handle's first changes are only in the journal.)
      if (
        opts.decideFirst &&
        this.statePath !== null &&
        !this.cached &&
        !stateFileExists(this.statePath) &&
        !stateFileExists(journalPath(this.statePath))
      )
        decide(new Map());
      if (opts.run) this.checkPrivileges((await this.select()).provider.name);
      const lock = await this.lock(true);
      try {
        // Again under the lock: removed meanwhile, it would read as no profiles.
        await this.requireStateFile(opts.requireFile);
        // Chosen again under the lock when another process's migrate moved the profiles since.
        const engine = opts.run ? (await this.writerSelection(!!lock.kept)).provider : undefined;
        if (engine) this.checkPrivileges(engine.name);
        // A migrate killed between its install and its removal (see movingMarkerOf): both engines asked below.
        // One lstat; none while the lock was kept since the last look (no migrate could come in between).
        if (engine && this.statePath !== null && !lock.kept) this.markerSeen = movingMarkerExists(this.statePath);
        const moving = engine !== undefined && this.markerSeen;
        // A change of this state file that the nft engine commits in two transactions, interrupted after the first
        // (see nftMoveMarkerOf): the versions it may have left are looked for by this change's plan. One lstat, and
        // none while the lock was kept since the last look (only this instance could have left it: it knows).
        if (engine && this.statePath !== null && !lock.kept) this.nftMoveLeft = nftMoveMarkerExists(this.statePath);
        const interrupted = engine && this.nftMoveLeft ? await this.interruptedVersions() : undefined;
        this.nftMoveVersions = [...(interrupted ?? [])];
        // The long-lived map itself, in memory or cached from the file (decide never changes it; `next`
        // is a view): no copy per batch. `record` changes it once the change is recorded.
        const state = opts.holds ? await this.heldBase(engine, opts.holds) : await this.currentState();
        const change = decide(state);
        if (opts.holds && (change.upsert.length || change.remove.length))
          throw new Error('a transaction planned against the profiles the kernel holds changes no profile');
        // Without the lock (a read-only file system) only a change the state file already holds (as
        // `-use-state -run`) may go on; any other would fail to be recorded: refused before the kernel.
        if (lock.unlocked && changedBy(state, change))
          throw new IptlbError(
            'ESTATE',
            `cannot write the state file ${this.statePath}: the file system is read-only (EROFS); nothing was changed`,
          );
        if (lock.unlocked) this.withoutLock();
        // What the profiles will be: a view over `state` and the change (O(change), not O(profiles)).
        const next = new ChangedProfiles(state, change);
        // The kernel's part: effective profiles (health), from what the kernel holds to what it should.
        this.health.refresh();
        const k = this.health.begin(state, change);
        // The state is written only once the kernel has accepted the change (below): a change the state
        // file holds is one the kernel held. (Writing the journal's record beside the commit saved one
        // pool trip per commit under churn, but a process killed between the two left a change in the
        // state file that the kernel never had.)
        // Profiles applied again as the state has them (`-use-state -run`, a profile recorded without
        // `-run`): the kernel may hold another version of them (the state file was changed without
        // -run), whose destinations no version of the state names. What the kernel serves before and
        // after the commit tells them (one read per family each, only for such changes of the CLI's:
        // a library handle applies a profile unchanged many times over, and a read of a table of
        // 10,000 profiles costs 0.3-1 s).
        const again =
          engine && opts.cleanAgain && !opts.holds && !this.keepConntrack && !this.injected
            ? // The state's own profile (`-use-state -run`, `-run -profile=N` without addresses): not one
              // given again with the same settings (`-run -reset` of an unchanged profile, as a
              // configuration tool re-runs it), whose kernel is, but for drift, already that profile.
              change.upsert.filter((p) => state.get(p.name) === p)
            : [];
        const againFamilies = new Set(again.map(familyOfProfile));
        const servedBefore =
          again.length && this.conntrack.needed() ? await this.servedIn(engine!, againFamilies) : undefined;
        // The journal's record, handed to the executor to write right after the kernel accepted it.
        const ahead = engine && !opts.holds ? this.journalAhead(state, change) : null;
        const done: (DoneFamily & { ms: number })[] = engine
          ? await this.commitChange(engine, k.state, k.change, ahead ?? undefined, interrupted)
          : [];
        const committed = done.length > 0;
        const commitMs = done.reduce((ms, d) => ms + d.ms, 0);
        if (committed) this.logCommit(engine!, k.change, k.state, done, commitMs);
        // Flows to destinations this change removes (decided now: in memory mode `state` changes below).
        const stale =
          committed && !this.keepConntrack && !this.injected && this.conntrack.needed()
            ? changeFlows(change, state, next, k).map((f) => ({ ...f, native: engine!.executor.kind === 'native' }))
            : [];
        if (committed && servedBefore?.length) {
          const servedAfter = await this.servedIn(engine!, againFamilies);
          if (servedAfter)
            for (const f of unservedFlows(servedBefore, servedAfter, () => next.values()))
              stale.push({ ...f, native: engine!.executor.kind === 'native' });
        }
        let stateWritten: boolean;
        try {
          const appended = done.find((d) => d.appended)?.appended;
          stateWritten = opts.holds ? false : await this.record(state, change, next, ahead, appended);
        } catch (e) {
          // The kernel holds the change but the state file cannot record it (a full disk, a
          // read-only remount, quota): left so, the profile would be an orphan that the next
          // `sync` deletes. Undo the kernel change, so the call changes nothing, and say so.
          const why =
            e instanceof IptlbError ? e.message : fsFailure(e, 'write the state file', this.statePath!).message;
          let undone = true;
          const keep = committed ? await this.heldByOthers(state, change) : new Set<string>();
          for (const d of [...done].reverse())
            undone = (await this.undoFamily(engine!, d, 'the state file could not be written', keep)) && undone;
          if (!committed) throw new IptlbError('ESTATE', `${why}; nothing was changed`, { cause: e });
          throw new IptlbError(
            'ESTATE',
            undone
              ? `${why}; the kernel change was undone, nothing was changed`
              : `${why}; undoing the kernel change failed too, so the kernel holds a change the state file does not: run \`iptlb sync\` to repair`,
            { cause: e },
          );
        }
        // The health changes it carried are now in the kernel (not when the state write undid them).
        if (engine) k.done();
        // The change is recorded, and its plan looked for what an interrupted one left (and replaced it): the nft move
        // marker goes (this change's own, or the one it found). Best effort: left, the next change reads once more.
        if (engine && this.nftMoveLeft && this.statePath !== null)
          await writeNftMoveMarker(this.statePath, null).then(
            () => (this.nftMoveLeft = false),
            () => {},
          );
        // Handed to the janitor, not awaited: the next change need not wait for the cleanup of this
        // one (over netlink when it went through the native executor, else `conntrack -D`).
        if (stale.length) this.conntrack.add(stale);
        if (!this.injected) noteChange(change.upsert.length + change.remove.length);
        // The change is in the engine the profiles are in; while a copy is in the other one too, traffic
        // may take it: said in the result. Once it is not, the marker goes.
        let split: string | undefined;
        if (moving) {
          split = await this.engineSplit().catch(() => undefined);
          if (split === undefined)
            await writeMovingMarker(this.statePath!, null).then(
              () => (this.markerSeen = false),
              () => {},
            );
        }
        return {
          applied: change.upsert,
          deleted: change.remove,
          committed,
          stateWritten,
          commitMs,
          executor: committed ? engine!.executor.kind : null,
          engine: committed ? engine!.name : null,
          ...(split ? { split } : {}),
        };
      } finally {
        lock.release();
      }
    });
  }

  /**
   * What a health commit of watch mode plans against (under the lock): the state file's profiles as
   * they are now, except where the file is ahead of the kernel. `held` is the version of the file the
   * watch last applied; a profile that differs between the two takes the file's version only when the
   * kernel holds it (a change a one-shot command committed since, which the watch has not taken in: a
   * health commit must not undo it), else the held one (a version of the file not applied yet, not
   * settled or refused: a health commit must not carry it into the kernel ahead of the watch). A file
   * that is absent or does not parse, or a commit without the kernel: the held profiles. Reads the
   * kernel (once per family) only when the file and `held` differ.
   */
  private async heldBase(
    engine: Engine | undefined,
    held: ReadonlyMap<string, Profile>,
  ): Promise<Map<string, Profile>> {
    const base = new Map(held);
    if (!engine || this.statePath === null) return base;
    let file: ReadonlyMap<string, Profile>;
    try {
      if (!(await this.stateFileExists())) return base;
      file = await this.currentState(false);
    } catch {
      return base;
    }
    const differ = [...new Set([...held.keys(), ...file.keys()])].filter((n) => {
      const a = held.get(n);
      const b = file.get(n);
      return !(a && b && sameProfile(a, b));
    });
    if (differ.length === 0) return base;
    // The kernel's status of each profile of `m` (health drains included; one read per family): by name.
    const views = new Map<Family, Promise<unknown>>();
    const statuses = async (m: Map<string, Profile>): Promise<Map<string, string>> => {
      const out = new Map<string, string>();
      const k = this.health.kernelState(m);
      for (const f of FAMILIES) {
        const mine = this.ofFamily(k, f);
        if (mine.size === 0) continue;
        if (!views.has(f)) views.set(f, engine.read(f));
        for (const r of engine.compare(mine, await views.get(f))) if (mine.has(r.name)) out.set(r.name, r.status);
      }
      return out;
    };
    // A profile of the file the kernel holds as it is there; one the file no longer has, gone from the kernel.
    // (A profile whose destinations are all drained has no rules to tell the versions apart: held.)
    const inFile = await statuses(new Map(differ.flatMap((n) => (file.has(n) ? [[n, file.get(n)!] as const] : []))));
    const gone = await statuses(new Map(differ.flatMap((n) => (file.has(n) ? [] : [[n, held.get(n)!] as const]))));
    for (const name of differ) {
      const p = file.get(name);
      if (p && inFile.get(name) === 'in-sync') base.set(name, p);
      else if (!p && gone.get(name) === 'missing') base.delete(name);
    }
    return base;
  }

  /**
   * What the engine is told of `state`: the long-lived profile map's memo (memory mode, when `state`
   * is that map), and whether the profiles are only those this instance was told about.
   */
  private planContext(state?: ReadonlyMap<string, Profile>): PlanContext {
    const generation = state ? this.generationOf(state) : undefined;
    return {
      ...(generation !== undefined ? { memo: { generation } } : {}),
      partial: this.statePath === null,
      exclusive: this.statePath !== null && !this.takesAddresses,
    };
  }

  /**
   * @internal Whether a change may create or move a profile onto an address the kernel serves for a
   * profile this instance does not hold, and create a profile under a name the kernel holds a
   * profile of that this instance does not hold (else ECONFLICT, see PlanContext.exclusive). An
   * in-memory instance always may. The fleet agent sets it: its profiles come from etcd, and one
   * refused would hold back every later revision; it takes the address and the name, as before.
   */
  takesAddresses = false;

  /**
   * One kernel transaction per address family the change touches (a profile is of one family; the
   * iptables and ip6tables nat tables, or tables ip and ip6 iptlb, are separate objects). If a later
   * family's commit fails, the earlier ones are undone, so the call changes nothing.
   */
  private async commitChange(
    engine: Engine,
    state: ReadonlyMap<string, Profile>,
    change: Change,
    after?: AfterCommit,
    /** See PlanContext.interrupted: a family with one of them is planned even when the change leaves it alone. */
    interrupted?: readonly Profile[],
  ): Promise<(DoneFamily & { ms: number })[]> {
    const done: (DoneFamily & { ms: number })[] = [];
    const left = new Set(interrupted?.map(familyOfProfile));
    const parts = FAMILIES.map((f) => [f, changeOfFamily(change, state, f)] as const).filter(
      ([f, c]) => c.upsert.length > 0 || c.remove.length > 0 || left.has(f),
    );
    // Every family planned before any is committed: a plan the engine refuses (another tool's rule
    // in a base chain, say) changes nothing, not even for a moment in the other family.
    const plans: [Family, ReadonlyMap<string, Profile>, Change, FamilyPlan, () => Promise<FamilyPlan>][] = [];
    for (const [f, changeF] of parts) {
      const stateF = this.ofFamily(state, f);
      const plan = (): Promise<FamilyPlan> => {
        const ctx = this.planContext(stateF);
        if (left.has(f)) ctx.interrupted = interrupted!.filter((p) => familyOfProfile(p) === f);
        return engine.planChange(f, stateF, changeF, ctx);
      };
      plans.push([f, stateF, changeF, await plan(), plan]);
    }
    for (const [f, stateF, changeF, first, replan] of plans) {
      try {
        if (!first.steps.length) continue;
        // `after` only with a change of one family: written once the whole change is in the kernel.
        const commit = (plan: FamilyPlan) =>
          this.commitPlan(engine, plan, parts.length === 1 ? after : undefined, interrupted);
        // A plan bound to the generation it read (nft: a replacement of the table) is refused with ERESTART when the
        // ruleset changed since: by another writer, or by this change's own commit of the family before (both plans
        // read the generation before either commit). Planned again from a new read, as sync does (replaceFamily);
        // before 2026-12-07 such a change of both families failed every time on the native executor.
        let r: Awaited<ReturnType<typeof commit>> | undefined;
        for (let attempt = 1, plan = first; !r; attempt++) {
          try {
            r = await commit(plan);
          } catch (e) {
            // (A plan of one transaction only: a second step is never planned again after its first committed.)
            if (!(e instanceof IptlbError && e.code === 'ERESTART' && plan.steps.length === 1 && attempt < 5)) throw e;
            plan = await replan();
            if (!plan.steps.length) break;
          }
        }
        if (!r) continue;
        done.push({
          family: f,
          state: stateF,
          change: changeF,
          ms: r.ms,
          ...(r.appended ? { appended: r.appended } : {}),
          ...(r.created ? { created: r.created } : {}),
        });
      } catch (e) {
        for (const d of done.reverse()) await this.undoFamily(engine, d, 'the next part failed');
        throw e;
      }
    }
    return done;
  }

  private async commitPlan(
    engine: Engine,
    plan: FamilyPlan,
    after?: AfterCommit,
    interrupted?: readonly Profile[],
  ): Promise<{ ms: number; appended?: FamilyCommit['appended']; created?: true }> {
    this.register();
    // A change committed in two transactions (nft: a profile moving to another dispatch set, mode or address) is
    // marked first, with the versions its profiles get (and those of a marker found): a process killed after the
    // first leaves the kernel holding them beside the state file's, and the next change finds them (see
    // nftMoveMarkerOf). Removed once the change is recorded (transact). Only with a state file: an in-memory
    // instance's profiles die with it. One file written and removed per such change; nothing for any other.
    // (Every version marked so far in this change stays: a change of both families moves a profile in each, or an
    // undo moves one back, and the kernel may hold any of them.)
    if (plan.steps.length > 1 && this.statePath !== null && plan.known?.touched) {
      for (const n of plan.known.touched) if (plan.next.has(n)) this.nftMoveVersions.push(plan.next.get(n)!);
      const versions = new Map([...(interrupted ?? []), ...this.nftMoveVersions].map((v) => [JSON.stringify(v), v]));
      try {
        await writeNftMoveMarker(this.statePath, nftMoveMarkerText(versions.values()));
      } catch (e) {
        throw fsFailure(e, 'write the nft move marker', nftMoveMarkerOf(this.statePath));
      }
      this.nftMoveLeft = true;
    }
    const { durationMs, committed, appended, created } = await engine.commitPlan(plan, (line) => this.log(line), after);
    this.commits.push({ engine, tx: committed as AnyTransaction });
    return { ms: durationMs, appended, created };
  }

  /**
   * How long a sync waits for another state file's lock (it holds its own meanwhile): long enough
   * for a change in flight to end, or for a long-lived handle that keeps its lock across a run of
   * commits to give it up (it does when someone waits: see lockWaiters); short enough that two syncs
   * waiting for each other's locks only delay each other (both then count the other as busy).
   */
  private otherLockWaitMs(): number {
    return Math.min(this.lockWaitMs, 1000);
  }

  /** The engines whose native part is broken, said by this instance (once each). */
  private readonly saidBroken = new Set<EngineName>();
  /** Whether the last sync said another state file was busy (said once per run of such syncs). */
  private saidBusy = false;

  /**
   * Registers the state file (registry.ts) before its first commit, so that another state file's
   * sync never takes this one's profiles for leftovers. Once per process; best effort.
   */
  private register(): void {
    if (this.registry === null) return;
    const failed = registerStateFile(this.statePath!, this.registry);
    if (failed)
      this.log(
        `state-file registry: ${failed}: another state file's sync and status on this host cannot tell this file's profiles from leftovers (a sync of theirs removes them)`,
      );
  }

  /**
   * The profiles of the other state files registered in this network namespace, by name, without
   * those of a name or an address of `mine` (the state file's own win; another's profile of one of
   * its names at another address is `contested`). An unreadable one holds none. With `lock`, each
   * other state file read under its lock, waited for at most
   * {@link otherLockWaitMs} (this process holds its own: a longer wait could hold up another file's
   * sync waiting for it in turn) and held until `release()`: a change of that file is not between its
   * kernel commit and its state write while a sync of this one decides what is a leftover. `busy`:
   * some other file's lock stayed held (a change of it in flight: what the kernel holds beyond the
   * files may be that change's).
   */
  private async othersOf(
    mine: ReadonlyMap<string, Profile>,
    lock: boolean,
  ): Promise<{
    profiles: Map<string, Profile>;
    files: OtherStateFile[];
    contested: Contested[];
    busy: boolean;
    update(): Promise<boolean>;
    release(): void;
  }> {
    const profiles = new Map<string, Profile>();
    const files: OtherStateFile[] = [];
    const contested: Contested[] = [];
    const held: HeldLock[] = [];
    const seen = new Set<string>();
    const taken = new Set([...mine.values()].map((p) => `${p.protocol} ${p.source}`));
    const others = {
      profiles,
      files,
      contested,
      busy: false,
      /**
       * Reads the registry again and takes in the state files it did not list before; true when
       * there were some. A state file registers before its first commit: a sync that read the
       * kernel after this call returned false knows every file whose objects it saw.
       */
      update: async (): Promise<boolean> => {
        if (this.registry === null) return false;
        let added = false;
        for (const { file, entries, exists } of otherStateFiles(this.statePath!, this.registry)) {
          if (seen.has(file)) continue;
          seen.add(file);
          added = true;
          if (!exists) {
            // Registered, not written: another process's first change in flight (its lock held,
            // then busy), or a file that is gone (its entry dropped). A status only passes it by.
            if (!lock) continue;
            if (existsSync(`${file}.lock`)) {
              try {
                const l = await lockStateFile(file, this.otherLockWaitMs(), undefined, { readOnly: true });
                const still = await stateVersion(file).catch(() => 'unreadable');
                l.release();
                if (still !== null)
                  seen.delete(file); // written meanwhile: read on the next update
                else dropEntry(entries);
              } catch (e) {
                if (!(e instanceof IptlbError && e.code === 'ELOCK')) continue;
                others.busy = true;
              }
            } else dropEntry(entries);
            continue;
          }
          let theirs: Map<string, Profile>;
          try {
            if (lock) {
              try {
                held.push(await lockStateFile(file, this.otherLockWaitMs(), undefined, { readOnly: true }));
              } catch (e) {
                if (!(e instanceof IptlbError && e.code === 'ELOCK')) throw e;
                others.busy = true;
              }
            }
            theirs = await readStateFile(file);
          } catch {
            continue;
          }
          const names: string[] = [];
          for (const [n, p] of theirs) {
            const own = mine.get(n);
            if (own && (own.protocol !== p.protocol || own.source !== p.source)) {
              // A name of this state file's, another's profile at another address: names are one per
              // host, and the kernel can hold only one of them as named (see sync).
              contested.push({ name: n, stateFile: file, profile: p });
              names.push(n);
            } else if (!own && !profiles.has(n) && !taken.has(`${p.protocol} ${p.source}`)) {
              profiles.set(n, p);
              names.push(n);
            }
          }
          if (names.length) files.push({ stateFile: file, profiles: names });
        }
        return added;
      },
      release: (): void => {
        for (const l of held.splice(0)) l.release();
      },
    };
    await others.update();
    return others;
  }

  /**
   * `engine.compare` of this state's profiles of one family, with another state file's (`keep`)
   * claiming what is theirs: their objects are neither reported nor orphaned.
   */
  private compareMine(
    engine: Engine,
    profiles: ReadonlyMap<string, Profile>,
    keep: ReadonlyMap<string, Profile>,
    view: unknown,
    contested: readonly Contested[] = [],
  ): ProfileReport[] {
    if (!keep.size && !contested.length) return engine.compare(profiles, view);
    const all = new Map([...keep, ...profiles]);
    // Their reports, and what the kernel holds of theirs beyond their file (a destination their
    // health checks drained, say): reported by name, by rule owner (nft) or by address (nft).
    const theirs = new Set<string>();
    for (const p of keep.values()) for (const k of orphanNames(p)) theirs.add(k);
    // Another's profile of one of this file's names: its address is theirs (nft holds both profiles
    // when neither has rules of its own), its name is this file's.
    for (const c of contested) {
      const address = orphanAddress(c.profile);
      if (address !== undefined) theirs.add(address);
    }
    return engine.compare(all, view).filter((r) => profiles.has(r.name) || !theirs.has(r.name));
  }

  /**
   * What the kernel serves in families `fs` ({@link Engine.served}), for the conntrack cleanup; undefined when it
   * cannot be read (the cleanup is then skipped: the change itself stands).
   */
  private async servedIn(engine: Engine, fs: ReadonlySet<Family>): Promise<ServedPair[] | undefined> {
    try {
      const out: ServedPair[] = [];
      for (const f of fs) if (engine.mayHold(f)) out.push(...engine.served(await engine.read(f)));
      return out;
    } catch {
      return undefined;
    }
  }

  /** The change's one log line per profile (when logging) and its summary line. */
  private logCommit(
    engine: Engine,
    change: Change,
    before: ReadonlyMap<string, Profile>,
    done: DoneFamily[],
    commitMs: number,
  ): void {
    if (this.logging) {
      for (const p of change.upsert) {
        const dests = p.destination.map((d) => (weightOf(p, d) === 1 ? d : `${d}*${weightOf(p, d)}`)).join(',');
        this.log(`apply profile ${p.name}: ${p.source}/${p.protocol} -> ${dests} (${engine.describeProfile(p)})`);
      }
      for (const name of change.remove) {
        if (change.upsert.some((p) => p.name === name)) continue;
        const old = before.get(name);
        this.log(engine.describeRemoval(name, old ? familyOfProfile(old) : 'ipv4'));
      }
    }
    this.log(
      `committed ${change.upsert.length + change.remove.length} profile change(s) in ${done.length === 1 ? 'one transaction' : `${done.length} transactions`} ` +
        `(${done.map((d) => engine.where(d.family)).join(' and ')}, ${engine.name}/${engine.executor.kind}, ${commitMs.toFixed(2)} ms)`,
    );
  }

  /**
   * Records a change the kernel accepted (or a state-only change): in place in memory mode, O(change);
   * else appended to the state journal (O(change)) or the state file rewritten (`stateFoldMs` 0), and
   * then the cached profiles changed in place. Returns whether the file was written.
   */
  private async record(
    state: ReadonlyMap<string, Profile>,
    change: Change,
    next: ReadonlyMap<string, Profile>,
    ahead?: PreparedAppend | null,
    appended?: FamilyCommit['appended'],
  ): Promise<boolean> {
    // The record the executor wrote (see journalAhead); else appended here, from the line prepared
    // for it when there is one (an executor that does not write records: encoded once all the same).
    if (this.statePath !== null && this.foldMs > 0)
      return this.recorded(
        state,
        change,
        ahead && appended
          ? this.appendedBy(state, { ahead, appended })
          : await this.appendChange(state, change, ahead?.data),
      );
    if (!changedBy(state, change)) return false;
    const edits: [Profile | undefined, Profile | undefined][] = [];
    if (this.statePath === null) {
      applyChange(this.memory, change, edits);
      this.memoryGeneration++;
      this.selected?.provider.changed?.(edits, { generation: this.memoryGeneration });
      return false;
    }
    const file = this.statePath;
    const c = this.cachedFor(state);
    // The CLI's index: the change spliced into the text read (the others' blocks as they were).
    c.base = await writeState(
      file,
      next.values(),
      (c.state instanceof IndexedState ? c.state.splicedBytes(change) : null) ?? undefined,
    );
    // Void now (it names the YAML replaced): removed, not to mislead anyone reading it by hand.
    closeJournal(c.journal);
    await removeJournal(file);
    c.journal = null;
    this.log(`state written to ${file} (${next.size} profile(s))`);
    applyChange(c.state, change, edits);
    c.version = await stateVersion(file);
    this.cached = c;
    this.fileGeneration++;
    this.selected?.provider.changed?.(edits, { generation: this.fileGeneration });
    return true;
  }

  /**
   * The cache a transaction decided on (it read the state through currentState), taken out: until the
   * record is done, a failure leaves no cache and the next transaction reads the files again.
   */
  private cachedFor(state: ReadonlyMap<string, Profile>, take = true): CachedState {
    const c = this.cached;
    if (!c || c.state !== state) throw new Error('Core.record: the state is not the cached state');
    if (take) this.cached = undefined;
    return c;
  }

  /**
   * The journal's part of {@link record}: appends the change's record and syncs it; null when the change
   * changes nothing. The cache stays as it is meanwhile (the planner's memo is keyed by it),
   * {@link recorded} changes it, and a failed append takes it out (the next transaction reads the files
   * again).
   */
  private async appendChange(
    state: ReadonlyMap<string, Profile>,
    change: Change,
    line?: Buffer,
  ): Promise<{ c: CachedState; appended: Awaited<ReturnType<typeof appendRecord>> } | null> {
    if (!changedBy(state, change)) return null;
    const c = this.cachedFor(state, false);
    try {
      const appended = await appendRecord(this.statePath!, c.base, c.journal, line ?? recordOf(state, change));
      return { c, appended };
    } catch (e) {
      if (this.cached === c) this.cached = undefined;
      throw e;
    }
  }

  /**
   * The journal's record of a change, prepared before its kernel commit for the executor to write
   * right after it (the native one does, on the thread that committed: no hop back to JavaScript and
   * out to the thread pool between the two; a record is still written only once the kernel accepted
   * its change). Only when the change changes the state and the journal is open from the last
   * append (the steady state of a long-lived handle); else null, and {@link appendChange} does it.
   */
  private journalAhead(state: ReadonlyMap<string, Profile>, change: Change): PreparedAppend | null {
    const c = this.cached;
    if (this.statePath === null || this.foldMs <= 0 || !c || c.state !== state || !c.journal?.fh) return null;
    if (!changedBy(state, change)) return null;
    return prepareAppend(c.base, c.journal, recordOf(state, change));
  }

  /** {@link appendChange}'s result for a record the executor wrote (see {@link journalAhead}). */
  private appendedBy(
    state: ReadonlyMap<string, Profile>,
    by: { ahead: PreparedAppend; appended: NonNullable<FamilyCommit['appended']> },
  ): { c: CachedState; appended: Awaited<ReturnType<typeof appendRecord>> } {
    const c = this.cachedFor(state, false);
    try {
      return { c, appended: by.ahead.finish(by.appended) };
    } catch (e) {
      if (this.cached === c) this.cached = undefined;
      throw e;
    }
  }

  /** Ends a journaled {@link record}: the cache changed in place and put back. */
  private recorded(
    state: ReadonlyMap<string, Profile>,
    change: Change,
    r: Awaited<ReturnType<Core['appendChange']>>,
  ): boolean {
    if (r === null) return false;
    const { c, appended } = r;
    if (this.cached !== c) throw new Error('Core.record: the cache changed during the transaction');
    c.journal = appended.at;
    // The YAML is as it was (its part of the version stands); the journal's part from its stat.
    const yaml = c.version?.startsWith('unknown') ? undefined : c.version?.split('|')[0];
    c.version = yaml !== undefined ? `${yaml}|${fileVersionOf(appended.st)}` : knownVersion(this.statePath!);
    this.scheduleFold();
    // A journal past FOLD_BYTES is folded now, whatever stateFoldMs says (queued behind this call):
    // it stays far below the 64 MiB a reader accepts, and replaying it stays cheap.
    if (appended.at.validEnd > FOLD_BYTES) setImmediate(() => this.foldState().catch((e: Error) => this.foldFailed(e)));
    const edits: [Profile | undefined, Profile | undefined][] = [];
    applyChange(c.state, change, edits);
    this.fileGeneration++;
    this.selected?.provider.changed?.(edits, { generation: this.fileGeneration });
    this.log(`state change journaled to ${journalPath(this.statePath!)} (${c.state.size} profile(s))`);
    return true;
  }

  /**
   * The profiles of `state` of family `f`: `state` itself when it holds no profile of the other
   * family (the common case costs nothing once counted; the in-memory count is kept per change).
   */
  private ofFamily(state: ReadonlyMap<string, Profile>, f: Family): ReadonlyMap<string, Profile> {
    let v6: number;
    const generation = this.generationOf(state);
    if (generation !== undefined) {
      if (this.v6Count?.generation !== generation || this.v6Count.of !== state)
        this.v6Count = { generation, of: state, n: countV6(state) };
      v6 = this.v6Count.n;
    } else {
      v6 = countV6(state);
    }
    const mine = f === 'ipv4' ? state.size - v6 : v6;
    if (mine === state.size) return state;
    return mine === 0 ? new Map() : profilesOf(state, f);
  }
  private v6Count?: { generation: number; of: ReadonlyMap<string, Profile>; n: number };

  /**
   * The families worth looking at in the kernel for `state`: those with profiles, and those whose
   * tables may hold iptlb objects (orphans) without profiles.
   */
  private familiesOf(
    engine: Engine,
    state: ReadonlyMap<string, Profile>,
  ): { family: Family; profiles: Map<string, Profile> }[] {
    return FAMILIES.map((family) => ({
      family,
      profiles: this.ofFamily(state, family) as Map<string, Profile>,
    })).filter(({ family, profiles }) => profiles.size > 0 || engine.mayHold(family));
  }

  /**
   * The profiles a change created (names `state` lacks) that another state file on this host holds
   * exactly so: the kernel held them as planned before the change (it refuses a name it holds
   * otherwise), and they are that file's. Undoing the change leaves them. Asked only when a change's
   * state write failed after its commit; without a registry (in memory, or none) nothing is known.
   */
  private async heldByOthers(state: ReadonlyMap<string, Profile>, change: Change): Promise<Set<string>> {
    const keep = new Set<string>();
    const created = change.upsert.filter((p) => !state.has(p.name));
    if (!created.length || this.statePath === null || this.registry === null) return keep;
    try {
      const others = await this.othersOf(state, false);
      others.release();
      for (const p of created) {
        const theirs = others.profiles.get(p.name);
        if (theirs && sameProfile(theirs, p)) keep.add(p.name);
      }
    } catch {
      /* unknown: the undo removes them, as before */
    }
    return keep;
  }

  /**
   * Puts back the profiles of one family as they were before a change (after a later family's
   * commit failed). Best effort: if this fails too, the error is logged and the next change or
   * `sync` repairs the kernel.
   */
  private async undoFamily(
    engine: Engine,
    d: DoneFamily,
    because: string,
    keep: ReadonlySet<string> = new Set(),
  ): Promise<boolean> {
    const touched = new Set([...d.change.upsert.map((p) => p.name), ...d.change.remove]);
    const after = new ChangedProfiles(d.state, d.change);
    const undo: Change = { upsert: [], remove: [] };
    if (d.created) {
      // The commit created the table with every profile of the state (profiles written without -run
      // among them): before it there was no table, so every one of them goes (none was another state
      // file's in the kernel either).
      for (const n of after.keys()) undo.remove.push(n);
    } else {
      for (const n of touched) {
        const old = d.state.get(n);
        if (old) undo.upsert.push(old);
        else if (!keep.has(n)) undo.remove.push(n);
      }
    }
    if (!undo.upsert.length && !undo.remove.length) return true;
    try {
      await this.commitPlan(engine, await engine.planChange(d.family, after, undo, this.planContext()));
      this.log(`undid the ${engine.where(d.family)} part of the change, because ${because}`);
      return true;
    } catch (e) {
      this.log(
        `could not undo the ${engine.where(d.family)} part of a failed change (${(e as Error).message}); run \`iptlb sync\``,
      );
      return false;
    }
  }

  /**
   * The state-file lock; nothing to lock when profiles live in memory (calls are serialised in-process).
   * `readOnly`: the caller writes nothing to the state file, or refuses to when the lock comes back
   * `unlocked` (the file system is read-only here: see lockStateFile).
   */
  private async lock(readOnly = false): Promise<{ release(): void; unlocked?: true; kept?: true }> {
    if (this.statePath === null) return { release() {} };
    // Kept since an earlier transaction of this run took it: nothing another process writes under it changed.
    // Unless its lock file was removed or replaced meanwhile (one lstat): a newcomer may then hold the file
    // now at the path, so the window is given up and the lock taken again, behind that newcomer.
    if (this.window) {
      if (this.window.lock.stillAtPath?.() !== false) return { release() {}, kept: true };
      this.log(
        `the lock file ${this.statePath}.lock was removed or replaced while this process held it: taking the lock again (never remove it while iptlb may run)`,
      );
      await this.closeWindow();
    }
    const held = await lockStateFile(this.statePath, this.lockWaitMs, this.log, { readOnly });
    if (!this.keepLock || held.unlocked) return held;
    // A run of commits: kept (see beginLockWindow); given up between two of its commits.
    this.window = { lock: held, since: Date.now() };
    return { release() {} };
  }

  private saidWithoutLock = false;

  /** Says once that this instance goes on without the state-file lock (a read-only file system). */
  private withoutLock(): void {
    if (this.saidWithoutLock) return;
    this.saidWithoutLock = true;
    this.log(
      `the file system of ${this.statePath} is read-only here: going on without the state-file lock (this writes nothing to the state file, and nothing can write it here)`,
    );
  }

  /**
   * Fails early, with one line and nothing touched, when the kernel would refuse us anyway: the
   * capabilities the engines `engines` need (the legacy engine CAP_NET_RAW too), naming what is missing.
   */
  private checkPrivileges(...engines: EngineName[]): void {
    if (this.injected) return;
    const missing = missingCaps([...new Set(engines.flatMap((e) => engineNeeds(e).capabilities))]);
    if (missing.length > 0) throw new IptlbError('EPERM', capsMessage(missing));
  }

  /**
   * What `transact` would commit for the change `decide` makes, planned the same way (with the same
   * kernel reads), and nothing committed or written: one plan per address family it touches.
   */
  plan(
    decide: (state: Map<string, Profile>) => Change,
    opts: { requireFile?: boolean } = {},
  ): Promise<{
    provider: Engine;
    change: Change;
    plans: FamilyPlan[];
    /**
     * The nft move marker when it is there (a change of this state file interrupted between the two transactions of
     * a move, see nftMoveMarkerOf): the next change looks for the versions it names (`profiles`, by name), and the
     * plans are those it will commit (a family it names is planned even when the change leaves it alone).
     */
    marker?: { file: string; profiles: string[] };
  }> {
    return this.serial(async () => {
      await this.requireStateFile(opts.requireFile);
      const { provider } = await this.selectionNow();
      // As a change reads it (not copied; with the CLI's index, only the profiles the change touches are built; decide
      // never changes it), but not cached: a plan takes no lock.
      const state = await this.currentState(false, true);
      const change = decide(state);
      // The nft move marker, looked at as the next change looks at it (transact; read only: the change removes it).
      // (The nft engine's alone: the legacy engine commits every change in one transaction and writes none.)
      const markerThere = provider.name === 'nft' && this.statePath !== null && nftMoveMarkerExists(this.statePath);
      const interrupted = markerThere ? await this.interruptedVersions() : undefined;
      const left = new Set(interrupted?.map(familyOfProfile));
      // The kernel's part, as transact computes it (health overlay included); nothing is marked done.
      this.health.refresh();
      const k = this.health.begin(state, change);
      const plans: FamilyPlan[] = [];
      for (const f of FAMILIES) {
        const changeF = changeOfFamily(k.change, k.state, f);
        if (changeF.upsert.length === 0 && changeF.remove.length === 0 && !left.has(f)) continue;
        const ctx = this.planContext();
        if (left.has(f)) ctx.interrupted = interrupted!.filter((p) => familyOfProfile(p) === f);
        plans.push(await provider.planChange(f, this.ofFamily(k.state, f), changeF, ctx));
      }
      const marker = markerThere
        ? { file: nftMoveMarkerOf(this.statePath!), profiles: [...new Set(interrupted!.map((p) => p.name))] }
        : undefined;
      return { provider, change, plans, ...(marker ? { marker } : {}) };
    });
  }

  /**
   * Each profile of the state file compared with the kernel, plus the kernel's orphans, with
   * counters. Runs between this instance's transactions, never during one, and under the state-file
   * lock (shared with nothing but writers: it waits for theirs, as they do), so never during another
   * process's either: a commit in flight has changed the kernel but not yet the state file, and
   * comparing then would report drift that is not. Where the state file's directory does not exist,
   * nobody writes there and nothing is created for the lock.
   */
  status(): Promise<ProfileReport[]> {
    return this.statusOf().then((r) => r.reports);
  }

  /**
   * {@link status} with what `iptlb status --json` adds: whether iptlb's rules are in both engines
   * (`split`, drift too: traffic may use the copy no change reaches; only the engine not selected is
   * asked, the reports say whether the selected one holds anything), the other state files whose
   * profiles the kernel holds, read in the same pass, and the health file another process publishes, followed or
   * not (`healthFile`, from the same read's refresh).
   */
  async statusReport(
    opts: {
      /** Ask for the original iptlb's chains (`originalRules`); false for readers that do not show them (metrics). */
      original?: boolean;
      /**
       * Compare the kernel with these profiles instead of the state file's (iptlb watch's /healthz while the file has
       * not settled: the version it applied last).
       */
      profiles?: ReadonlyMap<string, Profile>;
    } = {},
  ): Promise<StatusReport> {
    const { reports, others, foreign, state } = await this.statusOf(opts.profiles);
    // The health file as the status read just found it (the refresh of that read): followed, or not and why.
    const healthFile = this.health.fileStatus(state);
    const split = await this.engineSplit(reports.some((r) => r.status !== 'missing'));
    // An engine asked for (--engine, IPTLB_ENGINE) while iptlb's rules are in the other: the profiles read as
    // missing there; the line a change through it is refused with says where they are (known from selection).
    const asked = split || (this.injected && !this.supplied) ? undefined : (await this.selectionNow()).refusal;
    // Two netlink dumps of chain names when the addon's nft part loads; `doctor` also asks `nft` (a process).
    const original =
      this.injected || opts.original === false
        ? undefined
        : await originalNftChains({ spawn: false }).catch(() => undefined);
    // An in-memory instance leaves what it was not given alone: its sync() removes no orphan and no `drift` event
    // names one, so they are listed but do not count against inSync (which no sync() could make true otherwise).
    const memory = this.statePath === null;
    return {
      inSync: !split && reports.every((r) => r.status === 'in-sync' || (memory && r.status === 'orphaned')),
      ...(split ? { split } : {}),
      ...(asked ? { otherEngine: asked } : {}),
      profiles: reports,
      ...(others.length ? { otherStateFiles: others } : {}),
      ...(foreign.length ? { foreignObjects: foreign } : {}),
      ...(original?.length ? { originalRules: original } : {}),
      ...(healthFile ? { healthFile } : {}),
    };
  }

  private statusOf(profiles?: ReadonlyMap<string, Profile>): Promise<{
    reports: ProfileReport[];
    others: OtherStateFile[];
    foreign: ForeignObjects[];
    state: Map<string, Profile>;
  }> {
    return this.serial(async () => {
      const lock =
        this.statePath !== null && !this.window && existsSync(path.dirname(this.statePath))
          ? await lockStateFile(this.statePath, this.lockWaitMs, this.log, { readOnly: true })
          : undefined;
      try {
        return await this.statusNow(profiles);
      } finally {
        lock?.release();
      }
    });
  }

  /**
   * The periodic drift check: {@link status} under the state-file lock, taken without waiting. Null
   * (no verdict) when another process holds the lock: its commit may be in flight, and the kernel
   * and the state file may disagree until it ends. Like status, without the lock when the state file's
   * directory does not exist (a read makes no directory or lock file).
   */
  driftCheck(): Promise<ProfileReport[] | null> {
    return this.serial(async () => {
      let lock: { release(): void } | undefined;
      if (this.statePath !== null && !this.window && existsSync(path.dirname(this.statePath))) {
        try {
          lock = await lockStateFile(this.statePath, 0, undefined, { readOnly: true });
        } catch (e) {
          if (e instanceof IptlbError && e.code === 'ELOCK' && e.errno === 11) return null;
          throw e;
        }
      }
      try {
        return (await this.statusNow()).reports;
      } finally {
        lock?.release();
      }
    });
  }

  private async statusNow(profiles?: ReadonlyMap<string, Profile>): Promise<{
    reports: ProfileReport[];
    others: OtherStateFile[];
    foreign: ForeignObjects[];
    /** The profiles compared with the kernel. */
    state: Map<string, Profile>;
  }> {
    const { provider } = await this.selectionNow();
    const state = profiles ? new Map(profiles) : await this.readState();
    this.health.refresh();
    const kstate = this.health.kernelState(state);
    const { profiles: others, files, contested } = await this.othersOf(state, false);
    const reports: ProfileReport[] = [];
    const foreign: ForeignObjects[] = [];
    for (const { family, profiles } of this.familiesOf(provider, kstate)) {
      const view = await provider.read(family);
      reports.push(
        ...this.compareMine(
          provider,
          profiles,
          this.ofFamily(others, family),
          view,
          contested.filter((c) => familyOfProfile(c.profile) === family),
        ),
      );
      const objects = provider.othersObjects?.(view) ?? [];
      if (objects.length) foreign.push({ where: provider.where(family), objects });
    }
    for (const r of reports) {
      const c = contested.find((x) => x.name === r.name);
      if (c && r.status !== 'in-sync') r.detail = `${r.detail ? `${r.detail}; ` : ''}${contestedLine(c)}`;
    }
    const annotated = this.health.annotate(reports, state, kstate, (p) => ({
      name: p.name,
      status: 'in-sync' as const,
      detail: 'every destination is down: drained (health.allDown: drain)',
      destinations: p.destination.map((d) => ({ destination: d, packets: 0, bytes: 0 })),
      packets: 0,
      bytes: 0,
    }));
    return { reports: annotated, others: files, foreign, state };
  }

  /**
   * Replaces family `f`'s objects with exactly `profiles` when `needed(view)` says so, reading the
   * kernel again when someone else changed it between the read and the commit. Returns the commit
   * time, or undefined when nothing was needed.
   */
  private async replaceFamily<View>(
    engine: Engine<View>,
    f: Family,
    profiles: ReadonlyMap<string, Profile>,
    needed: (view: View, attempt: number) => boolean,
    others?: { keep(): KeepOthers; update(): Promise<boolean> },
  ): Promise<number | undefined> {
    for (let attempt = 1; ; attempt++) {
      let view = await engine.read(f);
      // A state file that registered since the others were read may have objects in this view:
      // taken in (locked, read), and the kernel read again.
      for (let round = 0; others && round < 5 && (await others.update()); round++) view = await engine.read(f);
      if (!needed(view, attempt)) return undefined;
      try {
        this.register();
        const tx = engine.planReplace(f, profiles, view, others?.keep());
        const ms = await engine.commit(tx);
        this.commits.push({ engine: engine as Engine, tx: tx as AnyTransaction });
        return ms;
      } catch (e) {
        // The kernel changed under the plan (a generation id that moved, or, with `nft -f`, which has
        // none, a table another tool deleted or flushed meanwhile): read it again and plan anew.
        if (e instanceof IptlbError && (e.code === 'ERESTART' || engine.stale?.(e)) && attempt < 5) continue;
        throw e;
      }
    }
  }

  /** Makes the kernel match the state file, one transaction per address family; returns what was out of step before. */
  sync(
    opts: {
      quietWhenInSync?: boolean;
      /**
       * Checked under the lock, before the state is read and again once it is read: when it answers
       * false, nothing is done (`skipped`). Watch mode passes "the file is still the version that
       * settled", so a file rewritten since is never applied half-written, even by a writer that
       * truncates it while this sync reads it (writers in place take no lock).
       */
      guard?: () => Promise<boolean>;
      /**
       * The profiles to make the kernel match, read already, instead of reading the state file (watch
       * mode: the version it read, with a guard that it is still the file's; or the last version it
       * applied, while the file cannot be applied).
       */
      profiles?: ReadonlyMap<string, Profile>;
      /**
       * The profiles the kernel was last brought in step with (watch mode): the flows to destinations
       * the sync removes from them are cleaned up as a change's are (unless keepConntrack).
       */
      previous?: ReadonlyMap<string, Profile>;
      /**
       * Refuse a state file that does not exist ({@link absentStateFile}) before anything is created
       * or the kernel is read, and again under the lock (the CLI's `sync`): else it reads as no profiles.
       */
      requireFile?: boolean;
      /**
       * Where the lines that name what is out of step (`sync <name>: <status> (…)`) go, instead of the
       * log: watch mode holds them back while a sync keeps failing the same way (see core/watch.ts).
       */
      driftLog?: (line: string) => void;
      /**
       * Told of each report out of step as it is found (before the repair is committed): what a sync
       * that then fails found (watch mode's drift counter).
       */
      onDrift?: (r: Pick<ProfileReport, 'name' | 'status'>) => void;
    } = {},
  ): Promise<{
    before: ProfileReport[];
    committed: boolean;
    commitMs: number;
    skipped?: boolean;
    /** The profiles the kernel was made to match. */
    state?: ReadonlyMap<string, Profile>;
  }> {
    return this.serial(async () => {
      this.commits = [];
      const requireFile = opts.requireFile && !opts.profiles;
      await this.requireStateFile(requireFile);
      this.checkPrivileges((await this.select()).provider.name);
      // A sync writes nothing to the state file. Of profiles given (watch mode holding the kernel to the
      // version it applied while the file is gone), none is read from it: without the lock when its
      // directory is gone too, as status does, so that the directory is not made again (0700, with lock
      // files) before whoever removed it makes it.
      const noLock =
        opts.profiles && this.statePath !== null && !this.window && !existsSync(path.dirname(this.statePath));
      const lock = noLock ? { release() {} } : await this.lock(true);
      if (lock.unlocked) this.withoutLock();
      try {
        await this.requireStateFile(requireFile);
        const { provider } = await this.writerSelection(!!lock.kept);
        this.checkPrivileges(provider.name);
        const skipped = { before: [], committed: false, commitMs: 0, skipped: true };
        if (opts.guard && !(await opts.guard())) return skipped;
        const read = opts.profiles ? new Map(opts.profiles) : await this.readState();
        if (opts.guard && !opts.profiles && !(await opts.guard())) return skipped;
        this.health.refresh();
        const state = this.health.kernelState(read);
        const before: ProfileReport[] = [];
        let committed = false;
        let commitMs = 0;
        // Profiles the kernel lacked or held otherwise: their virtual addresses may have flows no rule translated.
        const repaired: Profile[] = [];
        // Virtual addresses and destinations the kernel served before the sync and no longer does.
        const dropped: (StaleFlows & { profile: string })[] = [];
        // Another state file's profiles are not leftovers of this one's: kept as they are. Their
        // files stay locked until this sync is committed; while one of them is changing (its lock
        // held), nothing beyond the files is removed: it may be that change's.
        const others = await this.othersOf(read, true);
        // What the kernel holds beyond the profiles is left as it is while another state file is
        // changing (it may be that change's), and always by an in-memory instance, which cannot tell
        // its own leftovers from another's objects (docs/guarantees.md: it changes only the profiles
        // it is given).
        const leaveUnknown = (): boolean => others.busy || this.statePath === null;
        try {
          const families = this.familiesOf(provider, state);
          const contestedOf = (f: Family): Contested[] =>
            others.contested.filter((c) => familyOfProfile(c.profile) === f);
          // A name of this file's that another file's profile has at another address: the kernel can
          // hold only one of them by that name (legacy: one chain; nft: the rules named after it), and
          // a sync would take the other's over, or remove it. So a sync that would change anything
          // while a name is contested changes nothing, and says which name and whose (checked for
          // every family before any is committed).
          if (others.contested.length)
            for (const { family, profiles } of families) {
              const keep = this.ofFamily(others.profiles, family);
              const view = await provider.read(family);
              const reports = this.compareMine(provider, profiles, keep, view, contestedOf(family));
              const drifted = reports.filter(
                (r) => r.status !== 'in-sync' && !(leaveUnknown() && r.status === 'orphaned'),
              );
              if (!drifted.length) continue;
              const c = others.contested.find((x) => drifted.some((r) => r.name === x.name)) ?? others.contested[0]!;
              throw new IptlbError(
                'ECONFLICT',
                `name: profile ${c.name}: ${contestedLine(c)}: this sync would take it over or remove it, so it changes nothing (${drifted.map((r) => `${r.name} ${r.status}`).join(', ')}); give one of them another name, or delete it from one state file`,
                { field: 'name' },
              );
            }
          for (const { family, profiles } of families) {
            let reports: ProfileReport[] = [];
            let drifted: ProfileReport[] = [];
            // The view the replacement was planned against: what the kernel served before it.
            let replaced: unknown;
            const keep = (): ReadonlyMap<string, Profile> => this.ofFamily(others.profiles, family);
            // Said once each; a retry (the kernel changed under the first plan) may find more out of step.
            const said = new Set<string>();
            const ms = await this.replaceFamily(
              provider,
              family,
              profiles,
              (view) => {
                replaced = view;
                reports = this.compareMine(provider, profiles, keep(), view, contestedOf(family));
                drifted = reports.filter((r) => r.status !== 'in-sync' && !(leaveUnknown() && r.status === 'orphaned'));
                for (const r of drifted) {
                  if (said.has(r.name)) continue;
                  said.add(r.name);
                  opts.onDrift?.(r);
                  (opts.driftLog ?? this.log)(`sync ${r.name}: ${r.status}${r.detail ? ` (${r.detail})` : ''}`);
                }
                return drifted.length > 0;
              },
              { keep: () => ({ keep: keep(), keepUnknown: leaveUnknown() }), update: () => others.update() },
            );
            before.push(...reports);
            if (ms === undefined) continue;
            for (const r of drifted) {
              const p = r.status === 'missing' || r.status === 'modified' ? state.get(r.name) : undefined;
              if (p) repaired.push(p);
            }
            // Destinations the kernel served that it no longer does: the state file was changed without
            // -run (or by hand), so no earlier version of the profile names them; the view does.
            if (!this.keepConntrack && !this.injected)
              dropped.push(
                ...replacedFlows(provider.served(replaced), profiles.values(), {
                  keep: keep().values(),
                  only: leaveUnknown(),
                }),
              );
            const counted = countDrifted(drifted, profiles);
            this.log(
              `committed the sync of ${counted.profiles} profile(s)${counted.leftovers ? ` and ${counted.leftovers} leftover(s) no profile of the state file owns` : ''} in one transaction (${provider.where(family)}, ${provider.name}/${provider.executor.kind}, ${ms.toFixed(2)} ms)`,
            );
            committed = true;
            commitMs += ms;
          }
        } finally {
          others.release();
        }
        // Once per run of syncs that find one busy (a watch syncs every few seconds).
        if (others.busy && !this.saidBusy)
          this.log(
            'another state file was being changed: what the kernel holds beyond the state files is left for the next sync',
          );
        this.saidBusy = others.busy;
        // The nft move marker (see nftMoveMarkerOf) names versions an interrupted move of this state file may have left
        // in the kernel. The kernel now holds exactly the profiles (a version beside the state's was `modified`, one at
        // another address `orphaned`: both replaced), so the marker is stale: removed, or the next change would read
        // the table for it again. Not while another state file was changing (what the kernel holds beyond the state
        // files was left then), nor without the lock it is written under. One lstat (none while the lock was kept).
        if (provider.name === 'nft' && this.statePath !== null && !noLock && !lock.unlocked && !others.busy) {
          if (!lock.kept) this.nftMoveLeft = nftMoveMarkerExists(this.statePath);
          if (this.nftMoveLeft)
            await writeNftMoveMarker(this.statePath, null).then(
              () => {
                this.nftMoveLeft = false;
                this.log(
                  `removed the nft move marker ${nftMoveMarkerOf(this.statePath!)}: the kernel matches the state file, so nothing an interrupted move left is there`,
                );
              },
              () => {},
            );
        }
        if (!committed && !opts.quietWhenInSync) this.log('kernel already matches the state file; nothing to do');
        if (committed && !this.injected) noteChange(state.size);
        if (committed && !this.keepConntrack && !this.injected && this.conntrack.needed()) {
          const native = provider.executor.kind === 'native';
          const stale = [...(opts.previous ?? [])].flatMap(([name, old]) =>
            staleFlows(old, read.get(name)).map((f) => ({ ...f, profile: name, native })),
          );
          for (const p of repaired) stale.push({ ...untranslatedFlows(p), profile: p.name, native });
          for (const f of dropped) stale.push({ ...f, native });
          if (stale.length) this.conntrack.add(stale);
        }
        return { before, committed, commitMs, state: read };
      } finally {
        lock.release();
      }
    });
  }

  /**
   * Moves every profile of the state to engine `to`, one transaction per engine and address family:
   * first all of them are installed in `to` (while the other engine still balances: the first NAT
   * hook a flow meets binds it, so no virtual address is ever without rules), then iptlb's objects
   * are removed from the other engine. The next selection (`auto`) finds them in `to`.
   */
  migrate(
    to: EngineName,
    opts: {
      /** Refuse a state file that does not exist ({@link absentStateFile}), as the CLI's `migrate` does. */
      requireFile?: boolean;
    } = {},
  ): Promise<{
    /** Profiles installed in `to` (those it did not hold already, in step). */
    moved: number;
    installMs: number;
    removeMs: number;
    removedFrom: boolean;
    /** Nothing was changed: the profiles were in `to` already, the other engine held nothing, the record said `to`. */
    unchanged: boolean;
    /** The engine record beside the state file was written (it names `to` now). */
    recorded: boolean;
  }> {
    return this.serial(async () => {
      this.commits = [];
      if (this.injected && !this.supplied)
        throw new IptlbError(
          'EUSAGE',
          'migrate needs an executor per engine (one injected executor serves one engine)',
        );
      await this.requireStateFile(opts.requireFile);
      this.checkPrivileges('legacy', 'nft');
      const lock = await this.lock();
      try {
        await this.requireStateFile(opts.requireFile);
        // The profiles as the kernel holds them: a destination that health checks drained (this process's, or
        // those of the process that publishes them, a watch) stays drained in `to`, and its rules in `from` are
        // the profile's, not another state file's.
        this.health.refresh();
        const state = this.health.kernelState(await this.readState());
        const target = this.engineFor(to).engine;
        const from: EngineName = to === 'nft' ? 'legacy' : 'nft';
        const source = this.engineFor(from).engine;
        // Both engines end up with exactly this state's profiles: what either holds for profiles the
        // state does not (another state file's, or left by an interrupted change) would lose its rules.
        for (const [name, engine] of [
          [from, source],
          [to, target],
        ] as const)
          await this.refuseOthers(name, engine, state);
        // The removal is planned first: one the source engine refuses (another tool's rule in a
        // chain iptlb would rewrite) stops the move before anything changed.
        const removals: unknown[] = [];
        for (const f of FAMILIES) {
          const tx = await source.planRemoveAll(f);
          if (tx !== undefined) removals.push(tx);
        }
        // An install into nft is planned too (a dry run; the commit below plans again from a fresh read): one the
        // engine refuses (another tool's rule in a base chain of table ip iptlb, which the install would flush)
        // stops the move before anything changed. (The legacy engine refuses no install; a family the target holds
        // in step is not installed.)
        if (to === 'nft')
          for (const f of FAMILIES) {
            const profiles = this.ofFamily(state, f);
            if (!profiles.size) continue;
            const view = await target.read(f);
            if (target.compare(profiles, view).some((r) => r.status !== 'in-sync'))
              target.planReplace(f, profiles, view);
          }
        const targetHeld = await target.holdsObjects();
        // Marked before the first commit, removed once the engine left is emptied: a migrate killed in
        // between leaves the mark, and the next change asks both engines (see movingMarkerOf).
        if (this.statePath !== null) {
          try {
            await writeMovingMarker(this.statePath, { from, to });
          } catch (e) {
            const why = fsFailure(e, 'write the move marker', movingMarkerOf(this.statePath));
            throw new IptlbError(why.code, `${why.message}; nothing was changed`, { cause: e });
          }
        }
        const unmark = async (): Promise<void> => {
          if (this.statePath !== null) await writeMovingMarker(this.statePath, null).catch(() => {});
        };
        let installMs = 0;
        let installs = 0;
        let moved = 0;
        for (const f of FAMILIES) {
          const profiles = this.ofFamily(state, f);
          if (profiles.size === 0) continue;
          // A family the target already holds exactly (a migration run twice, or rules put there by
          // --engine) is left as it is, as sync leaves it: no commit, its counters kept.
          const ms = await this.replaceFamily(target, f, profiles, (view) =>
            target.compare(profiles, view).some((r) => r.status !== 'in-sync'),
          );
          if (ms === undefined) continue;
          installMs += ms;
          installs++;
          moved += profiles.size;
        }
        const record = this.statePath === null ? null : engineRecordOf(this.statePath);
        const recordBefore = record === null ? null : engineRecordText(record);
        if (installs === 0 && removals.length === 0) {
          // Nothing to move: the rules are in `to` already, and the other engine holds none of iptlb's.
          const where = `the rules are already in the ${to} engine (${state.size} profile(s) of ${this.statePath ?? 'this instance'}, in step) and the ${from} engine holds none of iptlb's`;
          if (record === null || recordBefore === `${to}\n`) {
            await unmark();
            this.log(`${where}: nothing was changed`);
            await this.sayHowToKeep(to);
            return { moved: 0, installMs: 0, removeMs: 0, removedFrom: false, unchanged: true, recorded: false };
          }
          try {
            await writeEngineRecord(this.statePath!, `${to}\n`);
          } catch (e) {
            const why = fsFailure(e, 'write the engine record', record);
            throw new IptlbError(why.code, `${why.message}; nothing was changed`, { cause: e });
          }
          await unmark();
          this.log(`${where}: the kernel was not changed; the ${to} engine is now recorded in ${record}`);
          this.selected = undefined;
          this.selecting = undefined;
          await this.sayHowToKeep(to);
          return { moved: 0, installMs: 0, removeMs: 0, removedFrom: false, unchanged: false, recorded: true };
        }
        this.log(
          installs
            ? `installed ${moved} profile(s) in the ${to} engine in ${installs > 1 ? `${installs} transactions (one per address family)` : 'one transaction'} (${target.executor.kind}, ${installMs.toFixed(2)} ms)${moved < state.size ? `; it held the other ${state.size - moved} already, in step` : ''}`
            : `the ${to} engine already holds the ${state.size} profile(s), in step: nothing installed`,
        );
        // Every profile is in `to` now: recorded before the removal, so that a writer waiting for the lock (or
        // a migrate killed from here on) goes on in `to`, never in the engine being emptied.
        const m = { to, from, target, source, targetHeld, removed: 0 };
        if (record !== null) {
          try {
            await writeEngineRecord(this.statePath!, `${to}\n`);
          } catch (e) {
            const why = fsFailure(e, 'write the engine record', record);
            throw await this.migrateFailed(why, { ...m, what: `recording the ${to} engine` });
          }
        }
        let removeMs = 0;
        for (const tx of removals) {
          try {
            removeMs += await source.commit(tx);
            this.commits.push({ engine: source, tx: tx as AnyTransaction });
          } catch (e) {
            const failed = await this.migrateFailed(e as Error, m);
            // Undone: the profiles are where they were, and so is the record.
            if (record !== null && m.removed === 0 && !m.targetHeld)
              await writeEngineRecord(this.statePath!, recordBefore).catch(() => {});
            throw failed;
          }
          m.removed++;
        }
        await unmark();
        const removed = m.removed;
        const removedFrom = removed > 0;
        const how = removed > 1 ? `${removed} transactions (one per address family)` : 'one transaction';
        this.log(
          removedFrom
            ? `removed iptlb's objects from the ${from} engine in ${how} (${source.executor.kind}, ${removeMs.toFixed(2)} ms)`
            : `the ${from} engine held nothing of iptlb's`,
        );
        this.selected = undefined;
        this.selecting = undefined;
        await this.sayHowToKeep(to);
        return { moved, installMs, removeMs, removedFrom, unchanged: false, recorded: record !== null };
      } finally {
        lock.release();
      }
    });
  }

  /**
   * Which registered state file holds the profile an orphan of a view is named by (its name, `rule:NAME`
   * or its address, as the engines name orphans), if any: so that a refusal can name it.
   */
  private async ownerOfOrphan(state: ReadonlyMap<string, Profile>): Promise<(orphan: string) => string | undefined> {
    if (this.statePath === null || this.registry === null) return () => undefined;
    const others = await this.othersOf(state, false);
    await others.update();
    const owners = new Map<string, string>();
    for (const { stateFile, profiles } of others.files)
      for (const n of profiles) {
        const p = others.profiles.get(n);
        for (const k of p ? orphanNames(p) : [n, `rule:${n}`]) if (!owners.has(k)) owners.set(k, stateFile);
      }
    return (orphan) => owners.get(orphan);
  }

  /**
   * Refuses a migration when `engine` holds iptlb objects of profiles `state` does not hold: the move
   * makes both engines exactly `state`'s profiles, so their virtual addresses would be left without
   * rules. (nft names an orphan by its address, or `rule:NAME` for a profile without a dispatch
   * element; legacy by its profile name.)
   */
  private async refuseOthers(name: EngineName, engine: Engine, state: ReadonlyMap<string, Profile>): Promise<void> {
    const others: string[] = [];
    for (const { family, profiles } of this.familiesOf(engine, state)) {
      const reports = engine.compare(profiles, await engine.read(family));
      // Not a profile's: another tool's objects (`foreign:…`, which the move keeps or refuses on its
      // own), an affinity set without its rule (`set:…`, no address is served by it) and an element of
      // the legacy gate's set without a rule (`gate:…`: the set goes with iptlb's last rule).
      const orphans = reports.filter((r) => r.status === 'orphaned' && !/^(foreign|set|gate):/.test(r.name));
      others.push(...orphans.map((r) => r.name));
    }
    if (!others.length) return;
    const file = this.statePath ?? 'this instance';
    const owner = await this.ownerOfOrphan(state);
    const shown = `${others
      .slice(0, 5)
      .map((o) => {
        const f = owner(o);
        return f ? `${o}, a profile of ${f}` : `${o}: another state file's, or left by an interrupted change`;
      })
      .join('; ')}${others.length > 5 ? `; … (${others.length} in all)` : ''}`;
    throw new IptlbError(
      'ECONFLICT',
      `state-file: the ${name} engine holds iptlb rules of profiles ${file} does not hold (${shown}); migrate would leave them without rules, so nothing was changed: put every profile of this host in one state file (both are YAML maps of profiles: append the other state file's profiles to ${file}, under the lock of neither while no iptlb runs) or delete them with the state file that holds them, then migrate again`,
      { field: 'state-file' },
    );
  }

  /**
   * After a migration: what keeps the engine. With a state file, the record beside it
   * ({@link engineRecordOf}) makes `auto` take `to` from now on, after a reboot too; an explicit other
   * engine (--engine, IPTLB_ENGINE) is refused by every change until it says `to`. Without one (an
   * in-memory instance) nothing is recorded: `auto` finds the rules in `to` while they stay, and
   * picks again from an empty kernel.
   */
  private async sayHowToKeep(to: EngineName): Promise<void> {
    if (this.engineChoice === to) return;
    if (this.engineChoice !== 'auto') {
      this.log(
        `warning: --engine (or IPTLB_ENGINE) says ${this.engineChoice}: changes made with it are refused now that the profiles are in the ${to} engine; set it to ${to} (the systemd unit's Environment= too), or leave it auto`,
      );
      return;
    }
    if (this.statePath !== null) return;
    const fresh = await selectEngine('auto', { legacyHasRules: async () => false, nftHasRules: async () => false });
    if (fresh.engine === to) return;
    this.log(
      `the engine is not recorded for an instance without a state file: from an empty kernel auto picks ${fresh.engine} (${fresh.reason.replace(/^no iptlb rules yet, and /, '')}); to keep ${to}, pass engine: '${to}'`,
    );
  }

  /**
   * A migration whose removal from the source engine failed after the install: the install is undone
   * when it can be (the target held nothing of iptlb's before, and no family was removed from the
   * source yet), so the move changed nothing; else the error says that both engines now hold the rules.
   */
  private async migrateFailed(
    e: Error,
    m: {
      to: EngineName;
      from: EngineName;
      target: Engine;
      source: Engine;
      targetHeld: boolean;
      removed: number;
      /** What failed, when not the removal. */
      what?: string;
    },
  ): Promise<IptlbError> {
    const why = `${m.what ?? `removing iptlb's objects from the ${m.from} engine`} failed (${e.message})`;
    if (!m.targetHeld && m.removed === 0) {
      try {
        for (const f of FAMILIES) {
          const tx = await m.target.planRemoveAll(f);
          if (tx !== undefined) await m.target.commit(tx);
        }
        return new IptlbError('EKERNEL', `${why}; the install in the ${m.to} engine was undone, nothing was changed`, {
          cause: e,
        });
      } catch (u) {
        return new IptlbError(
          'EKERNEL',
          `${why}, and undoing the install in the ${m.to} engine failed too (${(u as Error).message}): both engines hold iptlb's rules; fix the cause and run migrate again`,
          { cause: e },
        );
      }
    }
    return new IptlbError(
      'EKERNEL',
      `${why}: both engines hold iptlb's rules now; fix the cause and run migrate again`,
      { cause: e },
    );
  }

  /**
   * Kernel objects owned by iptlb for profiles of `family` (default ipv4): the nat table's (legacy) or table ip/ip6
   * iptlb (nft).
   */
  async readKernel(family: Family = 'ipv4'): Promise<AnyView> {
    return (await this.select()).provider.read(family) as Promise<AnyView>;
  }
}

/** Up to how many profiles a change asks the CLI's index of the state file about conflicts (see upsertChange). */
const INDEXED_CONFLICTS = 16;

/** Decides an upsert of `inputs` (create or replace) against `state`. */
export function upsertChange(state: Map<string, Profile>, inputs: (ProfileInput | Profile)[]): Change {
  const upsert = inputs.map((i) => validateProfile(i));
  const names = new Set<string>();
  for (const p of upsert) {
    if (names.has(p.name))
      throw new IptlbError('EUSAGE', `name: ${show(p.name)} is given twice in one change`, { field: 'name' });
    names.add(p.name);
  }
  // A few profiles (the common change) are checked against the state one by one: a comparison or two per
  // profile of the state. For more (`apply --file`) that was quadratic (20,000 profiles: 34 s): the state and
  // the profiles before each are indexed by chain and source, and a profile that hits is checked again one by
  // one, so that the error is the one checkConflicts gives (the first profile it meets). Indexing the state
  // costs more than one check (11 ms against 0.3 at 10,000 profiles), so a few profiles are not indexed.
  const few = upsert.length <= INDEXED_CONFLICTS;
  let inState: ConflictIndex | undefined;
  const earlier = few ? undefined : new ConflictIndex();
  // The CLI's index of the state file answers without building every profile, by a search of the file's text
  // per profile: for a few. For more, every profile is built once and looked up (per profile, the searches
  // were quadratic: replacing 20,000 profiles took 20 s).
  const textIndex = state instanceof IndexedState && few ? state : undefined;
  upsert.forEach((p, i) => {
    const indexed = textIndex ? textIndex.conflictOf(p, names) : undefined;
    if (indexed) throw indexed;
    if (indexed === undefined && (few || (inState ??= new ConflictIndex(state.values(), names)).hits(p)))
      checkConflicts(p, state.values(), names);
    if (!earlier || earlier.hits(p)) checkConflicts(p, upsert.slice(0, i));
    earlier?.add(p);
  });
  // Replacement needs no explicit removal: every upserted profile's old objects are owned by its name.
  return { upsert, remove: [] };
}

/** Decides the deletion of `names` against `state`; unknown names are ENOTFOUND. */
export function deleteChange(state: Map<string, Profile>, names: string[]): Change {
  const remove = [...new Set(names.map((n) => validateName(n, 'name', { existing: true })))];
  for (const n of remove) {
    if (!state.has(n))
      throw new IptlbError('ENOTFOUND', `name: profile ${show(n)} does not exist in the state file`, { field: 'name' });
  }
  return { upsert: [], remove };
}
