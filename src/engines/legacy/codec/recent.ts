/**
 * `-m recent` (xt_recent revision 1), session affinity: `--set --name N` records a client address;
 * `--update --seconds S --reap --name N` matches one seen within S seconds. Always the whole address
 * (`--mask` of one host) and the source (`--rsource`), in iptables-save's order.
 */
import type { Family } from '../../../model/address.js';
import type { MatchCodec } from './kinds.js';

/** xt_recent's `--mask` of one host, as the save tools print it. */
const HOST_MASK: Record<Family, string> = { ipv4: '255.255.255.255', ipv6: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff' };

export const recent: MatchCodec<'recent'> = {
  names: ['recent'],
  render: (m, family) =>
    m.mode === 'set'
      ? `-m recent --set --name ${m.recentName} --mask ${HOST_MASK[family]} --rsource`
      : `-m recent --update --seconds ${m.seconds} --reap --name ${m.recentName} --mask ${HOST_MASK[family]} --rsource`,
  parse(_name, w) {
    const mode = w.next();
    if (mode !== '--set' && mode !== '--update') return null;
    let seconds: number | undefined;
    if (w.take('--seconds')) {
      seconds = w.int();
      if (!(seconds >= 1)) return null;
    }
    if (mode === '--update' && (seconds === undefined || !w.expect('--reap'))) return null;
    if (mode === '--set' && seconds !== undefined) return null;
    if (!w.expect('--name')) return null;
    const recentName = w.next();
    if (!recentName || !w.expect('--mask')) return null;
    const mask = w.next();
    if ((mask !== HOST_MASK.ipv4 && mask !== HOST_MASK.ipv6) || !w.expect('--rsource')) return null;
    return mode === '--set'
      ? { name: 'recent', mode: 'set', recentName }
      : { name: 'recent', mode: 'update', recentName, seconds };
  },
};
