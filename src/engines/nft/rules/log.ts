/** A profile's packet log: `<selector> log prefix "…" level L comment "iptlb:<owner>"`. */
import type { NftFamily, NftRule } from '../ops.js';
import { obj, readSelector, selectorText, type ReadRule } from './json.js';

type Log = Extract<NftRule, { kind: 'log' }>;

/** syslog levels 0-7 by nft's names. */
const LEVELS = ['emerg', 'alert', 'crit', 'err', 'warn', 'notice', 'info', 'debug'];

export function render(r: Log, f: NftFamily): string {
  return `${selectorText(f, r.vip, r.proto, r.local)} log prefix "${r.prefix}" level ${LEVELS[r.level]} comment "iptlb:${r.owner}"`;
}

export function decode(r: ReadRule): Log | null {
  const s = r.owner === undefined ? null : readSelector(r);
  if (!s || s.rest.length !== 1) return null;
  const log = obj(obj(s.rest[0])?.log);
  if (!log || typeof log.prefix !== 'string') return null;
  const level = log.level === undefined ? 4 : LEVELS.indexOf(String(log.level));
  if (level < 0 || !Object.keys(log).every((k) => k === 'prefix' || k === 'level')) return null;
  return { kind: 'log', owner: r.owner!, vip: s.vip, proto: s.proto, local: s.local, prefix: log.prefix, level };
}
