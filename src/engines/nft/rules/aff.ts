/**
 * A session-affinity profile's rule (it has no dispatch element and no backends; its rules are self-contained,
 * after the dispatch rules of its chain): `<selector> <pick> update @S { <f> saddr } counter dnat to D comment
 * "iptlb:<owner>"`, where <pick> is `<f> saddr @S` (hit: the client's entry is live, refreshed by the update),
 * `numgen random mod M < K` (weighted cascade), `numgen inc mod M 0` (round-robin cascade) or nothing (the last
 * destination). S is the destination's affinity set.
 */
import { formatEndpoint } from '../../../model/address.js';
import { affinitySetTimeout, type NftFamily, type NftRule } from '../ops.js';
import { addrText, match, obj, payload, readSelector, selectorText, type ReadRule } from './json.js';

type Affinity = Extract<NftRule, { kind: 'aff' }>;

function pickText(r: Affinity, f: NftFamily): string {
  switch (r.pick.mode) {
    case 'hit':
      return ` ${f} saddr @${r.set}`;
    case 'random':
      return ` numgen random mod ${r.pick.mod} < ${r.pick.lt}`;
    case 'inc':
      return ` numgen inc mod ${r.pick.mod} 0`;
    case 'rest':
      return '';
  }
}

export function render(r: Affinity, f: NftFamily): string {
  return `${selectorText(f, r.vip, r.proto, r.local)}${pickText(r, f)} update @${r.set} { ${f} saddr } counter dnat to ${formatEndpoint(r.to)} comment "iptlb:${r.owner}"`;
}

function readPick(e: unknown[], f: NftFamily, set: string): Affinity['pick'] | undefined {
  if (e.length === 0) return { mode: 'rest' };
  if (e.length !== 1) return undefined;
  const hit = match(e[0]);
  const lt = match(e[0], '<');
  const ng = obj((hit ?? lt)?.[0].numgen);
  if (hit && payload(hit[0], f, 'saddr') && hit[1] === `@${set}`) return { mode: 'hit' };
  if (lt && ng?.mode === 'random' && (ng.offset ?? 0) === 0 && typeof ng.mod === 'number' && typeof lt[1] === 'number')
    return { mode: 'random', mod: ng.mod, lt: lt[1] };
  if (hit && ng?.mode === 'inc' && (ng.offset ?? 0) === 0 && typeof ng.mod === 'number' && hit[1] === 0)
    return { mode: 'inc', mod: ng.mod };
  return undefined;
}

export function decode(r: ReadRule): Affinity | null {
  const f = r.family;
  const s = r.owner === undefined ? null : readSelector(r);
  if (!s || s.rest.length < 3 || s.rest.length > 4) return null;
  const e = [...s.rest];
  const dnat = obj(obj(e.pop())?.dnat);
  const counter = obj(obj(e.pop())?.counter);
  const upd = obj(obj(e.pop())?.set);
  const set = typeof upd?.set === 'string' && upd.set.startsWith('@') ? upd.set.slice(1) : undefined;
  const pick = set === undefined ? undefined : readPick(e, f, set);
  const ok =
    pick &&
    set &&
    affinitySetTimeout(set) !== null &&
    upd?.op === 'update' &&
    payload(obj(upd.elem), f, 'saddr') &&
    counter &&
    dnat &&
    typeof dnat.addr === 'string' &&
    typeof dnat.port === 'number' &&
    Object.keys(dnat).every((k) => k === 'addr' || k === 'port');
  if (!ok) return null;
  return {
    kind: 'aff',
    owner: r.owner!,
    vip: s.vip,
    proto: s.proto,
    local: s.local,
    pick,
    set,
    to: { ip: addrText(dnat.addr, f), port: dnat.port as number },
    packets: BigInt(Number(counter.packets ?? 0)),
    bytes: BigInt(Number(counter.bytes ?? 0)),
  };
}
