/** `-m comment --comment "…"`: iptlb's ownership mark on hook rules (`iptlb:<owner>`). */
import type { MatchCodec } from './kinds.js';
import { quote } from './words.js';

export const comment: MatchCodec<'comment'> = {
  names: ['comment'],
  render: (m) => `-m comment --comment ${quote(m.comment)}`,
  parse(_name, w) {
    if (!w.expect('--comment')) return null;
    const text = w.next();
    return text === undefined ? null : { name: 'comment', comment: text };
  },
};
