/**
 * Group commit. Calls queue while a commit is in flight; the next commit carries everything queued.
 * Calls are applied in order onto the state (so the last call for a profile wins); a call that does
 * not fit (conflict, unknown name) is rejected alone; when the kernel or the engine refuses a batch, the
 * batch is split in halves until the culprit is alone, so every other call still lands.
 */
import { IptlbError } from '../model/errors.js';
import { chainName, checkConflicts, show } from '../model/profile.js';
import type { Core, TransactionResult } from './core.js';
import type { EngineName, Profile, Protocol } from '../model/types.js';

export type Op = { kind: 'apply'; profiles: Profile[] } | { kind: 'delete'; names: string[] };

interface Call {
  op: Op;
  resolve: (r: TransactionResult) => void;
  reject: (e: unknown) => void;
}

export interface CommitEvent {
  /** Kernel commit time, ms. */
  durationMs: number;
  /** Profiles created, replaced or deleted by this commit. */
  size: number;
  /** API calls carried by this commit. */
  calls: number;
  engine: EngineName;
  executor: 'native' | 'spawn';
}

/**
 * The profiles a batch builds on, with an index of the chain names and source/protocol pairs in use,
 * so that a call is checked against the others in O(its profiles), not O(all profiles).
 *
 * Under churn most calls replace a profile with one of the same name and source: its entries are then
 * overwritten in place (no delete and insert), and the source is looked up by the profile's own string
 * in a map per protocol (no key string built per lookup). Measured: this bookkeeping was about a sixth
 * of the event loop's work per update in the churn bench (`fits`, `index`, `unindex`).
 */
class Working {
  readonly profiles: Map<string, Profile>;
  private readonly byChain = new Map<string, Profile>();
  private readonly bySource: Record<Protocol, Map<string, Profile>> = {
    tcp: new Map(),
    udp: new Map(),
    sctp: new Map(),
  };
  /** False when the state itself has a clash (then the index cannot vouch for anything). */
  private readonly exact: boolean = true;

  constructor(state: Map<string, Profile>) {
    this.profiles = new Map(state);
    for (const p of state.values()) {
      const chain = chainName(p.name);
      const sources = this.bySource[p.protocol];
      if (this.byChain.has(chain) || sources.has(p.source)) this.exact = false;
      this.byChain.set(chain, p);
      sources.set(p.source, p);
    }
  }

  set(p: Profile): void {
    const old = this.profiles.get(p.name);
    // The same name is the same chain: p takes the chain's entry whoever held it (as removing old's
    // entry and adding p's would).
    this.byChain.set(chainName(p.name), p);
    if (old && (old.source !== p.source || old.protocol !== p.protocol)) {
      const sources = this.bySource[old.protocol];
      if (sources.get(old.source) === old) sources.delete(old.source);
    }
    this.bySource[p.protocol].set(p.source, p);
    this.profiles.set(p.name, p);
  }
  delete(name: string): void {
    const old = this.profiles.get(name);
    if (!old) return;
    const chain = chainName(old.name);
    if (this.byChain.get(chain) === old) this.byChain.delete(chain);
    const sources = this.bySource[old.protocol];
    if (sources.get(old.source) === old) sources.delete(old.source);
    this.profiles.delete(name);
  }

  /**
   * Whether `profiles` (one call's, names distinct) fit: none shares a chain or a source/protocol
   * with a profile it does not replace, nor with an earlier one of the call — exactly what
   * {@link checkConflicts} checks against those others. A call of one profile (the common one under
   * churn) builds no sets: it has no earlier profile to clash with.
   */
  fits(profiles: Profile[], names: ReadonlySet<string>): boolean {
    if (!this.exact) return false;
    const many = profiles.length > 1;
    const chains = many ? new Set<string>() : undefined;
    const sources = many ? new Set<string>() : undefined;
    for (const p of profiles) {
      const chain = chainName(p.name);
      const c = this.byChain.get(chain);
      if ((c && c.name !== p.name && !names.has(c.name)) || chains?.has(chain)) return false;
      const o = this.bySource[p.protocol].get(p.source);
      if (o && o.name !== p.name && !names.has(o.name)) return false;
      if (sources) {
        const src = `${p.source}/${p.protocol}`;
        if (sources.has(src)) return false;
        sources.add(src);
      }
      chains?.add(chain);
    }
    return true;
  }
}

/**
 * The names given to {@link Working.fits} for a call of one profile: its own name need not be in
 * them, since fits skips a profile's own entries before it looks at the names.
 */
const ONE: ReadonlySet<string> = new Set();

/** Applies one call onto `working`, or throws why it cannot be applied (before changing anything). */
function applyOp(working: Working, op: Op, where: string): void {
  if (op.kind === 'apply') {
    if (!working.fits(op.profiles, op.profiles.length === 1 ? ONE : new Set(op.profiles.map((p) => p.name)))) {
      // Some profile conflicts: find and report the first, exactly as checked one by one.
      const names = new Set(op.profiles.map((p) => p.name));
      const others = [...working.profiles.values()].filter((o) => !names.has(o.name));
      op.profiles.forEach((p, i) => checkConflicts(p, [...others, ...op.profiles.slice(0, i)]));
    }
    for (const p of op.profiles) working.set(p);
  } else {
    for (const n of op.names) {
      if (!working.profiles.has(n))
        throw new IptlbError('ENOTFOUND', `name: profile ${show(n)} does not exist ${where}`, {
          field: 'name',
        });
    }
    for (const n of op.names) working.delete(n);
  }
}

export class CommitQueue {
  private pending: Call[] = [];
  private running = false;
  /** The drain under way (a later drain replaces it): what idle() waits for, without polling a clock. */
  private draining?: Promise<void>;
  /**
   * The working set (profiles and index) left by the last successful commit, valid while the core's
   * profiles (in memory, or cached from the state file) are still the ones that commit produced;
   * saves rebuilding the index per batch (O(all profiles)).
   */
  private cached?: { generation: number; working: Working };

  constructor(
    private readonly core: Core,
    private readonly opts: { coalesce: boolean; onCommit: (e: CommitEvent) => void },
  ) {}

  submit(op: Op): Promise<TransactionResult> {
    return new Promise((resolve, reject) => {
      this.pending.push({ op, resolve, reject });
      if (!this.running) this.draining = this.drain();
    });
  }

  /** Resolves when everything submitted so far has settled. */
  async idle(): Promise<void> {
    while (this.draining && (this.running || this.pending.length)) await this.draining;
  }

  private async drain(): Promise<void> {
    this.running = true;
    // With a state file, a drain of several batches keeps its lock between them (see
    // Core.beginLockWindow): taken once, given up when another process waits for it.
    let window = false;
    try {
      while (this.pending.length) {
        const batch = this.opts.coalesce ? this.pending.splice(0) : this.pending.splice(0, 1);
        await this.commit(batch);
        const more = this.opts.coalesce && batch.length > 1;
        if (more && !window) window = this.core.beginLockWindow();
        // Another process waiting for the state-file lock gets it now (before anything is prefetched under it).
        const kept = window && (this.core.lockWindowKeptNow() ?? (await this.core.lockWindowCheck()));
        // Under churn (a batch of several calls) the callers just settled are about to call again:
        // the legacy native executor starts the next commit's kernel work (lock, table copy) on its
        // worker while this thread settles them and plans (released below if nothing follows). With
        // a state file only while its lock is kept (the lock order: see Core.prefetchCommit).
        // (A batch can end without a kernel commit, all refused or unchanged: what was prepared then
        // waits for the next one, and the drain gives it back at the end in any case.)
        if (more && (kept || !window)) this.core.prefetchCommit();
        // Let the callers this commit settled queue their next calls before the next batch is cut
        // (their continuations are a few microtask hops away): batches fill up instead of halving.
        // A lone call pays nothing: the first batch of a drain goes at once.
        if (this.opts.coalesce) await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      if (window) await this.core.endLockWindow();
      else await this.core.releasePrefetch();
      this.running = false;
      // Calls that came while the lock or the prefetch was given back: a drain of their own.
      if (this.pending.length) this.draining = this.drain();
    }
  }

  private async commit(batch: Call[]): Promise<void> {
    const accepted: Call[] = [];
    const refused: [Call, unknown][] = [];
    let result: TransactionResult;
    let used: Working | undefined;
    try {
      result = await this.core.transact(
        (state) => {
          accepted.length = 0;
          refused.length = 0;
          const reuse = this.cached?.generation === this.core.stateGeneration;
          const working = reuse ? this.cached!.working : new Working(state);
          // A handle without a state file (`stateFile: false`) has only the profiles it was given.
          const where = this.core.statePath === null ? "among this handle's profiles" : 'in the state file';
          this.cached = undefined;
          used = working;
          for (const call of batch) {
            try {
              applyOp(working, call.op, where); // checks everything before it changes anything
            } catch (e) {
              refused.push([call, e]);
              continue;
            }
            accepted.push(call);
          }
          const upsert: Profile[] = [];
          const names = new Set<string>();
          for (const call of accepted) {
            if (call.op.kind === 'apply') for (const p of call.op.profiles) names.add(p.name);
            else for (const n of call.op.names) names.add(n);
          }
          const remove: string[] = [];
          for (const n of names) {
            const p = working.profiles.get(n);
            if (p) upsert.push(p);
            else if (state.has(n)) remove.push(n);
          }
          return { upsert, remove };
        },
        { run: true },
      );
    } catch (e) {
      // The kernel refused the batch, or the engine did before committing (a change it will not
      // make, such as one that would drop another tool's rules): find the culprit by halves. Other
      // failures (the lock, the state file, privileges, and the engine's refusal of any change: iptlb's
      // rules in the other engine, field `engine`) are the batch's, not a call's: split, a batch of n
      // calls took 2n-1 transactions to reject every call with that same error.
      if (
        e instanceof IptlbError &&
        (e.code === 'EKERNEL' || (e.code === 'ECONFLICT' && e.field !== 'engine')) &&
        batch.length > 1
      ) {
        const half = Math.ceil(batch.length / 2);
        await this.commit(batch.slice(0, half));
        await this.commit(batch.slice(half));
        return;
      }
      for (const call of batch) call.reject(e);
      return;
    }
    if (used) this.cached = { generation: this.core.stateGeneration, working: used };
    for (const [call, e] of refused) call.reject(e);
    for (const call of accepted) {
      const own =
        call.op.kind === 'apply' ? { applied: call.op.profiles, deleted: [] } : { applied: [], deleted: call.op.names };
      call.resolve({ ...result, ...own });
    }
    // A `commit` event is a kernel transaction's: none for a batch that was all refused, unchanged
    // or empty. Emitted after the calls settled, and a listener's throw cannot undo that or stop the
    // queue: it is thrown again on its own, as an uncaught exception, which is where a bug in a
    // listener belongs (it was an unhandled rejection of the drain that left every call pending).
    if (!result.committed) return;
    try {
      this.opts.onCommit({
        durationMs: result.commitMs,
        size: result.applied.length + result.deleted.length,
        calls: accepted.length,
        engine: result.engine!, // set: committed
        executor: result.executor!, // set: committed
      });
    } catch (e) {
      process.nextTick(() => {
        throw e;
      });
    }
  }
}
