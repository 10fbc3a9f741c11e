/** Addresses as the save tools print them, in the canonical text iptlb compares. */
import { canonicalIpv6 } from '../../../model/address.js';

/**
 * An address with its prefix made explicit (`/32`, `/128`: ip6tables-save prints `-d` with it, conntrack's
 * `--ctorigdst` without), IPv6 in canonical text (glibc writes some addresses with a dotted IPv4 tail). Null when it
 * is neither family's.
 */
export function cidrText(v: string): string | null {
  const slash = v.indexOf('/');
  const ip = slash < 0 ? v : v.slice(0, slash);
  if (!ip.includes(':')) return slash < 0 ? `${v}/32` : v;
  const c = canonicalIpv6(ip);
  return c === null ? null : `${c}${slash < 0 ? '/128' : v.slice(slash)}`;
}

/** `a.b.c.d:port` as printed, or `[v6]:port` with the address in canonical text; null when malformed. */
export function endpointText(v: string): string | null {
  if (!v.startsWith('[')) return v;
  const close = v.indexOf(']');
  const c = close < 0 ? null : canonicalIpv6(v.slice(1, close));
  return c === null ? null : `[${c}]${v.slice(close + 1)}`;
}
