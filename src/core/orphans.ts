/**
 * How the engines name what the kernel holds beyond the profiles they were given (orphans), and which
 * profile such an orphan belongs to: its name (legacy), `rule:<name>` (an nft rule's owner) or its
 * virtual address (an nft dispatch or backend element). One place for every reader of orphans: the
 * status of several state files, a sync's log line, watch mode's drift count, migrate's refusal.
 */
import { formatEndpoint, parseEndpoint } from '../model/address.js';
import type { Profile } from '../model/types.js';
import type { ProfileReport } from '../model/report.js';

/** The name an orphan of `p`'s virtual address has (nft names an element by it), canonical. */
export function orphanAddress(p: Profile): string | undefined {
  const e = parseEndpoint(p.source);
  return typeof e === 'string' ? undefined : formatEndpoint(e);
}

/** Every name an orphan of profile `p` may have. */
export function orphanNames(p: Profile): string[] {
  const address = orphanAddress(p);
  return [p.name, `rule:${p.name}`, ...(address === undefined ? [] : [address])];
}

/**
 * Out-of-step reports counted: each profile once (an orphan named after a profile of one of `owners`,
 * later maps winning, counts as that profile), and the orphans no such profile owns apart, each name once
 * (once also when both address families' tables hold it).
 */
export function countDrifted(
  reports: readonly Pick<ProfileReport, 'name' | 'status'>[],
  ...owners: (ReadonlyMap<string, Profile> | undefined)[]
): { profiles: number; leftovers: number } {
  let index: Map<string, string> | undefined;
  const ownerOf = (orphan: string): string | undefined => {
    if (!index) {
      index = new Map();
      for (const m of owners) for (const p of m?.values() ?? []) for (const k of orphanNames(p)) index.set(k, p.name);
    }
    return index.get(orphan);
  };
  const profiles = new Set<string>();
  const leftovers = new Set<string>();
  for (const r of reports) {
    if (r.status === 'in-sync') continue;
    const owner = r.status === 'orphaned' ? ownerOf(r.name) : r.name;
    if (owner === undefined) leftovers.add(r.name);
    else profiles.add(owner);
  }
  return { profiles: profiles.size, leftovers: leftovers.size };
}
