/**
 * A session-affinity profile's rule (it has no dispatch element and no backends; its rules are self-contained,
 * after the dispatch rules of its chain): `<selector> [<f> saddr @S] update @C { <f> saddr } <pick> update @S
 * { <f> saddr } counter dnat to D comment "iptlb:<owner>"`, where `<f> saddr @S` makes a hit rule (the client's entry
 * is live, refreshed by the updates) and <pick> is `numgen random mod M < K` (weighted cascade), `numgen inc mod M 0`
 * (round-robin cascade) or nothing (the last destination, or a hit). S is the destination's affinity set, C the
 * profile's client set. A fallback rule has neither update: `<selector> <pick> counter dnat to D`. Rules written
 * before the client set (`<selector> <pick> update @S …`) are read back without `gate`.
 */
import { formatEndpoint } from '../../../model/address.js';
import { affinitySetTimeout, type NftFamily, type NftRule } from '../ops.js';
import { addrText, match, obj, payload, readSelector, selectorText, type ReadRule } from './json.js';

type Affinity = Extract<NftRule, { kind: 'aff' }>;

function pickText(r: Affinity): string {
  switch (r.pick.mode) {
    case 'hit':
    case 'rest':
      return '';
    case 'random':
      return ` numgen random mod ${r.pick.mod} < ${r.pick.lt}`;
    case 'inc':
      return ` numgen inc mod ${r.pick.mod} 0`;
  }
}

export function render(r: Affinity, f: NftFamily): string {
  const hit = r.pick.mode === 'hit' ? ` ${f} saddr @${r.set}` : '';
  const gate = r.gate === undefined ? '' : ` update @${r.gate} { ${f} saddr }`;
  const update = r.set === undefined ? '' : ` update @${r.set} { ${f} saddr }`;
  return `${selectorText(f, r.vip, r.proto, r.local)}${hit}${gate}${pickText(r)}${update} counter dnat to ${formatEndpoint(r.to)} comment "iptlb:${r.owner}"`;
}

function readNumgen(e: unknown): Affinity['pick'] | undefined {
  const eq = match(e);
  const lt = match(e, '<');
  const ng = obj((eq ?? lt)?.[0].numgen);
  if (lt && ng?.mode === 'random' && (ng.offset ?? 0) === 0 && typeof ng.mod === 'number' && typeof lt[1] === 'number')
    return { mode: 'random', mod: ng.mod, lt: lt[1] };
  if (eq && ng?.mode === 'inc' && (ng.offset ?? 0) === 0 && typeof ng.mod === 'number' && eq[1] === 0)
    return { mode: 'inc', mod: ng.mod };
  return undefined;
}

/** The set name of `update @S { <f> saddr }`, undefined when `e` is not that. */
function readUpdate(e: unknown, f: NftFamily): string | undefined {
  const upd = obj(obj(e)?.set);
  const set = typeof upd?.set === 'string' && upd.set.startsWith('@') ? upd.set.slice(1) : undefined;
  return set !== undefined &&
    affinitySetTimeout(set) !== null &&
    upd?.op === 'update' &&
    payload(obj(upd.elem), f, 'saddr')
    ? set
    : undefined;
}

export function decode(r: ReadRule): Affinity | null {
  const f = r.family;
  const s = r.owner === undefined ? null : readSelector(r);
  if (!s || s.rest.length < 2 || s.rest.length > 6) return null;
  const e = [...s.rest];
  const dnat = obj(obj(e.pop())?.dnat);
  const counter = obj(obj(e.pop())?.counter);
  if (
    !counter ||
    !dnat ||
    typeof dnat.addr !== 'string' ||
    typeof dnat.port !== 'number' ||
    !Object.keys(dnat).every((k) => k === 'addr' || k === 'port')
  )
    return null;
  // [hit] then one of: nothing or numgen (fallback; not after a hit), update @S or numgen, update @S (rules written
  // before the client set), update @C, update @S or update @C, numgen, update @S.
  const m = match(e[0]);
  const hitSet =
    m && payload(m[0], f, 'saddr') && typeof m[1] === 'string' && m[1].startsWith('@') ? m[1].slice(1) : '';
  const x = hitSet ? e.slice(1) : e;
  const kinds = x.map((v) => (readUpdate(v, f) !== undefined ? 'U' : readNumgen(v) !== undefined ? 'N' : '?')).join('');
  if (!['', 'N', 'U', 'NU', 'UU', 'UNU'].includes(kinds) || (hitSet && kinds.includes('N')) || (hitSet && !kinds))
    return null;
  const ng = kinds.includes('N') ? readNumgen(x[kinds.indexOf('N')]) : undefined;
  const pick: Affinity['pick'] = hitSet ? { mode: 'hit' } : (ng ?? { mode: 'rest' });
  const set = kinds.endsWith('U') ? readUpdate(x[x.length - 1], f) : undefined;
  const gate = kinds.startsWith('UU') || kinds === 'UNU' ? readUpdate(x[0], f) : undefined;
  if (hitSet && hitSet !== set) return null;
  return {
    kind: 'aff',
    owner: r.owner!,
    vip: s.vip,
    proto: s.proto,
    local: s.local,
    pick,
    ...(set !== undefined ? { set } : {}),
    ...(gate !== undefined ? { gate } : {}),
    to: { ip: addrText(dnat.addr, f), port: dnat.port as number },
    packets: BigInt(Number(counter.packets ?? 0)),
    bytes: BigInt(Number(counter.bytes ?? 0)),
  };
}
