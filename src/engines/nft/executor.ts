/** The nft engine's executor contract: the native (netlink) and spawn (`nft -f`) executors implement it. */
import type { CommitResult } from '../../model/types.js';
import type { NftEndpoint, NftFamily, NftOriginalJump, NftTransaction, NftView } from './ops.js';

/** How ops reach table ip iptlb: one netlink batch (native) or one `nft -f -` (spawn); same kernel result. */
export interface NftExecutor {
  readonly kind: 'native' | 'spawn';
  readonly engine: 'nft';
  /**
   * Fails with code `EKERNEL` and the kernel's errno (ENOENT, EEXIST, EBUSY when the table is not as planned), or
   * `ERESTART` when `expectGenid` is stale.
   */
  commit(tx: NftTransaction): Promise<CommitResult>;
  /** Table `<family> iptlb` (default `ip`). */
  read(family?: NftFamily): Promise<NftView>;
  /**
   * A narrow read of table `<family> iptlb` for `addresses` (see NftView.narrow): what a change that
   * gives a profile a new address asks, at a cost that does not grow with the table's elements.
   * Optional: without it the engine reads the whole table.
   */
  lookup?(family: NftFamily, addresses: NftEndpoint[]): Promise<NftView>;
  /**
   * Table `<family> iptlb` without any set's elements: its sets and maps by name, its base chains with their
   * rules (dispatch sets and backend maps empty, as a narrow read for no address has them). What
   * NftEngine.holdsObjects asks, at a cost that does not grow with the table's elements. Optional: without it
   * the engine asks `lookup` for no address, or reads the whole table.
   */
  survey?(family: NftFamily): Promise<NftView>;
  /**
   * The original iptlb's jumps in iptables-nft's `table <family> nat` (chains OUTPUT and PREROUTING only: no other
   * chain of that table is read, whatever its size), none when it does not exist: what a state-file instance's change
   * that gives a profile a new address, or applies or deletes a profile of its state file, asks
   * (src/engines/nft/original.ts: refused, or taken over). `chains`: those the change's profiles go
   * to (the spawn executor lists only those, a process each; the native read takes both in one call). Optional:
   * without it nothing is asked.
   */
  originalJumps?(family: NftFamily, chains?: readonly NftOriginalJump['chain'][]): Promise<NftOriginalJump[]>;
  /** The `nft -f` text of the transaction. */
  render(tx: NftTransaction): Promise<string>;
}
