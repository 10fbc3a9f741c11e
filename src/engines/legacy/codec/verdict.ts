/** The targets without options: `-j RETURN`, `-j MASQUERADE`, and a jump to one of iptlb's chains. */
import type { Target } from '../../../model/types.js';
import { CHAIN_PREFIX } from '../plan.js';
import type { TargetCodec } from './kinds.js';

type Simple = Extract<Target, { name: 'RETURN' | 'MASQUERADE' }>;
type Jump = Extract<Target, { name: 'jump' }>;

export const simple: TargetCodec<Simple> = {
  handles: (word) => word === 'RETURN' || word === 'MASQUERADE',
  render: (t) => `-j ${t.name}`,
  parse: (word) => ({ name: word as Simple['name'] }),
};

export const jump: TargetCodec<Jump> = {
  handles: (word) => word.startsWith(CHAIN_PREFIX),
  render: (t) => `-j ${t.chain}`,
  parse: (word) => ({ name: 'jump', chain: word }),
};
