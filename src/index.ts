/**
 * iptlb — Linux NAT load balancer for Node.js.
 *
 * ```ts
 * import { open } from 'iptlb';
 * const lb = await open({ stateFile: '/var/lib/iptlb/state.db' });
 * await lb.apply({ name: 'web', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] });
 * await lb.delete('web');
 * await lb.close();
 * ```
 */
import { EventEmitter } from 'node:events';
import { Core, DEFAULT_STATE_FOLD_MS, type OpenOptions, type TransactionResult } from './core/core.js';
import { CommitQueue, type CommitEvent } from './core/batch.js';
import { show, validateName, validateProfile } from './model/profile.js';
import { callApart, IptlbError } from './model/errors.js';
import { validateOpenOptions } from './core/options.js';
import type { EngineName, Family, KernelView, Profile, ProfileInput } from './model/types.js';
import type { Executor } from './engines/engine.js';
import type { NftView } from './engines/nft/ops.js';
import type { ProfileReport, StatusReport } from './model/report.js';
import { HealthChecker, type HealthCheckerOptions, type HealthEvent, type HealthHost } from './health/checker.js';
import { healthFileOf } from './health/effective.js';
export { HealthChecker } from './health/checker.js';
export type { HealthCheckerOptions, HealthEvent, DestinationHealthState } from './health/checker.js';
export type { HealthConfig, HealthInput } from './health/config.js';
export type { DestinationHealth } from './health/effective.js';
export { startMetricsServer, ProcessStats } from './metrics/server.js';
export type { MetricsServer, MetricsServerOptions } from './metrics/server.js';
export type {
  ProfileReport,
  ProfileStatus,
  DestinationCounters,
  StatusReport,
  OtherStateFile,
  ForeignObjects,
  HealthFileStatus,
} from './model/report.js';

export { IptlbError } from './model/errors.js';
export type { ErrorCode } from './model/errors.js';
export type { OpenOptions, TransactionResult } from './core/core.js';
export type { CommitEvent } from './core/batch.js';

/** Options of {@link open}: those of the core plus group commit. */
export interface IptlbOptions extends OpenOptions {
  /**
   * Group commit: calls made while a commit is in flight are carried together by the next one.
   * Default `true`. With `false`, every call is its own kernel transaction.
   */
  coalesce?: boolean;
  /**
   * Compare the kernel with the profiles every this many ms (10 to 86400000) and emit `drift` when they differ (for
   * example after someone flushed the rules). Default: off. The timer does not keep the process alive.
   */
  driftCheckMs?: number;
  /**
   * Run the health checks of the profiles that have one (see docs/health.md) in this process, with a
   * {@link HealthChecker} attached to the handle (`iptlb.healthChecker`). Unlike the drift check, its
   * timers keep the process alive until {@link Iptlb.close}. Default `false`.
   */
  health?: boolean | HealthCheckerOptions;
}

/** Events of an {@link Iptlb} handle. */
export interface IptlbEvents {
  /** After every kernel transaction. */
  commit: [CommitEvent];
  /** A call failed (also delivered through that call's promise). Emitted only when listened to. */
  error: [Error];
  /**
   * The kernel does not hold what the profiles say: the reports that are not `in-sync`. Emitted by
   * {@link Iptlb.status} and {@link Iptlb.sync} when they find drift, and by the periodic check of
   * {@link IptlbOptions.driftCheckMs}. `sync()` repairs it.
   */
  drift: [ProfileReport[]];
  /** A destination changed health (`up`, `down`) as decided by an attached {@link HealthChecker}. */
  health: [HealthEvent];
}
export type {
  Family,
  Profile,
  ProfileInput,
  Protocol,
  RulesBackend,
  KernelView,
  Rule,
  Match,
  Target,
  Transaction,
  ExecutorChoice,
  CommitResult,
  EngineName,
  EngineChoice,
} from './model/types.js';
export type { Executor } from './engines/engine.js';
export type { LegacyExecutor } from './engines/legacy/executor.js';
export type { NftExecutor } from './engines/nft/executor.js';
export type { NftFamily, NftOp, NftRule, NftTransaction, NftView } from './engines/nft/ops.js';
export { planNftChange, planNftRebuild } from './engines/nft/plan.js';
export { renderNft } from './engines/nft/render.js';
export { validateProfile, chainName } from './model/profile.js';
export { planTransaction, planProfile } from './engines/legacy/plan.js';
export { renderRestore, renderRule } from './engines/legacy/restore.js';
export { serializeState, parseState } from './core/state.js';
export { runAgent, Agent, type AgentOptions, type HostStatus } from './fleet/agent.js';
export {
  EtcdStore,
  type FleetStore,
  type EtcdOptions,
  type StoreKV,
  type StoreEvent,
  type StoreOp,
  type WatchHandle,
  type WatchHandlers,
} from './fleet/store.js';
export { fleetApply, fleetDelete, fleetList, fleetStatus } from './fleet/fleet.js';

/**
 * A profile's validation error as one of a list of several: the same code and field, the message ending with the
 * item's index and its name when the item has a plain string `name` (read without calling a getter).
 */
function inListItem(e: unknown, i: number, p: unknown): unknown {
  if (!(e instanceof IptlbError)) return e;
  const name = typeof p === 'object' && p !== null ? Object.getOwnPropertyDescriptor(p, 'name')?.value : undefined;
  const which = `profile [${i}] of the list${typeof name === 'string' ? `, ${show(name)}` : ''}`;
  return new IptlbError(e.code, `${e.message} (${which})`, {
    ...(e.field !== undefined ? { field: e.field } : {}),
    ...(e.errno !== undefined ? { errno: e.errno } : {}),
    cause: e,
  });
}

/**
 * A handle on one state file and one executor. Calls made while a commit is in flight are coalesced
 * into the next commit (see {@link IptlbOptions.coalesce}); each call's promise settles on its own.
 */
export class Iptlb extends EventEmitter<IptlbEvents> {
  private readonly core: Core;
  private readonly queue: CommitQueue;
  private closed = false;
  /** Set by close() once the attached checker stopped: no checker commits through this handle after. */
  private healthEnded = false;
  /** The first `close()`'s promise: a later (or concurrent) `close()` settles with it. */
  private closing?: Promise<void>;
  /** Calls (and the periodic drift check) in flight, and who waits for none to be: `close()`. */
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];

  private driftTimer?: NodeJS.Timeout;
  /** The checker started by `open({ health })`, if any. */
  healthChecker?: HealthChecker;

  /**
   * @internal What a {@link HealthChecker} attached to this handle uses: the core, a commit that goes
   * through the group commit (an empty call: the health changes ride along), and the `health` event.
   */
  healthHost(): HealthHost {
    // A checker (or a metrics server) of a closed handle is refused, as any call on it; one made before and not
    // stopped has its commits refused once close() has stopped the attached checker (the handle's last commit).
    this.check();
    return {
      core: this.core,
      commit: () =>
        this.healthEnded ? Promise.reject(this.closedError()) : this.queue.submit({ kind: 'apply', profiles: [] }),
      emit: (e) => this.emitApart('health', e),
      closed: () => this.closed,
      resync: () => (this.closed || this.healthEnded ? Promise.resolve() : this.sync()),
    };
  }

  /** @internal use {@link open} */
  constructor(core: Core, coalesce = true, driftCheckMs?: number) {
    super();
    this.core = core;
    this.queue = new CommitQueue(core, { coalesce, onCommit: (e) => this.emit('commit', e) });
    // (driftCheckMs was checked by open(): a whole number of ms from 10 to one day.)
    if (driftCheckMs !== undefined) {
      let running = false;
      this.driftTimer = setInterval(() => {
        if (running || this.closed) return;
        running = true;
        this.track(this.core.driftCheck())
          .then((reports) => {
            if (reports && !this.closed) this.reportDrift(reports);
          })
          .catch((e: Error) => {
            if (this.listenerCount('error') > 0) this.emitApart('error', e);
          })
          .finally(() => (running = false));
      }, driftCheckMs);
      this.driftTimer.unref();
    }
  }

  private reportDrift(reports: ProfileReport[]): void {
    // What sync() repairs: an in-memory handle leaves what it was not given alone, orphans included.
    const memory = this.core.statePath === null;
    const drifted = reports.filter((r) => r.status !== 'in-sync' && !(memory && r.status === 'orphaned'));
    if (drifted.length) this.emitApart('drift', drifted);
  }

  /**
   * Emits an event about a call (or a checker's `health`) without letting a listener's throw become the
   * call's outcome or stop the checker: the throw is thrown again on its own, as an uncaught exception
   * (as the queue does for `commit`).
   */
  private emitApart<K extends 'drift' | 'error' | 'health'>(event: K, ...args: IptlbEvents[K]): void {
    callApart(() => (this.emit as (e: K, ...a: IptlbEvents[K]) => boolean)(event, ...args));
  }

  /**
   * `p` as a promise to hand out, counted in {@link inFlight} until it settles (a counter, not a set of
   * promises: one `finally` per call on the churn path). The promise handed out stays unhandled until
   * its caller handles it: a call nobody awaits still ends as an unhandled rejection.
   */
  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight++;
    return p.finally(() => {
      if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  /** A call: refused on a closed handle; its failure also emitted as `error` (when listened to). */
  private call<T>(body: () => Promise<T> | T): Promise<T> {
    return this.track(
      (async () => {
        this.check();
        return body();
      })().catch((e: Error) => {
        if (this.listenerCount('error') > 0) this.emitApart('error', e);
        throw e;
      }),
    );
  }

  /** Absolute path of the state file this handle uses; `null` when profiles are kept in memory. */
  get stateFile(): string | null {
    return this.core.statePath;
  }

  /** Which executor commits (`native` or `spawn`) and why it was chosen. */
  get executor(): { kind: 'native' | 'spawn'; engine: EngineName; reason: string; engineReason: string } {
    const s = this.core.selection;
    return { kind: s.executor.kind, engine: s.engine, reason: s.reason, engineReason: s.engineReason };
  }

  private check(): void {
    if (this.closed) throw this.closedError();
  }

  private closedError(): IptlbError {
    return new IptlbError('EUSAGE', 'handle: this iptlb handle is closed', { field: 'handle' });
  }

  /**
   * Creates or replaces profiles, all in one kernel transaction per address family (IPv4 first, undone when the
   * IPv6 one fails), then records them in the state file. Rejects with EINVAL_PROFILE / ECONFLICT (nothing
   * changed) or EKERNEL (nothing changed).
   */
  apply(profiles: ProfileInput | readonly ProfileInput[]): Promise<TransactionResult> {
    return this.call(() => {
      // (Array.isArray does not narrow a readonly array type: the cast says what it tells.)
      const list: readonly ProfileInput[] = Array.isArray(profiles) ? profiles : [profiles as ProfileInput];
      // Array.from, not map: a hole of a sparse array is a profile that is not an object, not skipped.
      // In a list of several, the error says which item it is about (`protocol: …` alone left an agent
      // applying fifty profiles to guess which one).
      const valid = Array.from(list, (p, i) => {
        try {
          return validateProfile(p);
        } catch (e) {
          throw list.length > 1 ? inListItem(e, i, p) : e;
        }
      });
      const names = new Set<string>();
      for (const p of valid) {
        if (names.has(p.name))
          throw new IptlbError('EUSAGE', `name: ${JSON.stringify(p.name)} is given twice in one call`, {
            field: 'name',
          });
        names.add(p.name);
      }
      return this.queue.submit({ kind: 'apply', profiles: valid });
    });
  }

  /** Deletes profiles by name in one kernel transaction (per address family). Unknown names reject with ENOTFOUND. */
  delete(names: string | readonly string[]): Promise<TransactionResult> {
    return this.call(() => {
      const list: readonly string[] = Array.isArray(names) ? names : [names as string];
      for (let i = 0; i < list.length; i++) validateName(list[i], 'name', { existing: true }); // holes too
      return this.queue.submit({ kind: 'delete', names: [...new Set(list)] });
    });
  }

  /** The profiles recorded in the state file, sorted by name (frozen: see {@link Profile}). */
  list(): Promise<Profile[]> {
    return this.call(async () => {
      const state = await this.core.readState();
      return [...state.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
    });
  }

  /**
   * Each profile of the state file compared with the kernel (`in-sync`, `missing`, `modified`, or
   * `orphaned` for kernel rules no profile owns), with per-destination packet and byte counters.
   */
  status(): Promise<ProfileReport[]> {
    return this.call(async () => {
      const reports = await this.core.status();
      this.reportDrift(reports);
      return reports;
    });
  }

  /**
   * {@link status} whole, as `iptlb status --json` prints it: `inSync`; `split` when iptlb's rules
   * are in both engines (what to run about it); `profiles`, the reports; `otherStateFiles` when the
   * kernel holds profiles of other state files (their paths and profile names), which the reports
   * neither list nor call orphaned; `foreignObjects` when iptlb's nft tables hold another tool's chains,
   * sets or maps, which iptlb keeps (neither drift nor orphans, never a `drift` event); `originalRules`
   * when iptables-nft's nat tables hold the original iptlb's chains, which still balance their addresses.
   */
  statusReport(): Promise<StatusReport> {
    return this.call(async () => {
      const report = await this.core.statusReport();
      this.reportDrift(report.profiles);
      return report;
    });
  }

  /** Makes the kernel match the state file in one transaction. */
  sync(): Promise<{ before: ProfileReport[]; committed: boolean; commitMs: number }> {
    return this.call(async () => {
      const { before, committed, commitMs } = await this.core.sync();
      this.reportDrift(before);
      return { before, committed, commitMs }; // what it declares: not the core's map of the profiles it read
    });
  }

  /**
   * iptlb's rules as they are in the kernel, with counters, for the profiles of one address family
   * (default `ipv4`; `ipv6`: the ip6tables nat table, or table ip6 iptlb).
   */
  kernel(family: Family = 'ipv4'): Promise<KernelView | NftView> {
    return this.call(() => {
      if (family !== 'ipv4' && family !== 'ipv6')
        throw new IptlbError('EUSAGE', `family: ${JSON.stringify(family) ?? String(family)} is not one of ipv4, ipv6`, {
          field: 'family',
        });
      return this.core.readKernel(family);
    });
  }

  /**
   * Refuses new calls at once, waits for the calls made before (apply, delete, status, sync…: once it
   * resolves the handle reaches the kernel no more) and their conntrack cleanup, folds the state
   * journal into the state file (see `stateFoldMs`; a failure is logged, the journal stays valid),
   * then ends the handle. Rules stay in the kernel. Called again, it settles with the first call. When the
   * health checker's `stop()` fails, the rest is done all the same and close() then rejects with that error.
   */
  close(): Promise<void> {
    return (this.closing ??= this.closeOnce());
  }

  private async closeOnce(): Promise<void> {
    this.closed = true;
    if (this.driftTimer) clearInterval(this.driftTimer);
    // The checker commits through the queue, not through call(): it can still give weights back. Its
    // failure does not skip the rest (the calls' end, the fold): it is thrown once they are done.
    let stopFailed: { error: unknown } | undefined;
    if (this.healthChecker)
      try {
        await this.healthChecker.stop();
      } catch (e) {
        stopFailed = { error: e };
      }
    this.healthEnded = true;
    while (this.inFlight > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
    await this.queue.idle();
    // The journal is durable already: a fold that fails (lock held too long, disk full) is logged, not thrown.
    await this.core.foldState().catch((e: Error) => this.core.foldFailed(e, false));
    await this.core.conntrackIdle();
    if (stopFailed) throw stopFailed.error;
  }
}

/**
 * Opens a handle. The executor is chosen now (`auto`: native addon when it loads, else spawn), unless
 * an {@link Executor} is supplied.
 */
export async function open(options: IptlbOptions = {}, executor?: Executor): Promise<Iptlb> {
  validateOpenOptions(options, true);
  options ??= {};
  const core = new Core({ ...options, stateFoldMs: options.stateFoldMs ?? DEFAULT_STATE_FOLD_MS }, executor);
  await core.select(); // choose (and validate) the engine and executor now, so a forced `native` fails here
  // Another process may check this state file's destinations (watch, agent, a handle opened with
  // `health`): follow what it publishes, as the CLI does, so that this handle's apply, sync and status
  // keep its drains (an apply put a drained destination back in the kernel). A checker started on this
  // handle stops following: it decides the health itself.
  if (core.statePath !== null) core.health.follow(healthFileOf(core.statePath));
  const lb = new Iptlb(core, options.coalesce ?? true, options.driftCheckMs);
  if (options.health) {
    lb.healthChecker = new HealthChecker(lb, {
      ...(options.log ? { log: options.log } : {}),
      ...(typeof options.health === 'object' ? options.health : {}),
    });
    try {
      await lb.healthChecker.start();
    } catch (e) {
      // Refused (another process checks this state file: ELOCK) or failed: the handle is not
      // returned, so nothing of it is left running.
      await lb.close().catch(() => {});
      throw e;
    }
  }
  return lb;
}
