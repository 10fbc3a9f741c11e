/**
 * The legacy engine's gate: one rule per hook (nat OUTPUT, nat PREROUTING) that sends only packets
 * to a virtual address:port into iptlb's rules, so a new connection to anything else costs one hash
 * lookup however many profiles there are.
 *
 *     -A OUTPUT     -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT
 *     -A PREROUTING -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_PREROUTING
 *     -A IPTLB_OUTPUT -d VIP/32 -p tcp -m comment --comment iptlb:<name> -m tcp --dport P -j IPTLB_NAT_<NAME>
 *
 * The set is an ipset `hash:ip,port` (family inet for iptables, inet6 for ip6tables) holding the
 * `vip,proto:port` of every profile of that family. The profiles' hook rules (their jump, and the LOG
 * rule of a logging profile) sit in the dispatch chain IPTLB_OUTPUT / IPTLB_PREROUTING, in the order
 * they had in the built-in chain before; masquerade rules stay in nat POSTROUTING.
 *
 * Ordering (the set is not part of the x_tables commit): an element is added to the set BEFORE the
 * commit that installs its rules (a packet it lets through meanwhile walks the dispatch chain, matches
 * nothing and comes back: harmless), and deleted AFTER the commit that removed its last rule. So no
 * VIP ever has rules without its set element. The set is created before the first commit that needs
 * it, and destroyed after the commit that removed the last dispatch rule and both gates.
 *
 * Rules of an older iptlb (jumps directly in nat OUTPUT/PREROUTING) are read as `direct` hook rules:
 * `status` reports the profile as modified and the next commit of it (or `iptlb sync`) moves them
 * behind the gate.
 */
import { canonicalIpv6 } from '../../model/address.js';
import type { Family, HookChain, KernelView, Rule } from '../../model/types.js';

/** The ipset of each family's virtual address:port pairs. */
export const GATE_SET: Record<Family, string> = { ipv4: 'iptlb-vip-inet', ipv6: 'iptlb-vip-inet6' };
/** The ipset family keyword of each family. */
export const SET_FAMILY: Record<Family, string> = { ipv4: 'inet', ipv6: 'inet6' };

export type GatedHook = 'OUTPUT' | 'PREROUTING';
export const GATED_HOOKS: readonly GatedHook[] = ['OUTPUT', 'PREROUTING'];
/** The dispatch chain behind each gate. */
export const DISPATCH: Record<GatedHook, string> = { OUTPUT: 'IPTLB_OUTPUT', PREROUTING: 'IPTLB_PREROUTING' };

export function isGatedHook(c: string): c is GatedHook {
  return c === 'OUTPUT' || c === 'PREROUTING';
}

/** The hook of a dispatch chain name, or null. */
export function hookOfDispatch(chain: string): GatedHook | null {
  if (chain === DISPATCH.OUTPUT) return 'OUTPUT';
  if (chain === DISPATCH.PREROUTING) return 'PREROUTING';
  return null;
}

/** The gate rule's arguments (after `-A <hook>`), as iptables-save prints them. */
export function gateRuleText(hook: GatedHook, family: Family): string {
  return `-m set --match-set ${GATE_SET[family]} dst,dst -j ${DISPATCH[hook]}`;
}

/** The physical chain of a planned hook rule: the dispatch chain for OUTPUT/PREROUTING. */
export function physicalChain(chain: HookChain): string {
  return isGatedHook(chain) ? DISPATCH[chain] : chain;
}

/**
 * The set element (`ip,proto:port`, ipset's text) a hook rule needs, or null when the rule does not
 * select a virtual address:port (masquerade rules, unparsed rules).
 */
export function elementOf(r: Rule): string | null {
  if (!r.dst || !r.proto) return null;
  const port = r.matches.find((m) => m.name === r.proto);
  if (!port || !('dport' in port)) return null;
  const slash = r.dst.indexOf('/');
  const ip = slash < 0 ? r.dst : r.dst.slice(0, slash);
  return `${ip},${r.proto}:${port.dport}`;
}

/** A gate element's key: `ip,proto:port` with an IPv6 address in RFC 5952 text (ipset prints `::1.2.3.4`). */
export function elementKey(e: string): string {
  const comma = e.lastIndexOf(',');
  const ip = e.slice(0, comma);
  return ip.includes(':') ? `${canonicalIpv6(ip) ?? ip}${e.slice(comma)}` : e;
}

/** What the gate layout of one family looks like in a kernel view. */
export interface GateView {
  /** Hooks whose gate rule exists. */
  gates: GatedHook[];
  /** Hooks whose dispatch chain exists. */
  dispatch: GatedHook[];
}

/** The set deltas and gate changes a transaction implies against a view (pure). */
export interface GatePlan {
  /** Elements to add before the commit (those of the transaction's planned hook rules). */
  add: string[];
  /** Elements to delete after the commit (of removed rules and the tx's strays) that no remaining rule needs. */
  del: string[];
  /** Dispatch rules per hook after the commit. */
  remaining: Record<GatedHook, number>;
  /** Whether the set is needed after the commit (some dispatch rule remains). */
  needSet: boolean;
}

export function planGate(
  tx: { owners: string[]; hookRules: { chain: HookChain; rule: Rule }[]; strays?: string[] },
  view: Pick<KernelView, 'hookRules' | 'gate'>,
): GatePlan {
  const owners = new Set(tx.owners);
  const remaining: Record<GatedHook, number> = { OUTPUT: 0, PREROUTING: 0 };
  // Another tool's rule in a dispatch chain keeps it, its gate and the set (as the native executor).
  for (const h of view.gate?.foreign ?? []) remaining[h]++;
  const live = new Set<string>();
  const removed = new Set<string>();
  for (const h of view.hookRules) {
    if (!isGatedHook(h.chain) || h.direct) continue;
    const e = elementOf(h.rule);
    if (owners.has(h.owner)) {
      if (e) removed.add(e);
    } else {
      remaining[h.chain]++;
      if (e) live.add(e);
    }
  }
  const add = new Set<string>();
  for (const h of tx.hookRules) {
    if (!isGatedHook(h.chain)) continue;
    remaining[h.chain]++;
    const e = elementOf(h.rule);
    if (e) {
      add.add(e);
      live.add(e);
    }
  }
  const del = [...removed].filter((e) => !live.has(e));
  // Elements no rule selected when the table was read (`iptlb sync`): deleted unless a rule selects them now.
  if (tx.strays?.length) {
    const keys = new Set([...live, ...del].map(elementKey));
    for (const e of tx.strays) if (!keys.has(elementKey(e))) del.push(e);
  }
  return { add: [...add], del, remaining, needSet: remaining.OUTPUT + remaining.PREROUTING > 0 };
}
