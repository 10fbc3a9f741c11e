/** Capability checks, read from /proc/self/status. */
import { readFileSync } from 'node:fs';

/** The capabilities an engine needs to read and change its rules. */
export type Capability = 'CAP_NET_ADMIN' | 'CAP_NET_RAW';

const BIT: Record<Capability, bigint> = { CAP_NET_ADMIN: 12n, CAP_NET_RAW: 13n };

/** The effective set in the text of /proc/<pid>/status; null when it is not there. */
export function effectiveCapsOf(status: string): bigint | null {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return m ? BigInt(`0x${m[1]}`) : null;
}

/** Capabilities seen in this process's effective set (a process does not gain one later: remembered). */
let seen = 0n;

/** True when this process has `cap` in its effective set (once seen, remembered). */
export function hasCap(cap: Capability): boolean {
  if (seen & (1n << BIT[cap])) return true;
  try {
    seen |= effectiveCapsOf(readFileSync('/proc/self/status', 'utf8')) ?? 0n;
  } catch {
    return false;
  }
  return (seen & (1n << BIT[cap])) !== 0n;
}

/** True when this process has CAP_NET_ADMIN in its effective set (once seen, remembered). */
export function hasNetAdmin(): boolean {
  return hasCap('CAP_NET_ADMIN');
}

/** Those of `needs` this process lacks (`has` answers for one; this process's effective set by default). */
export function missingCaps(needs: readonly Capability[], has: (c: Capability) => boolean = hasCap): Capability[] {
  return needs.filter((c) => !has(c));
}

/**
 * The one line for a permission failure when `missing` (of `needs`) are not in the effective set:
 * names what is missing. CAP_NET_RAW alone: the legacy engine's raw socket (libiptc and iptables open
 * one to reach x_tables), which a service granted CAP_NET_ADMIN only does not have.
 */
export function capsMessage(missing: readonly Capability[], what = 'changing netfilter rules'): string {
  if (missing.length === 1 && missing[0] === 'CAP_NET_RAW')
    return `permission denied: ${what} with the legacy engine needs CAP_NET_RAW as well as CAP_NET_ADMIN (x_tables is reached through a raw socket): grant CAP_NET_RAW too, or run iptlb as root`;
  if (missing.length > 1) return `permission denied: ${what} needs ${missing.join(' and ')} (run iptlb as root)`;
  return `permission denied: ${what} needs CAP_NET_ADMIN (run iptlb as root)`;
}
