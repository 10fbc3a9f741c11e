/**
 * Drift: comparing the state file with the kernel. Pure functions over a {@link KernelView}.
 */
import { GATE_SET, elementKey, elementOf, isGatedHook, type GatedHook } from './gate.js';
import { canonicalIpv6, formatEndpoint, parseEndpoint } from '../../model/address.js';
import { chainName, familyOfProfile, profilesOf, weightOf } from '../../model/profile.js';
import { addressElement, earlierChainRules, planProfile, planTransaction, CHAIN_PREFIX } from './plan.js';
import { canonicalRule } from './restore.js';
import type { Family, KernelView, Profile, Transaction } from '../../model/types.js';
import type { DestinationCounters, ProfileReport } from '../../model/report.js';
import type { KeepOthers, ServedPair } from '../engine.js';

export { canonicalRule } from './restore.js';

function sameRules(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}

/** The hook whose gate (src/engines/legacy/gate.ts) is missing although the profile's rules sit behind it, or null. */
function missingGate(hooks: KernelView['hookRules'], view: KernelView): string | null {
  const h = hooks.find(
    (x) => isGatedHook(x.chain) && !x.direct && !(view.gate?.gates ?? []).includes(x.chain as GatedHook),
  );
  return h ? h.chain : null;
}

/**
 * The gate element of a profile's rule behind the gate that the gate's set lacks (its packets never
 * reach the dispatch chain), or null; null too when the set's elements were not read (`have`: their keys, made
 * once per comparison by the caller: per profile, it made the comparison quadratic in the table).
 */
function missingElement(hooks: KernelView['hookRules'], have: ReadonlySet<string> | null): string | null {
  if (!have) return null;
  for (const h of hooks) {
    if (!isGatedHook(h.chain) || h.direct) continue;
    const e = elementOf(h.rule);
    if (e && !have.has(elementKey(e))) return e;
  }
  return null;
}

/**
 * The elements of the gate's set (their keys, sorted) that no iptlb rule of the table selects: added by
 * hand or by another tool (`ipset add`), or left by a commit whose tidying of the set failed. The set
 * is iptlb's (it makes and destroys it): `status` reports each one and `sync` deletes it. [] when the
 * set's elements were not read, and when a dispatch chain also holds another tool's rules: that tool
 * may have put its element there for them (its rules need it to be reached), so they are left alone.
 * Every iptlb rule of the table explains its element, whichever state file's profile it is, a
 * leftover's too (the leftover is reported, and its element goes with it); so does the address of each
 * of `profiles` (the state files' profiles: one whose rules are gone is reported missing, and the sync
 * that installs it again keeps its element).
 */
export function strayElements(
  view: Pick<KernelView, 'hookRules' | 'gate'>,
  profiles: Iterable<Profile> = [],
): string[] {
  const members = view.gate?.members;
  if (!members?.length || view.gate?.foreign?.length) return [];
  const explained = new Set<string>();
  for (const p of profiles) explained.add(elementKey(addressElement(p)));
  for (const h of view.hookRules) {
    if (!isGatedHook(h.chain)) continue;
    const e = elementOf(h.rule);
    if (e) explained.add(elementKey(e));
  }
  return [...new Set(members.map(elementKey))].filter((k) => !explained.has(k)).sort();
}

/** The report name of a stray element of the gate's set: `gate:` is no profile name (NAME_PATTERN). */
export const STRAY_PREFIX = 'gate:';

/**
 * Compares every profile of `state` with `view`, a nat table, and lists the table's iptlb objects no
 * profile of `state` owns. Give `family` (the table's) to compare only the state's profiles of that
 * family (then a profile of the other family that still has rules in this table, e.g. after its
 * addresses changed family, is an orphan here); without it, `state` is taken to hold that family's
 * profiles only.
 */
export function compare(allState: Map<string, Profile>, view: KernelView, family?: Family): ProfileReport[] {
  const state = family ? profilesOf(allState, family) : allState;
  const reports: ProfileReport[] = [];
  const chainsByName = new Map(view.chains.map((c) => [c.name, c]));
  const claimedChains = new Set<string>();
  // Each profile's rules in the built-in chains and the gate's elements, indexed once: looked up per
  // profile, they made a comparison quadratic in the table (36 s for `status` at 10,000 profiles).
  const hooksByOwner = new Map<string, KernelView['hookRules']>();
  for (const h of view.hookRules) {
    const list = hooksByOwner.get(h.owner);
    if (list) list.push(h);
    else hooksByOwner.set(h.owner, [h]);
  }
  const members = view.gate?.members ? new Set(view.gate.members.map(elementKey)) : null;
  for (const p of [...state.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const plan = planProfile(p);
    const chain = chainsByName.get(plan.chain.name);
    claimedChains.add(plan.chain.name);
    const hooks = hooksByOwner.get(p.name) ?? [];
    const jump = hooks.find((h) => h.rule.target.name === 'jump');
    // A destination with several slots (round-robin with weights) has several rules: their counters add up.
    // Summed in one walk of the chain (per destination, it was quadratic in a profile's destinations).
    const sums = new Map<string, { packets: bigint; bytes: bigint }>();
    for (const k of chain?.rules ?? []) {
      if (k.rule.target.name !== 'DNAT') continue;
      const sum = sums.get(k.rule.target.toDestination);
      if (sum) {
        sum.packets += k.packets;
        sum.bytes += k.bytes;
      } else sums.set(k.rule.target.toDestination, { packets: k.packets, bytes: k.bytes });
    }
    const destinations: DestinationCounters[] = p.destination.map((d) => {
      const sum = sums.get(d);
      const c: DestinationCounters = {
        destination: d,
        packets: Number(sum?.packets ?? 0n),
        bytes: Number(sum?.bytes ?? 0n),
      };
      if (weightOf(p, d) !== 1) c.weight = weightOf(p, d);
      return c;
    });
    const base = {
      name: p.name,
      destinations,
      packets: Number(jump?.packets ?? 0n),
      bytes: Number(jump?.bytes ?? 0n),
      ...(p.affinity ? { affinity: p.affinity } : {}),
    };
    if (!chain && hooks.length === 0) {
      reports.push({ ...base, status: 'missing', detail: 'no rules in the kernel' });
      continue;
    }
    const want = plan.chain.rules.map(canonicalRule);
    const have = chain?.rules.map((k) => canonicalRule(k.rule)) ?? [];
    const wantHooks = plan.hookRules.map((h) => `${h.chain} ${canonicalRule(h.rule)}`).sort();
    const haveHooks = hooks.map((h) => `${h.chain} ${canonicalRule(h.rule)}`).sort();
    let detail: string | undefined;
    let gateless: string | null = null;
    if (!chain) detail = `chain ${plan.chain.name} is missing`;
    else if (!sameRules(have, want) && !sameRules(have, earlierChainRules(p, plan.chain.rules).map(canonicalRule)))
      detail = `chain ${plan.chain.name} differs from the plan (${have.length} rule${have.length === 1 ? '' : 's'} found, ${want.length} planned)`;
    else if (!sameRules(haveHooks, wantHooks))
      detail = `its rules in the built-in chains differ (${haveHooks.length} found, ${wantHooks.length} planned)`;
    else if ((gateless = missingGate(hooks, view)))
      detail = `the gate in nat ${gateless} that leads to its rules is missing: \`iptlb sync\` restores it`;
    else if ((gateless = missingElement(hooks, members)))
      detail = `its address ${gateless} is missing from the gate's set ${GATE_SET[familyOfProfile(p)]}, so its rules are not reached: \`iptlb sync\` restores it`;
    else if (hooks.some((h) => h.direct))
      detail =
        'its jump sits in nat OUTPUT/PREROUTING itself (the layout before the gate): `iptlb sync` or its next change moves it behind the gate';
    reports.push(detail ? { ...base, status: 'modified', detail } : { ...base, status: 'in-sync' });
  }
  const orphanOwners = [...hooksByOwner.keys()].filter((o) => !state.has(o));
  const orphanChains = new Set(view.chains.map((c) => c.name).filter((c) => !claimedChains.has(c)));
  for (const o of orphanOwners.sort()) {
    const chain = chainName(o);
    reports.push({
      name: o,
      status: 'orphaned',
      detail: `rules in the kernel but no profile in the state file`,
      destinations: [],
      packets: 0,
      bytes: 0,
    });
    orphanChains.delete(chain);
  }
  for (const c of [...orphanChains].sort()) {
    reports.push({
      name: c,
      status: 'orphaned',
      detail: `chain ${c} has no profile in the state file`,
      destinations: [],
      packets: 0,
      bytes: 0,
    });
  }
  // The gate's set with no dispatch chain, so no gate, referring to it (its profiles deleted by another means, the
  // gate and chain removed by hand): iptlb's, and of no use. Not while a profile of its family is in the state (a sync
  // installing it uses the set again), nor while another tool's rule uses it (ipset would not destroy it).
  const left = view.leftSet;
  const leftFamily: Family | undefined = left ? (left.set === GATE_SET.ipv6 ? 'ipv6' : 'ipv4') : undefined;
  if (left && left.references === 0 && ![...state.values()].some((p) => familyOfProfile(p) === leftFamily))
    reports.push({
      name: `${STRAY_PREFIX}${left.set}`,
      status: 'orphaned',
      detail: `the gate's set ${left.set} is there (${left.members.length} element(s)) but no rule of iptlb's is in the ${leftFamily === 'ipv6' ? 'ip6tables ' : ''}nat table, so nothing uses it (its profiles deleted by another means, or its gate and dispatch chain removed by hand): \`iptlb sync\` destroys it`,
      destinations: [],
      packets: 0,
      bytes: 0,
    });
  for (const e of strayElements(view, state.values())) {
    const set = GATE_SET[e.slice(0, e.lastIndexOf(',')).includes(':') ? 'ipv6' : 'ipv4'];
    reports.push({
      name: `${STRAY_PREFIX}${e}`,
      status: 'orphaned',
      detail: `element ${e} is in the gate's set ${set}, but no rule of iptlb's is at that address (added by another tool or by hand): \`iptlb sync\` deletes it`,
      destinations: [],
      packets: 0,
      bytes: 0,
    });
  }
  return reports;
}

/**
 * Every virtual address, protocol and destination the table's iptlb rules DNAT to: per jump of a built-in
 * chain to an iptlb chain (its address, protocol and port), the DNAT targets of that chain.
 */
export function served(view: KernelView): ServedPair[] {
  const chains = new Map(view.chains.map((c) => [c.name, c.rules]));
  const out: ServedPair[] = [];
  for (const h of view.hookRules) {
    const { rule } = h;
    if (rule.target.name !== 'jump' || !rule.dst || !rule.proto) continue;
    const proto = rule.proto;
    const port = rule.matches.find((m) => m.name === proto);
    if (!port || !('dport' in port)) continue;
    const ip = rule.dst.replace(/\/(32|128)$/, '');
    const source = formatEndpoint({ ip: ip.includes(':') ? (canonicalIpv6(ip) ?? ip) : ip, port: port.dport });
    for (const k of chains.get(rule.target.chain) ?? []) {
      if (k.rule.target.name !== 'DNAT') continue;
      const to = parseEndpoint(k.rule.target.toDestination);
      if (typeof to === 'string') continue;
      out.push({ protocol: proto, source, destination: formatEndpoint(to) });
    }
  }
  return out;
}

/**
 * One transaction that makes the nat table of `family` (read as `view`) match the state: every profile
 * of that family re-installed, every orphan (owners and chains of no profile of that family) removed.
 */
export function syncTransaction(
  allState: Map<string, Profile>,
  view: KernelView,
  family: Family = 'ipv4',
  /** Another state file's profiles (`keep`), or every other owner and chain (`keepUnknown`): left as they are. */
  { keep, keepUnknown }: KeepOthers = {},
): Transaction {
  const state = profilesOf(allState, family);
  const profiles = [...state.values()];
  const theirs = (o: string): boolean => !!keepUnknown || (!!keep?.has(o) && !state.has(o));
  const orphanOwners = [...new Set(view.hookRules.map((h) => h.owner).filter((o) => !state.has(o) && !theirs(o)))];
  const tx = planTransaction(profiles, orphanOwners, family);
  // Elements of the gate's set no rule selects: iptlb's set, so they go (an in-memory handle, or a
  // sync while another state file is changing, leaves what is not its profiles' alone).
  const strays = keepUnknown ? [] : strayElements(view, [...profiles, ...(keep?.values() ?? [])]);
  if (strays.length) tx.strays = strays;
  const claimed = new Set([...profiles.map((p) => chainName(p.name)), ...tx.deleteChains]);
  for (const n of keep?.keys() ?? []) if (theirs(n)) claimed.add(chainName(n));
  const extra = keepUnknown
    ? []
    : view.chains.map((c) => c.name).filter((c) => c.startsWith(CHAIN_PREFIX) && !claimed.has(c));
  tx.deleteChains.push(...extra);
  return tx;
}
