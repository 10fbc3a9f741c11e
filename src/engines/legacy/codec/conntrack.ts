/**
 * `-m conntrack --ctstate DNAT --ctorigdst A --ctorigdstport P`: proxy mode's masquerade, only the flows
 * balanced from the virtual address.
 */
import { cidrText } from './addresses.js';
import type { MatchCodec } from './kinds.js';

export const conntrack: MatchCodec<'conntrack'> = {
  names: ['conntrack'],
  render: (m) => `-m conntrack --ctstate ${m.ctstate} --ctorigdst ${m.ctorigdst} --ctorigdstport ${m.ctorigdstport}`,
  parse(_name, w) {
    if (!w.expect('--ctstate') || !w.expect('DNAT') || !w.expect('--ctorigdst')) return null;
    const a = w.next();
    const ctorigdst = a ? cidrText(a) : null;
    if (!ctorigdst || !w.expect('--ctorigdstport')) return null;
    const ctorigdstport = w.int();
    return Number.isInteger(ctorigdstport) ? { name: 'conntrack', ctstate: 'DNAT', ctorigdst, ctorigdstport } : null;
  },
};
