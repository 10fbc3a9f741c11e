/**
 * The `health` field of a profile: which active check its destinations get. Opt-in: without it (or
 * with `kind: none`) nothing is probed and the state file is byte-identical to one without health.
 */
import { canonicalIpv6, ipv4Problem, unicastProblem, type Endpoint } from '../model/address.js';
import { fieldLabel, inheritedKey, INHERITED, invalid } from '../model/errors.js';
import type { Family } from '../model/address.js';

export type HealthKind = 'tcp' | 'http';
export const HEALTH_KINDS = ['tcp', 'http', 'none'] as const;
/** What happens when every destination of a profile is down: keep all of them (default) or drain the profile. */
export type AllDown = 'keep' | 'drain';

/** A validated health check, as the state file stores it (`kind: none` is stored as no `health` at all). */
export interface HealthConfig {
  /** `tcp`: a connect succeeds; `http`: `GET path` answers with a status in `expect`. */
  kind: HealthKind;
  /** Time between two checks of one destination, ms (10..3600000). Default 2000. */
  intervalMs: number;
  /**
   * A check that has not succeeded after this long failed, ms (1..intervalMs). Default 1000 (or intervalMs when
   * smaller).
   */
  timeoutMs: number;
  /** Consecutive successes that bring a down destination back. Default 2. */
  rise: number;
  /** Consecutive failures that drain a destination. Default 3. */
  fall: number;
  /** Probe this port instead of each destination's own. */
  port?: number;
  /** Probe this address (of the profile's family) instead of each destination's own. */
  address?: string;
  /** http only: the request path. Default `/`. */
  path?: string;
  /** http only: accepted status codes, `200-399` (default), `200` or `200-299`. */
  expect?: string;
  /**
   * Every destination down: `keep` all of them (default, as keepalived and HAProxy), or `drain` the profile. Stored
   * only when `drain`.
   */
  allDown?: 'drain';
}

/** What a caller may pass. */
export interface HealthInput {
  kind?: string;
  intervalMs?: number | string;
  timeoutMs?: number | string;
  rise?: number | string;
  fall?: number | string;
  port?: number | string;
  address?: string;
  path?: string;
  expect?: string;
  allDown?: string;
}

export const HEALTH_DEFAULTS = {
  intervalMs: 2000,
  timeoutMs: 1000,
  rise: 2,
  fall: 3,
  path: '/',
  expect: '200-399',
} as const;
export const HEALTH_KEYS = [
  'kind',
  'intervalMs',
  'timeoutMs',
  'rise',
  'fall',
  'port',
  'address',
  'path',
  'expect',
  'allDown',
] as const;

function q(v: unknown): string {
  try {
    // NaN and Infinity as they are, not as JSON's null.
    const s = typeof v === 'number' && !Number.isFinite(v) ? String(v) : (JSON.stringify(v) ?? String(v));
    return s.length > 64 ? `${s.slice(0, 60)}...` : s;
  } catch {
    return String(v);
  }
}

function int(field: string, v: unknown, lo: number, hi: number, what: string): number {
  const n = typeof v === 'string' && /^[0-9]+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < lo || n > hi)
    throw invalid(field, `${q(v)} must be ${what} from ${lo} to ${hi}`);
  return n;
}

/** Parses `expect`: `NNN` or `NNN-NNN` within 100..599. */
export function parseExpect(text: string): [number, number] | null {
  const m = /^([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?$/.exec(text);
  if (!m) return null;
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  return lo <= hi ? [lo, hi] : null;
}

/**
 * Validates `health` of a profile of `family`. Returns undefined for none (absent, null or `kind: none`).
 * Errors name the field as `health.<key>`.
 */
export function normalizeHealth(input: unknown, family: Family): HealthConfig | undefined {
  if (input === undefined || input === null) return undefined;
  if (typeof input !== 'object' || Array.isArray(input))
    throw invalid('health', `must be an object such as {"kind":"tcp"}, got ${q(input)}`);
  const h = input as Record<string, unknown>;
  for (const k of Object.keys(h)) {
    if (!(HEALTH_KEYS as readonly string[]).includes(k))
      throw invalid(`health.${fieldLabel(k)}`, `is not a health field (known: ${HEALTH_KEYS.join(', ')})`);
  }
  const inherited = inheritedKey(h, HEALTH_KEYS);
  if (inherited !== undefined) throw invalid(`health.${inherited}`, INHERITED);
  const kind = h.kind ?? 'tcp';
  if (kind === 'none') {
    const others = Object.keys(h).filter((k) => k !== 'kind' && h[k] !== undefined);
    if (others.length) throw invalid(`health.${others[0]}`, 'is set but health.kind is "none" (no checks)');
    return undefined;
  }
  if (kind !== 'tcp' && kind !== 'http') throw invalid('health.kind', `${q(kind)} must be tcp, http or none`);
  const intervalMs =
    h.intervalMs === undefined
      ? HEALTH_DEFAULTS.intervalMs
      : int('health.intervalMs', h.intervalMs, 10, 3_600_000, 'a whole number of ms');
  const timeoutMs =
    h.timeoutMs === undefined
      ? Math.min(HEALTH_DEFAULTS.timeoutMs, intervalMs)
      : int('health.timeoutMs', h.timeoutMs, 1, intervalMs, 'a whole number of ms not above health.intervalMs,');
  const rise = h.rise === undefined ? HEALTH_DEFAULTS.rise : int('health.rise', h.rise, 1, 100, 'a whole number');
  const fall = h.fall === undefined ? HEALTH_DEFAULTS.fall : int('health.fall', h.fall, 1, 100, 'a whole number');
  const out: HealthConfig = { kind, intervalMs, timeoutMs, rise, fall };
  if (h.port !== undefined) out.port = int('health.port', h.port, 1, 65535, 'a port');
  if (h.address !== undefined) {
    const a = h.address;
    if (typeof a !== 'string') throw invalid('health.address', `must be an IP address, got ${q(a)}`);
    if (family === 'ipv6') {
      // In brackets too, as IPv6 is written everywhere else (`[2001:db8::1]`; the port is health.port).
      const c = canonicalIpv6(a.length > 2 && a[0] === '[' && a.endsWith(']') ? a.slice(1, -1) : a);
      if (c === null) throw invalid('health.address', `${q(a)} is not an IPv6 address (the profile is IPv6)`);
      out.address = c;
    } else {
      const p = ipv4Problem(a);
      if (p) throw invalid('health.address', `${q(a)} ${p} (the profile is IPv4)`);
      out.address = a;
    }
    // A check of 0.0.0.0 reaches this host, not a destination; a broadcast or multicast one never answers.
    const u = unicastProblem({ family, ip: out.address, port: 0 } as Endpoint);
    if (u) throw invalid('health.address', `${q(a)} ${u}`);
  }
  if (kind === 'http') {
    const path = h.path ?? HEALTH_DEFAULTS.path;
    if (typeof path !== 'string' || !/^\/[\x21-\x7e]{0,1023}$/.test(path))
      throw invalid('health.path', `${q(path)} must start with / and hold printable characters without spaces`);
    // A string, or a number (a status code a hand-written YAML left unquoted); not anything String() turns into
    // one (`[200]` read as "200").
    const e = h.expect;
    const expect =
      e === undefined ? HEALTH_DEFAULTS.expect : typeof e === 'string' || typeof e === 'number' ? String(e) : '';
    if (!parseExpect(expect))
      throw invalid('health.expect', `${q(h.expect)} must be a status code or range such as 200-399`);
    out.path = path;
    out.expect = expect;
  } else {
    if (h.path !== undefined) throw invalid('health.path', 'only applies to health.kind "http"');
    if (h.expect !== undefined) throw invalid('health.expect', 'only applies to health.kind "http"');
  }
  if (h.allDown !== undefined && h.allDown !== 'keep') {
    if (h.allDown !== 'drain') throw invalid('health.allDown', `${q(h.allDown)} must be keep or drain`);
    out.allDown = 'drain';
  }
  return Object.freeze(out);
}

export function sameHealth(a: HealthConfig | undefined, b: HealthConfig | undefined): boolean {
  if (!a || !b) return a === b;
  return HEALTH_KEYS.every((k) => a[k] === b[k]);
}

/** The keys as the state file writes them (sorted, as yaml.v2 does). */
export const HEALTH_KEYS_SORTED = [...HEALTH_KEYS].sort();
