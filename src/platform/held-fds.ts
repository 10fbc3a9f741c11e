/**
 * Descriptors of the state-file locks this process holds (native locks only; platform/lock.ts adds and
 * removes them). Every child the spawn executors start gets a copy (platform/spawn.ts), so a lock
 * outlives a holder killed while its `iptables-legacy-restore` or `nft -f` child is still committing:
 * the next iptlb waits for that child instead of planning against a kernel about to change under it.
 * A module of its own, so that spawn.ts does not import the lock and, through it, the state file's code.
 */
export const heldLockFds = new Set<number>();

export function inheritedLockFds(): number[] {
  return [...heldLockFds];
}
