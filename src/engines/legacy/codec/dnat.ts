/** `-j DNAT --to-destination ip:port` (`[v6]:port`): sends the flow to one destination. */
import type { Target } from '../../../model/types.js';
import { endpointText } from './addresses.js';
import type { TargetCodec } from './kinds.js';

export const dnat: TargetCodec<Extract<Target, { name: 'DNAT' }>> = {
  handles: (word) => word === 'DNAT',
  render: (t) => `-j DNAT --to-destination ${t.toDestination}`,
  parse(_word, w) {
    if (!w.expect('--to-destination')) return null;
    const v = w.next();
    const toDestination = v ? endpointText(v) : null;
    return toDestination ? { name: 'DNAT', toDestination } : null;
  },
};
