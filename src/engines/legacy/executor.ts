/** The legacy engine's executor contract: the native (libiptc) and spawn (iptables-restore) executors implement it. */
import type { Family } from '../../model/address.js';
import type { AfterCommit, CommitResult, KernelView, Transaction } from '../../model/types.js';
import { capsMessage, missingCaps, type Capability } from '../../platform/caps.js';

/**
 * What reading and changing x_tables takes, with either executor: libiptc and iptables-legacy open a
 * raw socket (CAP_NET_RAW) and set it up with setsockopt (CAP_NET_ADMIN).
 */
export const LEGACY_CAPABILITIES: readonly Capability[] = ['CAP_NET_ADMIN', 'CAP_NET_RAW'];

/**
 * The message of a permission failure of x_tables: `message` with its hint replaced by one naming the
 * capability this process lacks; `message` as it is when it lacks none (the failure is something else's).
 * `needs`: what the engine takes (the nft engine's native executor passes CAP_NET_ADMIN alone).
 */
export function legacyPermissionMessage(
  message: string,
  has?: (c: Capability) => boolean,
  needs: readonly Capability[] = LEGACY_CAPABILITIES,
): string {
  const missing = missingCaps(needs, has);
  if (missing.length === 0) return message;
  const hint = capsMessage(missing);
  // The addon's "<call>: <strerror> (permission denied: …)", the spawn executor's "<tool>: permission denied: …".
  if (/ \(permission denied: .*\)$/.test(message)) return message.replace(/ \(permission denied: .*\)$/, ` (${hint})`);
  if (/: permission denied: .*$/.test(message)) return message.replace(/: permission denied: .*$/, `: ${hint}`);
  return `${message} (${hint})`;
}

/**
 * How rules reach the x_tables nat table. Both implementations give the same kernel result for the same transaction.
 */
export interface LegacyExecutor {
  readonly kind: 'native' | 'spawn';
  readonly engine: 'legacy';
  /**
   * Commits to the nat table of `tx.family`. With `after`, an executor that can writes those bytes
   * itself once the kernel accepted the commit (and says so in `appended`); one that cannot ignores it.
   */
  commit(tx: Transaction, after?: AfterCommit): Promise<CommitResult>;
  /** iptlb's objects in the nat table of `family` (default ipv4). */
  read(family?: Family): Promise<KernelView>;
  /**
   * Whether `read(family)` would find any of iptlb's objects, asked more cheaply (native only: without
   * libiptc's parse of the whole table, about 150 ms at 20,000 foreign rules).
   */
  holds?(family: Family): Promise<boolean>;
  /**
   * The elements of the gate's set of `family` (`ip,proto:port`), [] when the set does not exist,
   * undefined when they cannot be read. Spawn only: the native executor's read has them
   * (`gate.members`).
   */
  gateMembers?(family: Family): Promise<string[] | undefined>;
  /**
   * The gate's set of `family` when it is there (read while no dispatch chain exists: see KernelView.leftSet),
   * undefined when it is not or cannot be read. Spawn only: the native executor's read has it (`leftSet`).
   */
  leftGateSet?(family: Family): Promise<{ members: string[]; references: number } | undefined>;
  /** The exact text an iptables-restore would be fed for this transaction against the current kernel (read-only). */
  render(tx: Transaction): Promise<string>;
  /**
   * Native only: start preparing the next commit now (take the xtables lock and copy the table out
   * on a worker thread), because one is about to follow. Every `prefetch()` must be followed by a
   * `commit()` (which uses it) or a `releasePrefetch()`; never throws. `releasePrefetch()` resolves
   * once the xtables lock is given back (it never rejects).
   */
  prefetch?(): void;
  releasePrefetch?(): Promise<void>;
}
