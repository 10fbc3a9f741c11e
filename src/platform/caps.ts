/** Capability checks, read from /proc/self/status. */
import { readFileSync } from 'node:fs';

const CAP_NET_ADMIN = 12n;

let seen = false;

/** True when this process has CAP_NET_ADMIN in its effective set (once seen, remembered). */
export function hasNetAdmin(): boolean {
  if (seen) return true;
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return (seen = m !== null && (BigInt(`0x${m[1]}`) & (1n << CAP_NET_ADMIN)) !== 0n);
  } catch {
    return false;
  }
}
