/**
 * Proxy mode's masquerade: `ct status dnat ct original <f> daddr V ct original protocol P ct original proto-dst port
 * masquerade comment "iptlb:<owner>"` (nft lists `ct protocol` without `original`: the kernel keeps no direction).
 */
import type { Protocol } from '../../../model/types.js';
import type { NftFamily, NftRule } from '../ops.js';
import { addrText, match, obj, PROTOS, type J, type ReadRule } from './json.js';

type Masquerade = Extract<NftRule, { kind: 'masq' }>;

export function render(r: Masquerade, f: NftFamily): string {
  return (
    `ct status dnat ct original ${f} daddr ${r.vip.ip} ct original protocol ${r.proto} ` +
    `ct original proto-dst ${r.vip.port} masquerade comment "iptlb:${r.owner}"`
  );
}

export function decode(r: ReadRule): Masquerade | null {
  const f = r.family;
  const expr = r.expr;
  if (r.owner === undefined || expr.length !== 5 || obj(expr[4])?.masquerade !== null) return null;
  const st = match(expr[0], 'in');
  const ip = match(expr[1]);
  const pr = match(expr[2]);
  const pd = match(expr[3]);
  const ct = (m: [J, unknown] | null): J | undefined => obj(m?.[0].ct);
  const ok =
    ct(st)?.key === 'status' &&
    st![1] === 'dnat' &&
    ct(ip)?.key === `${f} daddr` &&
    ct(ip)?.dir === 'original' &&
    typeof ip![1] === 'string' &&
    ct(pr)?.key === 'protocol' &&
    typeof pr![1] === 'string' &&
    PROTOS.includes(pr![1]) &&
    ct(pd)?.key === 'proto-dst' &&
    ct(pd)?.dir === 'original' &&
    typeof pd![1] === 'number';
  if (!ok) return null;
  return {
    kind: 'masq',
    owner: r.owner,
    vip: { ip: addrText(ip![1], f), port: pd![1] as number },
    proto: pr![1] as Protocol,
  };
}
