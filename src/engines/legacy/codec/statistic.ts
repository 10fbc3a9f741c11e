/**
 * `-m statistic`: `--mode random --probability P` (weighted random) or `--mode nth --every N --packet P`
 * (round-robin; iptables-save leaves out `--packet 0`).
 */
import type { MatchCodec } from './kinds.js';

export const statistic: MatchCodec<'statistic'> = {
  names: ['statistic'],
  render: (m) =>
    m.mode === 'nth'
      ? `-m statistic --mode nth --every ${m.every} --packet ${m.packet}`
      : `-m statistic --mode random --probability ${m.probability}`,
  parse(_name, w) {
    if (!w.expect('--mode')) return null;
    const mode = w.next();
    if (mode === 'nth') {
      if (!w.expect('--every')) return null;
      const every = w.int();
      const packet = w.take('--packet') ? w.int() : 0;
      if (!(every >= 1) || !(packet >= 0) || packet >= every) return null;
      return { name: 'statistic', mode: 'nth', every, packet };
    }
    if (mode !== 'random' || !w.expect('--probability')) return null;
    const probability = w.next();
    return probability ? { name: 'statistic', mode: 'random', probability } : null;
  },
};

/** Canonical probability text as iptables-save prints it (11 decimals of the kernel's 31-bit value). */
export function canonicalProbability(p: string): string {
  const v = Math.round(0x80000000 * Number(p));
  return (v / 0x80000000).toFixed(11);
}
