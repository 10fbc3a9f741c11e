/**
 * The rule planner: pure functions from profiles to a {@link Transaction}. No I/O.
 */
import { hostCidr, parseEndpoint } from '../../model/address.js';
import { chainName, chainSuffix, familyOfProfile, slotsOf } from '../../model/profile.js';
import type {
  ChainPlan,
  Family,
  HookChain,
  HookRulePlan,
  KernelView,
  Match,
  Profile,
  Rule,
  Transaction,
} from '../../model/types.js';

export const OWNER_PREFIX = 'iptlb:';
export const CHAIN_PREFIX = 'IPTLB_';
/**
 * iptlb's own chains in the nat table: a profile's, `IPTLB_NAT_` and up to 18 of A-Z 0-9 _ (see
 * chainName; the original named its chains so too). Another chain whose name starts with `IPTLB_`
 * is someone else's: never read as iptlb's, never reported or removed as an orphan.
 */
export const OWN_CHAIN = /^IPTLB_NAT_[A-Z0-9_]{1,18}$/;

/** Whether a view of a nat table holds any of iptlb's objects: a hook rule of it, or a profile chain. */
export function holdsAny(view: KernelView): boolean {
  return view.hookRules.length > 0 || view.chains.some((c) => OWN_CHAIN.test(c.name));
}

/** The built-in chain that holds a profile's jump. */
export function hookChainOf(p: Profile): HookChain {
  return p.rulesBackend === 'client' ? 'OUTPUT' : 'PREROUTING';
}

/** Probability of the i-th of n cascaded rules (0-based): 1/(n-i), written with 10 decimals. */
export function cascadeProbability(i: number, n: number): string {
  return (1 / (n - i)).toFixed(10);
}

/** Probability of a cascaded rule of weight `w` when `rest` is the weight of it and every rule after it. */
export function weightedProbability(w: number, rest: number): string {
  return (w / rest).toFixed(10);
}

/**
 * Name of the xt_recent list that remembers the clients sent to `destination` by profile `name`
 * (session affinity): `IPTLB_<NAME>_<a>_<b>_<c>_<d>_<port>` (at most 46 characters), or for an IPv6
 * destination `[v6]:port` its canonical text with every `:` as `_` and no brackets,
 * `IPTLB_<NAME>_2001_db8__1_<port>` (at most 70 characters; xt_recent takes up to 199, and no `/`).
 * One name per destination: the port follows the last `_`, and the canonical text of an address is
 * unique. Derived from the destination, not its position, so a reset that keeps a destination keeps
 * its clients. `/proc/net/xt_recent/<name>` lists them.
 */
export function recentName(name: string, destination: string): string {
  return `IPTLB_${chainSuffix(name)}_${destination.replace(/[[\]]/g, '').replace(/[.:]/g, '_')}`;
}

export interface ProfilePlan {
  chain: ChainPlan;
  hookRules: HookRulePlan[];
}

/** `(1 / k).toFixed(10)` for each destination count, made once: the plain cascade's probabilities. */
const CASCADE: string[] = [];

/**
 * {@link planProfile} for the common profile: no logging, weights, scheduler or affinity, `client` or
 * `proxy` (no addrtype match), no masquerade. The same plan as the general path (a property test
 * checks it), built with fewer allocations: under churn the planner runs for every update.
 */
export function planPlain(p: Profile, port: number, dst: string): ProfilePlan {
  const proto = p.protocol;
  const chain = chainName(p.name);
  const d = p.destination;
  const n = d.length;
  const rules: Rule[] = new Array<Rule>(n);
  for (let i = 0; i < n; i++) {
    const k = n - i;
    const matches: Match[] =
      k > 1 ? [{ name: 'statistic', mode: 'random', probability: (CASCADE[k] ??= weightedProbability(1, k)) }] : [];
    rules[i] = { dst, proto, matches, target: { name: 'DNAT', toDestination: d[i]! } };
  }
  const jump: HookRulePlan = {
    chain: hookChainOf(p),
    owner: p.name,
    rule: {
      dst,
      proto,
      matches: [
        { name: 'comment', comment: OWNER_PREFIX + p.name },
        { name: proto, dport: port },
      ],
      target: { name: 'jump', chain },
    },
  };
  return { chain: { name: chain, rules }, hookRules: [jump] };
}

/**
 * A rule that selects what `p`'s dispatch rules select (its address, protocol and port), and does
 * nothing else: a transaction's `was` (see Transaction), without planning the whole profile.
 */
export function addressRule(p: Profile): Rule {
  const vip = parseEndpoint(p.source);
  if (typeof vip === 'string') throw new Error(`addressRule: unvalidated source ${p.source}`);
  return {
    dst: hostCidr(vip),
    proto: p.protocol,
    matches: [{ name: p.protocol, dport: vip.port }],
    target: { name: 'RETURN' },
  };
}

/**
 * The gate element (`ip,proto:port`, ipset's text: what `elementOf` gives for its dispatch rules) of
 * `p`'s address, protocol and port: a transaction's `was`. A validated IPv4 source is already the
 * text the kernel gives back (no leading zeros), so it is cut, not parsed; IPv6 goes through the rule.
 */
export function addressElement(p: Profile): string {
  const colon = p.source.lastIndexOf(':');
  if (p.source[0] !== '[' && colon > 0) return `${p.source.slice(0, colon)},${p.protocol}:${p.source.slice(colon + 1)}`;
  const r = addressRule(p);
  const slash = r.dst!.indexOf('/');
  return `${slash < 0 ? r.dst : r.dst!.slice(0, slash)},${p.protocol}:${p.source.slice(colon + 1)}`;
}

export function planProfile(p: Profile): ProfilePlan {
  const vip = parseEndpoint(p.source);
  if (typeof vip === 'string') throw new Error(`planProfile: unvalidated source ${p.source}`);
  if (!p.logEnabled && !p.weights && !p.scheduler && !p.affinity && !p.masquerade && p.rulesBackend !== 'server')
    return planPlain(p, vip.port, hostCidr(vip));
  return planGeneral(p);
}

/** {@link planProfile}'s general path (every profile; {@link planPlain} makes the same plan for the common ones). */
export function planGeneral(p: Profile): ProfilePlan {
  const vip = parseEndpoint(p.source);
  if (typeof vip === 'string') throw new Error(`planProfile: unvalidated source ${p.source}`);
  const dst = hostCidr(vip);
  const proto = p.protocol;
  const level = Number(p.logLevel);
  const chain = chainName(p.name);
  const suffix = chainSuffix(p.name);
  const portMatch: Match = { name: proto, dport: vip.port };

  const rules: Rule[] = [];
  if (p.logEnabled) rules.push({ matches: [], target: { name: 'LOG', prefix: `IPTLB:${suffix}:`, level } });
  const slots = slotsOf(p);
  // Session affinity (kube-proxy's way): first, per destination that takes connections, a rule that
  // sends a client seen within the last S seconds back to it (`--update` also refreshes the entry, so
  // affinity lasts S seconds after the client's last new connection); the balancing rules below then
  // record the client in the list of the destination they chose.
  const affinity = p.affinity ?? 0;
  const remember = (d: string): Match[] =>
    affinity > 0 ? [{ name: 'recent', mode: 'set', recentName: recentName(p.name, d) }] : [];
  if (affinity > 0) {
    for (const s of slots) {
      const matches: Match[] = [
        { name: 'recent', mode: 'update', recentName: recentName(p.name, s.destination), seconds: affinity },
      ];
      rules.push({ dst, proto, matches, target: { name: 'DNAT', toDestination: s.destination } });
    }
  }
  if (p.scheduler === 'round-robin') {
    // One rule per slot (a destination of reduced weight w has w consecutive slots). Rule i of S
    // takes one in every S-i of the connections that reach it, starting with the first (`--packet 0`):
    // connection k goes to slot k mod S, an exact rotation in list order.
    const list = slots.flatMap((s) => Array<string>(s.slots).fill(s.destination));
    const n = list.length;
    list.forEach((d, i) => {
      const matches: Match[] = [];
      if (i < n - 1) matches.push({ name: 'statistic', mode: 'nth', every: n - i, packet: 0 });
      matches.push(...remember(d));
      rules.push({ dst, proto, matches, target: { name: 'DNAT', toDestination: d } });
    });
  } else {
    // Weighted cascade: destination i is taken with probability w_i / (w_i + the weights after it).
    // All weights 1: 1/(n-i), the original's split. Drained destinations have no rule.
    let rest = slots.reduce((a, s) => a + s.slots, 0);
    slots.forEach((s, i) => {
      const matches: Match[] = [];
      if (i < slots.length - 1)
        matches.push({ name: 'statistic', mode: 'random', probability: weightedProbability(s.slots, rest) });
      rest -= s.slots;
      matches.push(...remember(s.destination));
      rules.push({ dst, proto, matches, target: { name: 'DNAT', toDestination: s.destination } });
    });
  }

  const hook = hookChainOf(p);
  const owner = p.name;
  const selector = (): Match[] => {
    const m: Match[] = [{ name: 'comment', comment: OWNER_PREFIX + owner }];
    if (p.rulesBackend === 'server') m.push({ name: 'addrtype', dstType: 'LOCAL' });
    m.push({ ...portMatch });
    return m;
  };
  const hookRules: HookRulePlan[] = [];
  if (p.logEnabled) {
    hookRules.push({
      chain: hook,
      owner,
      rule: { dst, proto, matches: selector(), target: { name: 'LOG', prefix: `IPTLB:VIP:${suffix}:`, level } },
    });
  }
  hookRules.push({ chain: hook, owner, rule: { dst, proto, matches: selector(), target: { name: 'jump', chain } } });
  if (p.masquerade) {
    hookRules.push({
      chain: 'POSTROUTING',
      owner,
      rule: {
        proto,
        matches: [
          { name: 'comment', comment: OWNER_PREFIX + owner },
          { name: 'conntrack', ctstate: 'DNAT', ctorigdst: dst, ctorigdstport: vip.port },
        ],
        target: { name: 'MASQUERADE' },
      },
    });
  }
  return { chain: { name: chain, rules }, hookRules };
}

/**
 * A profile's chain rules as iptlb wrote them before 2026-12-05 (the original's layout): each rule
 * with the virtual address also checked the port first, as the jump does, and the chain ended with
 * `-j RETURN`. Both are redundant (the jump is the only way into the chain, and a chain's end returns),
 * and each cost the kernel a match or an entry more at every commit of the nat table. A chain written
 * so works the same, so drift takes it as in sync.
 */
export function earlierChainRules(p: Profile, rules: readonly Rule[]): Rule[] {
  const vip = parseEndpoint(p.source);
  if (typeof vip === 'string') throw new Error(`earlierChainRules: unvalidated source ${p.source}`);
  const port: Match = { name: p.protocol, dport: vip.port };
  return [
    ...rules.map((r) => (r.dst === undefined ? r : { ...r, matches: [{ ...port }, ...r.matches] })),
    { matches: [], target: { name: 'RETURN' } },
  ];
}

/**
 * One transaction that installs (creating or replacing) `upsert` and removes the profiles named in
 * `remove`, in the nat table of `family`. Every profile touched has its hook rules removed first, so
 * a replacement is exact. Every profile of `upsert` must be of `family` (one transaction per family:
 * a profile that changes family is upserted in one and removed in the other).
 */
export function planTransaction(upsert: Profile[], remove: string[], family: Family = 'ipv4'): Transaction {
  for (const p of upsert) {
    if (familyOfProfile(p) !== family)
      throw new Error(`planTransaction: profile ${p.name} is ${familyOfProfile(p)}, not ${family}`);
  }
  const owners = [...new Set([...upsert.map((p) => p.name), ...remove])];
  const kept = new Set(upsert.map((p) => chainName(p.name)));
  const deleteChains = [...new Set(remove.map(chainName))].filter((c) => !kept.has(c));
  const chains: ChainPlan[] = [];
  const hookRules: HookRulePlan[] = [];
  for (const p of upsert) {
    const plan = planProfile(p);
    chains.push(plan.chain);
    hookRules.push(...plan.hookRules);
  }
  return { family, table: 'nat', owners, deleteChains, chains, hookRules };
}

export function isEmptyTransaction(tx: Transaction): boolean {
  return tx.owners.length === 0 && tx.deleteChains.length === 0 && tx.chains.length === 0 && tx.hookRules.length === 0;
}
