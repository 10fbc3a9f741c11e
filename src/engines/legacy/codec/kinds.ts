/** What a codec of one rule kind is: both directions, restore text out and iptables-save words in. */
import type { Family } from '../../../model/address.js';
import type { Match, Target } from '../../../model/types.js';
import type { Words } from './words.js';

export type MatchOf<N extends Match['name']> = Extract<Match, { name: N }>;

export interface MatchCodec<N extends Match['name'] = Match['name']> {
  /** The `-m` names it handles. */
  readonly names: readonly N[];
  /** `-m <name> …` as iptables-restore takes it, for a rule of the nat table of `family`. */
  render(m: MatchOf<N>, family: Family): string;
  /** Reads the options after `-m <name>` (the reader stands on the name); null when iptlb never writes them so. */
  parse(name: N, w: Words): MatchOf<N> | null;
}

export interface TargetCodec<T extends Target = Target> {
  /** Whether `-j <word>` is this codec's target. */
  handles(word: string): boolean;
  render(t: T): string;
  /** Reads the target and its options (the reader stands on the target's name); null when iptlb never writes it so. */
  parse(word: string, w: Words): T | null;
}
