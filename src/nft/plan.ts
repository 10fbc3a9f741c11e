/**
 * The nft engine's planner: pure functions from profiles to an {@link NftTransaction}. No I/O.
 *
 * A change is planned against the profiles the kernel is believed to hold (`prev`): the touched
 * profiles' elements are deleted and re-added, and the base chains are rewritten only when their
 * content (a pure function of all profiles) differs. If the kernel does not hold what `prev` says,
 * the commit fails as a whole (a missing element is ENOENT) and the caller commits
 * {@link planNftRebuild} instead: the whole table, replaced in one transaction.
 */
import { parseEndpoint } from '../address.js';
import { chainSuffix } from '../profile.js';
import type { Profile, Protocol } from '../types.js';
import {
  dispatchSetName,
  NFT_BASE_CHAINS,
  type NftBackendElement,
  type NftBaseChain,
  type NftEndpoint,
  type NftHook,
  type NftOp,
  type NftRule,
  type NftTransaction,
} from './ops.js';

export const NFT_PROTOCOLS: readonly Protocol[] = ['tcp', 'udp', 'sctp'];

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
  set: string;
  vip: NftEndpoint;
  proto: Protocol;
  backends: NftBackendElement[];
  /** Rules in the base chains owned by this profile (log, masquerade). */
  rules: { chain: NftBaseChain; rule: NftRule }[];
}

export function planNftProfile(p: Profile): NftProfilePlan {
  const vip = endpoint(p.source);
  const hook = nftHookOf(p);
  const proto = p.protocol;
  const backends = p.destination.map((d, index) => ({ vip, index, to: endpoint(d) }));
  const rules: NftProfilePlan['rules'] = [];
  if (p.logEnabled) {
    const suffix = chainSuffix(p.name);
    const level = Number(p.logLevel);
    const base = { kind: 'log' as const, owner: p.name, vip, proto, local: hook === 'loc', level };
    rules.push({ chain: baseChainOf(hook), rule: { ...base, prefix: `IPTLB:VIP:${suffix}:` } });
    rules.push({ chain: baseChainOf(hook), rule: { ...base, prefix: `IPTLB:${suffix}:` } });
  }
  if (p.masquerade) rules.push({ chain: 'postrouting', rule: { kind: 'masq', owner: p.name, vip, proto } });
  return { set: dispatchSetName(hook, proto, p.destination.length), vip, proto, backends, rules };
}

/** The rules of each base chain for a set of profiles: logging rules by profile name, then one dispatch rule per set in use. */
export function baseContent(profiles: Iterable<Profile>): { chains: Record<NftBaseChain, NftRule[]>; sets: string[] } {
  const sorted = [...profiles].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const chains: Record<NftBaseChain, NftRule[]> = { output: [], prerouting: [], postrouting: [] };
  const dispatch = new Map<string, NftRule>();
  for (const p of sorted) {
    if (p.logEnabled || p.masquerade) for (const r of planNftProfile(p).rules) chains[r.chain].push(r.rule);
    const hook = nftHookOf(p);
    const set = dispatchSetName(hook, p.protocol, p.destination.length);
    if (!dispatch.has(set)) dispatch.set(set, { kind: 'dispatch', hook, proto: p.protocol, n: p.destination.length });
  }
  const order: Record<NftHook, number> = { out: 0, pre: 1, loc: 2 };
  const rules = [...dispatch.values()].sort((a, b) => {
    const x = a as Extract<NftRule, { kind: 'dispatch' }>;
    const y = b as Extract<NftRule, { kind: 'dispatch' }>;
    return order[x.hook] - order[y.hook] || NFT_PROTOCOLS.indexOf(x.proto) - NFT_PROTOCOLS.indexOf(y.proto) || x.n - y.n;
  });
  for (const r of rules) chains[baseChainOf((r as Extract<NftRule, { kind: 'dispatch' }>).hook)].push(r);
  return { chains, sets: [...dispatch.keys()].sort() };
}

const sameRules = (a: NftRule[], b: NftRule[]): boolean => JSON.stringify(a) === JSON.stringify(b);

/** Adds the element ops of `plans`, one op per set and kind. */
class ElementOps {
  private dispatch = new Map<string, NftEndpoint[]>();
  private backends = new Map<Protocol, NftBackendElement[]>();
  add(plan: NftProfilePlan): void {
    let d = this.dispatch.get(plan.set);
    if (!d) this.dispatch.set(plan.set, (d = []));
    d.push(plan.vip);
    let b = this.backends.get(plan.proto);
    if (!b) this.backends.set(plan.proto, (b = []));
    b.push(...plan.backends);
  }
  emit(kind: 'add' | 'delete', ops: NftOp[]): void {
    // Deletes: dispatch first (the profile stops matching), then its backends; adds the other way round.
    const dispatch = (): void => {
      for (const [set, elements] of this.dispatch) ops.push({ op: kind === 'add' ? 'addDispatchElements' : 'deleteDispatchElements', set, elements });
    };
    const backends = (): void => {
      for (const [proto, elements] of this.backends) ops.push({ op: kind === 'add' ? 'addBackendElements' : 'deleteBackendElements', proto, elements });
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

function skeleton(ops: NftOp[]): void {
  ops.push({ op: 'addTable' });
  for (const proto of NFT_PROTOCOLS) ops.push({ op: 'addBackendMap', proto });
  for (const name of NFT_BASE_CHAINS) ops.push({ op: 'addBaseChain', name });
}

/**
 * The transaction that turns a kernel holding `prev` into one holding `next`, touching only the
 * profiles named in `touched` (created, replaced or deleted) plus, when their content changes,
 * the base chains.
 */
export function planNftChange(prev: Map<string, Profile>, next: Map<string, Profile>, touched: Iterable<string>): NftTransaction {
  // The last profile gone: the table goes too, so the ruleset is exactly as before iptlb.
  if (next.size === 0) return prev.size === 0 ? { family: 'ip', table: 'iptlb', ops: [] } : planNftRemoveAll();
  const names = new Set(touched);
  // Every profile touched (e.g. `-use-state -run` at boot): the whole table, replaced in one
  // transaction, is the same result, costs less, and does not depend on what the kernel holds.
  if (prev.size > 0 && [...prev.keys()].every((n) => names.has(n))) return planNftRebuild(next.values());
  const ops: NftOp[] = [];
  const before = baseContent(prev.values());
  const after = baseContent(next.values());
  const changedChains = NFT_BASE_CHAINS.filter((c) => !sameRules(before.chains[c], after.chains[c]));
  const newSets = after.sets.filter((s) => !before.sets.includes(s));
  const goneSets = before.sets.filter((s) => !after.sets.includes(s));
  if (prev.size === 0 || changedChains.length || newSets.length) {
    skeleton(ops);
    for (const name of newSets) ops.push({ op: 'addDispatchSet', name });
  }
  const dels = new ElementOps();
  const adds = new ElementOps();
  for (const name of names) {
    const old = prev.get(name);
    const now = next.get(name);
    if (old) dels.add(planNftProfile(old));
    if (now) adds.add(planNftProfile(now));
  }
  dels.emit('delete', ops);
  adds.emit('add', ops);
  for (const chain of changedChains) {
    ops.push({ op: 'flushChain', name: chain });
    for (const rule of after.chains[chain]) ops.push({ op: 'addRule', chain, rule });
  }
  for (const name of goneSets) ops.push({ op: 'deleteSet', name });
  return { family: 'ip', table: 'iptlb', ops };
}

/** The whole table for `profiles`, replacing whatever table ip iptlb holds, in one transaction. */
export function planNftRebuild(profiles: Iterable<Profile>, expectGenid?: number): NftTransaction {
  const list = [...profiles];
  const ops: NftOp[] = [{ op: 'addTable' }, { op: 'deleteTable' }];
  skeleton(ops);
  const content = baseContent(list);
  for (const name of content.sets) ops.push({ op: 'addDispatchSet', name });
  const adds = new ElementOps();
  for (const p of list) adds.add(planNftProfile(p));
  adds.emit('add', ops);
  for (const chain of NFT_BASE_CHAINS) for (const rule of content.chains[chain]) ops.push({ op: 'addRule', chain, rule });
  return expectGenid === undefined ? { family: 'ip', table: 'iptlb', ops } : { family: 'ip', table: 'iptlb', ops, expectGenid };
}

/** The transaction that removes table ip iptlb entirely (used by migrate). */
export function planNftRemoveAll(): NftTransaction {
  return { family: 'ip', table: 'iptlb', ops: [{ op: 'addTable' }, { op: 'deleteTable' }] };
}
