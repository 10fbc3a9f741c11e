/**
 * Endpoint parsing: `a.b.c.d:port` (IPv4: dotted quad, each octet 0–255 without leading zeros) or
 * `[v6]:port` (IPv6 in brackets, any RFC 4291 text form), port 1–65535. IPv6 addresses come back in
 * their RFC 5952 canonical text (lower case, the longest run of zero groups as `::`), so two ways of
 * writing one address are one profile key, and the text equals what the kernel's tools print.
 */

/** Address family of a profile: all its addresses are of one. */
export type Family = 'ipv4' | 'ipv6';

export interface Endpoint {
  /** The address: dotted quad, or canonical IPv6 text without brackets. */
  ip: string;
  port: number;
  family: Family;
}

const OCTET = /^(0|[1-9][0-9]{0,2})$/;
const PORT = /^[1-9][0-9]{0,4}$/;

/** Returns null when `text` is a valid dotted-quad IPv4 address, else the reason it is not. */
export function ipv4Problem(text: string): string | null {
  const parts = text.split('.');
  if (parts.length !== 4) return 'is not a dotted-quad IPv4 address';
  for (const p of parts) {
    if (!OCTET.test(p) || Number(p) > 255) return 'is not a dotted-quad IPv4 address (each octet 0-255)';
  }
  return null;
}

/**
 * The eight 16-bit groups of an IPv6 address in text form (`::` compression and a dotted IPv4 tail
 * allowed; no zone), or null when it is not one.
 */
export function ipv6Groups(text: string): number[] | null {
  if (text.length < 2 || text.length > 45 || !/^[0-9A-Fa-f:.]+$/.test(text)) return null;
  let body = text;
  const tail: number[] = [];
  const lastColon = body.lastIndexOf(':');
  if (body.includes('.')) {
    const v4 = body.slice(lastColon + 1);
    if (ipv4Problem(v4) !== null) return null;
    const o = v4.split('.').map(Number);
    tail.push((o[0] << 8) | o[1], (o[2] << 8) | o[3]);
    body = body.slice(0, lastColon + 1);
    if (body.endsWith(':') && !body.endsWith('::')) body = body.slice(0, -1);
  }
  const halves = body.split('::');
  if (halves.length > 2) return null;
  const groups = (s: string): number[] | null => {
    if (s === '') return [];
    const out: number[] = [];
    for (const g of s.split(':')) {
      if (!/^[0-9A-Fa-f]{1,4}$/.test(g)) return null;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = groups(halves[0]);
  if (head === null) return null;
  if (halves.length === 1) {
    const all = [...head, ...tail];
    return all.length === 8 ? all : null;
  }
  const rest = groups(halves[1]);
  if (rest === null) return null;
  const known = head.length + rest.length + tail.length;
  if (known > 7) return null;
  return [...head, ...Array<number>(8 - known).fill(0), ...rest, ...tail];
}

/**
 * RFC 5952 text of eight groups: lower-case hex, no leading zeros, the first longest run (of two or more) of zero
 * groups as `::`.
 */
export function formatIpv6(g: readonly number[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a: readonly number[]): string => a.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/** The canonical text of an IPv6 address, or null when `text` is not one. */
export function canonicalIpv6(text: string): string | null {
  const g = ipv6Groups(text);
  return g === null ? null : formatIpv6(g);
}

/**
 * The family of an address, CIDR or endpoint text (an IPv6 endpoint is bracketed; IPv6 text has two colons or more,
 * IPv4 text one at most); empty text is IPv4.
 */
export function familyOf(text: string): Family {
  return text.charCodeAt(0) === 91 /* [ */ || (text.includes(':') && text.indexOf(':') !== text.lastIndexOf(':'))
    ? 'ipv6'
    : 'ipv4';
}

// Exactly the endpoints the checks below accept (octets 0-255 without leading zeros, port 1-65535
// without leading zeros; the range of the port is checked after): one match in the common case.
const OCTET_RE = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const VALID = new RegExp(`^(${OCTET_RE}\\.${OCTET_RE}\\.${OCTET_RE}\\.${OCTET_RE}):([1-9][0-9]{0,4})$`);

/** Results of {@link parseEndpoint}: agents send the same addresses over and over. */
const parsed = new Map<string, Readonly<Endpoint> | string>();

/** Parses `ip:port` or `[v6]:port`. Returns the endpoint (frozen: share it, do not change it) or a reason string. */
export function parseEndpoint(text: string): Readonly<Endpoint> | string {
  let r = parsed.get(text);
  if (r === undefined) {
    if (parsed.size >= 65536) parsed.clear();
    r = parseEndpointUncached(text);
    parsed.set(text, typeof r === 'string' ? r : Object.freeze(r));
  }
  return r;
}

function parseEndpointUncached(text: string): Endpoint | string {
  const m = VALID.exec(text);
  if (m !== null) {
    const port = Number(m[6]);
    if (port <= 65535) return { ip: m[1], port, family: 'ipv4' };
  }
  // What a shell variable or a file read may leave around it: said so, not reported as a bad octet or port.
  if (/^\s|\s$/.test(text)) return 'has white space before or after the address';
  if (text.startsWith('[')) return parseIpv6Endpoint(text);
  const colon = text.lastIndexOf(':');
  const ip = text.slice(0, colon);
  if (text.length > 21 || ip.includes(':')) {
    // Only text that holds an IPv6 address is told to bracket it (not `1.2.3.4:80:80`).
    const v6 = canonicalIpv6(text) !== null || (colon > 0 && canonicalIpv6(ip) !== null);
    return v6
      ? 'is an IPv6 address without brackets; write it as [ipv6]:port'
      : 'is not an ipv4:port or [ipv6]:port address';
  }
  if (colon < 0) return 'is not an ipv4:port address (no port)';
  const portText = text.slice(colon + 1);
  const ipErr = ipv4Problem(ip);
  if (ipErr) return ipErr;
  const portErr = portProblem(portText);
  if (portErr) return portErr;
  return { ip, port: Number(portText), family: 'ipv4' };
}

function parseIpv6Endpoint(text: string): Endpoint | string {
  const close = text.indexOf(']');
  if (close < 0) return 'is not a [ipv6]:port address (no closing bracket)';
  const inner = text.slice(1, close);
  if (inner.includes('%')) return 'has an IPv6 zone index; iptlb takes global or loopback addresses only';
  const ip = canonicalIpv6(inner);
  if (ip === null) return 'is not a [ipv6]:port address (the part in brackets is not an IPv6 address)';
  if (text[close + 1] !== ':') return 'is not a [ipv6]:port address (no port after the brackets)';
  const portText = text.slice(close + 2);
  const portErr = portProblem(portText);
  if (portErr) return portErr;
  return { ip, port: Number(portText), family: 'ipv6' };
}

/** What is wrong with a port's text, or null: decimal digits, 1-65535, no leading zero. */
function portProblem(portText: string): string | null {
  if (PORT.test(portText) && Number(portText) <= 65535) return null;
  if (portText === '') return 'has no port after the colon';
  if (!/^[0-9]+$/.test(portText)) return `has a port ${JSON.stringify(portText)} that is not a number (1-65535)`;
  if (/^0[0-9]/.test(portText)) return `has a port ${JSON.stringify(portText)} with a leading zero`;
  return 'has a port outside 1-65535';
}

/** `a.b.c.d:port` or `[v6]:port`. */
export function formatEndpoint(e: { ip: string; port: number }): string {
  return e.ip.includes(':') ? `[${e.ip}]:${e.port}` : `${e.ip}:${e.port}`;
}

/** Why `e` cannot be balanced to or from (not a unicast address a host can use), or null. */
export function unicastProblem(e: Endpoint): string | null {
  if (e.family === 'ipv4') {
    const first = Number(e.ip.slice(0, e.ip.indexOf('.')));
    if (e.ip === '0.0.0.0' || e.ip === '255.255.255.255' || (first >= 224 && first <= 239))
      return 'is not a unicast address';
    return null;
  }
  const g = ipv6Groups(e.ip)!;
  if (g.every((x) => x === 0)) return 'is the unspecified IPv6 address';
  if (g[0] >> 8 === 0xff) return 'is an IPv6 multicast address';
  if ((g[0] & 0xffc0) === 0xfe80)
    return 'is an IPv6 link-local address (it needs an interface; use a global or loopback address)';
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff)
    return 'is an IPv4-mapped IPv6 address; write the IPv4 address instead';
  return null;
}

/** The CIDR of one host: `a.b.c.d/32` or `v6/128`. */
export function hostCidr(e: Endpoint): string {
  return e.family === 'ipv6' ? `${e.ip}/128` : `${e.ip}/32`;
}
