/**
 * Profile validation and normalisation. Every check names the field and the value in one line
 * (`IptlbError` with code EINVAL_PROFILE, or ECONFLICT for clashes with other profiles).
 */
import { formatEndpoint, parseEndpoint, unicastProblem, type Endpoint, type Family } from './address.js';
import { nodeCrypto } from '../platform/builtins.js';
import { fieldLabel, inheritedKey, INHERITED, IptlbError, invalid } from './errors.js';
import { normalizeHealth, sameHealth } from '../health/config.js';
import {
  PROTOCOLS,
  RULES_BACKENDS,
  SCHEDULERS,
  type Profile,
  type ProfileInput,
  type Protocol,
  type RulesBackend,
  type Scheduler,
} from './types.js';

/**
 * A profile name, as users of service names know it (a DNS label, plus `_` and upper case): 1-63
 * letters, digits, `-` and `_`, not starting with `-` (so that it never reads as a flag).
 */
export const NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$/;
/** The rule before issue 13 (1-18 characters, a leading `-` allowed): names of existing profiles stay usable. */
export const LEGACY_NAME_PATTERN = /^[A-Za-z0-9_-]{1,18}$/;
/** Longest name whose chain name is the upper-cased name (`IPTLB_NAT_` + 18 = 28, the x_tables limit). */
export const MAX_PLAIN_CHAIN_NAME = 18;
export const MAX_DESTINATIONS = 1024;
/** Largest weight of one destination. */
export const MAX_WEIGHT = 1000;
/** Largest sum of the weights once divided by their gcd: the number of slots a profile's split uses. */
export const MAX_SLOTS = 1024;
/** Longest session affinity, seconds (one day). */
export const MAX_AFFINITY = 86400;
export const DEFAULTS = { protocol: 'tcp', rulesBackend: 'client', logEnabled: false, logLevel: '4' } as const;

// As iptables' LOG target names them (panic is emerg), and err/warn, which syslog knows too.
const LEVEL_NAMES: Record<string, number> = {
  emerg: 0,
  panic: 0,
  alert: 1,
  crit: 2,
  error: 3,
  err: 3,
  warning: 4,
  warn: 4,
  notice: 5,
  info: 6,
  debug: 7,
};

/** Quotes a value for an error message: JSON-escaped (so always one line) and shortened. */
export function show(value: unknown): string {
  let s: string;
  try {
    s =
      typeof value === 'string'
        ? JSON.stringify(value)
        : typeof value === 'bigint' || (typeof value === 'number' && !Number.isFinite(value))
          ? `${value}` // NaN and Infinity as they are, not as JSON's null
          : (JSON.stringify(value) ?? String(value));
  } catch {
    s = Object.prototype.toString.call(value);
  }
  return s.length > 64 ? `${s.slice(0, 60)}...${s.slice(-1)}` : s;
}

/**
 * Chain name of a profile: `IPTLB_NAT_` + {@link chainSuffix}. A name of up to 18 characters keeps
 * the chain name iptlb has always given it; a longer one gets a stable hash (as kube-proxy does).
 */
const chainNames = new Map<string, string>();
export function chainName(name: string): string {
  let c = chainNames.get(name);
  if (c === undefined) {
    c = `IPTLB_NAT_${chainSuffix(name)}`;
    if (chainNames.size > 100_000) chainNames.clear();
    chainNames.set(name, c);
  }
  return c;
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
/** RFC 4648 base32 (no padding) of the first bytes of `bytes`, `chars` characters long. */
function base32(bytes: Uint8Array, chars: number): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5 && out.length < chars) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
    if (out.length >= chars) break;
  }
  return out;
}

/**
 * What a profile's kernel names (its chain, its LOG prefixes, its recent lists and affinity sets)
 * are made of: up to 18 characters, the name upper-cased with `-` turned into `_` (as always); a
 * longer name: 16 characters of base32 of the SHA-256 of the name (80 bits: no collision in
 * practice; a collision, like one of two names that differ in case only, is refused as a conflict).
 */
export function chainSuffix(name: string): string {
  if (name.length <= MAX_PLAIN_CHAIN_NAME) return name.toUpperCase().replace(/-/g, '_');
  return base32(nodeCrypto().createHash('sha256').update(name, 'utf8').digest(), 16);
}

/**
 * Checks a profile name. New profiles follow {@link NAME_PATTERN}; with `existing` (a name looked
 * up, or read from the state file) the old rule is accepted too, so every state file stays valid.
 */
export function validateName(name: unknown, field = 'name', opts: { existing?: boolean } = {}): string {
  if (typeof name !== 'string') throw invalid(field, `must be a string, got ${show(name)}`);
  if (NAME_PATTERN.test(name) || (opts.existing && LEGACY_NAME_PATTERN.test(name))) return name;
  throw invalid(field, `${show(name)} must be 1-63 characters of A-Z a-z 0-9 _ -, not starting with -`);
}

function endpoint(field: string, value: unknown): Endpoint {
  if (typeof value !== 'string')
    throw invalid(field, `must be an "ip:port" string (ipv4:port or [ipv6]:port), got ${show(value)}`);
  const parsed = parseEndpoint(value);
  if (typeof parsed === 'string') throw invalid(field, `${show(value)} ${parsed}`);
  const why = unicastProblem(parsed);
  if (why) throw invalid(field, `${show(value)} ${why}`);
  return parsed;
}

/** The address family of a validated profile (that of its source; every destination has the same). */
export function familyOfProfile(p: Profile): Family {
  return p.source.charCodeAt(0) === 91 /* [ */ ? 'ipv6' : 'ipv4';
}

/** The profiles of `state` whose addresses are of `family`, by name (a new map). */
export function profilesOf(state: ReadonlyMap<string, Profile>, family: Family): Map<string, Profile> {
  const out = new Map<string, Profile>();
  for (const [n, p] of state) if (familyOfProfile(p) === family) out.set(n, p);
  return out;
}

export function normalizeLogLevel(value: unknown, field = 'logLevel'): string {
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 7) return String(value);
  if (typeof value === 'string') {
    const v = value.trim().toLowerCase();
    if (/^[0-7]$/.test(v)) return v;
    if (v in LEVEL_NAMES) return String(LEVEL_NAMES[v]);
  }
  throw invalid(
    field,
    `${show(value)} is not a syslog level (0-7 or emerg (panic), alert, crit, error, warning, notice, info, debug)`,
  );
}

export function normalizeProtocol(value: unknown, field = 'protocol'): Protocol {
  const v = typeof value === 'string' ? value.toLowerCase() : value;
  if (typeof v === 'string' && (PROTOCOLS as readonly string[]).includes(v)) return v as Protocol;
  throw invalid(field, `${show(value)} is not one of ${PROTOCOLS.join(', ')}`);
}

export function normalizeRulesBackend(value: unknown, field = 'rulesBackend'): RulesBackend {
  const v = typeof value === 'string' ? value.toLowerCase() : value;
  if (typeof v === 'string' && (RULES_BACKENDS as readonly string[]).includes(v)) return v as RulesBackend;
  throw invalid(field, `${show(value)} is not one of ${RULES_BACKENDS.join(', ')}`);
}

/** Splits the CLI's comma-separated destination list; empty items are kept so they are reported. */
export function splitDestinations(text: string): string[] {
  return text.split(',').map((s) => s.trim());
}

export function normalizeScheduler(value: unknown, field = 'scheduler'): Scheduler {
  const v = typeof value === 'string' ? value.toLowerCase() : value;
  if (typeof v === 'string' && (SCHEDULERS as readonly string[]).includes(v)) return v as Scheduler;
  throw invalid(field, `${show(value)} is not one of ${SCHEDULERS.join(', ')}`);
}

/** Session affinity in seconds: an integer 0..86400 (or its decimal text); 0 and absent mean none. */
export function normalizeAffinity(value: unknown, field = 'affinity'): number {
  if (value === undefined || value === null) return 0;
  let v: unknown = value;
  if (typeof v === 'string' && /^[0-9]{1,6}$/.test(v.trim())) v = Number(v.trim());
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_AFFINITY) {
    throw invalid(field, `${show(value)} must be a whole number of seconds from 1 to ${MAX_AFFINITY} (0 for none)`);
  }
  return v;
}

function weightValue(field: string, value: unknown, what: string): number {
  let w: unknown = value;
  // As a port's: decimal digits without a leading zero (`*01` is refused as `:09001` is).
  if (typeof w === 'string' && /^0[0-9]/.test(w))
    throw invalid(field, `${what}: weight ${show(value)} has a leading zero`);
  if (typeof w === 'string' && /^[0-9]{1,7}$/.test(w)) w = Number(w);
  if (typeof w !== 'number' || !Number.isInteger(w) || w < 0 || w > MAX_WEIGHT) {
    throw invalid(field, `${what}: weight ${show(value)} must be an integer from 0 to ${MAX_WEIGHT}`);
  }
  return w;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Weight of destination `d` of `p` (1 unless `weights` says otherwise). */
export function weightOf(p: Profile, d: string): number {
  return p.weights?.[d] ?? 1;
}

export interface Slot {
  destination: string;
  /** The weight divided by the gcd of all non-zero weights: how many slots the destination occupies. */
  slots: number;
}

/**
 * The destinations that take new connections, in list order, each with its reduced weight (weights
 * divided by the gcd of the non-zero ones). Drained destinations (weight 0) are left out. Without
 * weights this is every destination with 1 slot, so plans of existing profiles do not change.
 */
export function slotsOf(p: Profile): Slot[] {
  if (!p.weights) return p.destination.map((destination) => ({ destination, slots: 1 }));
  let g = 0;
  for (const d of p.destination) g = gcd(weightOf(p, d), g);
  return p.destination
    .filter((d) => weightOf(p, d) > 0)
    .map((destination) => ({ destination, slots: weightOf(p, destination) / g }));
}

/** Number of slots of a profile (W): the sum of its reduced weights; the destination count without weights. */
export function slotCount(p: Profile): number {
  if (!p.weights) return p.destination.length;
  let n = 0;
  for (const s of slotsOf(p)) n += s.slots;
  return n;
}

/** `ip:port*W` as written on the command line: the destination and its weight. */
function splitWeight(item: unknown): { text: unknown; weight?: string } {
  // Spaces around the entry are refused as for one without a weight (spaces around `*` are not).
  if (typeof item !== 'string' || item.trim() !== item) return { text: item };
  const at = item.indexOf('*');
  if (at < 0) return { text: item };
  return { text: item.slice(0, at).trim(), weight: item.slice(at + 1).trim() };
}

/** The fields of a profile in {@link plainProfile}'s subset (what {@link plainInput} takes). */
const PLAIN_FIELDS = [
  'name',
  'source',
  'destination',
  'protocol',
  'rulesBackend',
  'logEnabled',
  'logLevel',
  'masquerade',
];
const PLAIN_KEYS = new Set(PLAIN_FIELDS);
const KNOWN_KEYS = new Set([...PLAIN_FIELDS, 'weights', 'scheduler', 'affinity', 'health']);

/**
 * The mark of a profile this module returned: frozen, so it is still valid when it comes back. A
 * non-enumerable own property, so a copy (`{ ...p }`, `Object.assign`, JSON, a structured clone)
 * does not carry it and is validated again. (A WeakSet did the same, but under churn, where every
 * update is a new profile, its entries cost the garbage collector more than the check saves.)
 */
const VALIDATED: unique symbol = Symbol('iptlb.validated');

/** Marks `profile` as made here and freezes it. */
function sealValidated(profile: Profile): Profile {
  Object.defineProperty(profile, VALIDATED, { value: true });
  return Object.freeze(profile);
}

/**
 * Validates one profile on its own (no knowledge of other profiles) and fills in defaults. The
 * result is frozen; passing it again (e.g. to `apply`) costs nothing.
 */
export function validateProfile(input: ProfileInput | unknown, opts: { existing?: boolean } = {}): Profile {
  if (typeof input === 'object' && input !== null && Object.hasOwn(input, VALIDATED)) return input as Profile;
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw invalid('profile', `must be an object, got ${show(input)}`);
  }
  const p = input as Record<string, unknown>;
  const plain = plainInput(p, opts.existing === true);
  if (plain) return plain;
  for (const key of Object.keys(p)) {
    if (!KNOWN_KEYS.has(key))
      throw invalid(fieldLabel(key), `is not a profile field (known: ${[...KNOWN_KEYS].join(', ')})`);
  }
  const inherited = inheritedKey(p, KNOWN_KEYS);
  if (inherited !== undefined) throw invalid(inherited, INHERITED);
  const name = validateName(p.name, 'name', opts);
  if (p.source === undefined || p.source === '')
    throw invalid('source', 'is required (the virtual ipv4:port or [ipv6]:port)');
  const src = endpoint('source', p.source);
  const { destination, weightMap } = validateDestinations(p.destination, src, p.source);
  if (p.weights !== undefined) mergeWeights(p.weights, new Set(destination), weightMap);
  const weights = weightsOf(destination, weightMap);
  const scheduler = normalizeScheduler(p.scheduler ?? 'random');
  const affinity = normalizeAffinity(p.affinity);
  const health = normalizeHealth(p.health, src.family);

  const protocol = normalizeProtocol(p.protocol ?? DEFAULTS.protocol);
  const rulesBackend = normalizeRulesBackend(p.rulesBackend ?? DEFAULTS.rulesBackend);
  const logEnabled = p.logEnabled ?? DEFAULTS.logEnabled;
  if (typeof logEnabled !== 'boolean') throw invalid('logEnabled', `must be true or false, got ${show(logEnabled)}`);
  const logLevel = normalizeLogLevel(p.logLevel ?? DEFAULTS.logLevel);
  const masquerade = p.masquerade ?? false;
  if (typeof masquerade !== 'boolean') throw invalid('masquerade', `must be true or false, got ${show(masquerade)}`);
  if (masquerade && rulesBackend !== 'proxy') {
    throw invalid('masquerade', `only applies to rulesBackend "proxy", not ${show(rulesBackend)}`);
  }
  if (rulesBackend !== 'client' && !opts.existing) checkIpv6Loopback(rulesBackend, src, destination);
  const profile: Profile = {
    name,
    source: formatEndpoint(src),
    destination,
    protocol,
    rulesBackend,
    logEnabled,
    logLevel,
  };
  if (masquerade) profile.masquerade = true;
  if (weights) profile.weights = Object.freeze(weights);
  if (scheduler === 'round-robin') profile.scheduler = 'round-robin';
  if (affinity > 0) profile.affinity = affinity;
  if (health) profile.health = health;
  if (weights) {
    const n = slotCount(profile);
    if (n > MAX_SLOTS)
      throw invalid(
        'weights',
        `need ${n} slots (the weights' sum divided by their gcd); at most ${MAX_SLOTS} are allowed`,
      );
  }
  Object.freeze(destination);
  sealValidated(profile);
  return profile;
}

/**
 * Refuses `::1` in a proxy or server profile: those rules sit in nat PREROUTING, which never balances a connection to
 * or from it. The kernel drops a packet for ::1 that arrives on another interface before PREROUTING, and drops one
 * whose destination PREROUTING turned into ::1 (IPv6 has no route_localnet); this host's own connections to ::1 pass
 * nat OUTPUT only. (127.0.0.0/8 is left alone: `route_localnet` lets PREROUTING send to it.) Profiles already in the
 * state file are not checked, so that such a file still loads.
 */
function checkIpv6Loopback(rulesBackend: RulesBackend, src: Endpoint, destination: readonly string[]): void {
  if (src.family !== 'ipv6') return;
  const why =
    `rulesBackend "${rulesBackend}" balances in nat PREROUTING, and the kernel never routes a packet from another ` +
    `host to ::1; use a global address, or rulesBackend "client" for this host's own connections`;
  if (src.ip === '::1') throw invalid('source', `${show(formatEndpoint(src))} is the IPv6 loopback address: ${why}`);
  const i = destination.findIndex((d) => d.startsWith('[::1]:'));
  if (i >= 0) throw invalid(`destination[${i}]`, `${show(destination[i])} is the IPv6 loopback address: ${why}`);
}

/**
 * {@link validateProfile}'s result for an input already in canonical form within
 * {@link plainProfile}'s subset (what a caller that changes one field of a profile it holds passes:
 * `{ ...profile, destination }`), at about a seventh of the general path's cost; null for anything
 * else, which the general path then checks and reports. The input's destination list is copied, not kept.
 */
export function plainInput(p: Record<string, unknown>, existing: boolean): Profile | null {
  const { name, source, destination, protocol, rulesBackend, logEnabled, logLevel, masquerade } = p;
  if (typeof name !== 'string' || typeof source !== 'string' || !Array.isArray(destination)) return null;
  if (!existing && !NAME_PATTERN.test(name)) return null;
  for (const key in p) if (!PLAIN_KEYS.has(key)) return null;
  // Own properties only (an inherited one goes to the full path, which refuses it): the three every profile has,
  // and an optional one only when it has a value.
  const own = (k: string, v: unknown): boolean => v === undefined || Object.hasOwn(p, k);
  if (!Object.hasOwn(p, 'name') || !Object.hasOwn(p, 'source') || !Object.hasOwn(p, 'destination')) return null;
  if (!own('protocol', protocol) || !own('rulesBackend', rulesBackend) || !own('logEnabled', logEnabled)) return null;
  if (!own('logLevel', logLevel) || !own('masquerade', masquerade)) return null;
  for (let i = 0; i < destination.length; i++) if (typeof destination[i] !== 'string') return null;
  const proto = protocol ?? DEFAULTS.protocol;
  const backend = rulesBackend ?? DEFAULTS.rulesBackend;
  const log = logEnabled ?? DEFAULTS.logEnabled;
  const level = logLevel ?? DEFAULTS.logLevel;
  const masq = masquerade ?? false;
  if (typeof proto !== 'string' || typeof backend !== 'string' || typeof level !== 'string') return null;
  if (typeof log !== 'boolean' || typeof masq !== 'boolean') return null;
  return plainProfile(name, source, (destination as string[]).slice(), proto, backend, log, level, masq);
}

/**
 * Whether `s` is an IPv4 endpoint in canonical text that {@link validateProfile} accepts as it is:
 * `a.b.c.d:port`, octets 0-255 and port 1-65535 without leading zeros, a unicast address. One pass
 * over the characters, no allocation (a state file of 10,000 profiles holds 40,000 of them).
 */
export function isPlainUnicastV4(s: string): boolean {
  const n = s.length;
  let i = 0;
  let first = 0;
  let allZero = true;
  let allOnes = true;
  for (let octet = 0; octet < 4; octet++) {
    const start = i;
    let v = 0;
    while (i < n) {
      const c = s.charCodeAt(i);
      if (c < 48 || c > 57) break;
      v = v * 10 + (c - 48);
      i++;
    }
    const len = i - start;
    if (len === 0 || len > 3 || v > 255 || (len > 1 && s.charCodeAt(start) === 48)) return false;
    if (i >= n || s.charCodeAt(i) !== (octet < 3 ? 46 /* . */ : 58) /* : */) return false;
    i++;
    if (octet === 0) first = v;
    if (v !== 0) allZero = false;
    if (v !== 255) allOnes = false;
  }
  const start = i;
  let port = 0;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
    port = port * 10 + (c - 48);
  }
  const len = i - start;
  if (len === 0 || len > 5 || s.charCodeAt(start) === 48 || port > 65535) return false;
  return !allZero && !allOnes && (first < 224 || first > 239);
}

const OCTET = '(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
/** A first octet that is not multicast (224-239). */
const FIRST_OCTET = '(?:25[0-5]|24[0-9]|2[01][0-9]|22[0-3]|1[0-9][0-9]|[1-9]?[0-9])';
const PORT_1_65535 = '(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})';
/**
 * A regular expression (source, no anchors or groups that capture) matching exactly the strings
 * {@link isPlainUnicastV4} accepts, followed by a newline: a pattern over many profiles checks their
 * addresses in native code.
 */
export const PLAIN_UNICAST_V4_LINE = `(?!0\\.0\\.0\\.0:|255\\.255\\.255\\.255:)${FIRST_OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}:${PORT_1_65535}\\n`;
/** The names {@link validateName} accepts for an existing profile, as a pattern (no anchors, no capture). */
export const EXISTING_NAME = '(?:[A-Za-z0-9_][A-Za-z0-9_-]{0,62}|-[A-Za-z0-9_-]{0,17})';

/**
 * The profile {@link validateProfile} makes of these fields, when they are already exactly what it
 * would make (an IPv4 profile without weights, scheduler, affinity or health, every field in its
 * canonical text): what a state file written by iptlb holds. Null when anything is outside that
 * subset; the caller then validates the fields with {@link validateProfile}, which gives the
 * messages. Costs about a microsecond, against ~10 for the general path. `destination` is kept
 * (frozen) in the profile. `addressesChecked`: the caller matched the name against
 * {@link EXISTING_NAME} and every address against {@link PLAIN_UNICAST_V4_LINE}.
 */
export function plainProfile(
  name: string,
  source: string,
  destination: string[],
  protocol: string,
  rulesBackend: string,
  logEnabled: boolean,
  logLevel: string,
  masquerade: boolean,
  addressesChecked = false,
): Profile | null {
  if (!addressesChecked && !NAME_PATTERN.test(name) && !LEGACY_NAME_PATTERN.test(name)) return null;
  if (protocol !== 'tcp' && protocol !== 'udp' && protocol !== 'sctp') return null;
  if (rulesBackend !== 'client' && rulesBackend !== 'proxy' && rulesBackend !== 'server') return null;
  if (logLevel.length !== 1 || logLevel < '0' || logLevel > '7') return null;
  if (masquerade && rulesBackend !== 'proxy') return null;
  const n = destination.length;
  if (n === 0 || n > MAX_DESTINATIONS || (!addressesChecked && !isPlainUnicastV4(source))) return null;
  for (let i = 0; i < n; i++) {
    const d = destination[i];
    if (d === source || (!addressesChecked && !isPlainUnicastV4(d))) return null;
    if (n <= 16) for (let j = 0; j < i; j++) if (destination[j] === d) return null;
  }
  if (n > 16 && new Set(destination).size !== n) return null;
  const profile: Profile = {
    name,
    source,
    destination: Object.freeze(destination) as string[],
    protocol: protocol as Protocol,
    rulesBackend: rulesBackend as RulesBackend,
    logEnabled,
    logLevel,
  };
  if (masquerade) profile.masquerade = true;
  sealValidated(profile);
  return profile;
}

/**
 * The destinations in canonical text (a comma-separated string or a list), each of the source's family, none twice,
 * none the virtual address itself; with the weights written as `ip:port*W`.
 */
function validateDestinations(
  value: unknown,
  src: Endpoint,
  sourceText: unknown,
): { destination: string[]; weightMap: Map<string, number> } {
  let dests: unknown = value;
  if (typeof dests === 'string') dests = dests === '' ? [] : splitDestinations(dests);
  if (dests === undefined) throw invalid('destination', 'is required (one or more ip:port)');
  if (!Array.isArray(dests)) throw invalid('destination', `must be a list of "ip:port", got ${show(dests)}`);
  if (dests.length === 0) throw invalid('destination', 'must list at least one ip:port');
  if (dests.length > MAX_DESTINATIONS)
    throw invalid('destination', `has ${dests.length} entries; at most ${MAX_DESTINATIONS} are allowed`);
  const seen = new Set<string>();
  const destination: string[] = [];
  const weightMap = new Map<string, number>();
  // Every index, holes of a sparse array included (each is reported as an entry that is not ip:port).
  for (let i = 0; i < dests.length; i++) {
    const item: unknown = dests[i];
    const field = `destination[${i}]`;
    const { text: d, weight } = splitWeight(item);
    const e = endpoint(field, d);
    if (e.family !== src.family) {
      throw invalid(
        field,
        `${show(d)} is ${e.family === 'ipv6' ? 'IPv6' : 'IPv4'} but source ${show(sourceText)} is ${src.family === 'ipv6' ? 'IPv6' : 'IPv4'}; one profile balances one address family`,
      );
    }
    const key = formatEndpoint(e);
    if (seen.has(key)) throw invalid(field, `${show(d)} is listed twice`);
    if (e.ip === src.ip && e.port === src.port) throw invalid(field, `${show(d)} is the virtual address itself`);
    seen.add(key);
    destination.push(key);
    if (weight !== undefined) weightMap.set(key, weightValue('weights', weight, `${field} ${show(item)}`));
  }
  return { destination, weightMap };
}

/** The `weights` map merged into the weights given in the destinations (they must agree where both give one). */
function mergeWeights(w: unknown, destinations: ReadonlySet<string>, weightMap: Map<string, number>): void {
  if (w === null || typeof w !== 'object' || Array.isArray(w))
    throw invalid('weights', `must be a map of "ip:port" to integer weights, got ${show(w)}`);
  // The key of `weights` each destination got its weight from (two spellings of one IPv6 address are one key).
  const spelt = new Map<string, string>();
  for (const [k, v] of Object.entries(w as Record<string, unknown>)) {
    const parsed = parseEndpoint(k);
    const key = typeof parsed === 'string' ? k : formatEndpoint(parsed);
    if (!destinations.has(key)) throw invalid('weights', `${show(k)} is not one of the destinations`);
    const value = weightValue('weights', v, show(k));
    if (weightMap.has(key) && weightMap.get(key) !== value) {
      const other = spelt.get(key);
      throw invalid(
        'weights',
        other === undefined
          ? `${show(k)} has weight ${weightMap.get(key)} in destination and ${value} in weights`
          : `${show(other)} and ${show(k)} are one destination, with weights ${weightMap.get(key)} and ${value}`,
      );
    }
    weightMap.set(key, value);
    spelt.set(key, k);
  }
}

/** The profile's `weights` (only those that are not 1, in destination order), or undefined when all are 1. */
function weightsOf(destination: string[], weightMap: Map<string, number>): Record<string, number> | undefined {
  if (![...weightMap.values()].some((v) => v !== 1)) return undefined;
  const weights: Record<string, number> = {};
  for (const d of destination) {
    const v = weightMap.get(d);
    if (v !== undefined && v !== 1) weights[d] = v;
  }
  if (destination.every((d) => weights[d] === 0))
    throw invalid('weights', 'every destination has weight 0; at least one must take connections');
  return weights;
}

/** Length of a name's {@link chainSuffix}: two names can share a chain only when these are equal. */
function suffixLength(name: string): number {
  return name.length <= MAX_PLAIN_CHAIN_NAME ? name.length : 16;
}

/**
 * Checks that `candidate` can live beside `others` (profiles it does not replace; those named in
 * `skip` are left out): its chain name and its source+protocol must be its own. Throws ECONFLICT
 * naming the other profile. A chain name is computed only for names whose chain could be the same
 * (suffixes of equal length), so a check against thousands of profiles costs a comparison each.
 */
export function checkConflicts(candidate: Profile, others: Iterable<Profile>, skip?: ReadonlySet<string>): void {
  const chain = chainName(candidate.name);
  const len = suffixLength(candidate.name);
  for (const o of others) {
    if (o.name === candidate.name || skip?.has(o.name)) continue;
    if (suffixLength(o.name) === len && chainName(o.name) === chain) {
      throw new IptlbError(
        'ECONFLICT',
        `name: ${show(candidate.name)} maps to chain ${chain}, already used by profile ${show(o.name)}`,
        { field: 'name' },
      );
    }
    if (o.source === candidate.source && o.protocol === candidate.protocol) {
      throw new IptlbError(
        'ECONFLICT',
        `source: ${show(candidate.source)}/${candidate.protocol} of profile ${show(candidate.name)} already belongs to profile ${show(o.name)}`,
        { field: 'source' },
      );
    }
  }
}

/** What {@link checkConflicts} compares of a name: its chain (and the length of the chain's suffix). */
const conflictChain = (name: string): string => `${suffixLength(name)} ${chainName(name)}`;

/**
 * Profiles by chain and by protocol and source: whether {@link checkConflicts} would refuse a profile
 * against them, in O(1) (against every other profile, a change of n profiles was quadratic: `apply --file`
 * of 20,000 took 34 s). The caller leaves out the profiles checkConflicts would skip (the same names).
 */
export class ConflictIndex {
  private readonly chains = new Set<string>();
  private readonly sources = new Set<string>();
  constructor(profiles: Iterable<Profile> = [], skip?: ReadonlySet<string>) {
    for (const p of profiles) if (!skip?.has(p.name)) this.add(p);
  }
  add(p: Profile): void {
    this.chains.add(conflictChain(p.name));
    this.sources.add(`${p.protocol} ${p.source}`);
  }
  hits(p: Profile): boolean {
    return this.chains.has(conflictChain(p.name)) || this.sources.has(`${p.protocol} ${p.source}`);
  }
}

/** Validates a whole set (e.g. a state file): each profile alone, then pairwise conflicts. */
export function checkSet(profiles: Iterable<Profile>): void {
  const byChain = new Map<string, Profile>();
  // By source, one map per protocol (no key to build per profile).
  const bySource = new Map<string, Map<string, Profile>>();
  for (const p of profiles) {
    // The suffix of the chain name (a long name's hash is computed once, cached by chainName).
    const chain = p.name.length <= MAX_PLAIN_CHAIN_NAME ? chainSuffix(p.name) : chainName(p.name).slice(10);
    const prev = byChain.get(chain);
    if (prev) checkConflicts(p, [prev]);
    let sources = bySource.get(p.protocol);
    if (sources === undefined) bySource.set(p.protocol, (sources = new Map()));
    const prevSrc = sources.get(p.source);
    if (prevSrc) checkConflicts(p, [prevSrc]);
    byChain.set(chain, p);
    sources.set(p.source, p);
  }
}

export function sameProfile(a: Profile, b: Profile): boolean {
  return (
    a.name === b.name &&
    a.source === b.source &&
    a.protocol === b.protocol &&
    a.rulesBackend === b.rulesBackend &&
    a.logEnabled === b.logEnabled &&
    a.logLevel === b.logLevel &&
    !!a.masquerade === !!b.masquerade &&
    a.destination.length === b.destination.length &&
    a.destination.every((d, i) => d === b.destination[i]) &&
    (a.scheduler ?? 'random') === (b.scheduler ?? 'random') &&
    (a.affinity ?? 0) === (b.affinity ?? 0) &&
    a.destination.every((d) => weightOf(a, d) === weightOf(b, d)) &&
    sameHealth(a.health, b.health)
  );
}
