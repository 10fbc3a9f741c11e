/**
 * Reading table ip iptlb (or ip6 iptlb) back: `nft -j list table <family> iptlb` parsed into an
 * {@link NftView} (the spawn executor's read; the native executor's read returns the same shape), and
 * the drift comparison of a view with the state file. Pure functions.
 */
import type { DestinationCounters, ProfileReport } from '../../model/report.js';
import type { Profile, Protocol } from '../../model/types.js';
import { canonicalIpv6, formatEndpoint } from '../../model/address.js';
import type { ServedPair } from '../engine.js';
import { weightOf } from '../../model/profile.js';
import {
  NFT_BASE_CHAINS,
  affinitySetTimeout,
  parseDispatchSetName,
  type NftBaseChain,
  type NftEndpoint,
  type NftFamily,
  type NftRule,
  type NftView,
} from './ops.js';
import { renderNftRule } from './render.js';
import { baseContent, planNftProfile } from './plan.js';
import { decodeRuleJson } from './rules/index.js';
import { addrText, counters, obj } from './rules/json.js';

export { decodeRuleJson } from './rules/index.js';

/** A view of a missing table. Only a view of table ip6 iptlb names its family (absent means ip). */
export function emptyNftView(genid = 0, family: NftFamily = 'ip'): NftView {
  return {
    genid,
    ...(family === 'ip6' ? { family } : {}),
    exists: false,
    dispatchSets: [],
    backendMaps: [],
    chains: [],
    foreign: [],
  };
}

/** Parses `nft -j list table <family> iptlb`. An empty input means the table does not exist. */
export function parseNftJson(text: string, genid = 0, family: NftFamily = 'ip'): NftView {
  const view = emptyNftView(genid, family);
  if (!text.trim()) return view;
  const doc = JSON.parse(text) as { nftables?: unknown[] };
  const chains = new Map<string, NftView['chains'][number]>();
  for (const item of doc.nftables ?? []) {
    const o = obj(item);
    if (!o) continue;
    if (o.table) view.exists = true;
    const set = obj(o.set);
    const map = obj(o.map);
    const chain = obj(o.chain);
    const rule = obj(o.rule);
    if (set) {
      const timeout = affinitySetTimeout(String(set.name));
      if (timeout !== null) {
        // Its elements are the clients the kernel added; only the set itself is iptlb's.
        (view.affinitySets ??= []).push({ name: String(set.name), timeout: Number(set.timeout) });
        continue;
      }
      if (!parseDispatchSetName(String(set.name))) {
        view.foreign.push(String(set.name));
        continue;
      }
      const elements = ((set.elem as unknown[]) ?? []).map((x) => {
        const el = obj(obj(x)?.elem);
        const val = (obj(el?.val)?.concat ?? []) as unknown[];
        return { key: { ip: addrText(val[0], family), port: Number(val[1]) }, ...counters(el) };
      });
      view.dispatchSets.push({ name: String(set.name), elements });
    } else if (map) {
      const proto = /^be_(tcp|udp|sctp)$/.exec(String(map.name))?.[1] as Protocol | undefined;
      if (!proto) {
        view.foreign.push(String(map.name));
        continue;
      }
      const elements = ((map.elem as unknown[]) ?? []).map((x) => {
        const [k, v] = x as [unknown, unknown];
        const el = obj(obj(k)?.elem);
        const key = (obj(el?.val)?.concat ?? []) as unknown[];
        const to = (obj(v)?.concat ?? []) as unknown[];
        return {
          vip: { ip: addrText(key[0], family), port: Number(key[1]) },
          index: Number(key[2]),
          to: { ip: addrText(to[0], family), port: Number(to[1]) },
          ...counters(el),
        };
      });
      view.backendMaps.push({ proto, elements });
    } else if (chain) {
      const name = String(chain.name);
      if ((NFT_BASE_CHAINS as readonly string[]).includes(name)) {
        const c = { name: name as NftBaseChain, rules: [] };
        chains.set(name, c);
        view.chains.push(c);
      } else {
        view.foreign.push(name);
      }
    } else if (rule) {
      chains.get(String(rule.chain))?.rules.push(decodeRuleJson(rule, family));
    } else if (!o.table && !o.metainfo) {
      view.foreign.push(Object.keys(o)[0] ?? 'object');
    }
  }
  return view;
}

/** `ip:port` or `[v6]:port`: the text of profiles' sources and destinations. */
const key = (e: NftEndpoint): string => formatEndpoint(e);

/** The view indexed for comparing profiles with it: elements by virtual address, rules by their text. */
interface ViewIndex {
  family: NftFamily;
  table: string;
  /** By `proto/ip:port`: the sets holding the address (one for a profile in step). */
  dispatch: Map<string, { set: string; packets: bigint; bytes: bigint }[]>;
  backends: Map<string, { to: string; packets: bigint; bytes: bigint }>;
  affSets: Map<string, number>;
  haveRules: Set<string>;
  dispatchRules: Set<string>;
  /**
   * Each profile's own rules (round-robin, affinity, logging, masquerade) in the base chains, by owner: looked
   * for per profile in every chain, they made a comparison quadratic in the table (10,000 round-robin profiles).
   */
  ownRules: Map<string, OwnRule[]>;
  ruleKey(chain: string, r: NftRule | { kind: 'foreign'; text: string }): string;
}

/** What the profiles compared so far claim of the view; the rest is orphaned. */
interface Claims {
  dispatch: Set<string>;
  backends: Set<string>;
  affSets: Set<string>;
}

type OwnRule = Extract<NftRule, { owner: string }>;
const isOwnRule = (r: NftRule | { kind: 'foreign' }): r is OwnRule =>
  r.kind === 'log' || r.kind === 'masq' || r.kind === 'rr' || r.kind === 'aff';

function indexView(view: NftView): ViewIndex {
  const family = view.family ?? 'ip';
  const dispatch: ViewIndex['dispatch'] = new Map();
  for (const s of view.dispatchSets) {
    // Keyed by protocol too: a tcp and a udp profile may share an address and port (DNS on :53).
    const proto = parseDispatchSetName(s.name)?.proto ?? 'tcp';
    for (const e of s.elements) {
      const k = `${proto}/${key(e.key)}`;
      dispatch.set(k, [...(dispatch.get(k) ?? []), { set: s.name, packets: e.packets, bytes: e.bytes }]);
    }
  }
  const backends: ViewIndex['backends'] = new Map();
  for (const m of view.backendMaps)
    for (const e of m.elements)
      backends.set(`${m.proto}/${key(e.vip)}/${e.index}`, { to: key(e.to), packets: e.packets, bytes: e.bytes });
  const ownRules: ViewIndex['ownRules'] = new Map();
  for (const c of view.chains)
    for (const r of c.rules) {
      if (!isOwnRule(r)) continue;
      const list = ownRules.get(r.owner);
      if (list) list.push(r);
      else ownRules.set(r.owner, [r]);
    }
  const ruleKey: ViewIndex['ruleKey'] = (chain, r) =>
    `${chain} ${r.kind === 'foreign' ? r.text : renderNftRule(r, family)}`;
  return {
    family,
    table: `table ${family} iptlb`,
    dispatch,
    backends,
    affSets: new Map((view.affinitySets ?? []).map((x) => [x.name, x.timeout])),
    haveRules: new Set(view.chains.flatMap((c) => c.rules.map((r) => ruleKey(c.name, r)))),
    dispatchRules: new Set(
      view.chains.flatMap((c) => c.rules.filter((r) => r.kind === 'dispatch').map((r) => ruleKey(c.name, r))),
    ),
    ownRules,
    ruleKey,
  };
}

/**
 * The profile's connection counters per destination, from its backend slots (a weighted destination's slots add
 * up; a drained one has none) and, for an affinity profile, from its own rules (hits and choices).
 */
function countersOf(
  p: Profile,
  plan: ReturnType<typeof planNftProfile>,
  idx: ViewIndex,
  claims: Claims,
): { destinations: DestinationCounters[]; packets: bigint; bytes: bigint } {
  const vip = key(plan.vip);
  const perDest = new Map<string, DestinationCounters>();
  for (const d of p.destination) {
    const c: DestinationCounters = { destination: d, packets: 0, bytes: 0 };
    if (weightOf(p, d) !== 1) c.weight = weightOf(p, d);
    perDest.set(d, c);
  }
  let packets = 0n;
  let bytes = 0n;
  const add = (d: DestinationCounters | undefined, pk: bigint, by: bigint): void => {
    if (!d) return;
    d.packets += Number(pk);
    d.bytes += Number(by);
    packets += pk;
    bytes += by;
  };
  for (const b of plan.backends) {
    const k = `${plan.proto}/${vip}/${b.index}`;
    claims.backends.add(k);
    const have = idx.backends.get(k);
    if (have) add(perDest.get(key(b.to)), have.packets, have.bytes);
  }
  if (p.affinity) {
    for (const r of idx.ownRules.get(p.name) ?? [])
      if (r.kind === 'aff') add(perDest.get(key(r.to)), r.packets ?? 0n, r.bytes ?? 0n);
    for (const s of plan.affinitySets) claims.affSets.add(s.name);
  }
  return { destinations: [...perDest.values()], packets, bytes };
}

/** Why a profile the kernel partly holds is not as planned; undefined when it is. */
function driftDetail(
  p: Profile,
  plan: ReturnType<typeof planNftProfile>,
  idx: ViewIndex,
  found: { set: string }[],
  mine: { set: string } | undefined,
  haveBackends: number,
  ownRulesHere: number,
): string | undefined {
  const haveOwnRules = plan.rules.filter((r) => idx.haveRules.has(idx.ruleKey(r.chain, r.rule))).length;
  const missingSet = plan.affinitySets.find((x) => idx.affSets.get(x.name) !== x.timeout);
  let detail: string | undefined;
  if (plan.set === null) {
    if (found.length)
      detail = `its address is in set ${found[0].set}, but it is a ${p.affinity ? 'session-affinity' : 'round-robin'} profile`;
    else if (missingSet) detail = `its affinity set ${missingSet.name} is missing`;
    else if (haveBackends !== plan.backends.length)
      detail = `${haveBackends} of its ${plan.backends.length} slots are in map be_${plan.proto}`;
    else if (haveOwnRules !== plan.rules.length)
      detail = `${haveOwnRules} of its ${plan.rules.length} rules (round-robin, affinity, logging, masquerade) are in the base chains`;
  } else if (!mine)
    detail = found.length
      ? `its address is in set ${found[0].set}, not ${plan.set}`
      : `its address is missing from set ${plan.set}`;
  else if (found.length > 1) detail = `its address is in ${found.length} dispatch sets`;
  else if (haveBackends !== plan.backends.length)
    detail = `${haveBackends} of its ${plan.backends.length} destinations are in map be_${plan.proto}`;
  else if (!idx.dispatchRules.has(dispatchRuleOf(p, idx))) detail = `the dispatch rule for set ${plan.set} is missing`;
  else if (haveOwnRules !== plan.rules.length)
    detail = `${haveOwnRules} of its ${plan.rules.length} logging/masquerade rules are in the base chains`;
  // e.g. the round-robin rule of a profile that is random now
  if (!detail && ownRulesHere > plan.rules.length)
    detail = `${ownRulesHere} rules in the base chains are its own, ${plan.rules.length} planned`;
  return detail;
}

/** The text of the dispatch rule the profile's elements need in its base chain. */
function dispatchRuleOf(p: Profile, idx: ViewIndex): string {
  const hook = baseContent([p]).chains;
  return NFT_BASE_CHAINS.flatMap((c) => hook[c].filter((r) => r.kind === 'dispatch').map((r) => idx.ruleKey(c, r)))[0];
}

function compareProfile(p: Profile, view: NftView, idx: ViewIndex, claims: Claims): ProfileReport {
  const plan = planNftProfile(p);
  const vip = key(plan.vip);
  const found = idx.dispatch.get(`${plan.proto}/${vip}`) ?? [];
  claims.dispatch.add(`${plan.proto}/${vip}`);
  const c = countersOf(p, plan, idx, claims);
  // A round-robin (or affinity) profile has no dispatch element: its connections are the sum of its slots (rules).
  const mine = found.find((f) => f.set === plan.set);
  const base =
    plan.set === null
      ? {
          name: p.name,
          destinations: c.destinations,
          packets: Number(c.packets),
          bytes: Number(c.bytes),
          ...(p.affinity ? { affinity: p.affinity } : {}),
        }
      : {
          name: p.name,
          destinations: c.destinations,
          packets: Number(mine?.packets ?? 0n),
          bytes: Number(mine?.bytes ?? 0n),
        };
  const ownRulesHere = idx.ownRules.get(p.name)?.length ?? 0;
  const haveBackends = plan.backends.filter(
    (b) => idx.backends.get(`${plan.proto}/${vip}/${b.index}`)?.to === key(b.to),
  ).length;
  if (found.length === 0 && haveBackends === 0 && ownRulesHere === 0)
    return {
      ...base,
      status: 'missing',
      detail: view.exists ? `no elements in ${idx.table}` : `${idx.table} does not exist`,
    };
  const detail = driftDetail(p, plan, idx, found, mine, haveBackends, ownRulesHere);
  return detail ? { ...base, status: 'modified', detail } : { ...base, status: 'in-sync' };
}

/** What the kernel holds that no profile of the state file claims, and what iptlb did not write. */
function orphansOf(state: Map<string, Profile>, view: NftView, idx: ViewIndex, claims: Claims): ProfileReport[] {
  const orphans = new Map<string, string>();
  for (const [k, sets] of idx.dispatch) {
    const vip = k.slice(k.indexOf('/') + 1);
    if (!claims.dispatch.has(k)) orphans.set(vip, `element ${vip} of set ${sets[0].set}`);
  }
  for (const m of view.backendMaps) {
    for (const e of m.elements) {
      const vip = key(e.vip);
      if (!claims.backends.has(`${m.proto}/${vip}/${e.index}`) && !orphans.has(vip))
        orphans.set(vip, `element ${vip} . ${e.index} of map be_${m.proto}`);
    }
  }
  for (const c of view.chains) {
    for (const r of c.rules) {
      if (isOwnRule(r) && !state.has(r.owner))
        orphans.set(`rule:${r.owner}`, `a ${r.kind} rule of ${r.owner} in chain ${c.name}`);
      if (r.kind === 'foreign')
        orphans.set(
          `foreign:${c.name}:${withoutCounts(r.text)}`,
          `a rule iptlb did not write in its chain ${c.name}: iptlb does not remove it, and refuses a change or sync that rewrites the chain until it is deleted (\`nft -a list chain ${view.family ?? 'ip'} iptlb ${c.name}\` shows its handle)`,
        );
    }
  }
  for (const name of idx.affSets.keys())
    if (!claims.affSets.has(name)) orphans.set(`set:${name}`, `affinity set ${name}`);
  // Another tool's chains, sets and maps (view.foreign) are neither orphans nor drift: every change,
  // sync and migrate keeps them (see NftEngine.othersObjects; `status` lists them apart).
  return [...orphans].sort().map(([name, what]) => ({
    name,
    status: 'orphaned' as const,
    detail: name.startsWith('foreign:') ? what : `${what}, and no profile in the state file owns it`,
    destinations: [],
    packets: 0,
    bytes: 0,
  }));
}

/** A rule's text without the values of its counters, so that it names the rule the same as packets pass. */
const withoutCounts = (text: string): string => text.replace(/\b(pkts|packets|bytes)(["\s:]+)\d+/g, '$1$2N');

/**
 * Every virtual address, protocol and destination the table DNATs to: the backend maps' elements (the
 * dispatch sets' and round-robin rules' slots) and the affinity rules' targets.
 */
export function servedNft(view: NftView): ServedPair[] {
  const text = (e: NftEndpoint): string =>
    formatEndpoint({ ip: e.ip.includes(':') ? (canonicalIpv6(e.ip) ?? e.ip) : e.ip, port: e.port });
  const out: ServedPair[] = [];
  for (const m of view.backendMaps)
    for (const e of m.elements) out.push({ protocol: m.proto, source: text(e.vip), destination: text(e.to) });
  for (const c of view.chains)
    for (const r of c.rules)
      if (r.kind === 'aff') out.push({ protocol: r.proto, source: text(r.vip), destination: text(r.to) });
  return out;
}

/**
 * Each profile of the state compared with table `<view.family> iptlb`, plus what no profile owns,
 * with counters. `state` holds the profiles of that family only.
 */
export function compareNft(state: Map<string, Profile>, view: NftView): ProfileReport[] {
  const idx = indexView(view);
  const claims: Claims = { dispatch: new Set(), backends: new Set(), affSets: new Set() };
  const reports = [...state.values()]
    .sort((a, b) => (a.name < b.name ? -1 : 1))
    .map((p) => compareProfile(p, view, idx, claims));
  return [...reports, ...orphansOf(state, view, idx, claims)];
}

/**
 * What table ip iptlb holds of round-robin profiles that `profiles` do not explain: round-robin rules
 * they do not plan, rules they plan that are missing, and dispatch elements of the addresses of their
 * round-robin profiles. A process
 * killed between its commit and its state write (or between the two steps of a move) leaves them.
 * O(round-robin profiles + dispatch elements).
 */
export function strayRoundRobin(profiles: ReadonlyMap<string, Profile>, view: NftView): string[] {
  const family = view.family ?? 'ip';
  const planned = new Map<string, string>();
  const rrVips = new Set<string>();
  for (const p of profiles.values()) {
    if (p.scheduler !== 'round-robin') continue;
    rrVips.add(`${p.protocol} ${p.source}`);
    for (const r of planNftProfile(p).rules)
      if (r.rule.kind === 'rr') planned.set(`${r.chain} ${renderNftRule(r.rule, family)}`, p.name);
  }
  const out: string[] = [];
  const have = new Set<string>();
  for (const c of view.chains) {
    for (const r of c.rules) {
      if (r.kind !== 'rr') continue;
      const k = `${c.name} ${renderNftRule(r, family)}`;
      have.add(k);
      if (!planned.has(k)) out.push(`a round-robin rule of ${r.owner} in ${c.name}`);
    }
  }
  // …and the other way round: a rule the profiles plan is gone (a delete or a move was committed, its
  // state write was not). Rewriting the chain would bring back the rule without its backends.
  for (const [k, name] of planned) if (!have.has(k)) out.push(`no round-robin rule of ${name}`);
  if (rrVips.size) {
    for (const s of view.dispatchSets) {
      const d = parseDispatchSetName(s.name);
      for (const e of s.elements)
        if (d && rrVips.has(`${d.proto} ${key(e.key)}`)) out.push(`element ${key(e.key)} of set ${s.name}`);
    }
  }
  return out;
}

/**
 * What table `<view.family> iptlb` holds at the address of `p` beyond what `p` plans: its address in a
 * dispatch set other than `p`'s, a rule of that address (round-robin, affinity, logging, masquerade)
 * `p` does not plan, a backend element of that address at an index `p` does not use. A process killed
 * between the two steps of a move (a slot-count change, a scheduler or mode switch) leaves the new
 * version's objects beside the old ones, and the state file holds the old version: a change planned
 * from it (a delete) would remove the old version's objects only. A narrow view (NftExecutor.lookup
 * for `p`'s address) has no backend elements; the dispatch elements and rules are enough to find what
 * such a move leaves (its new version's dispatch element or rule; its backends come with one of them).
 */
export function heldBeyondPlan(p: Profile, view: NftView): string[] {
  if (!view.exists) return [];
  const family = view.family ?? 'ip';
  const plan = planNftProfile(p);
  const at = (e: NftEndpoint): boolean => e.ip === plan.vip.ip && e.port === plan.vip.port;
  const out: string[] = [];
  for (const s of view.dispatchSets) {
    const d = parseDispatchSetName(s.name);
    if (!d || d.proto !== plan.proto || s.name === plan.set) continue;
    if (s.elements.some((e) => at(e.key))) out.push(`element ${key(plan.vip)} of set ${s.name}`);
  }
  const planned = new Set(plan.rules.map((r) => `${r.chain} ${renderNftRule(r.rule, family)}`));
  for (const c of view.chains) {
    for (const r of c.rules) {
      if (r.kind === 'foreign' || r.kind === 'dispatch' || r.proto !== plan.proto || !at(r.vip)) continue;
      if (!planned.has(`${c.name} ${renderNftRule(r, family)}`))
        out.push(`a ${r.kind} rule of ${r.owner} in ${c.name}`);
    }
  }
  const indices = new Set(plan.backends.map((b) => b.index));
  for (const m of view.backendMaps) {
    if (m.proto !== plan.proto) continue;
    const extra = m.elements.filter((e) => at(e.vip) && !indices.has(e.index)).length;
    if (extra) out.push(`${extra} backend element(s) of ${key(plan.vip)} in map be_${m.proto}`);
  }
  return out;
}
