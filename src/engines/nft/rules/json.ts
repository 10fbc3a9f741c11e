/** Reading nft's JSON (`nft -j list`): the small accessors the rule codecs share. */
import { canonicalIpv6 } from '../../../model/address.js';
import type { Protocol } from '../../../model/types.js';
import type { NftEndpoint, NftFamily } from '../ops.js';

export type J = Record<string, unknown>;
export const obj = (v: unknown): J | undefined =>
  v && typeof v === 'object' && !Array.isArray(v) ? (v as J) : undefined;
export const PROTOS: readonly string[] = ['tcp', 'udp', 'sctp'];

/** An address as nft printed it, in iptlb's text: IPv6 in RFC 5952 form (nft may print a dotted tail). */
export function addrText(v: unknown, family: NftFamily): string {
  const s = String(v);
  return family === 'ip6' ? (canonicalIpv6(s) ?? s) : s;
}

export function counters(e: J | undefined): { packets: bigint; bytes: bigint } {
  const c = obj(e?.counter);
  return { packets: BigInt(Number(c?.packets ?? 0)), bytes: BigInt(Number(c?.bytes ?? 0)) };
}

/** `{match:{op,left,right}}` → [left, right] when op is == (or `in` for flags). */
export function match(e: unknown, op = '=='): [J, unknown] | null {
  const m = obj(obj(e)?.match);
  if (!m || m.op !== op) return null;
  const left = obj(m.left);
  return left ? [left, m.right] : null;
}

export const payload = (l: J | undefined, protocol: string, field: string): boolean => {
  const p = obj(l?.payload);
  return p?.protocol === protocol && p?.field === field;
};

export const isFibLocal = (e: unknown): boolean => {
  const m = match(e);
  const fib = obj(m?.[0].fib);
  return (
    !!m &&
    fib?.result === 'type' &&
    Array.isArray(fib.flags) &&
    fib.flags.length === 1 &&
    fib.flags[0] === 'daddr' &&
    m[1] === 'local'
  );
};

/** A rule as read, with the parts every codec looks at. */
export interface ReadRule {
  family: NftFamily;
  expr: unknown[];
  /** The owner from the comment `iptlb:<owner>`, when it has one. */
  owner?: string;
  comment?: string;
}

/**
 * The selector a profile's own rules start with: `<f> daddr V P dport port [fib daddr type local]`. Returns the
 * virtual endpoint, the protocol, whether the rule is for local addresses only (server mode), and the expressions
 * after it; null when the rule does not start so.
 */
export function readSelector(
  r: ReadRule,
): { vip: NftEndpoint; proto: Protocol; local: boolean; rest: unknown[] } | null {
  const [e0, e1, e2] = r.expr;
  const ip = match(e0);
  const port = match(e1);
  const proto = obj(port?.[0].payload)?.protocol;
  if (!ip || !payload(ip[0], r.family, 'daddr') || typeof ip[1] !== 'string') return null;
  if (typeof proto !== 'string' || !PROTOS.includes(proto)) return null;
  if (!payload(port![0], proto, 'dport') || typeof port![1] !== 'number') return null;
  const local = r.expr.length > 2 && isFibLocal(e2);
  return {
    vip: { ip: addrText(ip[1], r.family), port: port![1] },
    proto: proto as Protocol,
    local,
    rest: r.expr.slice(local ? 3 : 2),
  };
}

/** The selector's text, as {@link readSelector} reads it back. */
export function selectorText(f: NftFamily, vip: NftEndpoint, proto: Protocol, local: boolean): string {
  return `${f} daddr ${vip.ip} ${proto} dport ${vip.port}${local ? ' fib daddr type local' : ''}`;
}
