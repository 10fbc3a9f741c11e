/**
 * The nft engine's planner: pure functions from profiles to an {@link NftTransaction}. No I/O.
 *
 * A change is planned against the profiles the kernel is believed to hold (`prev`): the touched
 * profiles' elements are deleted and re-added, and the base chains are rewritten only when their
 * content (a pure function of all profiles) differs. If the kernel does not hold what `prev` says,
 * the commit fails as a whole (a missing element is ENOENT) and the caller commits
 * {@link planNftRebuild} instead: the whole table, replaced in one transaction.
 *
 * Each transaction is of one table: `ip iptlb` for IPv4 profiles, `ip6 iptlb` for IPv6 ones. The
 * caller plans each family with that family's profiles; mixing them is an error.
 */
import { parseEndpoint } from '../../model/address.js';
import { chainSuffix, familyOfProfile, slotCount, slotsOf } from '../../model/profile.js';
import type { Profile, Protocol } from '../../model/types.js';
export { backendOffset } from './ops.js';
import {
  affinitySetName,
  affinitySetOp,
  affinitySetTimeout,
  affinityClientSetName,
  backendOffset,
  rrOffset,
  dispatchSetName,
  parseDispatchSetName,
  NFT_BASE_CHAINS,
  type NftBackendElement,
  type NftBaseChain,
  type NftEndpoint,
  type NftFamily,
  type NftHook,
  type NftOp,
  type NftRule,
  type NftTransaction,
  type NftView,
  nftTableFamily,
} from './ops.js';

export const NFT_PROTOCOLS: readonly Protocol[] = ['tcp', 'udp', 'sctp'];

/** The table a profile lives in: `ip` for IPv4, `ip6` for IPv6. */
export function nftFamilyOf(p: Profile): NftFamily {
  return nftTableFamily(familyOfProfile(p));
}

/**
 * The family of a transaction for `profiles`: that of the first one (or `fallback` when there are
 * none). Every profile of `check` must be of it (a planner given both families is a caller's bug).
 */
function familyFor(
  first: Profile | undefined,
  fallback: NftFamily | undefined,
  check: Iterable<Profile | undefined>,
): NftFamily {
  const family = fallback ?? (first ? nftFamilyOf(first) : 'ip');
  for (const p of check) {
    if (p && nftFamilyOf(p) !== family)
      throw new Error(
        `nft plan: profile ${p.name} is ${nftFamilyOf(p) === 'ip6' ? 'IPv6' : 'IPv4'}, not of table ${family} iptlb`,
      );
  }
  return family;
}

export function nftHookOf(p: Profile): NftHook {
  return p.rulesBackend === 'client' ? 'out' : p.rulesBackend === 'proxy' ? 'pre' : 'loc';
}
export function baseChainOf(h: NftHook): NftBaseChain {
  return h === 'out' ? 'output' : 'prerouting';
}

function endpoint(text: string): NftEndpoint {
  const e = parseEndpoint(text);
  if (typeof e === 'string') throw new Error(`nft plan: unvalidated endpoint ${text}`);
  return { ip: e.ip, port: e.port };
}

/** Everything one profile puts into the table. */
export interface NftProfilePlan {
  /**
   * The dispatch set holding the profile's address; null for round-robin profiles, which have their own rule instead.
   */
  set: string | null;
  /** Slots: backend elements the profile uses (W). */
  n: number;
  vip: NftEndpoint;
  proto: Protocol;
  backends: NftBackendElement[];
  /** Rules in the base chains owned by this profile (log, round-robin, affinity, masquerade). */
  rules: { chain: NftBaseChain; rule: NftRule }[];
  /** Affinity sets the profile's rules use (one per destination that takes connections). */
  affinitySets: { name: string; timeout: number }[];
}

export function planNftProfile(p: Profile): NftProfilePlan {
  const vip = endpoint(p.source);
  const hook = nftHookOf(p);
  const proto = p.protocol;
  const n = slotCount(p);
  const rr = p.scheduler === 'round-robin';
  if (p.affinity) return planAffinityProfile(p, vip, hook, n);
  let index = rr ? rrOffset(n) : backendOffset(n);
  // Destination i occupies (reduced weight) consecutive indexes; drained destinations none.
  // Round-robin profiles use an index range of their own (see rrOffset).
  const backends: NftBackendElement[] = [];
  for (const s of slotsOf(p)) {
    const to = endpoint(s.destination);
    for (let k = 0; k < s.slots; k++) backends.push({ vip, index: index++, to });
  }
  const rules: NftProfilePlan['rules'] = logRules(p, vip, hook);
  if (rr) rules.push({ chain: baseChainOf(hook), rule: rrRule(p, vip, n) });
  if (p.masquerade) rules.push({ chain: 'postrouting', rule: { kind: 'masq', owner: p.name, vip, proto } });
  return { set: rr ? null : dispatchSetName(hook, proto, n), n, vip, proto, backends, rules, affinitySets: [] };
}

function logRules(p: Profile, vip: NftEndpoint, hook: NftHook): NftProfilePlan['rules'] {
  if (!p.logEnabled) return [];
  const suffix = chainSuffix(p.name);
  const level = Number(p.logLevel);
  const base = { kind: 'log' as const, owner: p.name, vip, proto: p.protocol, local: hook === 'loc', level };
  return [
    { chain: baseChainOf(hook), rule: { ...base, prefix: `IPTLB:VIP:${suffix}:` } },
    { chain: baseChainOf(hook), rule: { ...base, prefix: `IPTLB:${suffix}:` } },
  ];
}

/**
 * A session-affinity profile: no dispatch element and no backends, only rules of its own (after the
 * dispatch rules): per destination that takes connections, a rule that sends a client whose entry in
 * the destination's set is live back there (refreshing the entry and the client's entry in the profile's client set);
 * then the balancing rules, each recording the client in the client set and then in the set of the destination it
 * chose: a weighted cascade (`numgen random mod R < w`, exact integer odds) or, for round-robin, an nth cascade over
 * the slots (`numgen inc mod S-i 0`, each rule its own counter, as legacy's `statistic --mode nth`); then the same
 * cascade without recording (fallback rules). When the client set is full every recording rule fails at its first
 * `update`, before its pick, whatever it would choose: the client falls through to the fallback cascade and is
 * balanced at the same odds, unrecorded. A destination's set is twice the client set's size and holds only clients
 * of it, so it does not fill first (a full destination set would skew the split).
 */
function planAffinityProfile(p: Profile, vip: NftEndpoint, hook: NftHook, n: number): NftProfilePlan {
  const suffix = chainSuffix(p.name);
  const chain = baseChainOf(hook);
  const timeout = p.affinity!;
  const gate = affinityClientSetName(suffix, timeout);
  const base = { kind: 'aff' as const, owner: p.name, vip, proto: p.protocol, local: hook === 'loc' };
  const slots = slotsOf(p).map((s) => ({ ...s, to: endpoint(s.destination) }));
  const setOf = (to: NftEndpoint): string => affinitySetName(suffix, to, timeout);
  const rules: NftProfilePlan['rules'] = logRules(p, vip, hook);
  for (const s of slots)
    rules.push({ chain, rule: { ...base, pick: { mode: 'hit' }, set: setOf(s.to), gate, to: s.to } });
  const cascade: { pick: Extract<NftRule, { kind: 'aff' }>['pick']; to: NftEndpoint }[] = [];
  if (p.scheduler === 'round-robin') {
    const list = slots.flatMap((s) => Array<NftEndpoint>(s.slots).fill(s.to));
    list.forEach((to, i) => {
      const pick = i < list.length - 1 ? { mode: 'inc' as const, mod: list.length - i } : { mode: 'rest' as const };
      cascade.push({ pick, to });
    });
  } else {
    let rest = n;
    slots.forEach((s, i) => {
      const pick =
        i < slots.length - 1 ? { mode: 'random' as const, mod: rest, lt: s.slots } : { mode: 'rest' as const };
      rest -= s.slots;
      cascade.push({ pick, to: s.to });
    });
  }
  for (const c of cascade) rules.push({ chain, rule: { ...base, pick: c.pick, set: setOf(c.to), gate, to: c.to } });
  for (const c of cascade) rules.push({ chain, rule: { ...base, pick: c.pick, to: c.to } });
  if (p.masquerade) rules.push({ chain: 'postrouting', rule: { kind: 'masq', owner: p.name, vip, proto: p.protocol } });
  return {
    set: null,
    n,
    vip,
    proto: p.protocol,
    backends: [],
    rules,
    affinitySets: [
      ...slots.map((s) => ({ name: setOf(s.to), timeout })),
      ...(slots.length ? [{ name: gate, timeout }] : []),
    ],
  };
}

/** The affinity sets the rules of `content` use, by name, with their timeout. */
export function affinitySetsOf(content: { chains: Record<NftBaseChain, NftRule[]> }): Map<string, number> {
  const out = new Map<string, number>();
  for (const c of NFT_BASE_CHAINS)
    for (const r of content.chains[c]) {
      if (r.kind !== 'aff') continue;
      for (const name of [r.gate, r.set]) if (name !== undefined) out.set(name, affinitySetTimeout(name) ?? 1);
    }
  return out;
}

function rrRule(p: Profile, vip: NftEndpoint, n: number): NftRule {
  return { kind: 'rr', owner: p.name, vip, proto: p.protocol, local: nftHookOf(p) === 'loc', n };
}

/** Whether the profile has rules of its own in the base chains (logging, round-robin, affinity, masquerade). */
export function ownsRules(p: Profile): boolean {
  return p.logEnabled || !!p.masquerade || p.scheduler === 'round-robin' || !!p.affinity;
}

/** The dispatch set of a random profile; null for round-robin and affinity ones. */
export function dispatchSetOf(p: Profile): string | null {
  return p.scheduler === 'round-robin' || p.affinity ? null : dispatchSetName(nftHookOf(p), p.protocol, slotCount(p));
}

type DispatchRule = Extract<NftRule, { kind: 'dispatch' }>;

/**
 * The rules of each base chain for a set of profiles: logging rules by profile name, then one
 * dispatch rule per set in use (plus the sets of `alsoDispatch`, profiles on their way out).
 */
export function baseContent(
  profiles: Iterable<Profile>,
  alsoDispatch: Iterable<Profile> = [],
  /** Dispatch sets that keep their rule whatever the profiles say (they still hold elements in the kernel). */
  alsoSets: Iterable<string> = [],
): { chains: Record<NftBaseChain, NftRule[]>; sets: string[] } {
  const sorted = [...profiles].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const chains: Record<NftBaseChain, NftRule[]> = { output: [], prerouting: [], postrouting: [] };
  const dispatch = new Map<string, DispatchRule>();
  const use = (p: Profile): void => {
    const set = dispatchSetOf(p);
    if (set !== null && !dispatch.has(set))
      dispatch.set(set, { kind: 'dispatch', hook: nftHookOf(p), proto: p.protocol, n: slotCount(p) });
  };
  // Round-robin rules come after the dispatch rules: a leftover rule of a profile that is random now
  // (a process killed between the two steps of a move) never shadows its dispatch element.
  const rrRules: { chain: NftBaseChain; rule: NftRule }[] = [];
  for (const p of sorted) {
    if (ownsRules(p)) {
      for (const r of planNftProfile(p).rules) {
        if (r.rule.kind === 'rr' || r.rule.kind === 'aff') rrRules.push(r);
        else chains[r.chain].push(r.rule);
      }
    }
    use(p);
  }
  for (const p of alsoDispatch) {
    use(p);
    // A round-robin profile on its way out keeps its rule until the second step: a packet that
    // matched it in the older generation and finds its old backends gone falls through to the new one.
    // So does an affinity profile's.
    if (p.scheduler === 'round-robin' || p.affinity) {
      for (const r of planNftProfile(p).rules) {
        if (r.rule.kind !== 'rr' && r.rule.kind !== 'aff') continue;
        if (!rrRules.some((x) => x.chain === r.chain && JSON.stringify(x.rule) === JSON.stringify(r.rule)))
          rrRules.push(r);
      }
    }
  }
  for (const set of alsoSets) {
    const d = parseDispatchSetName(set);
    if (d && !dispatch.has(set)) dispatch.set(set, { kind: 'dispatch', hook: d.hook, proto: d.proto, n: d.n });
  }
  const order: Record<NftHook, number> = { out: 0, pre: 1, loc: 2 };
  const rules = [...dispatch.values()].sort(
    (a, b) =>
      order[a.hook] - order[b.hook] || NFT_PROTOCOLS.indexOf(a.proto) - NFT_PROTOCOLS.indexOf(b.proto) || a.n - b.n,
  );
  for (const r of rules) chains[baseChainOf(r.hook)].push(r);
  for (const r of rrRules) chains[r.chain].push(r.rule);
  return { chains, sets: [...dispatch.keys()].sort() };
}

const sameRules = (a: NftRule[], b: NftRule[]): boolean => JSON.stringify(a) === JSON.stringify(b);

/** Profiles per dispatch set (see {@link planNftChange}'s `usage`). */
export function dispatchSetUsage(profiles: Iterable<Profile>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const p of profiles) countUsage(counts, p, +1);
  return counts;
}
export function countUsage(counts: Map<string, number>, p: Profile, delta: 1 | -1): void {
  const set = dispatchSetOf(p);
  if (set === null) return;
  const n = (counts.get(set) ?? 0) + delta;
  if (n > 0) counts.set(set, n);
  else counts.delete(set);
}

/**
 * Whether the base chains stay as they are: no touched profile has or had logging or masquerade,
 * and no dispatch set starts or stops being used. O(touched), given the usage counts of `prev`.
 */
export function baseUnchanged(
  prev: ReadonlyMap<string, Profile>,
  next: ReadonlyMap<string, Profile>,
  touched: Set<string>,
  usage: Map<string, number>,
): boolean {
  const delta = new Map<string, number>();
  for (const name of touched) {
    for (const [p, d] of [
      [prev.get(name), -1],
      [next.get(name), +1],
    ] as const) {
      if (!p) continue;
      if (ownsRules(p)) return false;
      const set = dispatchSetOf(p)!;
      delta.set(set, (delta.get(set) ?? 0) + d);
    }
  }
  for (const [set, d] of delta) {
    const before = usage.get(set) ?? 0;
    if (before > 0 !== before + d > 0) return false;
  }
  return true;
}

/** Collects element ops, one op per set and kind. */
/** Takes out of `mine` the elements whose key `theirs` has under the same name, handing them to `take`. */
function moveKeyed<K, E>(
  mine: Map<K, E[]>,
  theirs: ReadonlyMap<K, E[]>,
  key: (e: E) => string,
  take: (name: K, elements: E[]) => void,
): void {
  for (const [name, elements] of mine) {
    const keys = new Set((theirs.get(name) ?? []).map(key));
    const shared = elements.filter((e) => keys.has(key(e)));
    if (!shared.length) continue;
    take(name, shared);
    const rest = elements.filter((e) => !keys.has(key(e)));
    if (rest.length) mine.set(name, rest);
    else mine.delete(name);
  }
}

class ElementOps {
  private dispatch = new Map<string, NftEndpoint[]>();
  private backends = new Map<Protocol, NftBackendElement[]>();
  get empty(): boolean {
    return this.dispatch.size === 0 && this.backends.size === 0;
  }
  /** How many dispatch elements of `set` these ops carry. */
  count(set: string): number {
    return this.dispatch.get(set)?.length ?? 0;
  }
  addDispatch(set: string, vip: NftEndpoint): void {
    let d = this.dispatch.get(set);
    if (!d) this.dispatch.set(set, (d = []));
    d.push(vip);
  }
  addBackends(proto: Protocol, elements: NftBackendElement[]): void {
    let b = this.backends.get(proto);
    if (!b) this.backends.set(proto, (b = []));
    b.push(...elements);
  }
  add(plan: NftProfilePlan): void {
    if (plan.set !== null) this.addDispatch(plan.set, plan.vip);
    this.addBackends(plan.proto, plan.backends);
  }
  /** Moves to `to` the elements of these ops that `other` carries too (same set or map, same key). */
  moveShared(other: ElementOps, to: ElementOps): void {
    const vipKey = (e: NftEndpoint): string => `${e.ip} ${e.port}`;
    const backendKey = (b: NftBackendElement): string => `${vipKey(b.vip)} ${b.index}`;
    moveKeyed(this.dispatch, other.dispatch, vipKey, (set, vips) => vips.forEach((v) => to.addDispatch(set, v)));
    moveKeyed(this.backends, other.backends, backendKey, (proto, b) => to.addBackends(proto, b));
  }
  emit(kind: 'add' | 'delete', ops: NftOp[]): void {
    // Deletes: dispatch first (the profile stops matching), then its backends; adds the other way round.
    const dispatch = (): void => {
      for (const [set, elements] of this.dispatch)
        ops.push({ op: kind === 'add' ? 'addDispatchElements' : 'deleteDispatchElements', set, elements });
    };
    const backends = (): void => {
      for (const [proto, elements] of this.backends)
        ops.push({ op: kind === 'add' ? 'addBackendElements' : 'deleteBackendElements', proto, elements });
    };
    if (kind === 'add') {
      backends();
      dispatch();
    } else {
      dispatch();
      backends();
    }
  }
}

/**
 * A profile re-applied in place (same dispatch set or round-robin rule, address, protocol and slot
 * count). When its elements are exactly those it had (a reset with the same destinations and
 * weights), none is deleted or added: the kernel already holds them, and a transaction that deletes
 * no element spares a one-shot process the kernel's wait for an RCU grace period when its netfilter
 * socket closes (see docs/performance.md). Otherwise all of its elements are replaced, as before, so
 * its per-destination counters start again from zero, as on the legacy engine.
 */
function inPlace(o: NftProfilePlan, n: NftProfilePlan, dels: ElementOps, adds: ElementOps, readd: boolean): void {
  const same =
    o.set === n.set &&
    sameEndpoint(o.vip, n.vip) &&
    o.backends.length === n.backends.length &&
    o.backends.every(
      (b, i) =>
        b.index === n.backends[i].index &&
        sameEndpoint(b.vip, n.backends[i].vip) &&
        sameEndpoint(b.to, n.backends[i].to),
    );
  if (same) {
    if (readd) adds.add(n);
    return;
  }
  dels.add(o);
  adds.add(n);
}

function skeleton(ops: NftOp[]): void {
  ops.push({ op: 'addTable' });
  for (const proto of NFT_PROTOCOLS) ops.push({ op: 'addBackendMap', proto });
  for (const name of NFT_BASE_CHAINS) ops.push({ op: 'addBaseChain', name });
}

/** Ops that turn base chains holding `from` into holding `to`: only the chains that differ are rewritten. */
function rewrite(from: ReturnType<typeof baseContent>, to: ReturnType<typeof baseContent>, ops: NftOp[]): void {
  for (const chain of NFT_BASE_CHAINS) {
    if (sameRules(from.chains[chain], to.chains[chain])) continue;
    ops.push({ op: 'flushChain', name: chain });
    for (const rule of to.chains[chain]) ops.push({ op: 'addRule', chain, rule });
  }
}

const tx = (family: NftFamily, ops: NftOp[]): NftTransaction => ({ family, table: 'iptlb', ops });
/** Stands for "the base chains as they are" when they are known not to change. */
const EMPTY_CONTENT: ReturnType<typeof baseContent> = {
  chains: { output: [], prerouting: [], postrouting: [] },
  sets: [],
};
const sameEndpoint = (a: NftEndpoint, b: NftEndpoint): boolean => a.ip === b.ip && a.port === b.port;

/**
 * The transactions that turn a kernel holding `prev` into one holding `next`, touching only the
 * profiles named in `touched` (created, replaced or deleted) plus, when their content changes,
 * the base chains. Usually one transaction. Two when a profile moves to another dispatch set (its
 * number of destinations, mode or protocol changes): the first adds it to the new set (its old
 * elements stay, and its backends for the new count live at other indices), the second removes the
 * old elements. A packet is matched by a rule of the generation it started in, but looks elements up
 * in the newest one; moving a profile between sets in one transaction could let a packet miss both,
 * in two steps it always finds one of them.
 */
export function planNftChange(
  prev: ReadonlyMap<string, Profile>,
  next: ReadonlyMap<string, Profile>,
  touched: Iterable<string>,
  /**
   * Profiles per dispatch set in `prev` ({@link dispatchSetUsage}); with it, a change that leaves the base chains alone
   * costs O(touched), not O(profiles).
   */
  usage?: Map<string, number>,
  /**
   * Elements per dispatch set as the kernel holds them, read just before (for changes of the base
   * chains). A set that keeps elements the profiles do not explain (a process killed after its
   * commit, before writing the state) keeps its rule and is not deleted.
   */
  kernelSets?: ReadonlyMap<string, number>,
  /**
   * The table (`ip` or `ip6`); by default that of the profiles. `prev` and `next` hold profiles of this family only.
   */
  family?: NftFamily,
  /**
   * Touched profiles planned exactly as in `prev`, whose elements are added again all the same: an
   * add of an element the set holds with the same data changes nothing (no `NLM_F_EXCL`), and one
   * the kernel does not hold (a profile written without -run) is added, or fails the batch when its
   * set is missing. Profiles with rules of their own in the base chains are not for this.
   */
  readd?: ReadonlySet<string>,
): NftTransaction[] {
  const names = new Set(touched);
  // O(touched): the touched profiles, old and new, must be of the table's family.
  const fam = familyFor(
    // Only without `family`: iterating a map may cost more than this plan (the CLI's index, see shapesOf).
    family === undefined ? (next.values().next().value ?? prev.values().next().value) : undefined,
    family,
    [...names].flatMap((n) => [prev.get(n), next.get(n)]),
  );
  // The last profile gone: the table goes too, so the ruleset is exactly as before iptlb.
  if (next.size === 0) return prev.size === 0 ? [] : [planNftRemoveAll(fam)];
  const fast = usage !== undefined && prev.size > 0 && baseUnchanged(prev, next, names, usage);
  const before = fast ? EMPTY_CONTENT : baseContent(prev.values());
  const after = fast ? EMPTY_CONTENT : baseContent(next.values());
  const { moving, dels, adds, later } = sortElements(prev, next, names, readd);
  // Sets the kernel still fills after each step, beyond what the profiles say.
  const left = (step: 1 | 2): string[] =>
    [...(kernelSets ?? [])]
      .filter(([set, n]) => n - dels.count(set) + adds.count(set) - (step === 2 ? later.count(set) : 0) > 0)
      .map(([set]) => set);
  const middle = fast ? after : baseContent(next.values(), moving, left(1));
  const final = fast || !kernelSets ? after : baseContent(next.values(), [], left(2));
  const first: NftOp[] = [];
  const newSets = middle.sets.filter((s) => !before.sets.includes(s));
  if (
    prev.size === 0 ||
    newSets.length ||
    NFT_BASE_CHAINS.some((c) => !sameRules(before.chains[c], middle.chains[c]))
  ) {
    skeleton(first);
    for (const name of newSets) first.push({ op: 'addDispatchSet', name });
    // Affinity sets are added (a no-op when they exist, so their clients stay) before the rules that use them.
    for (const [name, timeout] of affinitySetsOf(middle)) first.push(affinitySetOp(name, timeout));
  }
  dels.emit('delete', first);
  adds.emit('add', first);
  rewrite(before, middle, first);
  const known = (c: ReturnType<typeof baseContent>): string[] => [
    ...new Set([...c.sets, ...(kernelSets?.keys() ?? [])]),
  ];
  if (!moving.length) {
    // Without a move nothing is left for a second step: `final` holds what `middle` holds.
    for (const name of known(before).filter((s) => !middle.sets.includes(s))) first.push({ op: 'deleteSet', name });
    dropAffinitySets(before, middle, first);
    return [tx(fam, first)];
  }
  for (const name of known(before).filter((s) => !middle.sets.includes(s))) first.push({ op: 'deleteSet', name });
  dropAffinitySets(before, middle, first);
  const second: NftOp[] = [];
  later.emit('delete', second);
  rewrite(middle, final, second);
  for (const name of middle.sets.filter((s) => !final.sets.includes(s))) second.push({ op: 'deleteSet', name });
  dropAffinitySets(middle, final, second);
  return [tx(fam, first), tx(fam, second)];
}

/**
 * Whether a profile changing from `old` to `now` moves: to another dispatch set or address, or (without a set) to
 * another slot count, mode, protocol or between round-robin and affinity (the round-robin rule's backends must
 * outlive it).
 */
function moves(old: Profile, now: Profile, o: NftProfilePlan, n: NftProfilePlan): boolean {
  if (o.set !== n.set || !sameEndpoint(o.vip, n.vip)) return true;
  return (
    o.set === null &&
    (o.n !== n.n || old.rulesBackend !== now.rulesBackend || o.proto !== n.proto || !!old.affinity !== !!now.affinity)
  );
}

/**
 * The element changes of the touched profiles: deletions and additions of the first step, and deletions left for the
 * second step of a move (the moving profiles' old elements).
 */
function sortElements(
  prev: ReadonlyMap<string, Profile>,
  next: ReadonlyMap<string, Profile>,
  names: Set<string>,
  readd?: ReadonlySet<string>,
): { moving: Profile[]; dels: ElementOps; adds: ElementOps; later: ElementOps } {
  const moving: Profile[] = [];
  const dels = new ElementOps();
  const adds = new ElementOps();
  const later = new ElementOps();
  for (const name of names) {
    const old = prev.get(name);
    const now = next.get(name);
    const o = old && planNftProfile(old);
    const n = now && planNftProfile(now);
    if (o && n && moves(old!, now!, o, n)) {
      // Moves: the new elements now, the old ones in the second step. Backends that share keys
      // (same address, protocol and count: only the mode or the scheduler changed) are replaced in place.
      moving.push(old!);
      adds.add(n);
      if (o.set !== null) later.addDispatch(o.set, o.vip);
      const sameKeys =
        o.proto === n.proto &&
        sameEndpoint(o.vip, n.vip) &&
        o.n === n.n &&
        (o.set === null) === (n.set === null) &&
        !old!.affinity &&
        !now!.affinity;
      (sameKeys ? dels : later).addBackends(o.proto, o.backends);
      continue;
    }
    if (o && n) {
      inPlace(o, n, dels, adds, readd?.has(name) ?? false);
      continue;
    }
    if (o) dels.add(o);
    if (n) adds.add(n);
  }
  // An element a moving profile leaves that another profile takes in this change (two profiles that
  // swap addresses, or one that takes the address another leaves): deleted in the first step, before
  // the add of the same key, not in the second, where it would delete what the other now uses.
  later.moveShared(adds, dels);
  return { moving, dels, adds, later };
}

/**
 * Deletes the affinity sets the rules of `from` use and those of `to` do not (after the rewrite that drops those
 * rules).
 */
function dropAffinitySets(
  from: ReturnType<typeof baseContent>,
  to: ReturnType<typeof baseContent>,
  ops: NftOp[],
): void {
  const keep = affinitySetsOf(to);
  for (const name of affinitySetsOf(from).keys()) if (!keep.has(name)) ops.push({ op: 'deleteSet', name });
}

/**
 * The whole table for `profiles`, replacing what iptlb holds in table `<family> iptlb` (another tool's
 * chains, sets and maps there stay: see rebuildStart), in one transaction.
 * `family` defaults to that of the profiles (`ip` when there are none); all must be of it.
 */
export function planNftRebuild(
  profiles: Iterable<Profile>,
  expectGenid?: number,
  family?: NftFamily,
  view?: NftView,
): NftTransaction {
  const list = [...profiles];
  const fam = familyFor(list[0], family, list);
  const ops = rebuildStart(view, fam);
  skeleton(ops);
  const content = baseContent(list);
  for (const name of content.sets) ops.push({ op: 'addDispatchSet', name });
  for (const [name, timeout] of affinitySetsOf(content)) ops.push(affinitySetOp(name, timeout));
  const adds = new ElementOps();
  for (const p of list) adds.add(planNftProfile(p));
  adds.emit('add', ops);
  for (const chain of NFT_BASE_CHAINS)
    for (const rule of content.chains[chain]) ops.push({ op: 'addRule', chain, rule });
  return expectGenid === undefined
    ? { family: fam, table: 'iptlb', ops }
    : { family: fam, table: 'iptlb', ops, expectGenid };
}

/**
 * How a rebuild begins. Given the table as read (`view`), it empties iptlb's content in place
 * ({@link planNftClear}: the base chains flushed, the backend maps' elements, the dispatch and
 * affinity sets deleted) and the rest of the transaction fills it again. The table and its base
 * chains stay, and so do their hooks: deleting and adding the table in one transaction unregisters
 * the NAT hooks and registers new ones, and a connection that opened at that moment went through
 * no NAT at all (refused: an in-memory agent's restart beside traffic, test/kernel/rel13.test.ts
 * "10:", failed in 2 of 75 runs in a loop). Another tool's chains, sets and maps in the table (and
 * their rules and elements) stay too: a rebuild (`sync`, `migrate --to nft`, the repair after a
 * flush) removes only what iptlb made. (A rule another tool wrote in one of iptlb's base chains
 * would go with the flush: the engine refuses such a rebuild before planning it, see
 * NftEngine.refuseForeignRules.) Without a view, or no table, the table is deleted first.
 */
function rebuildStart(view: NftView | undefined, family: NftFamily): NftOp[] {
  if (!view?.exists) return [{ op: 'addTable' }, { op: 'deleteTable' }];
  return [{ op: 'addTable' }, ...planNftClear(view, family).ops];
}

/**
 * The transaction that removes table `<family> iptlb` entirely (used by migrate, and when a family's last profile
 * goes).
 */
export function planNftRemoveAll(family: NftFamily = 'ip'): NftTransaction {
  return { family, table: 'iptlb', ops: [{ op: 'addTable' }, { op: 'deleteTable' }] };
}

/**
 * Whether `view` holds anything of iptlb's that serves or keeps a profile: a rule iptlb wrote in a base chain, a
 * dispatch or affinity set, or an element of a backend map (a narrow read, or one without set elements, has none:
 * an element no rule or set leads to serves no address). Not the table's existence, nor iptlb's empty base chains
 * and backend maps, which are what the table keeps when another tool's objects hold it after iptlb's last profile
 * went (see {@link planNftClear}): such a table holds no iptlb rules.
 */
export function holdsOwn(view: NftView): boolean {
  if (!view.exists) return false;
  if (view.dispatchSets.length || view.affinitySets?.length) return true;
  if (view.chains.some((c) => c.rules.some((r) => r.kind !== 'foreign'))) return true;
  return view.backendMaps.some((m) => m.elements.length > 0);
}

/**
 * Objects of table `<family> iptlb` that iptlb did not make: other chains, sets or maps (`foreign`),
 * and rules iptlb did not write in its base chains (`foreignRules`, by chain).
 */
export function foreignObjects(view: NftView): { foreign: string[]; foreignRules: string[] } {
  const foreignRules = view.chains.filter((c) => c.rules.some((r) => r.kind === 'foreign')).map((c) => c.name);
  return { foreign: [...view.foreign], foreignRules };
}

/**
 * The last profile of a table that also holds objects iptlb did not make: removes iptlb's content
 * only (its rules, its dispatch and affinity sets, the elements of its backend maps) and keeps the
 * table, with iptlb's empty base chains (policy accept: they change no packet) and empty maps,
 * so nothing another tool put there is deleted. (Without foreign objects the whole table goes.)
 */
export function planNftClear(view: NftView, family: NftFamily): NftTransaction {
  const ops: NftOp[] = [];
  for (const c of view.chains) ops.push({ op: 'flushChain', name: c.name });
  for (const m of view.backendMaps) {
    if (m.elements.length)
      ops.push({
        op: 'deleteBackendElements',
        proto: m.proto,
        elements: m.elements.map((e) => ({ vip: e.vip, index: e.index, to: e.to })),
      });
  }
  for (const s of view.dispatchSets) ops.push({ op: 'deleteSet', name: s.name });
  for (const s of view.affinitySets ?? []) ops.push({ op: 'deleteSet', name: s.name });
  return { family, table: 'iptlb', ops };
}

/** Objects of a table that belong to no profile an in-memory instance knows (see {@link unknownObjects}). */
export interface KeptObjects {
  dispatch: Map<string, NftEndpoint[]>;
  backends: Map<Protocol, NftBackendElement[]>;
  rules: { chain: NftBaseChain; rule: Exclude<NftRule, { kind: 'dispatch' }> }[];
  affinitySets: Map<string, number>;
  /** Virtual addresses (proto ip port) they serve. */
  vips: Set<string>;
}

const vipKey = (proto: Protocol, v: NftEndpoint): string => `${proto} ${v.ip} ${v.port}`;

/** A profile's address as {@link unknownObjects} keys the addresses it finds (`KeptObjects.vips`). */
export function profileVipKey(p: Profile): string {
  return vipKey(p.protocol, endpoint(p.source));
}

/** A profile's address as the table's keys hold it. */
export function profileEndpoint(p: Profile): NftEndpoint {
  return endpoint(p.source);
}

/**
 * Whether the table (a read, or a narrow one: see NftExecutor.lookup) serves `p`'s address and
 * protocol: a dispatch element, backend elements, or a rule of a round-robin or affinity profile.
 */
export function servesAddress(view: NftView, p: Profile): boolean {
  const k = profileVipKey(p);
  for (const s of view.dispatchSets) {
    const d = parseDispatchSetName(s.name);
    if (d && s.elements.some((e) => vipKey(d.proto, e.key) === k)) return true;
  }
  for (const m of view.backendMaps) if (m.elements.some((e) => vipKey(m.proto, e.vip) === k)) return true;
  for (const c of view.chains)
    for (const r of c.rules)
      if (r.kind !== 'foreign' && r.kind !== 'dispatch' && vipKey(r.proto, r.vip) === k) return true;
  return false;
}

/**
 * The first rule of the table (a read, or a narrow one) that carries the name of a profile of `held`
 * (name -> the addresses it may have, as {@link profileVipKey} writes them) at another address: its
 * owner and base chain.
 */
export function ruleElsewhere(
  view: NftView,
  held: ReadonlyMap<string, ReadonlySet<string>>,
): { owner: string; chain: string } | undefined {
  for (const c of view.chains)
    for (const r of c.rules) {
      if (r.kind === 'foreign' || r.kind === 'dispatch') continue;
      const at = held.get(r.owner);
      if (at && !at.has(vipKey(r.proto, r.vip))) return { owner: r.owner, chain: c.name };
    }
  return undefined;
}

/** The addresses ({@link profileVipKey}) and the names of `profiles`, with `names` among the names. */
function addressesAndNames(
  profiles: Iterable<Profile>,
  names: Iterable<string> = [],
): { vips: Set<string>; names: Set<string> } {
  const out = { vips: new Set<string>(), names: new Set<string>(names) };
  for (const p of profiles) {
    out.vips.add(profileVipKey(p));
    out.names.add(p.name);
  }
  return out;
}

/** {@link KeptObjects} that hold nothing. */
function noObjects(): KeptObjects {
  return { dispatch: new Map(), backends: new Map(), rules: [], affinitySets: new Map(), vips: new Set() };
}

/**
 * What the kernel holds for virtual addresses that none of `known` (the profiles after a change,
 * and the old versions of those it touches) uses and for owners it does not name: the profiles of
 * another process (an agent before its restart, with `stateFile: false`). An in-memory instance
 * leaves them as they are: a rebuild of the table carries them over.
 */
export function unknownObjects(view: NftView, known: Iterable<Profile>, touched: ReadonlySet<string>): KeptObjects {
  const { vips, names } = addressesAndNames(known, touched);
  const kept = noObjects();
  for (const s of view.dispatchSets) {
    const d = parseDispatchSetName(s.name);
    if (!d) continue;
    for (const e of s.elements) {
      const k = vipKey(d.proto, e.key);
      if (vips.has(k)) continue;
      let list = kept.dispatch.get(s.name);
      if (!list) kept.dispatch.set(s.name, (list = []));
      list.push({ ip: e.key.ip, port: e.key.port });
      kept.vips.add(k);
    }
  }
  for (const m of view.backendMaps) {
    for (const e of m.elements) {
      const k = vipKey(m.proto, e.vip);
      if (vips.has(k)) continue;
      let list = kept.backends.get(m.proto);
      if (!list) kept.backends.set(m.proto, (list = []));
      list.push({ vip: e.vip, index: e.index, to: e.to });
      kept.vips.add(k);
    }
  }
  for (const c of view.chains) {
    for (const r of c.rules) {
      if (r.kind === 'foreign' || r.kind === 'dispatch') continue;
      if (names.has(r.owner) || vips.has(vipKey(r.proto, r.vip))) continue;
      kept.rules.push({ chain: c.name, rule: r });
      kept.vips.add(vipKey(r.proto, r.vip));
      if (r.kind === 'aff')
        for (const name of [r.gate, r.set])
          if (name !== undefined) kept.affinitySets.set(name, affinitySetTimeout(name) ?? 1);
    }
  }
  return kept;
}

/**
 * The objects of {@link unknownObjects} (none of `known`'s) that are `keep`'s: the elements and rules
 * of their addresses, and the rules of their names (another state file's profiles, which a sync of
 * this one carries over as they are).
 */
export function objectsOf(view: NftView, known: Iterable<Profile>, keep: Iterable<Profile>): KeptObjects {
  const all = unknownObjects(view, known, new Set());
  const { vips, names } = addressesAndNames(keep);
  const kept = noObjects();
  for (const [set, list] of all.dispatch) {
    const d = parseDispatchSetName(set);
    const theirs = d ? list.filter((e) => vips.has(vipKey(d.proto, e))) : [];
    if (!d || !theirs.length) continue;
    kept.dispatch.set(set, theirs);
    for (const e of theirs) kept.vips.add(vipKey(d.proto, e));
  }
  for (const [proto, list] of all.backends) {
    const theirs = list.filter((e) => vips.has(vipKey(proto, e.vip)));
    if (!theirs.length) continue;
    kept.backends.set(proto, theirs);
    for (const e of theirs) kept.vips.add(vipKey(proto, e.vip));
  }
  for (const k of all.rules) {
    const r = k.rule;
    if (!names.has(r.owner) && !vips.has(vipKey(r.proto, r.vip))) continue;
    kept.rules.push(k);
    kept.vips.add(vipKey(r.proto, r.vip));
    if (r.kind === 'aff')
      for (const name of [r.gate, r.set])
        if (name !== undefined) kept.affinitySets.set(name, all.affinitySets.get(name) ?? 1);
  }
  return kept;
}

/** Whether {@link unknownObjects} found anything. */
export function keepsAnything(k: KeptObjects): boolean {
  return k.dispatch.size > 0 || k.backends.size > 0 || k.rules.length > 0;
}

/**
 * {@link planNftRebuild} of `profiles` that also carries over `kept` (the objects of profiles this
 * instance does not know), in one transaction: no virtual address of theirs is ever without rules.
 */
export function planNftMergedRebuild(
  profiles: Iterable<Profile>,
  kept: KeptObjects,
  family: NftFamily,
  view?: NftView,
): NftTransaction {
  const list = [...profiles];
  // Emptied in place (see rebuildStart): this carries over what others hold, so it removes nothing of theirs.
  const ops: NftOp[] = rebuildStart(view, family);
  skeleton(ops);
  const content = baseContent(list, [], kept.dispatch.keys());
  for (const name of content.sets) ops.push({ op: 'addDispatchSet', name });
  const affinity = new Map([...affinitySetsOf(content), ...kept.affinitySets]);
  for (const [name, timeout] of affinity) ops.push(affinitySetOp(name, timeout));
  const adds = new ElementOps();
  for (const p of list) adds.add(planNftProfile(p));
  for (const [set, vips] of kept.dispatch) for (const v of vips) adds.addDispatch(set, v);
  for (const [proto, elements] of kept.backends) adds.addBackends(proto, elements);
  adds.emit('add', ops);
  for (const chain of NFT_BASE_CHAINS) {
    const first = kept.rules
      .filter((k) => k.chain === chain && (k.rule.kind === 'log' || k.rule.kind === 'masq'))
      .map((k) => k.rule);
    const last = kept.rules
      .filter((k) => k.chain === chain && (k.rule.kind === 'rr' || k.rule.kind === 'aff'))
      .map((k) => k.rule);
    for (const rule of [...first, ...content.chains[chain], ...last]) ops.push({ op: 'addRule', chain, rule });
  }
  return { family, table: 'iptlb', ops };
}
