/** Capability checks, read from /proc/self/status. */
import { readFileSync } from 'node:fs';

const CAP_NET_ADMIN = 12n;

/** True when this process has CAP_NET_ADMIN in its effective set. */
export function hasNetAdmin(): boolean {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m !== null && (BigInt(`0x${m[1]}`) & (1n << CAP_NET_ADMIN)) !== 0n;
  } catch {
    return false;
  }
}
