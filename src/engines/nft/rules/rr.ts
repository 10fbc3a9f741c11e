/**
 * A round-robin profile's own rule (numgen inc keeps its counter in the rule, so each profile needs its own for an
 * exact rotation): `<selector> dnat to <f> daddr . P dport . numgen inc mod n offset 1000000+T(n) map @be_P comment
 * "iptlb:<owner>"` (see {@link rrOffset}). It comes after the dispatch rules of its chain.
 */
import { backendMapName, rrOffset, type NftFamily, type NftRule } from '../ops.js';
import { obj, payload, readSelector, selectorText, type J, type ReadRule } from './json.js';

type RoundRobin = Extract<NftRule, { kind: 'rr' }>;

export function render(r: RoundRobin, f: NftFamily): string {
  return (
    `${selectorText(f, r.vip, r.proto, r.local)} dnat to ${f} daddr . ${r.proto} dport . numgen inc mod ${r.n} offset ${rrOffset(r.n)} ` +
    `map @${backendMapName(r.proto)} comment "iptlb:${r.owner}"`
  );
}

export function decode(r: ReadRule): RoundRobin | null {
  const f = r.family;
  const s = r.owner === undefined ? null : readSelector(r);
  if (!s || s.rest.length !== 1) return null;
  const dnat = obj(obj(s.rest[0])?.dnat);
  const map = obj(obj(dnat?.addr)?.map);
  const key = obj(map?.key)?.concat as J[] | undefined;
  const ng = obj(key?.[2]?.numgen);
  const ok =
    dnat?.family === f &&
    map?.data === `@${backendMapName(s.proto)}` &&
    key?.length === 3 &&
    payload(key[0], f, 'daddr') &&
    payload(key[1], s.proto, 'dport') &&
    ng?.mode === 'inc' &&
    typeof ng.mod === 'number' &&
    ng.mod >= 1 &&
    (ng.offset ?? 0) === rrOffset(ng.mod);
  return ok ? { kind: 'rr', owner: r.owner!, vip: s.vip, proto: s.proto, local: s.local, n: ng.mod as number } : null;
}
