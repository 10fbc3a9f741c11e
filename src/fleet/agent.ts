/**
 * `iptlb agent`: this host's rules follow the profiles kept in etcd.
 *
 * A session lists `<prefix>profiles/` at one revision, in pages, commits the whole listed set as one
 * change (profiles the agent owns and the store no longer has are removed in that same change), then
 * watches from that revision + 1. Watch responses are folded into the agent's mirror of the store and
 * committed as one kernel transaction per batch, at most one per `minSyncMs`. A watch whose
 * connection was lost (its member went away) is opened again from the mirror's revision, without
 * re-listing. When the watch dies otherwise (cancelled, compacted, lost again and again, or cannot be
 * opened again) or a periodic linearizable read fails (quorum lost: a watch then stays silent), the
 * session ends; the kernel keeps its rules and a new session starts after a capped, jittered backoff,
 * re-lists at a fresh revision and commits the difference.
 *
 * Ownership: the agent's own state file (default /var/lib/iptlb/agent.db) holds the profiles it
 * applied, so that after a restart it removes only its own orphans and `iptlb status|sync
 * --state-file` work on it as on any state file.
 */
import { EventEmitter } from 'node:events';
import { Core, type OpenOptions } from '../core/core.js';
import { apart, callApart, IptlbError } from '../model/errors.js';
import type { EngineChoice, ExecutorChoice, EngineName, Profile } from '../model/types.js';
import type { Executor } from '../engines/engine.js';
import {
  decide,
  DEFAULT_PREFIX,
  EMPTY_STORE_ERROR,
  hostKey,
  parseStored,
  validateHost,
  oneLine,
  validatePrefix,
  type Parsed,
  type Refusal,
  type StoredEntry,
} from './reconcile.js';
import { familyOfProfile } from '../model/profile.js';
import {
  CREDENTIALS_REFUSED,
  TLS_FAILURE,
  WATCH_COMPACTED,
  EtcdStore,
  prefixEnd,
  storeErrorMessage,
  type EtcdOptions,
  type FleetStore,
  type StoreEvent,
  type StoreKV,
  type WatchHandle,
} from './store.js';
import { nodeOs } from '../platform/builtins.js';
import { tryLockBeside, type HeldLock } from '../platform/lock.js';
import { readFileSync, statSync } from 'node:fs';

export const DEFAULT_AGENT_STATE_FILE = '/var/lib/iptlb/agent.db';
/**
 * The lock an agent holds beside its state file while it runs: `<state file>.agent.lock`. A second agent on one state
 * file (another `--host` or `--prefix`, another etcd) would take the first one's profiles for its own orphans and
 * remove them from the kernel, while the first goes on reporting them applied.
 */
export const AGENT_LOCK_SUFFIX = '.agent.lock';

/** The pid of the process holding an flock on `file` (from /proc/locks), if it can be told. */
function flockHolder(file: string): number | undefined {
  try {
    const ino = statSync(file).ino;
    for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
      const m = /^\d+:\s+FLOCK\s+\S+\s+WRITE\s+(\d+)\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s/.exec(line);
      if (m && Number(m[2]) === ino) return Number(m[1]);
    }
  } catch {
    /* not told: the message says "another process" */
  }
  return undefined;
}
/**
 * Longest duration option of the agent, ms (an hour, as the CLI's other ms options). Node's timers hold at most
 * 2^31-1 ms and turn a longer delay into 1 ms.
 */
export const MAX_AGENT_MS = 3_600_000;
/**
 * Most keys the agent asks etcd for in one page of a list. A page comes back as one gRPC message, and grpc-js (the
 * etcd3 client's transport) receives at most 4 MiB: 100,000 keys fit only if each, with its value and the revisions
 * etcd sends with it, takes under 42 bytes, less than the shortest valid profile (`//profiles/a` holding
 * `{"name":"a","source":"1.1.1.1:1","destination":["1.1.1.1:1"]}`: about 90 bytes). A larger page could never arrive
 * whole: it would be refused as too large and fetched again with half as many keys (see store.ts), after etcd built
 * the whole response in its memory. (etcd's --max-request-bytes, 1.5 MiB by default, bounds one key and value, so
 * one key per page always fits.)
 */
export const MAX_PAGE_SIZE = 100_000;
/**
 * The host key's lease TTL, s: at least 2, at most a day. etcd allows 9,000,000,000 s, but its client keeps a lease
 * alive with timers of the TTL in ms (a TTL past 2,147,483 s would time out at once), and a key that outlives a dead
 * agent by more than a day says nothing true.
 */
export const MIN_LEASE_TTL_SEC = 2;
export const MAX_LEASE_TTL_SEC = 86_400;
/** A lost watch is resumed at most this many times within RESUME_WINDOW_MS before the agent re-lists. */
const MAX_RESUMES = 3;
const RESUME_WINDOW_MS = 60_000;
/** Refused profiles listed in the host key (all are counted), and logged when the set changes. */
export const MAX_REFUSED_LISTED = 100;
const MAX_REFUSED_LOGGED = 20;
/** Longest error kept in the host key and logged (an error may quote what the store holds). */
const MAX_ERROR_LENGTH = 500;

export interface AgentOptions {
  /** The store: etcd connection options, or a {@link FleetStore} (tests, embedders). */
  etcd: EtcdOptions | FleetStore;
  /** Key prefix. Default `/iptlb/v1/`. */
  prefix?: string;
  /** This host's name in `<prefix>hosts/<host>`. Default: the machine's host name. */
  host?: string;
  engine?: EngineChoice;
  executor?: ExecutorChoice;
  /** An executor to use instead of choosing one (tests). */
  executorInstance?: Executor;
  /** The agent's own state file (what it owns). Default /var/lib/iptlb/agent.db. */
  stateFile?: string;
  /** At least this many ms between two kernel commits of watch batches. Default 100. (Each ms option: at most 1 h.) */
  minSyncMs?: number;
  /** Keys per page when listing, 1 to {@link MAX_PAGE_SIZE} (100,000). Default 1000. */
  pageSize?: number;
  /** TTL of the host status key's lease, s (2 to 86,400). Default 10. */
  leaseTtlSec?: number;
  /** Linearizable read every this many ms (a silent watch is not trusted). Default 2000. */
  checkMs?: number;
  /** Drift check (and repair by `sync`) every this many ms, without re-listing; 0: off. Default 10000. */
  syncMs?: number;
  /** A linearizable read that has not answered after this many ms fails the session. Default 6000. */
  checkTimeoutMs?: number;
  /** Backoff after a failure: first delay and cap, ms (jittered). Defaults 200 and 10000. */
  backoffMs?: number;
  backoffMaxMs?: number;
  log?: (line: string) => void;
  lockWaitMs?: number;
  keepConntrack?: boolean;
  /**
   * Commit a list that holds no key under `<prefix>profiles/` as it is, removing every profile the agent owns (the
   * behaviour before 2026-12-07). Default false: such a list, while the agent owns profiles, is taken for a wrong
   * prefix or an empty etcd (a new cluster, a failover before the restore) and held back (see {@link Agent}).
   */
  allowEmptyStore?: boolean;
}

/** What `<prefix>hosts/<host>` holds (JSON). */
export interface HostStatus {
  host: string;
  /** The store revision whose profiles the kernel holds (0: nothing applied yet). */
  revision: number;
  /**
   * How many keys the store held under `<prefix>profiles/` at `revision`, valid or not (absent before the first
   * commit, and from agents before 2026-12-06). With it, `fleet status --revision N` counts a host whose `revision`
   * is below N as having N when no profile key changed between them: every stored key at N is older than `revision`
   * and N has as many keys (revisions made by other writes, such as the hosts' own keys, change no profile).
   */
  profileKeys?: number;
  engine: EngineName | null;
  executor: 'native' | 'spawn' | null;
  /** Profiles the agent owns (applied). */
  profiles: number;
  /**
   * Profiles of the store this host refused, with the error code: the first {@link MAX_REFUSED_LISTED}
   * by name (a host key must stay well under etcd's request limit).
   */
  refused: Refusal[];
  /** How many profiles this host refused in all. */
  refusedCount: number;
  /** `listing`, `watching`, `unreachable` (retrying) or `stopped`. */
  watch: 'listing' | 'watching' | 'unreachable' | 'stopped';
  /** The last failure (store or kernel), if the agent is retrying. */
  error?: string;
  /**
   * Present while the agent holds back a list with no profile key and keeps the profiles it owns (a wrong prefix, an
   * empty etcd? see {@link AgentOptions.allowEmptyStore}); `fleet status` counts the host as not converged. Said by a
   * field of its own, not only by `error`, which a store failure meanwhile replaces.
   */
  emptyStoreHeld?: true;
  /** When this status was written (ISO time). */
  updated: string;
  /**
   * Which agent process wrote it (`<pid>-<random>`, new at each start): another value in this host's key means
   * another agent runs with the same `--host` (cloned machines share host names), or a predecessor's key has not
   * expired yet.
   */
  instance?: string;
}

export interface AgentEvents {
  /** After each commit of a batch (also when nothing needed to change). */
  applied: [
    { revision: number; upserted: number; removed: number; refused: Refusal[]; commitMs: number; totalMs: number },
  ];
  /** After each new host status. */
  status: [HostStatus];
}

/** Thrown by the commit's decision when an empty list would remove every owned profile (see allowEmptyStore). */
class EmptyStoreHeld extends Error {
  constructor(readonly owned: number) {
    super('empty store held');
  }
}

/** A profile of the store as the agent's mirror holds it. */
type Mirrored = StoredEntry & { modRevision: number };

/**
 * A write this agent saw the store make: a profile put or delete it listed or folded, or its own host key put (the
 * put's revision; `value`: what it wrote). The store's history at `revision` must still show it: a store restored
 * from a snapshot taken before it does not, whatever revision the store has reached since.
 */
interface Witness {
  key: string;
  revision: number;
  deleted?: boolean;
  value?: string;
}

/** The `instance` a host key's value names (undefined: none, or not JSON). */
function instanceOf(value: string): string | undefined {
  try {
    const v = JSON.parse(value) as Partial<HostStatus> | null;
    return typeof v?.instance === 'string' ? v.instance : undefined;
  } catch {
    return undefined;
  }
}

const sleep = (ms: number, signal?: { stopped: boolean; wake?: () => void }): Promise<void> =>
  new Promise((r) => {
    const t = setTimeout(r, ms);
    if (signal) signal.wake = () => (clearTimeout(t), r());
  });

function int(v: unknown, field: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new IptlbError(
      'EUSAGE',
      `${field}: ${JSON.stringify(v)} must be a whole number, ${max === Number.MAX_SAFE_INTEGER ? `at least ${min}` : `from ${min} to ${max}`}`,
      { field },
    );
  return v;
}

export class Agent extends EventEmitter<AgentEvents> {
  readonly prefix: string;
  readonly host: string;
  readonly core: Core;
  private store?: FleetStore;
  private readonly o: Required<
    Pick<
      AgentOptions,
      'minSyncMs' | 'pageSize' | 'leaseTtlSec' | 'checkMs' | 'checkTimeoutMs' | 'syncMs' | 'backoffMs' | 'backoffMaxMs'
    >
  >;
  private readonly log: (line: string) => void;
  /** The store's profiles as this agent knows them: name → parsed value, and the revision it is complete up to. */
  private mirror = new Map<string, Mirrored>();
  private mirrorRevision = 0;
  /** The newest event folded into the mirror (the listed revision at first). */
  private eventRevision = 0;
  /**
   * The newest write this agent knows the store made (see {@link Witness}), and the one the next periodic check
   * verifies: the newest as the check before it began (a write of a restored store's new history, folded or put
   * since, cannot have replaced it yet).
   */
  private witness?: Witness;
  private anchor?: Witness;
  private applyRevision = 0;
  /** Keys of the mirror at applyRevision (see {@link HostStatus.profileKeys}); undefined before the first commit. */
  private applyKeys?: number;
  private refused: Refusal[] = [];
  private readonly allowEmptyStore: boolean;
  /** The last list held no key under profiles/, and no watch event has been folded since. */
  private listedEmpty = false;
  /**
   * That list was held back: the agent owns profiles and commits nothing until a key appears (see
   * {@link AgentOptions.allowEmptyStore}). Said once while it lasts.
   */
  private emptyHeld = false;
  private watchState: HostStatus['watch'] = 'listing';
  private error?: string;
  private stopped = false;
  private readonly sleeper: { stopped: boolean; wake?: () => void } = { stopped: false };
  /** Rejects once stop() is called: a store call the loop waits for (a stalled etcd) does not hold back stop(). */
  private readonly stopRequested: Promise<never>;
  private requestStop!: () => void;
  /** The start's read of the host key (who wrote it last), waited for by the first session before it lists. */
  private holderRead?: Promise<void>;
  private session = 0;
  private dirty = false;
  private committing?: Promise<void>;
  private lastCommitAt = -Infinity;
  private commitTimer?: NodeJS.Timeout;
  private checkTimer?: NodeJS.Timeout;
  private syncTimer?: NodeJS.Timeout;
  private statusTimer?: NodeJS.Timeout;
  private statusAttempt = 0;
  private sessionFailed?: (why: string) => void;
  private loop?: Promise<void>;
  /**
   * Resolves when the first listed set has been committed (not while an empty list is held back: see
   * {@link AgentOptions.allowEmptyStore}).
   */
  readonly ready: Promise<void>;
  private readyResolve!: () => void;
  /**
   * Extension point (issue 16, for the lead to wire): a health checker and a metrics server attach
   * here. `onCommit` is called after every batch commit with the owned profiles; a HealthChecker
   * would (re)start probes for them, the metrics server reads {@link Agent.status}.
   */
  attachments: { onCommit?: (owned: ReadonlyMap<string, Profile>) => void; close?: () => Promise<void> } = {};

  constructor(private readonly opts: AgentOptions) {
    super();
    this.prefix = validatePrefix(opts.prefix ?? DEFAULT_PREFIX);
    this.host = validateHost(opts.host ?? nodeOs().hostname());
    this.o = {
      minSyncMs: int(opts.minSyncMs ?? 100, 'minSyncMs', 0, MAX_AGENT_MS),
      pageSize: int(opts.pageSize ?? 1000, 'pageSize', 1, MAX_PAGE_SIZE),
      leaseTtlSec: int(opts.leaseTtlSec ?? 10, 'leaseTtlSec', MIN_LEASE_TTL_SEC, MAX_LEASE_TTL_SEC),
      checkMs: int(opts.checkMs ?? 2000, 'checkMs', 10, MAX_AGENT_MS),
      syncMs: int(opts.syncMs ?? 10000, 'syncMs', 0, MAX_AGENT_MS),
      // A call may wait for one member's deadline before the next member answers (several endpoints).
      checkTimeoutMs: int(
        opts.checkTimeoutMs ??
          ('endpoints' in opts.etcd
            ? (opts.etcd.callTimeoutMs ?? 5000) * (opts.etcd.endpoints.length > 1 ? 2 : 1) + 1000
            : 6000),
        'checkTimeoutMs',
        10,
        2 * MAX_AGENT_MS + 1000, // twice the longest call deadline, and a second
      ),
      backoffMs: int(opts.backoffMs ?? 200, 'backoffMs', 1, MAX_AGENT_MS),
      backoffMaxMs: int(opts.backoffMaxMs ?? 10000, 'backoffMaxMs', 1, MAX_AGENT_MS),
    };
    if (opts.allowEmptyStore !== undefined && typeof opts.allowEmptyStore !== 'boolean')
      throw new IptlbError('EUSAGE', `allowEmptyStore: ${JSON.stringify(opts.allowEmptyStore)} must be true or false`, {
        field: 'allowEmptyStore',
      });
    this.allowEmptyStore = opts.allowEmptyStore ?? false;
    this.log = opts.log ? apart(opts.log) : () => {};
    const coreOpts: OpenOptions = {
      stateFile: opts.stateFile ?? DEFAULT_AGENT_STATE_FILE,
      ...(opts.engine ? { engine: opts.engine } : {}),
      ...(opts.executor ? { executor: opts.executor } : {}),
      ...(opts.lockWaitMs !== undefined ? { lockWaitMs: opts.lockWaitMs } : {}),
      ...(opts.keepConntrack !== undefined ? { keepConntrack: opts.keepConntrack } : {}),
      // While a failing commit is retried, the core's lines of each attempt are held back, and dropped when
      // the attempt fails as the one before (see commitNow).
      log: (l) => this.coreLog(l),
    };
    this.core = new Core(coreOpts, opts.executorInstance);
    // A profile of the store's whose address or name a local state file's profile holds is applied, as
    // before: refused, it would hold back every later revision (see Core.takesAddresses).
    this.core.takesAddresses = true;
    this.ready = new Promise((r) => (this.readyResolve = r));
    this.stopRequested = new Promise<never>((_, reject) => (this.requestStop = () => reject(new Error('stopped'))));
    this.stopRequested.catch(() => {});
  }

  /** `p`, or a rejection as soon as the agent stops (`p` is left to settle on its own). */
  private orStop<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.stopRequested]);
  }

  private get profilesPrefix(): string {
    return `${this.prefix}profiles/`;
  }

  /** Held from lock() or start() to the end of stop() (see {@link AGENT_LOCK_SUFFIX}). */
  private agentLock?: HeldLock;

  /**
   * Takes the state file's agent lock, chooses the engine, connects, and starts the loop (returns once started, not
   * once synced: see {@link ready}). Another agent on the state file: ELOCK naming `state-file`, nothing changed.
   */
  async start(): Promise<void> {
    await this.lock();
    try {
      await this.begin();
    } catch (e) {
      this.agentLock?.release();
      this.agentLock = undefined;
      throw e;
    }
  }

  /**
   * Takes the state file's agent lock now, before {@link start} (which takes it otherwise): the CLI takes it before
   * the health checker's lock, so a second agent is refused with the agent's own line. Idempotent; no state file, no
   * lock. Another agent on the state file: ELOCK naming `state-file`.
   */
  async lock(): Promise<void> {
    const sp = this.core.statePath;
    if (sp !== null && !this.agentLock) {
      const lock = await tryLockBeside(sp, AGENT_LOCK_SUFFIX);
      if (!lock) {
        const pid = flockHolder(`${sp}${AGENT_LOCK_SUFFIX}`);
        throw new IptlbError(
          'ELOCK',
          `state-file: ${pid === process.pid ? 'another agent of this process' : pid !== undefined ? `the agent of process ${pid}` : 'another agent'} already runs on ${sp} (it holds ${sp}${AGENT_LOCK_SUFFIX}); two agents on one state file remove each other's profiles: give each agent its own --state-file`,
          { field: 'state-file' },
        );
      }
      this.agentLock = lock;
    }
  }

  /** Lets go of the agent lock {@link lock} took, for an agent that is not started (stop() lets go of it otherwise). */
  unlock(): void {
    if (this.loop !== undefined) return; // started: stop() lets go of it
    this.agentLock?.release();
    this.agentLock = undefined;
  }

  private async begin(): Promise<void> {
    await this.core.select();
    // What the kernel keeps from the last run counts until the first list is committed (etcd may be down).
    this.ownedCount = (await this.core.readState()).size;
    const e = this.opts.etcd;
    this.store = 'range' in e ? e : await EtcdStore.connect(e);
    const s = this.core.selection;
    this.log(
      `agent ${this.host}: ${s.engine}/${s.executor.kind}, state file ${this.core.statePath}, prefix ${this.prefix}`,
    );
    const key = hostKey(this.prefix, this.host);
    // (Not fatal: etcd may be down; the loop retries.) Not waited for here: a stalled etcd would hold the start, and a
    // SIGTERM meanwhile, for a call's deadline; the first session waits for it before anything writes the host key.
    this.holderRead = this.store
      .range(key, `${key}\0`, { limit: 1 })
      .catch(() => undefined)
      .then((held) => this.checkHostKeyOwner(held?.kvs[0]?.value, true));
    this.loop = this.run();
    if (this.o.syncMs > 0) {
      this.syncTimer = setInterval(() => void this.repairDrift(), this.o.syncMs);
    }
  }

  /** The host status as it would be written now. */
  status(): HostStatus {
    const sel = (() => {
      try {
        return this.core.selection;
      } catch {
        return undefined;
      }
    })();
    return {
      host: this.host,
      revision: this.applyRevision,
      ...(this.applyKeys !== undefined ? { profileKeys: this.applyKeys } : {}),
      engine: sel?.engine ?? null,
      executor: sel?.executor.kind ?? null,
      profiles: this.ownedCount,
      refused: this.refused.slice(0, MAX_REFUSED_LISTED),
      refusedCount: this.refused.length,
      watch: this.watchState,
      ...(this.error ? { error: this.error } : {}),
      ...(this.emptyHeld ? { emptyStoreHeld: true as const } : {}),
      updated: new Date().toISOString(),
      instance: this.instance,
    };
  }
  private ownedCount = 0;
  /** This process's mark in the host key (see {@link HostStatus.instance}). */
  readonly instance = `${process.pid}-${Math.floor(Math.random() * 2 ** 32)
    .toString(16)
    .padStart(8, '0')}`;
  /** Whether a status of this agent was written (another instance in the host key after that: a live agent). */
  private statusWritten = false;
  private warnedInstance?: string;

  /**
   * The host key holds the status of another agent instance: at start, a predecessor whose lease has not expired or
   * another agent with this `--host`; once this agent wrote its own, another live agent with this `--host` (a dead
   * one writes nothing). Said once per other instance.
   */
  private checkHostKeyOwner(value: string | undefined, atStart: boolean): void {
    if (value === undefined) return;
    let other: Partial<HostStatus>;
    try {
      other = JSON.parse(value) as Partial<HostStatus>;
    } catch {
      return;
    }
    const inst = typeof other?.instance === 'string' ? oneLine(other.instance, 40) : undefined;
    if (!inst || inst === this.instance || inst === this.warnedInstance) return;
    const key = hostKey(this.prefix, this.host);
    const what = `instance ${inst}${typeof other.updated === 'string' ? `, updated ${oneLine(other.updated, 40)}` : ''}`;
    if (atStart) {
      this.log(
        `agent: host key ${key} holds the status of another agent (${what}): a stopped predecessor whose lease expires within its TTL, or another agent running with --host ${this.host} (cloned machines share host names: give each agent its own --host)`,
      );
      return; // said again, as a warning, if it writes the key after this agent did
    }
    this.warnedInstance = inst;
    this.log(
      `agent: WARNING: another live agent runs with --host ${this.host}: it wrote host key ${key} (${what}) after this agent (instance ${this.instance}); their statuses overwrite each other and \`fleet status\` can hide one host's lag: give each agent its own --host`,
    );
  }

  /**
   * What the kernel keeps, for the log lines: the rules of the revision this run applied, or, before its first commit
   * (etcd unreachable at start), the profiles its state file holds from an earlier run ("revision 0" read as none).
   */
  private keeps(): string {
    if (this.applyRevision > 0) return `the kernel keeps the rules of revision ${this.applyRevision}`;
    return this.ownedCount > 0
      ? `the kernel keeps the ${this.ownedCount} profile(s) of its state file (applied before this start; ${this.emptyHeld ? 'kept: the store listed no profile key' : 'no revision listed yet'})`
      : 'the kernel holds no profile of this agent (its state file holds none; no revision listed yet)';
  }

  private backoff(attempt: number): number {
    const cap = Math.min(this.o.backoffMaxMs, this.o.backoffMs * 2 ** Math.min(attempt, 20));
    return Math.round(cap / 2 + Math.random() * (cap / 2));
  }

  /**
   * A failure etcd keeps giving until someone fixes a setting (credentials refused, a TLS certificate not
   * accepted): said once, with what to check; the retries are quiet until the reason changes, and its end is said
   * once the agent watches again. `attempts`: the failed attempts since it was first said.
   */
  private refusal?: { reason: string; what: string; attempts: number };

  /** The line that says a refusal `msg` of kind `what` (see {@link refusal}). */
  private refusalLine(msg: string, what: 'credentials' | 'TLS'): string {
    const m = oneLine(msg, MAX_ERROR_LENGTH);
    const keeps = this.keeps();
    return what === 'credentials'
      ? `agent: etcd refused this agent's credentials (${m}): check --etcd-user and IPTLB_ETCD_PASSWORD (or the client certificate) and the user's roles; ${keeps}; retrying with backoff until etcd accepts them (not logged again unless the failure changes)`
      : `agent: ${m}; ${keeps}; retrying with backoff until the TLS connection succeeds (not logged again unless the failure changes)`;
  }

  /** The session watches: a refusal said is over (said once). */
  private refusalOver(): void {
    const r = this.refusal;
    if (!r) return;
    this.refusal = undefined;
    this.log(
      r.what === 'credentials'
        ? `agent: etcd accepted this agent's credentials after ${r.attempts} failed attempt(s); watching from revision ${this.mirrorRevision}`
        : `agent: etcd accepted the TLS connection after ${r.attempts} failed attempt(s); watching from revision ${this.mirrorRevision}`,
    );
  }

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      const session = ++this.session;
      this.watchingSince = undefined;
      try {
        await this.runSession(session);
        attempt = 0;
      } catch (e) {
        if (this.stopped) break;
        // A session that was healthy (watching) for at least the backoff's cap starts the backoff again:
        // a recovery hours later waits 200 ms, not the cap. One that fails sooner (a member that accepts
        // the watch and drops it) keeps the backoff growing.
        if (this.watchingSince !== undefined && performance.now() - this.watchingSince >= this.o.backoffMaxMs)
          attempt = 0;
        const msg = storeErrorMessage(e);
        const delay = this.backoff(attempt++);
        this.error = oneLine(msg, MAX_ERROR_LENGTH);
        this.setWatch('unreachable');
        const what = CREDENTIALS_REFUSED.test(msg) ? 'credentials' : TLS_FAILURE.test(msg) ? 'TLS' : undefined;
        if (what) {
          // Said once while the reason stays the same; the retries are quiet.
          if (this.refusal?.reason !== msg) this.log(this.refusalLine(msg, what));
          this.refusal = { reason: msg, what, attempts: (this.refusal?.attempts ?? 0) + 1 };
        } else {
          this.refusal = undefined; // another failure (unreachable): logged at each retry, and a refusal said again
          this.log(
            `agent: store: ${oneLine(msg, MAX_ERROR_LENGTH)}; ${this.keeps()}; retrying in ${delay} ms (attempt ${attempt})`,
          );
        }
        await sleep(delay, this.sleeper);
      }
    }
  }
  /** When the current session's watch was created (it is healthy from then on). */
  private watchingSince: number | undefined;

  /** One session: list, commit, watch until the watch or a check fails (then throws). */
  private async runSession(session: number): Promise<void> {
    const store = this.store!;
    if (this.holderRead) {
      await this.orStop(this.holderRead);
      this.holderRead = undefined;
    }
    this.checkFailingSince = undefined;
    this.setWatch('listing');
    const t0 = performance.now();
    // All pages at the revision of the first one.
    const start = this.profilesPrefix;
    const end = prefixEnd(start);
    const listed = new Map<string, Mirrored>();
    let revision = 0;
    let from = start;
    let pages = 0;
    // A key whose modification revision is the one the mirror holds is not parsed again, unless etcd was restored
    // from a snapshot (noticed before, or by this list's revision): the new history may have written the key at a
    // revision the agent saw, with another value.
    let fresh = this.wentBackSaid;
    for (;;) {
      const page = await this.orStop(
        store.range(from, end, { limit: this.o.pageSize, ...(revision ? { revision } : {}) }),
      );
      if (!revision) {
        revision = page.revision;
        if (revision < this.mirrorRevision) fresh = true;
      }
      pages++;
      for (const kv of page.kvs)
        listed.set(kv.key.slice(start.length), {
          ...(fresh
            ? parseStored(kv.key.slice(start.length), kv.value)
            : this.parse(kv.key.slice(start.length), kv.value, kv.modRevision)),
          modRevision: kv.modRevision,
          createRevision: kv.createRevision,
        });
      if (!page.more || !page.kvs.length) break;
      from = page.kvs[page.kvs.length - 1]!.key + '\0';
    }
    if (this.stopped || session !== this.session) return;
    if (revision < this.mirrorRevision && !this.wentBackSaid)
      this.log(
        `agent: the store is at revision ${revision}, below revision ${this.mirrorRevision} this agent had seen (etcd restored from a snapshot?): the listed set replaces what the agent knew`,
      );
    this.wentBackSaid = false;
    this.mirror = listed;
    this.listedEmpty = listed.size === 0;
    this.mirrorRevision = revision;
    this.eventRevision = revision;
    // The listed set replaces what the agent knew: the newest listed key is the write to verify from now on.
    let newest: Mirrored | undefined;
    let newestName = '';
    for (const [name, m] of listed) if (!newest || m.modRevision > newest.modRevision) [newest, newestName] = [m, name];
    this.witness = newest ? { key: start + newestName, revision: newest.modRevision } : undefined;
    this.anchor = this.witness;
    this.log(
      `agent: listed ${listed.size} profile(s) at revision ${revision} in ${pages} page(s) (${(performance.now() - t0).toFixed(1)} ms)`,
    );
    // The whole listed set as one change, now (not rate-limited).
    await this.commitNow(); // a kernel refusal is retried by commitNow itself; the store part went fine
    // Watch from revision + 1 until something fails.
    let watch: WatchHandle | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        this.sessionFailed = (why) => reject(new Error(why));
        this.stopHook = () => resolve();
        this.relistHook = () => resolve(); // a new session at once, without backoff

        if (this.stopped) return resolve();
        // Checked from now on: a watch that is never created is as silent as one that stalls.
        this.checkTimer = setInterval(() => void this.check(session), this.o.checkMs);
        // A watch whose member went away is opened again (on another member, by the client) from the
        // revision the mirror is complete to: nothing is missed and nothing re-listed. A few times in a
        // row at most; then, or when creating it fails, the session ends and the agent re-lists.
        let current = 0;
        const resumes: number[] = [];
        const open = (from: number): void => {
          const id = ++current;
          store
            .watch(start, end, from, {
              events: (events, rev) => {
                if (session !== this.session || id !== current) return;
                this.fold(events, rev);
              },
              failed: (why, resumable) => {
                if (session !== this.session || id !== current) return;
                if (WATCH_COMPACTED.test(why)) return this.compacted(why);
                const now = performance.now();
                while (resumes.length && now - resumes[0]! > RESUME_WINDOW_MS) resumes.shift();
                if (!resumable || this.stopped || resumes.length >= MAX_RESUMES) return this.sessionFailed?.(why);
                resumes.push(now);
                const next = this.mirrorRevision + 1;
                // The newest write seen before the connection was lost: none of a restored store's yet.
                const seen = this.witness;
                const delay = resumes.length > 1 ? this.backoff(resumes.length - 2) : 0;
                this.log(`agent: ${why}; watching again from revision ${next}, without re-listing`);
                const old = watch;
                watch = undefined;
                void old?.cancel();
                const live = (): boolean => session === this.session && !this.stopped && id === current;
                void sleep(delay, this.sleeper)
                  // A store restored from a snapshot is behind the mirror: a watch from `next` would
                  // stay silent until the store passed it. One written past the mirror since is not, but its
                  // history no longer holds the newest write the agent saw: a watch from `next` would skip
                  // what it lost and what it holds instead. (A read that fails: the watch's own creation says
                  // whether the store answers.)
                  .then(() => (live() ? store.revision(start).catch(() => undefined) : undefined))
                  .then(async (rev) => {
                    if (!live()) return;
                    if (rev !== undefined && rev < this.mirrorRevision)
                      return this.storeWentBack(rev, 'resuming the watch');
                    if (rev !== undefined && seen && (await this.witnessHeld(seen)) === false && live())
                      return this.storeLost(seen, 'resuming the watch');
                    if (live()) open(next);
                  });
              },
            })
            .then(
              (w) => {
                if (session !== this.session || this.stopped || id !== current) return void w.cancel();
                watch = w;
                // The store answers again: its failure is over. A kernel refusal of the listed set (retried by
                // commitNow) is not: the host key goes on saying it until a commit goes through.
                // Nor is an empty list held back: its error stays until a key appears.
                if (!this.error?.startsWith('kernel:') && !this.emptyHeld) this.error = undefined;
                this.watchingSince ??= performance.now();
                this.setWatch('watching');
                this.refusalOver();
              },
              (e: unknown) => {
                const why = storeErrorMessage(e);
                if (WATCH_COMPACTED.test(why) && session === this.session && id === current) this.compacted(why);
                else reject(e);
              },
            );
        };
        open(revision + 1);
      });
    } finally {
      if (this.checkTimer) clearInterval(this.checkTimer);
      this.checkTimer = undefined;
      this.sessionFailed = undefined;
      this.relistHook = undefined;
      this.session++; // events of this session's watch are ignored from now on
      // (Stopping: not waited for, a stalled member never confirms it; the store's close ends the watch anyway. Its
      // failure is caught all the same: a FleetStore of an embedder's may reject, and unhandled that ends the process.)
      if (this.stopped) void watch?.cancel().catch(() => {});
      else await watch?.cancel();
    }
  }
  private stopHook?: () => void;
  private relistHook?: () => void;

  /**
   * The store answered with a revision below the mirror's: etcd was restored from a snapshot (or
   * replaced), and a watch from the mirror's revision would stay silent until the store passed it. The
   * session ends and a new one re-lists at once (as SIGHUP does); its commit writes the host key again.
   */
  private wentBackSaid = false;
  private storeWentBack(revision: number, where: string): void {
    this.restored(`store revision ${revision} is below revision ${this.mirrorRevision} this agent had seen (${where})`);
  }
  /** The store's history no longer holds write `w` the agent saw (see {@link witnessHeld}): as above. */
  private storeLost(w: Witness, where: string): void {
    this.restored(
      `the store no longer holds the ${w.deleted ? 'delete' : 'write'} of ${oneLine(w.key, 120)} at revision ${w.revision} this agent saw (${where})`,
    );
  }
  /**
   * The watch's start revision is compacted (the agent was away, or its watch lagged, while etcd compacted): no
   * outage, so no backoff and no `unreachable`: the session ends and a new one re-lists at once.
   */
  private compacted(why: string): void {
    if (!this.relistHook) return;
    this.log(`agent: ${oneLine(why, MAX_ERROR_LENGTH)}: re-listing now (${this.keeps()} meanwhile)`);
    this.relistHook();
  }
  private restored(what: string): void {
    if (!this.relistHook) return;
    this.wentBackSaid = true;
    this.log(`agent: ${what}: etcd was restored from a snapshot or replaced; re-listing`);
    this.relistHook();
  }

  /** Notes a write the store made (see {@link Witness}) when it is the newest known. */
  private saw(w: Witness): void {
    if (!this.witness || w.revision > this.witness.revision) this.witness = w;
  }

  /**
   * Whether the store still holds write `w`: true when it does (the key's newest version is it, or a read at its
   * revision finds it); false when the store has not reached that revision or its history there differs (another
   * version of the key, or none; a deleted key present); undefined when it cannot tell (the revision compacted, the
   * key unreadable, the store unreachable). `now`: the key read at the current revision, when the caller has it.
   * (A write of the new history that lands on the same key at the same revision, with the same value for a host key,
   * looks like `w`: etcd's revisions and values are all a client can compare.)
   */
  private async witnessHeld(w: Witness, now?: { kvs: StoreKV[]; revision: number }): Promise<boolean | undefined> {
    const store = this.store!;
    const end = `${w.key}\0`;
    const same = (kv: StoreKV | undefined): boolean =>
      w.deleted ? kv === undefined : kv?.modRevision === w.revision && (w.value === undefined || kv.value === w.value);
    try {
      if (!w.deleted) {
        now ??= await store.range(w.key, end, { limit: 1 });
        if (same(now.kvs[0])) return true;
        if (now.revision < w.revision) return false;
      }
      return same((await store.range(w.key, end, { limit: 1, revision: w.revision })).kvs[0]);
    } catch (e) {
      return /future revision/i.test(storeErrorMessage(e)) ? false : undefined;
    }
  }

  /**
   * Checks now (`iptlb agent` on SIGHUP, as `iptlb watch` does): compares the kernel with the state
   * file and repairs drift, then reads the store again: the watching session re-lists at a fresh
   * revision (and commits the difference), a session waiting to retry the store retries at once.
   */
  async checkNow(why = 'check requested'): Promise<void> {
    if (this.stopped) return;
    this.log(`agent: ${why}: checking the kernel for drift and re-reading the store now`);
    const repaired = await this.repairDrift(true);
    if (repaired === false) this.log('agent: drift check: the kernel holds what the state file says');
    if (this.stopped) return;
    if (this.relistHook) this.relistHook();
    else this.sleeper.wake?.();
  }

  /**
   * A silent watch is not trusted: a linearizable read must answer (it fails or times out without
   * quorum). A read that gets no answer within checkTimeoutMs ends the session at once; reads that
   * fail with an answer (a leader election: "leader changed") end it once they have failed for that
   * long, so that an election does not cost a re-list.
   */
  private checking = false;
  private checkFailingSince: number | undefined;
  private async check(session: number): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    // The write this check verifies, and the newest one now: verified by the next check.
    const anchor = this.anchor;
    const newest = this.witness;
    try {
      // Bounded here too, not only by the client's call deadline.
      const revision = await Promise.race([
        this.store!.revision(this.profilesPrefix),
        new Promise<never>(
          (_, reject) =>
            (timer = setTimeout(
              () => ((timedOut = true), reject(new Error(`no answer within ${this.o.checkTimeoutMs} ms`))),
              this.o.checkTimeoutMs,
            )),
        ),
      ]);
      if (session === this.session) this.checkFailingSince = undefined;
      if (session === this.session && revision < this.mirrorRevision)
        return this.storeWentBack(revision, 'linearizable check');
      // The host key went with its lease (the agent stopped past the lease's TTL, someone revoked it),
      // or holds another status of this agent than its last write (etcd restored from a snapshot): written
      // again (under a new lease if need be), or the host stays "unknown" or stale until the next change.
      // A key another instance wrote is not fought over (checkHostKeyOwner warns). (Not part of the
      // session's check: a role that may not read the key only loses this repair.)
      const key = hostKey(this.prefix, this.host);
      const wrote = this.statusWritten; // read after this agent's write: another writer is alive
      const puts = this.statusPuts;
      const own = await this.store!.range(key, `${key}\0`, { limit: 1 }).catch(() => undefined);
      // A store restored from a snapshot and written past the mirror's revision since: its history no longer
      // holds a write this agent saw before this check's predecessor began (a newer one could be the new
      // history's own). Not when the key went with its lease, another instance wrote it, or the revision is
      // compacted: the write is still there, or the check cannot tell.
      if (anchor && session === this.session) {
        const held = await this.witnessHeld(anchor, anchor.key === key ? own : undefined);
        if (session !== this.session) return;
        if (held === false) return this.storeLost(anchor, 'periodic check');
      }
      if (session === this.session) this.anchor = newest;
      const value = own?.kvs[0]?.value;
      if (value !== undefined && wrote) this.checkHostKeyOwner(value, false);
      if (
        own &&
        (value === undefined || value !== this.statusLastWritten) &&
        puts === this.statusPuts && // no write of this agent began meanwhile (the read may predate it)
        !this.statusWriting &&
        !this.statusTimer &&
        !this.stopped &&
        session === this.session &&
        (value === undefined || [undefined, this.instance].includes(instanceOf(value)))
      ) {
        this.log(
          value === undefined
            ? `agent: host key ${key} is gone (its lease lost); writing it again`
            : `agent: host key ${key} does not hold this agent's last status (etcd restored from a snapshot?); writing it again`,
        );
        this.writeStatus();
      }
    } catch (e) {
      if (session === this.session) {
        const now = performance.now();
        this.checkFailingSince ??= now;
        const failing = now - this.checkFailingSince;
        // No answer: this timer's, or the call's own deadline (quorum lost: the read hangs until then).
        const unanswered = timedOut || /DEADLINE_EXCEEDED|deadline exceeded/i.test((e as Error).message);
        if (unanswered || failing >= this.o.checkTimeoutMs)
          this.sessionFailed?.(
            `linearizable read failed: ${(e as Error).message}${failing > 0 ? ` (failing for ${Math.round(failing)} ms)` : ''}`,
          );
      }
    } finally {
      clearTimeout(timer);
      this.checking = false;
    }
  }

  private parse(name: string, value: string, modRevision: number): Parsed {
    const cached = this.mirror.get(name);
    if (cached && cached.modRevision === modRevision) return cached;
    return parseStored(name, value);
  }

  /** Folds one watch response into the mirror and schedules a commit. */
  private fold(events: StoreEvent[], revision: number): void {
    const start = this.profilesPrefix;
    // Already in the listed set, or already seen: older than what the responses before this one
    // brought. (Not compared with a response's header revision: a watcher catching up sends older
    // events under a newer header. Nor with the events before it in this response: the events of
    // one transaction, `fleet apply --file` or `fleet delete a b`, share its revision.)
    const seen = this.eventRevision;
    for (const e of events) {
      if (e.modRevision <= seen) continue;
      if (e.modRevision > this.eventRevision) this.eventRevision = e.modRevision;
      this.listedEmpty = false; // a key appeared (or went): the store is no longer only an empty list
      this.saw({ key: e.key, revision: e.modRevision, ...(e.type === 'delete' ? { deleted: true } : {}) });
      const name = e.key.slice(start.length);
      if (e.type === 'delete') this.mirror.delete(name);
      else
        this.mirror.set(name, {
          ...parseStored(name, e.value ?? ''),
          modRevision: e.modRevision,
          ...(e.createRevision ? { createRevision: e.createRevision } : {}),
        });
    }
    // The mirror is complete up to the newest event; a response without events (a progress
    // notification) says it is complete up to its revision.
    const complete = events.length ? this.eventRevision : revision;
    if (complete > this.mirrorRevision) this.mirrorRevision = complete;
    if (events.length) this.schedule();
    else if (
      !this.committing &&
      !this.commitTimer &&
      !this.dirty &&
      !this.emptyHeld &&
      this.applyRevision < this.mirrorRevision
    ) {
      // A progress notification: nothing changed up to `revision`.
      this.applyRevision = this.mirrorRevision;
      this.applyKeys = this.mirror.size;
      this.writeStatus();
    }
  }

  /** Commits soon: at once when the last commit is at least minSyncMs old, else when it is. */
  private schedule(): void {
    this.dirty = true;
    if (this.committing || this.commitTimer) return;
    const wait = this.lastCommitAt + this.o.minSyncMs - performance.now();
    if (wait <= 0) void this.commitNow();
    else this.commitTimer = setTimeout(() => void this.commitNow(), wait);
  }

  /** Failed commits in a row (the retry's backoff grows with them), and the last one's message. */
  private commitFailures = 0;
  private commitFailure?: string;
  /** The core's log lines of a retried commit, held back until its outcome is known. */
  private coreLines?: string[];
  /** Where the core's lines go: held back while a failing commit is retried (see commitNow), else the log. */
  private coreLog(l: string): void {
    if (this.coreLines) this.coreLines.push(l);
    else this.log(l);
  }

  /** Commits the mirror's difference with what the agent owns, as one transaction. */
  private async commitNow(): Promise<void> {
    if (this.commitTimer) clearTimeout(this.commitTimer);
    this.commitTimer = undefined;
    if (this.committing) {
      this.dirty = true;
      await this.committing;
      if (this.dirty) return this.commitNow();
      return;
    }
    this.dirty = false;
    // What the commit holds: the mirror as it is when the change is decided (under the core's lock, maybe after
    // events folded meanwhile), at the revision it is complete up to then, with its number of keys.
    let revision = this.mirrorRevision;
    let keys = this.mirror.size;
    const t0 = performance.now();
    let refused: Refusal[] = [];
    const families = new Set<string>();
    if (this.commitFailure !== undefined) this.coreLines = [];
    const flush = (): void => {
      const held = this.coreLines ?? [];
      this.coreLines = undefined;
      for (const l of held) this.log(l);
    };
    this.committing = (async () => {
      try {
        const r = await this.core.transact(
          (owned) => {
            revision = this.mirrorRevision;
            keys = this.mirror.size;
            // A list with no key under profiles/ (a wrong --prefix, an empty or new etcd) would remove every
            // profile this agent owns, on every host at once: held back until a key appears (a watch event).
            if (this.listedEmpty && !this.allowEmptyStore && this.mirror.size === 0 && owned.size > 0)
              throw new EmptyStoreHeld(owned.size);
            const d = decide(this.mirror, owned);
            refused = d.refused;
            families.clear();
            for (const p of d.change.upsert) families.add(familyOfProfile(p));
            for (const n of d.change.remove) {
              const old = owned.get(n);
              if (old) families.add(familyOfProfile(old));
            }
            // A changed profile that moved family is removed from the other one too.
            for (const p of d.change.upsert) {
              const old = owned.get(p.name);
              if (old) families.add(familyOfProfile(old));
            }
            return d.change;
          },
          { run: true },
        );
        flush();
        if (this.emptyHeld) {
          this.emptyHeld = false;
          if (this.error?.startsWith(EMPTY_STORE_ERROR)) this.error = undefined;
          this.log(
            `agent: revision ${revision}: a key appeared under ${this.profilesPrefix}; the store is no longer held back as empty`,
          );
        }
        if (this.commitFailure !== undefined)
          this.log(`agent: revision ${revision} applied after ${this.commitFailures} failed attempt(s)`);
        this.commitFailures = 0;
        this.commitFailure = undefined;
        const owned = await this.core.readState();
        this.ownedCount = owned.size;
        this.applyRevision = revision;
        this.applyKeys = keys;
        // A progress notification that came while this commit was under way (fold does not apply one then): no
        // event since (an event makes the agent dirty), so the mirror this commit applied is complete up to it.
        if (!this.dirty && this.mirrorRevision > revision) this.applyRevision = this.mirrorRevision;
        this.logRefusals(this.refused, refused);
        this.refused = refused;
        if (this.error?.startsWith('kernel:')) this.error = undefined;
        const totalMs = performance.now() - t0;
        if (r.committed)
          this.log(
            `agent: revision ${revision}: ${r.applied.length} applied, ${r.deleted.length} removed as one change (${families.size > 1 ? `a kernel transaction per address family, ${[...families].sort().join(' and ')}` : `one kernel transaction, ${[...families][0] ?? 'ipv4'}`}; ${r.commitMs.toFixed(2)} ms kernel, ${totalMs.toFixed(1)} ms in all)`,
          );
        this.readyResolve();
        this.emitApart('applied', {
          revision,
          upserted: r.applied.length,
          removed: r.deleted.length,
          refused,
          commitMs: r.commitMs,
          totalMs,
        });
        try {
          this.attachments.onCommit?.(owned);
        } catch (e) {
          this.log(`agent: attachment: ${(e as Error).message}`);
        }
      } catch (e) {
        if (e instanceof EmptyStoreHeld) {
          // Nothing committed, the kernel and the state file as they were; nothing to retry: a watch event
          // (a key put, or deleted after a put) commits as usual.
          flush();
          this.commitFailures = 0;
          this.commitFailure = undefined;
          this.ownedCount = e.owned;
          const p = this.profilesPrefix;
          this.error = oneLine(
            `${EMPTY_STORE_ERROR} no key under ${p} at revision ${revision}; the ${e.owned} profile(s) this agent owns are kept (a wrong --prefix, or an empty or new etcd?); to remove them, write a profile and delete it through etcd while the agent runs, or restart it with --allow-empty-store`,
            MAX_ERROR_LENGTH,
          );
          if (!this.emptyHeld)
            this.log(
              `agent: NOT removing the ${e.owned} profile(s) this agent owns: the store listed no key under ${p} (revision ${revision}); this looks like a wrong --prefix, or an empty or new etcd cluster (a failover before the restore), not a deliberate removal. The kernel and the state file keep them and the agent goes on watching: a key put under ${p} is applied as usual. To remove them: write a profile and delete it through etcd while the agent runs (\`iptlb fleet apply\`, then \`iptlb fleet delete\`: watch events are applied as usual), or restart the agent with --allow-empty-store`,
            );
          this.emptyHeld = true;
          return;
        }
        // Nothing changed (the core's transaction is all or nothing): retry the whole difference later, with
        // a growing backoff. Said once per run of identical failures (again when it changes, or after a success).
        const msg = (e as Error).message;
        this.error = `kernel: ${oneLine(msg, MAX_ERROR_LENGTH)}`;
        this.commitFailures++;
        if (msg !== this.commitFailure) {
          flush();
          this.log(
            `agent: revision ${revision} not applied: ${msg}; ${this.applyRevision > 0 ? `the kernel keeps revision ${this.applyRevision}` : this.keeps()}; retrying with backoff (said again when the failure changes)`,
          );
        } else this.coreLines = undefined; // the same failure again: its lines are dropped
        this.commitFailure = msg;
        this.dirty = true;
      } finally {
        flush(); // (a failure above already dealt with the held lines)
        this.lastCommitAt = performance.now();
      }
    })();
    try {
      await this.committing;
    } finally {
      this.committing = undefined;
    }
    this.writeStatus();
    if (this.dirty && !this.stopped) {
      if (this.error?.startsWith('kernel:')) {
        // The store path's backoff: doubling from backoffMs up to backoffMaxMs, jittered.
        this.commitTimer = setTimeout(() => void this.commitNow(), this.backoff(this.commitFailures - 1));
      } else this.schedule();
    }
  }

  /**
   * Logs what changed in the refused set: profiles newly refused (or refused for another reason), at most
   * MAX_REFUSED_LOGGED lines, and those no longer refused in one line. Unchanged refusals are not logged again.
   */
  private logRefusals(before: Refusal[], after: Refusal[]): void {
    const was = new Map(before.map((x) => [x.name, `${x.code}:${x.message}`]));
    const now = new Set(after.map((x) => x.name));
    const changed = after.filter((x) => was.get(x.name) !== `${x.code}:${x.message}`);
    for (const x of changed.slice(0, MAX_REFUSED_LOGGED))
      this.log(`agent: refused profile ${JSON.stringify(x.name)} (${x.code}): ${x.message}`);
    if (changed.length > MAX_REFUSED_LOGGED)
      this.log(
        `agent: ... and ${changed.length - MAX_REFUSED_LOGGED} more newly refused profile(s) (${after.length} refused in all; \`iptlb fleet list\` shows each)`,
      );
    const gone = before.filter((x) => !now.has(x.name)).map((x) => JSON.stringify(x.name));
    if (gone.length)
      this.log(
        `agent: no longer refused: ${gone.slice(0, MAX_REFUSED_LOGGED).join(', ')}${gone.length > MAX_REFUSED_LOGGED ? ` and ${gone.length - MAX_REFUSED_LOGGED} more` : ''} (${after.length} refused now)`,
      );
  }

  /**
   * Drift (someone flushed the rules): the periodic check makes the kernel match the agent's state file, without
   * re-listing.
   */
  private repairing = false;
  /**
   * The last repair's failure (its drift lines and error), until a repair succeeds or finds nothing to
   * do: said once while it repeats (a rule of another tool in iptlb's nft base chain refuses every
   * repair), again when it changes.
   */
  private driftFailure: string | undefined;
  async repairDrift(report = false): Promise<boolean | undefined> {
    if (this.repairing || this.stopped) return report ? undefined : false;
    this.repairing = true;
    // What the sync finds out of step: logged as found, unless the last repair failed, when it is held
    // back with its outcome (see driftFailure).
    const drift: string[] = [];
    const held: string[] = [];
    const driftLog = (l: string): void => {
      drift.push(l);
      if (this.driftFailure === undefined) this.coreLog(l);
      else held.push(l);
    };
    try {
      const reports = await this.core.status();
      if (!reports.some((r) => r.status === 'missing' || r.status === 'modified')) {
        this.driftFailure = undefined;
        return false;
      }
      const r = await this.core.sync({ quietWhenInSync: true, driftLog });
      this.driftFailure = undefined;
      for (const l of held) this.coreLog(l);
      if (r.committed)
        this.log(
          `agent: drift repaired: ${r.before
            .filter((x) => x.status !== 'in-sync')
            .map((x) => `${x.name} ${x.status}`)
            .join(', ')} (${r.commitMs.toFixed(2)} ms)`,
        );
      return r.committed;
    } catch (e) {
      const failure = [...drift, (e as Error).message].join('\n');
      if (failure !== this.driftFailure) {
        for (const l of held) this.coreLog(l);
        this.log(`agent: drift check: ${(e as Error).message}`);
      }
      this.driftFailure = failure;
      return report ? undefined : false;
    } finally {
      this.repairing = false;
    }
  }

  private setWatch(w: HostStatus['watch']): void {
    if (this.watchState === w) return;
    this.watchState = w;
    this.writeStatus();
  }

  /** Writes the host key (coalesced; under the lease; a failure is retried with backoff). */
  private statusWriting = false;
  private statusAgain = false;
  /** Host key writes begun, and the value of the last one that succeeded. */
  private statusPuts = 0;
  private statusLastWritten?: string;
  /** A refusal of the host key write alone was said (see {@link writeStatus}). */
  private statusRefusalSaid = false;

  /**
   * Emits an event without letting a listener's throw change the agent's work: thrown again on its own, as an
   * uncaught exception (as the handle's listeners' are). An `applied` listener that threw was reported as the
   * revision not applied (retried with backoff, the host key saying a kernel error); a `status` one skipped the
   * host key's write, with an unhandled rejection.
   */
  private emitApart<K extends keyof AgentEvents>(event: K, ...args: AgentEvents[K]): void {
    callApart(() => (this.emit as (e: K, ...a: AgentEvents[K]) => boolean)(event, ...args));
  }

  private writeStatus(): void {
    const st = this.status();
    this.emitApart('status', st);
    if (!this.store || this.stopped) return;
    if (this.statusWriting) {
      this.statusAgain = true;
      return;
    }
    if (this.statusTimer) return;
    this.statusWriting = true;
    this.statusPuts++;
    const value = JSON.stringify(this.status());
    this.store
      .putLeased(hostKey(this.prefix, this.host), value, this.o.leaseTtlSec)
      .then(
        (revision) => {
          this.statusAttempt = 0;
          this.statusRefusalSaid = false;
          this.statusWritten = true;
          this.statusLastWritten = value;
          if (typeof revision === 'number' && revision > 0)
            this.saw({ key: hostKey(this.prefix, this.host), revision, value });
        },
        (e: Error) => {
          this.statusAgain = true;
          const delay = this.backoff(this.statusAttempt++);
          const msg = storeErrorMessage(e);
          // Refused credentials or a TLS failure are said by the session (once); the host key's own refusal (a
          // user that may read profiles/ but not write hosts/) is said once the session watches.
          const refused = CREDENTIALS_REFUSED.test(msg) || TLS_FAILURE.test(msg);
          if (refused ? this.watchState === 'watching' && !this.statusRefusalSaid : this.statusAttempt === 1) {
            if (refused) this.statusRefusalSaid = true;
            this.log(`agent: host status not written: ${oneLine(msg, MAX_ERROR_LENGTH)}; retrying with backoff`);
          }
          this.statusTimer = setTimeout(() => {
            this.statusTimer = undefined;
            if (this.statusAgain) this.writeStatus();
          }, delay);
        },
      )
      .finally(() => {
        this.statusWriting = false;
        if (this.statusAgain && !this.statusTimer && !this.stopped) {
          this.statusAgain = false;
          this.writeStatus();
        }
      });
  }

  /** Stops watching; the kernel keeps the rules and the state file stays. Revokes the host key's lease. */
  async stop(why?: string): Promise<void> {
    if (this.stopped) return;
    // A commit under way is finished first (all or nothing): what the kernel keeps is said once it is done.
    const inFlight = this.committing !== undefined;
    if (why)
      this.log(
        inFlight
          ? `agent: ${why}: stopping once the commit under way is done; the host key goes with its lease`
          : `agent: ${why}: stopping; ${this.keeps()}, the host key goes with its lease`,
      );
    this.stopped = true;
    this.requestStop();
    this.sleeper.wake?.();
    this.stopHook?.();
    for (const t of [this.commitTimer, this.statusTimer]) if (t) clearTimeout(t);
    for (const t of [this.checkTimer, this.syncTimer]) if (t) clearInterval(t);
    await this.loop?.catch(() => {});
    await this.committing?.catch(() => {});
    if (why && inFlight) this.log(`agent: ${why}: stopped after the commit under way; ${this.keeps()}`);
    this.watchState = 'stopped';
    await this.attachments.close?.().catch(() => {});
    await this.core.conntrackIdle();
    // The host key goes with its lease: a missing key means "unknown", not "no rules".
    if (this.opts.etcd !== this.store) await this.store?.close();
    this.agentLock?.release();
    this.agentLock = undefined;
  }
}

/** Starts an agent; resolves once it runs (its first listed set is committed when `agent.ready` resolves). */
export async function runAgent(opts: AgentOptions): Promise<Agent> {
  const a = new Agent(opts);
  await a.start();
  return a;
}
