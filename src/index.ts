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
import { Core, deleteChange, upsertChange, type OpenOptions, type TransactionResult } from './lb.js';
import { IptlbError } from './errors.js';
import type { KernelView, Profile, ProfileInput } from './types.js';
import type { ProfileReport } from './drift.js';
export type { ProfileReport, ProfileStatus, DestinationCounters } from './drift.js';

export { IptlbError } from './errors.js';
export type { ErrorCode } from './errors.js';
export type { OpenOptions, TransactionResult } from './lb.js';
export type { Profile, ProfileInput, Protocol, RulesBackend, KernelView, Rule, Match, Target, Transaction, ExecutorChoice } from './types.js';
export { validateProfile, chainName } from './profile.js';
export { planTransaction, planProfile } from './plan.js';
export { renderRestore, renderRule } from './restore.js';
export { serializeState, parseState } from './state.js';

/** A handle on one state file and one executor. Calls on one handle run one at a time, in order. */
export class Iptlb {
  private readonly core: Core;
  private closed = false;

  /** @internal use {@link open} */
  constructor(core: Core) {
    this.core = core;
  }

  /** Absolute path of the state file this handle uses. */
  get stateFile(): string {
    return this.core.statePath;
  }

  /** Which executor commits (`native` or `spawn`) and why it was chosen. */
  get executor(): { kind: 'native' | 'spawn'; engine: 'legacy'; reason: string } {
    const s = this.core.selection;
    return { kind: s.executor.kind, engine: s.executor.engine, reason: s.reason };
  }

  private check(): void {
    if (this.closed) throw new IptlbError('EUSAGE', 'this iptlb handle is closed');
  }

  /**
   * Creates or replaces profiles, all in one kernel transaction, then records them in the state
   * file. Rejects with EINVAL_PROFILE / ECONFLICT (nothing changed) or EKERNEL (nothing changed).
   */
  async apply(profiles: ProfileInput | ProfileInput[]): Promise<TransactionResult> {
    this.check();
    const list = Array.isArray(profiles) ? profiles : [profiles];
    return this.core.transact((state) => upsertChange(state, list), { run: true });
  }

  /** Deletes profiles by name in one kernel transaction. Unknown names reject with ENOTFOUND. */
  async delete(names: string | string[]): Promise<TransactionResult> {
    this.check();
    const list = Array.isArray(names) ? names : [names];
    return this.core.transact((state) => deleteChange(state, list), { run: true });
  }

  /** The profiles recorded in the state file, sorted by name. */
  async list(): Promise<Profile[]> {
    this.check();
    const state = await this.core.readState();
    return [...state.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  /**
   * Each profile of the state file compared with the kernel (`in-sync`, `missing`, `modified`, or
   * `orphaned` for kernel rules no profile owns), with per-destination packet and byte counters.
   */
  async status(): Promise<ProfileReport[]> {
    this.check();
    return this.core.status();
  }

  /** Makes the kernel match the state file in one transaction. */
  async sync(): Promise<{ before: ProfileReport[]; committed: boolean; commitMs: number }> {
    this.check();
    return this.core.sync();
  }

  /** iptlb's rules as they are in the kernel, with counters. */
  async kernel(): Promise<KernelView> {
    this.check();
    return this.core.readKernel();
  }

  /** Ends the handle. Rules stay in the kernel. */
  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Opens a handle. The executor is chosen now (`auto`: native addon when it loads, else spawn). */
export async function open(options: OpenOptions = {}): Promise<Iptlb> {
  const core = new Core(options);
  void core.selection; // choose (and validate) the executor now, so a forced `native` fails here
  return new Iptlb(core);
}
