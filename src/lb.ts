/**
 * The transaction core shared by the library API and the CLI: under the state-file lock, read the
 * state, decide the change, commit it to the kernel in one transaction, and only then write the state.
 */
import { IptlbError } from './errors.js';
import { selectExecutor, parseExecutorChoice } from './executors/index.js';
import { DEFAULT_LOCK_WAIT_MS, lockStateFile } from './lock.js';
import { chainName, checkConflicts, sameProfile, show, validateName, validateProfile } from './profile.js';
import { hookChainOf, isEmptyTransaction, planTransaction } from './plan.js';
import { readState, resolveStatePath, stateVersion, writeState } from './state.js';
import { hasNetAdmin } from './caps.js';
import { flushStaleFlows, staleFlows } from './conntrack.js';
import { compare, syncTransaction, type ProfileReport } from './drift.js';
import type { Executor, ExecutorChoice, KernelView, Profile, ProfileInput, Transaction } from './types.js';

/** Options of {@link open}. */
export interface OpenOptions {
  /**
   * State file path. Default: env `IPTLB_STATE_FILE`, else `local/state.db` relative to the working
   * directory. `false`: no file at all; profiles are kept in memory by this handle (for agents whose
   * source of truth is elsewhere: no fsync and no file lock per change).
   */
  stateFile?: string | false;
  /** Executor: `native` (the addon), `spawn` (iptables-legacy-restore) or `auto`. Default: env `IPTLB_EXECUTOR`, else `auto`. */
  executor?: ExecutorChoice;
  /** How long to wait for the state-file lock and the xtables lock, ms. Default 10000. */
  lockWaitMs?: number;
  /** Receives one line per action taken. Default: none. */
  log?: (line: string) => void;
  /**
   * Keep the conntrack entries of flows balanced to destinations a change removed. Default `false`:
   * they are deleted after the commit, so UDP flows and half-open TCP move to a live destination.
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
  engine: 'legacy';
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
  readonly executorChoice: ExecutorChoice;
  readonly lockWaitMs: number;
  private readonly keepConntrack: boolean;
  private selected?: { executor: Executor; reason: string };
  private readonly injected: boolean;
  private readonly log: (line: string) => void;
  private readonly logging: boolean;
  private queue: Promise<unknown> = Promise.resolve();

  /** @param injected an executor to use instead of choosing one (tests, embedders with their own). */
  constructor(opts: OpenOptions = {}, injected?: Executor) {
    if (injected) this.selected = { executor: injected, reason: 'executor supplied by the caller' };
    this.injected = !!injected;
    this.statePath = opts.stateFile === false ? null : resolveStatePath(opts.stateFile);
    this.executorChoice = opts.executor ?? parseExecutorChoice(process.env.IPTLB_EXECUTOR);
    this.lockWaitMs = opts.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS;
    this.keepConntrack = opts.keepConntrack ?? false;
    this.log = opts.log ?? (() => {});
    this.logging = opts.log !== undefined;
  }

  /** The executor, chosen on first use. */
  get executor(): Executor {
    return this.selection.executor;
  }
  get selection(): { executor: Executor; reason: string } {
    this.selected ??= selectExecutor(this.executorChoice, { lockWaitMs: this.lockWaitMs });
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
      const executor = opts.run ? this.executor : undefined;
      if (executor) this.checkPrivileges();
      const lock = await this.lock();
      try {
        const state = await this.readState();
        const change = decide(state);
        const next = new Map(state);
        for (const n of change.remove) next.delete(n);
        for (const p of change.upsert) next.set(p.name, p);
        let committed = false;
        let commitMs = 0;
        if (executor) {
          const tx = planTransaction(change.upsert, change.remove);
          if (!isEmptyTransaction(tx)) {
            commitMs = (await executor.commit(tx)).durationMs;
            committed = true;
            this.describe(change, tx);
            this.log(
              `committed ${change.upsert.length + change.remove.length} profile change(s) in one transaction ` +
                `(nat table, ${executor.engine}/${executor.kind}, ${commitMs.toFixed(2)} ms)`,
            );
          }
        }
        const changed =
          change.remove.some((n) => state.has(n)) || change.upsert.some((p) => !state.has(p.name) || !sameProfile(state.get(p.name)!, p));
        let stateWritten = false;
        if (changed && this.statePath === null) {
          this.memory = next;
        } else if (changed && this.statePath !== null) {
          this.cached = undefined;
          await writeState(this.statePath, next.values());
          this.cached = { version: await stateVersion(this.statePath), state: next };
          stateWritten = true;
          this.log(`state written to ${this.statePath} (${next.size} profile(s))`);
        }
        if (committed && !this.keepConntrack && !this.injected) {
          const stale = [
            ...change.upsert.flatMap((p) => (state.has(p.name) ? staleFlows(state.get(p.name)!, p) : [])),
            ...change.remove.flatMap((n) => (state.has(n) ? staleFlows(state.get(n)!, next.get(n)) : [])),
          ];
          for (const line of await flushStaleFlows(stale)) this.log(line);
        }
        return {
          applied: change.upsert,
          deleted: change.remove,
          committed,
          stateWritten,
          commitMs,
          executor: executor?.kind ?? null,
          engine: 'legacy',
        };
      } finally {
        lock.release();
      }
    });
  }

  /** The state-file lock; nothing to lock when profiles live in memory (calls are serialised in-process). */
  private async lock(): Promise<{ release(): void }> {
    if (this.statePath === null) return { release() {} };
    return lockStateFile(this.statePath, this.lockWaitMs);
  }

  /** Fails early, with one line and nothing touched, when the kernel would refuse us anyway. */
  private checkPrivileges(): void {
    if (!this.injected && !hasNetAdmin()) {
      throw new IptlbError('EPERM', 'permission denied: changing netfilter rules needs CAP_NET_ADMIN (run iptlb as root)');
    }
  }

  private describe(change: Change, tx: Transaction): void {
    if (!this.logging) return;
    const rulesOf = new Map(tx.chains.map((c) => [c.name, c.rules.length]));
    for (const p of change.upsert) {
      const chain = { rules: { length: rulesOf.get(chainName(p.name)) } };
      this.log(
        `apply profile ${p.name}: ${p.source}/${p.protocol} -> ${p.destination.join(',')} ` +
          `(${p.rulesBackend}: jump in nat ${hookChainOf(p)}, chain ${chainName(p.name)} with ${chain?.rules.length ?? 0} rules` +
          `${p.logEnabled ? `, logging at level ${p.logLevel}` : ''}${p.masquerade ? ', masquerade in POSTROUTING' : ''})`,
      );
    }
    for (const n of change.remove) {
      if (!change.upsert.some((p) => p.name === n)) this.log(`delete profile ${n}: jump rules and chain ${chainName(n)} removed`);
    }
  }

  /** Each profile of the state file compared with the kernel, plus the kernel's orphans, with counters. */
  async status(): Promise<ProfileReport[]> {
    const state = await this.readState();
    return compare(state, await this.executor.read());
  }

  /** Makes the kernel match the state file in one transaction; returns what was out of step before. */
  sync(opts: { quietWhenInSync?: boolean } = {}): Promise<{ before: ProfileReport[]; committed: boolean; commitMs: number }> {
    return this.serial(async () => {
      const executor = this.executor;
      this.checkPrivileges();
      const lock = await this.lock();
      try {
        const state = await this.readState();
        const view = await executor.read();
        const before = compare(state, view);
        const drifted = before.filter((r) => r.status !== 'in-sync');
        if (drifted.length === 0) {
          if (!opts.quietWhenInSync) this.log('kernel already matches the state file; nothing to do');
          return { before, committed: false, commitMs: 0 };
        }
        for (const r of drifted) this.log(`sync ${r.name}: ${r.status}${r.detail ? ` (${r.detail})` : ''}`);
        const { durationMs } = await executor.commit(syncTransaction(state, view));
        this.log(`committed the sync of ${drifted.length} profile(s) in one transaction (nat table, ${executor.engine}/${executor.kind}, ${durationMs.toFixed(2)} ms)`);
        return { before, committed: true, commitMs: durationMs };
      } finally {
        lock.release();
      }
    });
  }

  /** Kernel objects owned by iptlb. */
  readKernel(): Promise<KernelView> {
    return this.executor.read();
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
  const remove = [...new Set(names.map((n) => validateName(n)))];
  for (const n of remove) {
    if (!state.has(n)) throw new IptlbError('ENOTFOUND', `name: profile ${show(n)} does not exist in the state file`, { field: 'name' });
  }
  return { upsert: [], remove };
}

