/**
 * The agent's decision, pure: from the profiles the store holds (key → JSON) and those the agent
 * owns (its state file), the one change to commit and the profiles refused.
 */
import { IptlbError, type ErrorCode } from '../model/errors.js';
import { chainName, sameProfile, show, validateProfile } from '../model/profile.js';
import type { Profile } from '../model/types.js';
import type { Change } from '../core/core.js';

export const DEFAULT_PREFIX = '/iptlb/v1/';

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

/** A stored profile: valid, or refused with the error that says why. */
export type Parsed = { ok: true; profile: Profile } | { ok: false; code: ErrorCode; message: string };

/**
 * Parses and validates the value of a profile key exactly as `iptlb apply --file` / the API would; the key's last part
 * must be the name.
 */
export function parseStored(name: string, value: string): Parsed {
  try {
    let input: unknown;
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
    if (e instanceof IptlbError) return { ok: false, code: e.code, message: e.message };
    return { ok: false, code: 'EINVAL_PROFILE', message: (e as Error).message };
  }
}

export interface Refusal {
  name: string;
  code: ErrorCode;
  message: string;
}

/**
 * The change from `owned` to what `stored` says. Profiles that are unchanged, and the old versions
 * of owned profiles whose new value is refused, are placed first; then the new and changed ones in
 * name order, each refused (ECONFLICT) when its chain or source/protocol is taken. Owned profiles the
 * store no longer has are removed. Profiles the agent does not own are not in `owned` and never touched.
 */
export function decide(
  stored: ReadonlyMap<string, Parsed>,
  owned: ReadonlyMap<string, Profile>,
): { change: Change; refused: Refusal[] } {
  const byChain = new Map<string, string>();
  const bySource = new Map<string, string>();
  const place = (p: Profile): void => {
    byChain.set(chainName(p.name), p.name);
    bySource.set(`${p.source}/${p.protocol}`, p.name);
  };
  const refused: Refusal[] = [];
  const remove: string[] = [];
  const candidates: Profile[] = [];
  const keptOld = new Map<string, Profile>();
  for (const [name, old] of owned) {
    const s = stored.get(name);
    if (!s) remove.push(name);
    else if (!s.ok) place(old);
    else if (s.profile === old || sameProfile(s.profile, old)) place(old);
    else keptOld.set(name, old);
  }
  for (const [name, s] of stored) {
    if (!s.ok) refused.push({ name, code: s.code, message: s.message });
    else if (!owned.has(name) || keptOld.has(name)) candidates.push(s.profile);
  }
  candidates.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const upsert: Profile[] = [];
  for (const p of candidates) {
    const c = byChain.get(chainName(p.name));
    const o = bySource.get(`${p.source}/${p.protocol}`);
    if ((c !== undefined && c !== p.name) || (o !== undefined && o !== p.name)) {
      refused.push(
        c !== undefined && c !== p.name
          ? {
              name: p.name,
              code: 'ECONFLICT',
              message: `name: ${show(p.name)} maps to chain ${chainName(p.name)}, already used by profile ${show(c)}`,
            }
          : {
              name: p.name,
              code: 'ECONFLICT',
              message: `source: ${show(p.source)}/${p.protocol} already belongs to profile ${show(o)}`,
            },
      );
      const old = keptOld.get(p.name);
      if (old) place(old);
      continue;
    }
    place(p);
    upsert.push(p);
  }
  refused.sort((a, b) => (a.name < b.name ? -1 : 1));
  return { change: { upsert, remove }, refused };
}
