/** `-m tcp|udp|sctp --dport N`: the destination port of the profile's protocol. */
import type { MatchCodec } from './kinds.js';

export const port: MatchCodec<'tcp' | 'udp' | 'sctp'> = {
  names: ['tcp', 'udp', 'sctp'],
  render: (m) => `-m ${m.name} --dport ${m.dport}`,
  parse(name, w) {
    if (!w.expect('--dport')) return null;
    const dport = w.int();
    return Number.isInteger(dport) ? { name, dport } : null;
  },
};
