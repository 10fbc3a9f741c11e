/**
 * The operators' side of the fleet: profiles written to and read from etcd, and the hosts' status.
 * Validation is exactly the CLI's (validateProfile, conflicts with the other stored profiles).
 */
import { IptlbError } from '../model/errors.js';
import { NAME_PATTERN, checkConflicts, show, validateName, validateProfile } from '../model/profile.js';
import type { Profile, ProfileInput } from '../model/types.js';
import {
  decide,
  hostKey,
  oneLine,
  parseStored,
  profileKey,
  refusalName,
  type Parsed,
  type Refusal,
  type StoredEntry,
} from './reconcile.js';
import { MAX_TXN_OPS, prefixEnd, type FleetStore, type StoreKV } from './store.js';
import type { HostStatus } from './agent.js';

/** Every key of `prefix`, in pages of `pageSize`, all at the revision of the first page. */
export async function listPrefix(
  store: FleetStore,
  prefix: string,
  pageSize = 1000,
  /** Lists at this revision (default: the current one). */
  at = 0,
): Promise<{ kvs: StoreKV[]; revision: number }> {
  const end = prefixEnd(prefix);
  const kvs: StoreKV[] = [];
  let revision = at;
  let from = prefix;
  for (;;) {
    const page = await store.range(from, end, { limit: pageSize, ...(revision ? { revision } : {}) });
    if (!revision) revision = page.revision;
    kvs.push(...page.kvs);
    if (!page.more || !page.kvs.length) break;
    from = page.kvs[page.kvs.length - 1]!.key + '\0';
  }
  return { kvs, revision };
}

export interface StoredProfile {
  name: string;
  key: string;
  modRevision: number;
  createRevision: number;
  parsed: Parsed;
  /** Set for a valid profile that every agent refuses: an earlier stored profile claims its chain or source. */
  conflict?: Refusal;
}

export async function fleetList(
  store: FleetStore,
  prefix: string,
): Promise<{ profiles: StoredProfile[]; revision: number }> {
  const base = `${prefix}profiles/`;
  const { kvs, revision } = await listPrefix(store, base);
  const profiles: StoredProfile[] = kvs.map((kv) => {
    const name = kv.key.slice(base.length);
    return {
      name,
      key: kv.key,
      modRevision: kv.modRevision,
      createRevision: kv.createRevision,
      parsed: parseStored(name, kv.value),
    };
  });
  // What every agent decides from the store alone (an agent's older versions of refused values aside).
  const { refused } = decide(
    new Map(profiles.map((p) => [p.name, { ...p.parsed, createRevision: p.createRevision }])),
    new Map(),
  );
  const conflicts = new Map(refused.filter((r) => r.code === 'ECONFLICT').map((r) => [r.name, r]));
  for (const p of profiles) {
    const c = p.parsed.ok ? conflicts.get(p.name) : undefined;
    if (c) p.conflict = c;
  }
  return { revision, profiles };
}

/**
 * Writes profiles (validated as the CLI does, conflicts checked against the stored ones) in one transaction; returns
 * its revision.
 */
export async function fleetApply(
  store: FleetStore,
  prefix: string,
  inputs: ProfileInput[],
): Promise<{ revision: number; applied: Profile[] }> {
  const profiles = inputs.map((i) => validateProfile(i));
  const names = new Set<string>();
  for (const p of profiles) {
    if (names.has(p.name))
      throw new IptlbError('EUSAGE', `name: ${show(p.name)} is given twice in one change`, { field: 'name' });
    names.add(p.name);
  }
  if (profiles.length > MAX_TXN_OPS)
    throw new IptlbError(
      'EUSAGE',
      `profiles: ${profiles.length} profiles do not fit one etcd transaction (at most ${MAX_TXN_OPS}); split the file`,
      { field: 'profiles' },
    );
  if (!profiles.length) throw new IptlbError('EUSAGE', 'profiles: nothing to apply', { field: 'profiles' });
  const base = `${prefix}profiles/`;
  for (let attempt = 1; ; attempt++) {
    const { profiles: stored, revision: listed } = await fleetList(store, prefix);
    // Checked against the profiles the agents serve: one every agent refuses (a conflict written past
    // this check) claims nothing, so the profile that holds the address can still be changed.
    const others: Profile[] = [];
    for (const s of stored) if (s.parsed.ok && !s.conflict && !names.has(s.name)) others.push(s.parsed.profile);
    profiles.forEach((p, i) => checkConflicts(p, [...others, ...profiles.slice(0, i)]));
    // And exactly what the agents will decide from the store once these are written (an invalid value
    // keeps its chain and the address it names: every agent would refuse a profile that takes them).
    refuseWhatAgentsRefuse(prefix, stored, profiles, listed);
    // Written only if no profile was stored since the list: two writers at once cannot both store
    // profiles that conflict (each checked against a list without the other's).
    const revision = await store.txn(
      profiles.map((p) => ({ put: profileKey(prefix, p.name), value: JSON.stringify(profileJson(p)) })),
      { start: base, end: prefixEnd(base), revision: listed },
    );
    if (revision !== null) return { revision, applied: profiles };
    if (attempt === APPLY_ATTEMPTS)
      throw new IptlbError(
        'ESTORE',
        `etcd: other writers changed the stored profiles during each of ${attempt} attempts to check and write these; nothing was written`,
      );
  }
}

/**
 * Runs the agents' decision over the store as it will be once `profiles` are written (a new key is created after every
 * stored one; a changed key keeps its place) and refuses (ECONFLICT, nothing written) any of them an agent would
 * refuse.
 */
function refuseWhatAgentsRefuse(prefix: string, stored: StoredProfile[], profiles: Profile[], listed: number): void {
  const after = new Map<string, StoredEntry>(
    stored.map((s) => [s.name, { ...s.parsed, createRevision: s.createRevision }]),
  );
  for (const p of profiles)
    after.set(p.name, { ok: true, profile: p, createRevision: after.get(p.name)?.createRevision ?? listed + 1 });
  const { refused, holders } = decide(after, new Map());
  const mine = new Set(profiles.map((p) => p.name));
  const r = refused.find((x) => mine.has(x.name));
  if (!r) return;
  const h = holders.get(r.name);
  const field = /^(\w+):/.exec(r.message)?.[1];
  throw new IptlbError(
    'ECONFLICT',
    `${r.message}; every agent would refuse profile ${show(r.name)}${h?.invalid ? ` (fix or delete ${profileKey(prefix, h.name)})` : ''}; nothing written`,
    field ? { field } : {},
  );
}

/** How often `fleetApply` lists, checks and writes again when another writer got in between. */
const APPLY_ATTEMPTS = 5;

/** The profile as stored: the state file's and the API's fields, defaults included. */
export function profileJson(p: Profile): Record<string, unknown> {
  return JSON.parse(JSON.stringify(p)) as Record<string, unknown>;
}

/**
 * Deletes profiles in one transaction; input that matches no key is ENOTFOUND (nothing deleted). A profile name is
 * looked up as its key. Anything else names a key under `<prefix>profiles/` that is no profile key (`profiles/a/b`, a
 * name iptlb refuses, written by etcdctl or another tool: every agent refuses it), so that it can be removed as it is
 * listed: by its exact last part, by that part as typed in UTF-8 (keys are read as latin1 bytes), by its whole key,
 * or by the name `fleet list`, `fleet status` and the host keys show ({@link refusalName}: escaped, cut). `deleted`
 * holds the keys' last parts.
 */
export async function fleetDelete(
  store: FleetStore,
  prefix: string,
  names: string[],
): Promise<{ revision: number; deleted: string[] }> {
  const list = [...new Set(names.map((n) => (typeof n === 'string' ? n : validateName(n))))];
  if (!list.length) throw new IptlbError('EUSAGE', 'delete: name the profiles to delete', { field: 'names' });
  if (list.length > MAX_TXN_OPS)
    throw new IptlbError(
      'EUSAGE',
      `names: ${list.length} deletions do not fit one etcd transaction (at most ${MAX_TXN_OPS})`,
      { field: 'names' },
    );
  const base = `${prefix}profiles/`;
  let stored: string[] | undefined; // every key under base, read once when a name is no profile name
  const keys = new Set<string>();
  for (const n of list) {
    if (NAME_PATTERN.test(n)) {
      const k = profileKey(prefix, n);
      const r = await store.range(k, k + '\0', { limit: 1 });
      if (!r.kvs.length)
        throw new IptlbError('ENOTFOUND', `name: profile ${show(n)} does not exist in the store (${k})`, {
          field: 'name',
        });
      keys.add(k);
      continue;
    }
    stored ??= (await listPrefix(store, base)).kvs.map((kv) => kv.key);
    keys.add(storedKeyNamed(stored, base, n));
  }
  const revision = (await store.txn([...keys].map((k) => ({ delete: k })))) as number; // no guard
  return { revision, deleted: [...keys].map((k) => k.slice(base.length)) };
}

/**
 * The key under `base` that `name` (no profile name) designates, among the `stored` ones: the key whose last part it
 * is, as given or as typed in UTF-8; the key it is; else the one key whose name as listed ({@link refusalName}) it is.
 */
function storedKeyNamed(stored: string[], base: string, name: string): string {
  const has = new Set(stored);
  const utf8 = Buffer.from(name, 'utf8').toString('latin1');
  for (const k of [base + name, base + utf8, name, utf8]) if (k.startsWith(base) && has.has(k)) return k;
  const listed = stored.filter((k) => refusalName(k.slice(base.length)) === name);
  if (listed.length === 1) return listed[0]!;
  const shown = `"${oneLine(name, 80)}"`;
  if (listed.length > 1)
    throw new IptlbError(
      'EUSAGE',
      `name: ${shown} is how ${listed.length} keys under ${base} are listed (cut or escaped alike); give one's exact last part (\`iptlb fleet list --json\` shows it); nothing deleted`,
      { field: 'name' },
    );
  throw new IptlbError(
    'ENOTFOUND',
    `name: ${shown} is no stored profile and names no key under ${base} (neither as its last part, its whole key, nor as \`iptlb fleet list\` shows it); nothing deleted`,
    { field: 'name' },
  );
}

export interface HostRow {
  host: string;
  /** `null`: the host key is missing (unknown, never "no rules"). */
  status: HostStatus | null;
  /**
   * Whether the host has applied the target revision: its revision is the target or later, or it is earlier and no
   * profile key changed between them (its host key says how many profile keys its revision held, `profileKeys`).
   */
  converged: boolean;
  /** Set when `converged` holds for a revision below the target: no profile key changed after it up to the target. */
  unchangedSince?: number;
  /**
   * The default target only: the host's revision is the target or later, but it held another number of profile keys
   * than the store holds now (`profileKeys`): a deletion after the target it has not applied. Not converged.
   */
  deletionPending?: boolean;
  /**
   * The host's agent listed no profile key and keeps the profiles it owns (its `error` says so: a wrong prefix, an
   * empty etcd?). Not converged.
   */
  emptyStoreHeld?: boolean;
  /** Profiles revisions the host is behind the target (0 when converged; null when unknown). */
  lag: number | null;
  /** Why a key could not be read. */
  invalid?: string;
}

/**
 * One row per host key (plus the `expect`ed hosts without a key, as unknown) and whether `target`
 * has converged everywhere: applied on every host, and no profile refused by any of them (a refused
 * profile is not served, whatever revision the host applied). Default target: the newest modification
 * revision of a stored profile (a deletion leaves no key: pass the revision `fleet delete` printed).
 */
export async function fleetStatus(
  store: FleetStore,
  prefix: string,
  opts: { revision?: number; expect?: string[] } = {},
): Promise<{
  storeRevision: number;
  target: number;
  hosts: HostRow[];
  /**
   * Profiles refused by hosts that applied the target (from their host keys: the first 100 of each), by name;
   * `kept`: those of `hosts` that still serve an older version of it (the rest serve none).
   */
  refused: { name: string; code: string; hosts: string[]; kept: string[] }[];
  /** Refused profiles a host counted beyond those its key lists (the most of any current host). */
  refusedUnlisted: number;
  /** Every host applied the target and refused no profile. */
  converged: boolean;
}> {
  const hostsBase = `${prefix}hosts/`;
  const { kvs, revision: storeRevision } = await listPrefix(store, hostsBase);
  if (opts.revision !== undefined && opts.revision > storeRevision)
    throw new IptlbError(
      'EUSAGE',
      `revision: ${opts.revision} is past the store's revision ${storeRevision}: no host can have applied it`,
      { field: 'revision' },
    );
  let target = opts.revision ?? 0;
  /** Keys under profiles/ now (the default target only). */
  let storedKeys: number | undefined;
  if (opts.revision === undefined) {
    const { kvs: profiles } = await listPrefix(store, `${prefix}profiles/`);
    for (const kv of profiles) if (kv.modRevision > target) target = kv.modRevision;
    storedKeys = profiles.length;
  }
  const rows = new Map<string, HostRow>();
  for (const kv of kvs) {
    const host = kv.key.slice(hostsBase.length);
    try {
      const st = JSON.parse(kv.value) as HostStatus;
      if (typeof st !== 'object' || st === null || Array.isArray(st)) throw new Error('not a JSON object');
      if (!Number.isSafeInteger(st.revision) || st.revision < 0)
        throw new Error(`revision: must be a whole number, got ${oneLine(JSON.stringify(st.revision) ?? 'none', 40)}`);
      // Written by another version or tool: what the rows show is read defensively (a refusal without a name
      // is counted, not listed).
      const listed: unknown[] = Array.isArray(st.refused) ? st.refused : [];
      st.refused = listed.filter(
        (r): r is Refusal => typeof r === 'object' && r !== null && typeof (r as Refusal).name === 'string',
      );
      if (!Number.isSafeInteger(st.refusedCount) || st.refusedCount < st.refused.length)
        st.refusedCount = listed.length;
      if (typeof st.profiles !== 'number') st.profiles = 0;
      rows.set(host, { host, status: st, converged: st.revision >= target, lag: Math.max(0, target - st.revision) });
    } catch (e) {
      rows.set(host, {
        host,
        status: null,
        converged: false,
        lag: null,
        invalid: `unreadable host key (${(e as Error).message})`,
      });
    }
  }
  // A host below the target holds the target's profiles when no profile key changed in between: revisions reached
  // by other writes (the hosts' own keys, other keys of etcd) change no profile, and an agent advances its revision
  // on profile events only. Told from the profile keys at the target: each older than the host's revision, and as
  // many as its revision held (a key deleted meanwhile is missing; one stored meanwhile, changed, or deleted and
  // stored again is newer). Needs the host's count (agents before 2026-12-06 do not write it: they stay lagging).
  // (The default target is a stored profile's modification: no host below it holds its profiles.)
  const below = [...rows.values()].filter(
    (r) =>
      opts.revision !== undefined &&
      r.status &&
      !r.converged &&
      r.status.revision > 0 &&
      Number.isSafeInteger(r.status.profileKeys) &&
      (r.status.profileKeys as number) >= 0,
  );
  if (below.length) {
    const atTarget = await profileKeysAt(store, prefix, target, below[0]!);
    for (const r of below)
      if (atTarget.newest <= r.status!.revision && atTarget.count === r.status!.profileKeys) {
        r.converged = true;
        r.lag = 0;
        r.unchangedSince = r.status!.revision;
      }
  }
  // The default target is the newest stored key's modification: a deletion after it leaves no key to tell. A host at
  // the target or past it whose revision held another number of keys than the store holds now has not applied a
  // deletion (no key was stored or changed after the target): behind, by how much unknown.
  if (storedKeys !== undefined)
    for (const r of rows.values()) {
      const held = r.status?.profileKeys;
      if (r.converged && Number.isSafeInteger(held) && held !== storedKeys) {
        r.converged = false;
        r.lag = null;
        r.deletionPending = true;
      }
    }
  // An agent holding back an empty list keeps profiles the store does not hold, whatever its revision says.
  for (const r of rows.values())
    if (r.converged && r.status?.emptyStoreHeld === true) {
      r.converged = false;
      r.lag = null;
      r.emptyStoreHeld = true;
    }
  for (const h of opts.expect ?? [])
    if (!rows.has(h)) rows.set(h, { host: h, status: null, converged: false, lag: null });
  const hosts = [...rows.values()].sort((a, b) => (a.host < b.host ? -1 : 1));
  // A host that applied the target but refused profiles does not serve them: not converged either.
  const byName = new Map<string, { name: string; code: string; hosts: string[]; kept: string[] }>();
  let unlisted = 0;
  for (const h of hosts) {
    if (!h.converged || !h.status) continue;
    for (const r of h.status.refused) {
      const e = byName.get(r.name) ?? { name: r.name, code: String(r.code), hosts: [], kept: [] };
      e.hosts.push(h.host);
      if (r.kept === true) e.kept.push(h.host);
      byName.set(r.name, e);
    }
    unlisted = Math.max(unlisted, h.status.refusedCount - h.status.refused.length);
  }
  const refused = [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  return {
    storeRevision,
    target,
    hosts,
    refused,
    refusedUnlisted: unlisted,
    converged: hosts.length > 0 && hosts.every((h) => h.converged) && !refused.length && !unlisted,
  };
}

/**
 * How many keys `<prefix>profiles/` held at `revision`, and the newest modification among them. A compacted revision
 * is EUSAGE naming `revision` (whether a profile changed since `row`'s revision can no longer be read).
 */
async function profileKeysAt(
  store: FleetStore,
  prefix: string,
  revision: number,
  row: HostRow,
): Promise<{ count: number; newest: number }> {
  let kvs: StoreKV[];
  try {
    ({ kvs } = await listPrefix(store, `${prefix}profiles/`, 1000, revision));
  } catch (e) {
    if (!/compacted|OUT_OF_RANGE/i.test(String((e as Error)?.message ?? e))) throw e;
    throw new IptlbError(
      'EUSAGE',
      `revision: ${revision} is compacted in the store, and host ${row.host} applied revision ${row.status!.revision}: whether a profile changed between them cannot be read any more; ask for a later revision (the default is the newest stored profile's)`,
      { field: 'revision' },
    );
  }
  let newest = 0;
  for (const kv of kvs) if (kv.modRevision > newest) newest = kv.modRevision;
  return { count: kvs.length, newest };
}

export { hostKey };
