/**
 * The dispatch rule of a base chain, one per hook × protocol × destination count n:
 * `[fib daddr type local] <f> daddr . P dport @set dnat to <f> daddr . P dport . numgen random mod n offset T(n) map
 * @be_P` (see {@link backendOffset}).
 */
import {
  backendMapName,
  backendOffset,
  dispatchSetName,
  parseDispatchSetName,
  type NftFamily,
  type NftRule,
} from '../ops.js';
import { isFibLocal, match, obj, payload, type J, type ReadRule } from './json.js';

type Dispatch = Extract<NftRule, { kind: 'dispatch' }>;

export function render(r: Dispatch, f: NftFamily): string {
  const fib = r.hook === 'loc' ? 'fib daddr type local ' : '';
  const set = dispatchSetName(r.hook, r.proto, r.n);
  return `${fib}${f} daddr . ${r.proto} dport @${set} dnat to ${f} daddr . ${r.proto} dport . numgen random mod ${r.n} offset ${backendOffset(r.n)} map @${backendMapName(r.proto)}`;
}

export function decode(r: ReadRule): Dispatch | null {
  const f = r.family;
  if (r.comment) return null; // iptlb's dispatch rules carry no comment
  const e = [...r.expr];
  const local = e.length === 3 && isFibLocal(e[0]) ? (e.shift(), true) : false;
  const m = e.length === 2 ? match(e[0]) : null;
  const concat = m && Array.isArray(obj(m[0])?.concat) ? (obj(m[0])!.concat as J[]) : null;
  const set = typeof m?.[1] === 'string' && m[1].startsWith('@') ? parseDispatchSetName(m[1].slice(1)) : null;
  const dnat = obj(obj(e[1])?.dnat);
  const map = obj(obj(dnat?.addr)?.map);
  const key = obj(map?.key)?.concat as J[] | undefined;
  const ng = obj(key?.[2]?.numgen);
  const ok =
    set &&
    concat?.length === 2 &&
    payload(concat[0], f, 'daddr') &&
    payload(concat[1], set.proto, 'dport') &&
    (set.hook === 'loc') === local &&
    dnat?.family === f &&
    map?.data === `@${backendMapName(set.proto)}` &&
    key?.length === 3 &&
    payload(key[0], f, 'daddr') &&
    payload(key[1], set.proto, 'dport') &&
    ng?.mode === 'random' &&
    ng.mod === set.n &&
    (ng.offset ?? 0) === backendOffset(set.n);
  return ok ? { kind: 'dispatch', hook: set.hook, proto: set.proto, n: set.n } : null;
}
