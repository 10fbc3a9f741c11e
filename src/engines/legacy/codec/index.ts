/**
 * The legacy engine's rule codec: one file per rule kind, each holding both directions (the restore text
 * iptlb writes, and the iptables-save words it reads back). A rule is `[-d A] [-p P] -m … -j …`.
 */
import type { Family } from '../../../model/address.js';
import type { Match, Rule, Target } from '../../../model/types.js';
import { cidrText } from './addresses.js';
import { addrtype } from './addrtype.js';
import { comment } from './comment.js';
import { conntrack } from './conntrack.js';
import { dnat } from './dnat.js';
import type { MatchCodec, TargetCodec } from './kinds.js';
import { log } from './log.js';
import { port } from './port.js';
import { recent } from './recent.js';
import { statistic } from './statistic.js';
import { jump, simple } from './verdict.js';
import { Words } from './words.js';

export { canonicalProbability } from './statistic.js';
export { quote } from './words.js';

const MATCHES = new Map<string, MatchCodec>(
  [port, statistic, comment, recent, addrtype, conntrack].flatMap((c) =>
    c.names.map((n) => [n, c as unknown as MatchCodec] as const),
  ),
);
const TARGETS = [dnat, log, simple, jump] as unknown as TargetCodec[];

/** The rule's arguments (after `-A CHAIN`) for the nat table of `family`. */
export function renderRuleOf(r: Rule, family: Family): string {
  const parts: string[] = [];
  if (r.dst) parts.push(`-d ${r.dst}`);
  if (r.proto) parts.push(`-p ${r.proto}`);
  for (const m of r.matches) parts.push(MATCHES.get(m.name)!.render(m, family));
  parts.push(renderTarget(r.target));
  return parts.join(' ');
}

function renderTarget(t: Target): string {
  return TARGETS.find((c) => c.handles(t.name === 'jump' ? t.chain : t.name))!.render(t);
}

/**
 * Parses the arguments of one rule (`-d … -j …`) in the dialect iptables-save (and ip6tables-save) prints. Returns
 * null when the rule uses anything iptlb does not write (so it can only be handled by its raw text).
 */
export function parseRule(words: string[]): Rule | null {
  const w = new Words(words);
  const rule: Rule = { matches: [], target: { name: 'RETURN' } };
  let target: Target | null = null;
  for (; !w.done; w.advance()) {
    const opt = w.word;
    if (target) return null; // the target is last
    if (opt === '-d') {
      const v = w.next();
      const cidr = v ? cidrText(v) : null;
      if (!cidr) return null;
      rule.dst = cidr;
    } else if (opt === '-p') {
      const v = w.next();
      if (v !== 'tcp' && v !== 'udp' && v !== 'sctp') return null;
      rule.proto = v;
    } else if (opt === '-m') {
      const m = parseMatch(w);
      if (!m) return null;
      rule.matches.push(m);
    } else if (opt === '-j') {
      target = parseTarget(w);
      if (!target || !w.last) return null;
    } else {
      return null;
    }
  }
  if (!target) return null;
  rule.target = target;
  return rule;
}

function parseMatch(w: Words): Match | null {
  const name = w.next();
  const codec = name === undefined ? undefined : MATCHES.get(name);
  return codec ? codec.parse(name as Match['name'], w) : null;
}

function parseTarget(w: Words): Target | null {
  const word = w.next();
  const codec = word === undefined ? undefined : TARGETS.find((c) => c.handles(word));
  return codec ? codec.parse(word!, w) : null;
}
