/** `-m addrtype --dst-type LOCAL`: server mode, only packets to the host's own addresses. */
import type { MatchCodec } from './kinds.js';

export const addrtype: MatchCodec<'addrtype'> = {
  names: ['addrtype'],
  render: (m) => `-m addrtype --dst-type ${m.dstType}`,
  parse: (_name, w) => (w.expect('--dst-type') && w.expect('LOCAL') ? { name: 'addrtype', dstType: 'LOCAL' } : null),
};
