/**
 * The transaction core shared by the library API and the CLI: under the state-file lock, read the
 * state, decide the change, commit it to the kernel in one transaction, and only then write the state.
 */
import { IptlbError } from './errors.js';
import { validateOpenOptions } from './options.js';
import { fsFailure } from './fsafety.js';
import { selectExecutor, parseExecutorChoice } from './executors/index.js';
import { ip6tablesTables, nftTableExistsViaCli, parseEngineChoice, selectEngine, xtablesTables } from './engine.js';
import { loadAddon } from './native/addon.js';
import { findBinary } from './executors/spawn.js';
import { baseUnchanged, countUsage, dispatchSetUsage, foreignObjects, keepsAnything, planNftMergedRebuild, unknownObjects, planNftClear, planNftChange, planNftRebuild, planNftRemoveAll, nftHookOf, planNftProfile } from './nft/plan.js';
import { dispatchSetName, nftTableFamily } from './nft/ops.js';
import { compareNft, strayRoundRobin } from './nft/view.js';
import { DEFAULT_LOCK_WAIT_MS, lockStateFile } from './lock.js';
import { chainName, checkConflicts, familyOfProfile, profilesOf, sameProfile, show, slotCount, validateName, validateProfile, weightOf } from './profile.js';
import { hookChainOf, isEmptyTransaction, planProfile, planTransaction } from './plan.js';
import { readState, resolveStatePath, stateVersion, writeState } from './state.js';
import { hasNetAdmin } from './caps.js';
import { ConntrackJanitor, staleFlows } from './conntrack.js';
import { compare, syncTransaction, type ProfileReport } from './drift.js';
import type { EngineChoice, EngineName, Executor, ExecutorChoice, Family, KernelView, LegacyExecutor, NftExecutor, Profile, ProfileInput, Transaction } from './types.js';
import type { NftFamily, NftTransaction, NftView } from './nft/ops.js';

/** The address families, in the order a change commits them. */
export const FAMILIES: readonly Family[] = ['ipv4', 'ipv6'];

/** Where an engine keeps profiles of family `f`, as log lines and messages name it. */
export function tableOf(engine: EngineName, f: Family): string {
  return engine === 'nft' ? `table ${nftTableFamily(f)} iptlb` : f === 'ipv6' ? 'ip6tables nat table' : 'nat table';
}

function countV6(state: ReadonlyMap<string, Profile>): number {
  let n = 0;
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

/** Options of {@link open}. */
export interface OpenOptions {
  /**
   * State file path. Default: env `IPTLB_STATE_FILE`, else `local/state.db` relative to the working
   * directory. `false`: no file at all; profiles are kept in memory by this handle (for agents whose
   * source of truth is elsewhere: no fsync and no file lock per change).
   */
  stateFile?: string | false;
  /** Executor: `native` (the addon), `spawn` (iptables-legacy-restore / nft -f) or `auto`. Default: env `IPTLB_EXECUTOR`, else `auto`. */
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
}

/** The engine and executor in use, and why. */
export interface Selection {
  executor: Executor;
  reason: string;
  engine: EngineName;
  engineReason: string;
  /** Set when both engines hold iptlb objects. */
  engineWarning?: string;
}

/** True when a commit failed because the kernel does not hold what the plan assumed (nft: element or set missing or different). */
function outOfStep(e: unknown): boolean {
  const err = e as IptlbError;
  return err instanceof IptlbError && err.code === 'EKERNEL' && (err.errno === 2 || err.errno === 17 || err.errno === 16);
}

/** A change decided against the current state. */
export interface Change {
  upsert: Profile[];
  remove: string[];
}

export class Core {
  /** Absolute path of the state file, or `null` when profiles are kept in memory. */
  readonly statePath: string | null;
  private memory = new Map<string, Profile>();
  /** Counts changes of the in-memory profiles (memory mode), so callers can cache what they derive from them. */
  memoryGeneration = 0;
  /** Memory mode: how many profiles use each nft dispatch set, kept up to date change by change. */
  private usage?: { generation: number; counts: Map<string, number> };

  /** Profiles per nft dispatch set of `state`: O(1) for the in-memory profiles once counted, else a scan. */
  private setUsage(state: ReadonlyMap<string, Profile>): Map<string, number> {
    if (state !== this.memory) return dispatchSetUsage(state.values());
    if (this.usage?.generation !== this.memoryGeneration) this.usage = { generation: this.memoryGeneration, counts: dispatchSetUsage(state.values()) };
    return this.usage.counts;
  }
  readonly executorChoice: ExecutorChoice;
  readonly engineChoice: EngineChoice;
  readonly lockWaitMs: number;
  private readonly keepConntrack: boolean;
  private selected?: Selection;
  private selecting?: Promise<Selection>;
  private readonly injected: boolean;
  private readonly log: (line: string) => void;
  private readonly logging: boolean;
  private queue: Promise<unknown> = Promise.resolve();
  /** Deletes the conntrack entries of removed destinations after the changes, off the commit path. */
  readonly conntrack: ConntrackJanitor;
  /** The last transaction committed by this instance (for `--verbose`). */
  lastTransaction?: Transaction | NftTransaction;

  /** @param injected an executor to use instead of choosing one (tests, embedders with their own). */
  constructor(opts: OpenOptions = {}, injected?: Executor) {
    validateOpenOptions(opts, true);
    if (injected) {
      this.selected = { executor: injected, reason: 'executor supplied by the caller', engine: injected.engine, engineReason: 'executor supplied by the caller' };
    }
    this.injected = !!injected;
    this.statePath = opts.stateFile === false ? null : resolveStatePath(opts.stateFile);
    this.executorChoice = opts.executor ?? parseExecutorChoice(process.env.IPTLB_EXECUTOR);
    this.engineChoice = opts.engine ?? parseEngineChoice(process.env.IPTLB_ENGINE);
    this.lockWaitMs = opts.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS;
    this.keepConntrack = opts.keepConntrack ?? false;
    this.log = opts.log ?? (() => {});
    this.logging = opts.log !== undefined;
    this.conntrack = new ConntrackJanitor({ log: (line) => this.log(line), current: () => (this.statePath === null ? this.memory : this.readState()) });
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
   * A legacy commit is about to follow (the batch queue has more calls coming): let the native
   * executor take the xtables lock and copy the table out meanwhile. See prefetch.h in the addon.
   */
  prefetchCommit(): boolean {
    // Only without a state file: the prepared commit holds the xtables lock until the next batch,
    // and with a state file the next batch first takes the state-file lock. A CLI holding that
    // lock while it waits for the xtables lock would wait for us while we wait for it (a lock-order
    // inversion that only the timeouts ended: issue 13, lock starvation).
    if (this.statePath !== null) return false;
    const ex = this.selected?.executor;
    if (!ex || ex.engine !== 'legacy' || !ex.prefetch) return false;
    ex.prefetch();
    return true;
  }

  /** Gives back what {@link prefetchCommit} prepared when no commit used it. */
  releasePrefetch(): void {
    const ex = this.selected?.executor;
    if (ex && ex.engine === 'legacy') ex.releasePrefetch?.();
  }

  /** The engine and executor, chosen on first use (see {@link selectEngine}). */
  select(): Promise<Selection> {
    if (this.selected) return Promise.resolve(this.selected);
    this.selecting ??= (async () => {
      const opts = { lockWaitMs: this.lockWaitMs };
      const e = await selectEngine(this.engineChoice, {
        legacyHasRules: async () => {
          try {
            const legacy = selectExecutor(this.executorChoice, opts, 'legacy').executor as LegacyExecutor;
            for (const f of FAMILIES) {
              if (!(f === 'ipv4' ? xtablesTables() : ip6tablesTables())?.includes('nat')) continue;
              const view = await legacy.read(f);
              if (view.hookRules.length > 0 || view.chains.length > 0) return true;
            }
            return false;
          } catch {
            return false;
          }
        },
        nftHasTable: async () => {
          if (findBinary('nft')) return nftTableExistsViaCli();
          const addon = loadAddon();
          return addon.ok ? (await addon.addon.nftRead('ip')).exists || (await addon.addon.nftRead('ip6')).exists : false;
        },
      });
      const sel = selectExecutor(this.executorChoice, opts, e.engine);
      this.selected = { ...sel, engine: e.engine, engineReason: e.reason, ...(e.warning ? { engineWarning: e.warning } : {}) };
      return this.selected;
    })();
    this.selecting.catch(() => (this.selecting = undefined));
    return this.selecting;
  }
  /** The selection made by {@link select}; throws when it has not run yet. */
  get selection(): Selection {
    if (!this.selected) throw new Error('Core.selection read before select()');
    return this.selected;
  }

  /** Runs `fn` after every earlier call on this instance has finished. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => {});
    return p;
  }

  private cached?: { version: string | null; state: Map<string, Profile> };

  /**
   * The state file's profiles. Parsed once and cached by the file's identity (device, inode, size,
   * times): it is read again only when another process has replaced or edited it.
   */
  async readState(): Promise<Map<string, Profile>> {
    if (this.statePath === null) return new Map(this.memory);
    const version = await stateVersion(this.statePath).catch(() => undefined);
    if (version !== undefined && this.cached && this.cached.version === version) return new Map(this.cached.state);
    const state = await readState(this.statePath);
    if (version !== undefined) this.cached = { version, state };
    return new Map(state);
  }

  /**
   * The transaction: lock → read state → decide → (kernel commit when `run`) → write state → unlock.
   * Nothing changes anywhere when `decide` throws or the kernel refuses.
   */
  transact(decide: (state: Map<string, Profile>) => Change, opts: { run: boolean }): Promise<TransactionResult> {
    return this.serial(async () => {
      const executor = opts.run ? (await this.select()).executor : undefined;
      if (executor) this.checkPrivileges();
      const lock = await this.lock();
      try {
        // In memory mode the map itself (decide never changes it; `next` is a copy): no copy per batch.
        const state = this.statePath === null ? this.memory : await this.readState();
        const change = decide(state);
        // What the profiles will be: a view over `state` and the change (O(change), not O(profiles)).
        const next = new ChangedProfiles(state, change);
        let committed = false;
        let commitMs = 0;
        // The families committed so far: undone if anything fails before the state file records them.
        const done: { family: Family; state: ReadonlyMap<string, Profile>; change: Change }[] = [];
        if (executor) {
          // One kernel transaction per address family the change touches (a profile is of one family;
          // the iptables and ip6tables nat tables, or tables ip and ip6 iptlb, are separate objects).
          // If a later family's commit fails, the earlier ones are undone, so the call changes nothing.
          this.lastFamilies = [];
          for (const f of FAMILIES) {
            const changeF = changeOfFamily(change, state, f);
            if (changeF.upsert.length === 0 && changeF.remove.length === 0) continue;
            const stateF = this.ofFamily(state, f);
            let ms: number | undefined;
            try {
              ms = await this.commitFamily(executor, f, stateF, changeF);
            } catch (e) {
              for (const d of done.reverse()) await this.undoFamily(executor, d.family, d.state, d.change, 'the next part failed');
              throw e;
            }
            if (ms === undefined) continue;
            done.push({ family: f, state: stateF, change: changeF });
            commitMs += ms;
            committed = true;
          }
        }
        if (committed && executor) {
          this.describe(change, executor.engine, state);
          this.log(
            `committed ${change.upsert.length + change.remove.length} profile change(s) in ${this.lastFamilies.length === 1 ? 'one transaction' : `${this.lastFamilies.length} transactions`} ` +
              `(${this.lastFamilies.map((f) => tableOf(executor.engine, f)).join(' and ')}, ${executor.engine}/${executor.kind}, ${commitMs.toFixed(2)} ms)`,
          );
        }
        const changed =
          change.remove.some((n) => state.has(n)) || change.upsert.some((p) => !state.has(p.name) || !sameProfile(state.get(p.name)!, p));
        // Flows to destinations this change removes (decided now: in memory mode `state` changes below).
        const native = executor?.kind === 'native';
        const stale =
          committed && !this.keepConntrack && !this.injected && this.conntrack.needed()
            ? [
                ...change.upsert.flatMap((p) => (state.has(p.name) ? staleFlows(state.get(p.name)!, p).map((f) => ({ ...f, profile: p.name, native })) : [])),
                ...change.remove.flatMap((n) => (state.has(n) ? staleFlows(state.get(n)!, next.get(n)).map((f) => ({ ...f, profile: n, native })) : [])),
              ]
            : [];
        let stateWritten = false;
        if (changed && this.statePath === null) {
          // In place, O(change): `state` is this.memory, and `next` only a view over it.
          const usage = this.setUsage(state);
          for (const n of change.remove) {
            const old = this.memory.get(n);
            if (old) countUsage(usage, old, -1);
            this.memory.delete(n);
          }
          for (const p of change.upsert) {
            const old = this.memory.get(p.name);
            if (old) countUsage(usage, old, -1);
            countUsage(usage, p, +1);
            this.memory.set(p.name, p);
          }
          this.memoryGeneration++;
          this.usage = { generation: this.memoryGeneration, counts: usage };
        } else if (changed && this.statePath !== null) {
          this.cached = undefined;
          const written = new Map(next);
          try {
            await writeState(this.statePath, written.values());
          } catch (e) {
            // The kernel holds the change but the state file cannot record it (a full disk, a
            // read-only remount, quota): left so, the profile would be an orphan that the next
            // `sync` deletes. Undo the kernel change, so the call changes nothing, and say so.
            const why = e instanceof IptlbError ? e.message : fsFailure(e, 'write the state file', this.statePath).message;
            let undone = true;
            if (executor) for (const d of done.reverse()) undone = (await this.undoFamily(executor, d.family, d.state, d.change, 'the state file could not be written')) && undone;
            if (!committed) throw new IptlbError('ESTATE', `${why}; nothing was changed`, { cause: e });
            throw new IptlbError(
              'ESTATE',
              undone
                ? `${why}; the kernel change was undone, nothing was changed`
                : `${why}; undoing the kernel change failed too, so the kernel holds a change the state file does not: run \`iptlb sync\` to repair`,
              { cause: e },
            );
          }
          this.cached = { version: await stateVersion(this.statePath), state: written };
          stateWritten = true;
          this.log(`state written to ${this.statePath} (${next.size} profile(s))`);
        }
        // Handed to the janitor, not awaited: the next change need not wait for the cleanup of this
        // one (over netlink when it went through the native executor, else `conntrack -D`).
        if (stale.length) this.conntrack.add(stale);
        return {
          applied: change.upsert,
          deleted: change.remove,
          committed,
          stateWritten,
          commitMs,
          executor: committed ? executor!.kind : null,
          engine: committed ? executor!.engine : null,
        };
      } finally {
        lock.release();
      }
    });
  }

  /** Families committed by the last change (for its log line). */
  private lastFamilies: Family[] = [];

  /**
   * The profiles of `state` of family `f`: `state` itself when it holds no profile of the other
   * family (the common case costs nothing once counted; the in-memory count is kept per change).
   */
  private ofFamily(state: ReadonlyMap<string, Profile>, f: Family): ReadonlyMap<string, Profile> {
    let v6: number;
    if (state === this.memory) {
      if (this.v6Count?.generation !== this.memoryGeneration) this.v6Count = { generation: this.memoryGeneration, n: countV6(state) };
      v6 = this.v6Count.n;
    } else {
      v6 = countV6(state);
    }
    const mine = f === 'ipv4' ? state.size - v6 : v6;
    if (mine === state.size) return state;
    return mine === 0 ? new Map() : profilesOf(state, f);
  }
  private v6Count?: { generation: number; n: number };

  /**
   * Commits the part of a change of one family (its profiles only, against that family's profiles
   * `state`). Returns the commit time, or undefined when the kernel had nothing to do.
   */
  private async commitFamily(executor: Executor, f: Family, state: ReadonlyMap<string, Profile>, change: Change): Promise<number | undefined> {
    const next = new ChangedProfiles(state, change);
    if (executor.engine === 'legacy') {
      const tx = planTransaction(change.upsert, change.remove, f);
      if (isEmptyTransaction(tx)) return undefined;
      const ms = (await executor.commit(tx)).durationMs;
      this.lastTransaction = tx;
      this.lastFamilies.push(f);
      return ms;
    }
    const nf = nftTableFamily(f);
    const touched = [...change.upsert.map((p) => p.name), ...change.remove];
    // A bulk change of every profile (`-use-state -run` at boot): if the table is not there at
    // all, plan from nothing rather than send a large batch that fails on its first missing
    // element. (A small change just fails fast and falls back to the rebuild below.)
    const touchedSet = new Set(touched);
    let all = state.size >= 256 && touchedSet.size >= state.size;
    if (all) for (const n of state.keys()) if (!touchedSet.has(n)) all = false;
    const usage = this.setUsage(state);
    // The base chains change (a destination count, logging or masquerade starts or stops): read
    // which dispatch sets the kernel really fills first, so no rule another process left in
    // use is dropped. Element-only changes, the common case, read nothing. One read serves both.
    const baseChanges = state.size === 0 || !baseUnchanged(state, next, touchedSet, usage);
    const view = all || baseChanges || next.size === 0 ? await executor.read(nf) : undefined;
    if (next.size === 0 && view?.exists) {
      // The last profile of the table goes. If someone else keeps objects in it, the table stays:
      // only iptlb's content goes, and never a chain, set, map or rule iptlb did not make.
      const { foreign, foreignRules } = foreignObjects(view);
      if (foreignRules.length) {
        throw new IptlbError(
          'ECONFLICT',
          `${tableOf('nft', f)} holds rules iptlb did not write in its base chain${foreignRules.length > 1 ? 's' : ''} ${foreignRules.join(', ')}; removing its last profile would remove them: delete those rules first`,
        );
      }
      if (foreign.length) {
        this.log(`${tableOf('nft', f)} also holds objects iptlb did not make (${foreign.slice(0, 5).join(', ')}${foreign.length > 5 ? ', …' : ''}): removing only iptlb's rules, sets and elements, and keeping the table`);
        const clear = planNftClear(view, nf);
        const ms = (await executor.commit(clear)).durationMs;
        this.lastTransaction = clear;
        this.lastFamilies.push(f);
        return ms;
      }
    }
    const fresh = view !== undefined && !view.exists;
    const kernelSets = view?.exists && baseChanges ? new Map(view.dispatchSets.map((d) => [d.name, d.elements.length])) : undefined;
    // A round-robin rule the state does not explain (a process killed between its commit and its
    // state write, or between the two steps of a move) would be dropped by the rewrite and leave
    // its backends behind; a dispatch element of a round-robin profile's address would shadow its
    // rule. Either way the incremental plan is wrong: replace the table instead.
    const stray = view?.exists && baseChanges && !fresh ? strayRoundRobin(state, view) : [];
    if (stray.length) this.log(`${tableOf('nft', f)} holds objects of round-robin profiles the state does not explain (${stray.slice(0, 3).join(', ')}); replacing it with all ${next.size} profile(s) in one transaction`);
    // An in-memory instance (stateFile: false) knows only the profiles it was told about: the table
    // may hold others (its own before a restart, another agent's). Any plan that rewrites the base
    // chains or the table carries them over untouched (issue 13: a restarted agent dropped them).
    const kept = this.statePath === null && view?.exists && baseChanges ? unknownObjects(view, [...next.values(), ...touched.flatMap((n) => (state.get(n) ? [state.get(n)!] : []))], touchedSet) : undefined;
    if (kept && keepsAnything(kept)) {
      this.log(`${tableOf('nft', f)} holds ${kept.vips.size} virtual address(es) this in-memory instance was not told about: kept as they are`);
      const merged = planNftMergedRebuild(next.values(), kept, nf);
      const ms = await this.commitNft(executor, [merged], next, nf);
      this.lastFamilies.push(f);
      return ms;
    }
    const steps = stray.length
      ? [planNftRebuild(next.values(), undefined, nf)]
      : fresh
        ? planNftChange(new Map(), next, touched)
        : planNftChange(state, next, touched, usage, kernelSets);
    if (!steps.length) return undefined;
    const ms = await this.commitNft(executor, steps, next, nf);
    this.lastFamilies.push(f);
    return ms;
  }

  /**
   * Puts back the profiles of family `f` as they were before `change` (after a later family's
   * commit failed). Best effort: if this fails too, the error is logged and the next change or
   * `sync` repairs the kernel.
   */
  private async undoFamily(executor: Executor, f: Family, before: ReadonlyMap<string, Profile>, change: Change, because: string): Promise<boolean> {
    const touched = new Set([...change.upsert.map((p) => p.name), ...change.remove]);
    const undo: Change = { upsert: [], remove: [] };
    for (const n of touched) {
      const old = before.get(n);
      if (old) undo.upsert.push(old);
      else undo.remove.push(n);
    }
    const after = new ChangedProfiles(before, change);
    try {
      await this.commitFamily(executor, f, after, undo);
      this.log(`undid the ${tableOf(executor.engine, f)} part of the change, because ${because}`);
      return true;
    } catch (e) {
      this.log(`could not undo the ${tableOf(executor.engine, f)} part of a failed change (${(e as Error).message}); run \`iptlb sync\``);
      return false;
    }
  }

  /** The state-file lock; nothing to lock when profiles live in memory (calls are serialised in-process). */
  private async lock(): Promise<{ release(): void }> {
    if (this.statePath === null) return { release() {} };
    return lockStateFile(this.statePath, this.lockWaitMs, this.log);
  }

  /** Fails early, with one line and nothing touched, when the kernel would refuse us anyway. */
  private checkPrivileges(): void {
    if (!this.injected && !hasNetAdmin()) {
      throw new IptlbError('EPERM', 'permission denied: changing netfilter rules needs CAP_NET_ADMIN (run iptlb as root)');
    }
  }

  /**
   * Commits an nft change; when the table is not as the state says (a missing or different element,
   * e.g. after a reboot or someone's flush), replaces the whole table with `next` in one transaction.
   */
  private async commitNft(executor: NftExecutor, steps: NftTransaction[], next: ReadonlyMap<string, Profile>, nf: NftFamily): Promise<number> {
    let ms = 0;
    try {
      // A second step only removes what the first one superseded; if it fails, the rebuild below
      // (or, for another error, the next change or `sync`) removes the leftovers.
      for (const step of steps) ms += (await executor.commit(step)).durationMs;
      this.lastTransaction = steps.length === 1 ? steps[0] : { family: nf, table: 'iptlb', ops: steps.flatMap((s) => s.ops) };
      return ms;
    } catch (e) {
      if (!outOfStep(e)) throw e;
      let rebuild = planNftRebuild(next.values(), undefined, nf);
      if (this.statePath === null) {
        // In memory: what the kernel holds beyond this instance's profiles stays (see commitFamily).
        const view = await executor.read(nf);
        const kept = view.exists ? unknownObjects(view, [...next.values(), ...this.memory.values()], new Set([...next.keys(), ...this.memory.keys()])) : undefined;
        if (kept && keepsAnything(kept)) {
          this.log(`table ${nf} iptlb is not as this in-memory instance's profiles say (${(e as Error).message}); replacing its ${next.size} profile(s) in one transaction and keeping the ${kept.vips.size} virtual address(es) it was not told about`);
          rebuild = planNftMergedRebuild(next.values(), kept, nf);
          ms += (await executor.commit(rebuild)).durationMs;
          this.lastTransaction = rebuild;
          return ms;
        }
      }
      this.log(`table ${nf} iptlb is not as the state says (${(e as Error).message}); replacing it with all ${next.size} profile(s) in one transaction`);
      ms += (await executor.commit(rebuild)).durationMs;
      this.lastTransaction = rebuild;
      return ms;
    }
  }

  private describe(change: Change, engine: EngineName, before: ReadonlyMap<string, Profile>): void {
    if (!this.logging) return;
    const n = (p: Profile): number => slotCount(p);
    for (const p of change.upsert) {
      const rr = p.scheduler === 'round-robin';
      const where =
        engine === 'nft'
          ? `${p.rulesBackend}: ${
              p.affinity
                ? `${planNftProfile(p).rules.filter((r) => r.rule.kind === 'aff').length} affinity rules (${p.affinity} s${rr ? ', round-robin' : ''}) in chain ${nftHookOf(p) === 'out' ? 'output' : 'prerouting'}`
                : `${rr ? `round-robin rule in chain ${nftHookOf(p) === 'out' ? 'output' : 'prerouting'}` : `element of set ${dispatchSetName(nftHookOf(p), p.protocol, n(p))}`} and ${n(p)} of map be_${p.protocol}`
            } in ${tableOf('nft', familyOfProfile(p))}` +
            `${p.logEnabled ? `, logging at level ${p.logLevel}` : ''}${p.masquerade ? ', masquerade in postrouting' : ''}`
          : `${p.rulesBackend}: jump in ${familyOfProfile(p) === 'ipv6' ? 'ip6tables ' : ''}nat ${hookChainOf(p)}, chain ${chainName(p.name)} with ${planProfile(p).chain.rules.length} rules` +
            `${rr ? ', round-robin' : ''}${p.affinity ? `, affinity ${p.affinity} s` : ''}${p.logEnabled ? `, logging at level ${p.logLevel}` : ''}${p.masquerade ? ', masquerade in POSTROUTING' : ''}`;
      const dests = p.destination.map((d) => (weightOf(p, d) === 1 ? d : `${d}*${weightOf(p, d)}`)).join(',');
      this.log(`apply profile ${p.name}: ${p.source}/${p.protocol} -> ${dests} (${where})`);
    }
    for (const name of change.remove) {
      if (change.upsert.some((p) => p.name === name)) continue;
      const old = before.get(name);
      const where = tableOf(engine, old ? familyOfProfile(old) : 'ipv4');
      this.log(engine === 'nft' ? `delete profile ${name}: its elements and rules removed from ${where}` : `delete profile ${name}: jump rules and chain ${chainName(name)} removed from the ${where}`);
    }
  }

  /**
   * Each profile of the state file compared with the kernel, plus the kernel's orphans, with
   * counters. Runs between this instance's transactions, never during one (a commit in flight has
   * changed the kernel but not yet the profiles: comparing then would report drift that is not).
   */
  status(): Promise<ProfileReport[]> {
    return this.serial(() => this.statusNow());
  }

  /**
   * The periodic drift check: {@link status} under the state-file lock, taken without waiting. Null
   * (no verdict) when another process holds the lock: its commit may be in flight, and the kernel
   * and the state file may disagree until it ends.
   */
  driftCheck(): Promise<ProfileReport[] | null> {
    return this.serial(async () => {
      let lock: { release(): void } | undefined;
      if (this.statePath !== null) {
        try {
          lock = await lockStateFile(this.statePath, 0);
        } catch (e) {
          if (e instanceof IptlbError && e.code === 'ELOCK' && e.errno === 11) return null;
          throw e;
        }
      }
      try {
        return await this.statusNow();
      } finally {
        lock?.release();
      }
    });
  }

  private async statusNow(): Promise<ProfileReport[]> {
    const { executor } = await this.select();
    const state = await this.readState();
    const reports: ProfileReport[] = [];
    for (const f of FAMILIES) {
      const stateF = this.ofFamily(state, f) as Map<string, Profile>;
      if (stateF.size === 0 && !this.mayHold(executor, f)) continue;
      reports.push(...this.compareFamily(executor, stateF, await this.readFamily(executor, f)));
    }
    return reports;
  }

  /** Whether the kernel may hold iptlb objects of family `f` when no profile of it exists (ipv4: always asked; ipv6: unless the ip6tables nat table is absent, which reading would create). */
  private mayHold(executor: Executor, f: Family): boolean {
    return f === 'ipv4' || executor.engine === 'nft' || (ip6tablesTables()?.includes('nat') ?? false);
  }

  private readFamily(executor: Executor, f: Family): Promise<KernelView | NftView> {
    return executor.engine === 'nft' ? executor.read(nftTableFamily(f)) : executor.read(f);
  }

  private compareFamily(executor: Executor, state: Map<string, Profile>, view: KernelView | NftView): ProfileReport[] {
    return executor.engine === 'nft' ? compareNft(state, view as NftView) : compare(state, view as KernelView);
  }

  /** Makes the kernel match the state file, one transaction per address family; returns what was out of step before. */
  sync(opts: { quietWhenInSync?: boolean } = {}): Promise<{ before: ProfileReport[]; committed: boolean; commitMs: number }> {
    return this.serial(async () => {
      const { executor } = await this.select();
      this.checkPrivileges();
      const lock = await this.lock();
      try {
        const state = await this.readState();
        const before: ProfileReport[] = [];
        let committed = false;
        let commitMs = 0;
        for (const f of FAMILIES) {
          const stateF = this.ofFamily(state, f) as Map<string, Profile>;
          if (stateF.size === 0 && !this.mayHold(executor, f)) continue;
          for (let attempt = 1; ; attempt++) {
            const view = await this.readFamily(executor, f);
            const reports = this.compareFamily(executor, stateF, view);
            const drifted = reports.filter((r) => r.status !== 'in-sync');
            if (drifted.length === 0) {
              before.push(...reports);
              break;
            }
            if (attempt === 1) for (const r of drifted) this.log(`sync ${r.name}: ${r.status}${r.detail ? ` (${r.detail})` : ''}`);
            let durationMs: number;
            try {
              durationMs =
                executor.engine === 'nft'
                  ? (await executor.commit(planNftRebuild(stateF.values(), (view as NftView).genid || undefined, nftTableFamily(f)))).durationMs
                  : (await executor.commit(syncTransaction(state, view as KernelView, f))).durationMs;
            } catch (e) {
              // Someone else changed the ruleset between our read and our commit: read again.
              if (e instanceof IptlbError && e.code === 'ERESTART' && attempt < 5) continue;
              throw e;
            }
            this.log(`committed the sync of ${drifted.length} profile(s) in one transaction (${tableOf(executor.engine, f)}, ${executor.engine}/${executor.kind}, ${durationMs.toFixed(2)} ms)`);
            before.push(...reports);
            committed = true;
            commitMs += durationMs;
            break;
          }
        }
        if (!committed && !opts.quietWhenInSync) this.log('kernel already matches the state file; nothing to do');
        return { before, committed, commitMs };
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
  migrate(to: EngineName): Promise<{ moved: number; installMs: number; removeMs: number; removedFrom: boolean }> {
    return this.serial(async () => {
      if (this.injected) throw new IptlbError('EUSAGE', 'migrate needs iptlb to choose its executors (none may be injected)');
      this.checkPrivileges();
      const lock = await this.lock();
      try {
        const state = await this.readState();
        const opts = { lockWaitMs: this.lockWaitMs };
        const target = selectExecutor(this.executorChoice, opts, to).executor;
        const from = to === 'nft' ? 'legacy' : 'nft';
        let installMs = 0;
        let installs = 0;
        for (const f of FAMILIES) {
          const stateF = this.ofFamily(state, f) as Map<string, Profile>;
          if (stateF.size === 0) continue;
          installs++;
          if (target.engine === 'nft') {
            installMs += (await target.commit(planNftRebuild(stateF.values(), undefined, nftTableFamily(f)))).durationMs;
          } else {
            installMs += (await target.commit(syncTransaction(state, await target.read(f), f))).durationMs;
          }
        }
        this.log(`installed ${state.size} profile(s) in the ${to} engine in ${installs > 1 ? `${installs} transactions (one per address family)` : 'one transaction'} (${target.kind}, ${installMs.toFixed(2)} ms)`);
        let removeMs = 0;
        let removals = 0;
        const source = selectExecutor(this.executorChoice, opts, from).executor;
        for (const f of FAMILIES) {
          if (source.engine === 'nft') {
            if ((await source.read(nftTableFamily(f))).exists) {
              removeMs += (await source.commit(planNftRemoveAll(nftTableFamily(f)))).durationMs;
              removals++;
            }
          } else if ((f === 'ipv4' ? xtablesTables() : ip6tablesTables())?.includes('nat')) {
            const view = await source.read(f);
            if (view.chains.length || view.hookRules.length) {
              removeMs += (await source.commit(syncTransaction(new Map(), view, f))).durationMs;
              removals++;
            }
          }
        }
        const removedFrom = removals > 0;
        const how = removals > 1 ? `${removals} transactions (one per address family)` : 'one transaction';
        this.log(removedFrom ? `removed iptlb's objects from the ${from} engine in ${how} (${source.kind}, ${removeMs.toFixed(2)} ms)` : `the ${from} engine held nothing of iptlb's`);
        this.selected = undefined;
        this.selecting = undefined;
        return { moved: state.size, installMs, removeMs, removedFrom };
      } finally {
        lock.release();
      }
    });
  }

  /** Kernel objects owned by iptlb for profiles of `family` (default ipv4): the nat table's (legacy) or table ip/ip6 iptlb (nft). */
  async readKernel(family: Family = 'ipv4'): Promise<KernelView | NftView> {
    return this.readFamily((await this.select()).executor, family);
  }
}

/** Decides an upsert of `inputs` (create or replace) against `state`. */
export function upsertChange(state: Map<string, Profile>, inputs: (ProfileInput | Profile)[]): Change {
  const upsert = inputs.map((i) => validateProfile(i));
  const names = new Set<string>();
  for (const p of upsert) {
    if (names.has(p.name)) throw new IptlbError('EUSAGE', `name: ${show(p.name)} is given twice in one change`, { field: 'name' });
    names.add(p.name);
  }
  const others = [...state.values()].filter((o) => !names.has(o.name));
  upsert.forEach((p, i) => checkConflicts(p, [...others, ...upsert.slice(0, i)]));
  // Replacement needs no explicit removal: every upserted profile's old objects are owned by its name.
  return { upsert, remove: [] };
}

/** Decides the deletion of `names` against `state`; unknown names are ENOTFOUND. */
export function deleteChange(state: Map<string, Profile>, names: string[]): Change {
  const remove = [...new Set(names.map((n) => validateName(n, 'name', { existing: true })))];
  for (const n of remove) {
    if (!state.has(n)) throw new IptlbError('ENOTFOUND', `name: profile ${show(n)} does not exist in the state file`, { field: 'name' });
  }
  return { upsert: [], remove };
}


/** The profiles after a change, as a read-only view over the profiles before it: building it costs O(change). */
class ChangedProfiles implements ReadonlyMap<string, Profile> {
  private readonly upsert = new Map<string, Profile>();
  private readonly removed = new Set<string>();
  readonly size: number;

  constructor(
    private readonly base: ReadonlyMap<string, Profile>,
    change: Change,
  ) {
    for (const n of change.remove) this.removed.add(n);
    for (const p of change.upsert) {
      this.upsert.set(p.name, p);
      this.removed.delete(p.name);
    }
    let size = base.size;
    for (const n of this.removed) if (base.has(n) && !this.upsert.has(n)) size--;
    for (const n of this.upsert.keys()) if (!base.has(n)) size++;
    this.size = size;
  }
  get(name: string): Profile | undefined {
    return this.upsert.get(name) ?? (this.removed.has(name) ? undefined : this.base.get(name));
  }
  has(name: string): boolean {
    return this.get(name) !== undefined;
  }
  *entries(): IterableIterator<[string, Profile]> {
    for (const [n, p] of this.base) {
      if (this.upsert.has(n)) yield [n, this.upsert.get(n)!];
      else if (!this.removed.has(n)) yield [n, p];
    }
    for (const [n, p] of this.upsert) if (!this.base.has(n)) yield [n, p];
  }
  *keys(): IterableIterator<string> {
    for (const [n] of this.entries()) yield n;
  }
  *values(): IterableIterator<Profile> {
    for (const [, p] of this.entries()) yield p;
  }
  [Symbol.iterator](): IterableIterator<[string, Profile]> {
    return this.entries();
  }
  forEach(fn: (value: Profile, key: string, map: ReadonlyMap<string, Profile>) => void): void {
    for (const [n, p] of this.entries()) fn(p, n, this);
  }
}
