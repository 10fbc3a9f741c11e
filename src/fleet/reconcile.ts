/**
 * The agent's decision, pure: from the profiles the store holds (key → JSON) and those the agent
 * owns (its state file), the one change to commit and the profiles refused.
 */
import { IptlbError, type ErrorCode } from '../model/errors.js';
import { chainName, normalizeProtocol, sameProfile, show, validateProfile } from '../model/profile.js';
import { formatEndpoint, parseEndpoint, unicastProblem } from '../model/address.js';
import type { Profile, Protocol } from '../model/types.js';
import type { Change } from '../core/core.js';

export const DEFAULT_PREFIX = '/iptlb/v1/';
/**
 * How a host key's `error` begins while its agent holds back a list with no profile key (it keeps the profiles it owns:
 * a wrong prefix, an empty etcd?); `fleet status` counts such a host as not converged.
 */
export const EMPTY_STORE_ERROR = 'empty store:';

/** Key of profile `name` under `prefix` (which ends with `/`). */
export const profileKey = (prefix: string, name: string): string => `${prefix}profiles/${name}`;
export const hostKey = (prefix: string, host: string): string => `${prefix}hosts/${host}`;

/** Checks a key prefix: absolute, ends with `/`. */
export function validatePrefix(prefix: unknown, field = 'prefix'): string {
  if (typeof prefix !== 'string' || !/^\/[\x21-\x7e]*\/$/.test(prefix)) {
    throw new IptlbError(
      'EUSAGE',
      `${field}: ${show(prefix)} must be a key prefix that starts and ends with "/" (printable ASCII, no spaces), e.g. /iptlb/v1/`,
      { field },
    );
  }
  return prefix;
}

/** Checks a host name (the last part of the host key). */
export function validateHost(host: unknown, field = 'host'): string {
  if (typeof host !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/.test(host)) {
    throw new IptlbError('EUSAGE', `${field}: ${show(host)} must be 1-253 letters, digits, ".", "_" or "-"`, { field });
  }
  return host;
}

/** Longest refusal message kept (host key, log, `fleet list`); a longer one is cut. */
export const MAX_REFUSAL_MESSAGE = 300;

/**
 * Text from the store (a refusal's message, a key's name) made fit for one log line and a small host key: control
 * characters (and the line and paragraph separators) escaped as in JSON, cut to `max` characters.
 */
export function oneLine(text: string, max = MAX_REFUSAL_MESSAGE): string {
  // eslint-disable-next-line no-control-regex -- control characters are what it escapes
  const s = text.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029]/g, (c) =>
    c === '\n'
      ? '\\n'
      : c === '\r'
        ? '\\r'
        : c === '\t'
          ? '\\t'
          : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

/** A stored key's name as refusals show it: as it is when it could be a profile name, else made one short line. */
export function refusalName(name: string): string {
  return /^[A-Za-z0-9_-]{1,63}$/.test(name) ? name : oneLine(name, 80);
}

/** A stored profile: valid, or refused with the error that says why. */
export type Parsed =
  | { ok: true; profile: Profile }
  | {
      ok: false;
      code: ErrorCode;
      message: string;
      /** The address an invalid value still claims, when its source (and protocol) are valid. */
      claim?: { source: string; protocol: Protocol };
    };

/** The source/protocol a value claims, read from its own fields when the rest of it is invalid. */
function claimOf(input: unknown): { source: string; protocol: Protocol } | undefined {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) return undefined;
  const r = input as Record<string, unknown>;
  if (typeof r.source !== 'string') return undefined;
  const e = parseEndpoint(r.source);
  if (typeof e === 'string' || unicastProblem(e)) return undefined;
  try {
    return { source: formatEndpoint(e), protocol: r.protocol === undefined ? 'tcp' : normalizeProtocol(r.protocol) };
  } catch {
    return undefined;
  }
}

/**
 * Parses and validates the value of a profile key exactly as `iptlb apply --file` / the API would; the key's last part
 * must be the name.
 */
export function parseStored(name: string, value: string): Parsed {
  let input: unknown;
  try {
    try {
      input = JSON.parse(value);
    } catch (e) {
      throw new IptlbError('EINVAL_PROFILE', `value: not JSON (${(e as Error).message})`, { field: 'value' });
    }
    const p = validateProfile(input);
    if (p.name !== name)
      throw new IptlbError('EINVAL_PROFILE', `name: ${show(p.name)} does not match its key's last part ${show(name)}`, {
        field: 'name',
      });
    return { ok: true, profile: p };
  } catch (e) {
    const claim = claimOf(input);
    const why =
      e instanceof IptlbError
        ? { code: e.code, message: oneLine(e.message) }
        : { code: 'EINVAL_PROFILE' as const, message: oneLine((e as Error).message) };
    return { ok: false, ...why, ...(claim ? { claim } : {}) };
  }
}

export interface Refusal {
  name: string;
  code: ErrorCode;
  message: string;
  /** This host still serves an older version of the profile (what only a host that had it knows). */
  kept?: true;
}

/** A stored profile as the agent knows it: parsed, with the revision that created its key. */
export type StoredEntry = Parsed & { createRevision?: number };

/**
 * The change from `owned` to what `stored` says, decided from the store alone wherever the store
 * decides, so that every host reaches the same answer whatever it held before.
 *
 * Profiles claim their chain and source/protocol in the order their keys were created in the store
 * (etcd's create revision; a key deleted and put again is created again; ties and a missing revision
 * by name): a profile whose claim an earlier one holds is refused (ECONFLICT). So a new profile that
 * takes a serving profile's address is refused on every host, a fresh one included; a serving
 * profile changed to take an older one's address loses it, and its rules go.
 *
 * What only this host knows: an owned profile whose new value is refused (invalid, or a conflict)
 * keeps its old version, in its place in that order, when nothing before it claims what that version
 * does; else it is removed. Owned profiles the store no longer has are removed. Profiles the agent
 * does not own are not in `owned` and never touched.
 */
export function decide(
  stored: ReadonlyMap<string, StoredEntry>,
  owned: ReadonlyMap<string, Profile>,
): { change: Change; refused: Refusal[]; holders: Map<string, { name: string; invalid: boolean }> } {
  const byChain = new Map<string, string>();
  const bySource = new Map<string, string>();
  /** Refused for a conflict: the profile that holds the claim (an invalid value holds its own). */
  const holders = new Map<string, { name: string; invalid: boolean }>();
  let lastHolder = '';
  const held = (other: string): string => {
    const s = stored.get(other);
    return s && !s.ok ? ', stored first (an invalid value: refused, yet it keeps its claim)' : ', stored first';
  };
  /** Why `p` cannot have its claims (an earlier profile holds one), or undefined. */
  const clash = (p: Profile): Refusal | undefined => {
    const c = byChain.get(chainName(p.name));
    if (c !== undefined && c !== p.name) {
      lastHolder = c;
      return {
        name: p.name,
        code: 'ECONFLICT',
        message: `name: ${show(p.name)} maps to chain ${chainName(p.name)}, already used by profile ${show(c)}${held(c)}`,
      };
    }
    const o = bySource.get(`${p.source}/${p.protocol}`);
    if (o !== undefined && o !== p.name) {
      lastHolder = o;
      return {
        name: p.name,
        code: 'ECONFLICT',
        message: `source: ${show(p.source)}/${p.protocol} already belongs to profile ${show(o)}${held(o)}`,
      };
    }
    return undefined;
  };
  const place = (p: Profile): void => {
    byChain.set(chainName(p.name), p.name);
    bySource.set(`${p.source}/${p.protocol}`, p.name);
  };
  const refused: Refusal[] = [];
  const remove: string[] = [];
  const upsert: Profile[] = [];
  for (const name of owned.keys()) if (!stored.has(name)) remove.push(name);
  const order = [...stored].map(([name, s]) => ({ name, s, at: s.createRevision ?? Number.MAX_SAFE_INTEGER }));
  order.sort((a, b) => a.at - b.at || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const { name, s } of order) {
    const old = owned.get(name);
    let keepOld = !!old;
    let refusal: Refusal;
    if (!s.ok) {
      refusal = { name: refusalName(name), code: s.code, message: s.message };
      refused.push(refusal);
      // An invalid value still holds its key's place: its chain, and the address it names when that
      // part of it is valid, so a newer profile does not take them on a host that never had the old
      // version (and every host decides alike).
      if (!byChain.has(chainName(name))) byChain.set(chainName(name), name);
      const key = s.claim && `${s.claim.source}/${s.claim.protocol}`;
      if (key && !bySource.has(key)) bySource.set(key, name);
    } else {
      const same = !!old && (s.profile === old || sameProfile(s.profile, old));
      const why = clash(s.profile);
      if (!why) {
        place(s.profile);
        if (!same) upsert.push(s.profile);
        continue;
      }
      refusal = why;
      refused.push(why);
      holders.set(name, { name: lastHolder, invalid: stored.get(lastHolder)?.ok === false });
      keepOld = !!old && !same;
    }
    // Refused: the old version stays where nothing before it (but itself) claims what it does; else it goes.
    if (keepOld && !clash(old!)) {
      place(old!);
      refusal.kept = true;
    } else if (old) remove.push(name);
  }
  upsert.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  refused.sort((a, b) => (a.name < b.name ? -1 : 1));
  return { change: { upsert, remove }, refused, holders };
}
