/** `-j LOG --log-prefix "…" --log-level N`: the profile's optional packet log (either option may be absent). */
import type { Target } from '../../../model/types.js';
import type { TargetCodec } from './kinds.js';
import { quote } from './words.js';

export const log: TargetCodec<Extract<Target, { name: 'LOG' }>> = {
  handles: (word) => word === 'LOG',
  render: (t) => `-j LOG --log-prefix ${quote(t.prefix)} --log-level ${t.level}`,
  parse(_word, w) {
    let prefix = '';
    let level = 4;
    while (w.peek()?.startsWith('--')) {
      const opt = w.next();
      const v = w.next();
      if (v === undefined) return null;
      if (opt === '--log-prefix') prefix = v;
      else if (opt === '--log-level') level = Number(v);
      else return null;
    }
    return { name: 'LOG', prefix, level };
  },
};
