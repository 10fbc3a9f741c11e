/** Strict IPv4 `a.b.c.d:port` parsing: dotted quad, each octet 0–255 without leading zeros, port 1–65535. */

export interface Endpoint {
  ip: string;
  port: number;
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

// Exactly the endpoints the checks below accept (octets 0-255 without leading zeros, port 1-65535
// without leading zeros; the range of the port is checked after): one match in the common case.
const OCTET_RE = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const VALID = new RegExp(`^(${OCTET_RE}\\.${OCTET_RE}\\.${OCTET_RE}\\.${OCTET_RE}):([1-9][0-9]{0,4})$`);

/** Results of {@link parseEndpoint}: agents send the same addresses over and over. */
const parsed = new Map<string, Readonly<Endpoint> | string>();

/** Parses `ip:port`. Returns the endpoint (frozen: share it, do not change it) or a reason string. */
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
    if (port <= 65535) return { ip: m[1], port };
  }
  if (text.length > 21) return 'is not an ipv4:port address';
  const colon = text.lastIndexOf(':');
  if (colon < 0) return 'is not an ipv4:port address (no port)';
  const ip = text.slice(0, colon);
  const portText = text.slice(colon + 1);
  if (ip.includes(':') || ip.startsWith('[')) return 'is IPv6; only IPv4 ipv4:port addresses are supported';
  const ipErr = ipv4Problem(ip);
  if (ipErr) return ipErr;
  if (!PORT.test(portText) || Number(portText) > 65535) return 'has a port outside 1-65535';
  return { ip, port: Number(portText) };
}

export function formatEndpoint(e: Endpoint): string {
  return `${e.ip}:${e.port}`;
}
