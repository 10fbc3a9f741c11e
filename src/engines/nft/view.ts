/**
 * Reading table ip iptlb (or ip6 iptlb) back: `nft -j list table <family> iptlb` parsed into an
 * {@link NftView} (the spawn executor's read; the native executor's read returns the same shape), and
 * the drift comparison of a view with the state file. Pure functions.
 */
import type { DestinationCounters, ProfileReport } from '../../model/report.js';
import type { Profile, Protocol } from '../../model/types.js';
import { canonicalIpv6, formatEndpoint } from '../../model/address.js';
import { weightOf } from '../../model/profile.js';
import {
  NFT_BASE_CHAINS,
  affinitySetTimeout,
  backendOffset,
  rrOffset,
  parseDispatchSetName,
  renderNftRule,
  type NftBaseChain,
  type NftEndpoint,
  type NftFamily,
  type NftRule,
  type NftView,
} from './ops.js';
import { baseContent, planNftProfile } from './plan.js';

const LEVELS = ['emerg', 'alert', 'crit', 'err', 'warn', 'notice', 'info', 'debug'];
type J = Record<string, unknown>;
const obj = (v: unknown): J | undefined => (v && typeof v === 'object' && !Array.isArray(v) ? (v as J) : undefined);
const PROTOS: readonly string[] = ['tcp', 'udp', 'sctp'];

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

/** An address as nft printed it, in iptlb's text: IPv6 in RFC 5952 form (nft may print a dotted tail). */
function addrText(v: unknown, family: NftFamily): string {
  const s = String(v);
  return family === 'ip6' ? (canonicalIpv6(s) ?? s) : s;
}

function counters(e: J | undefined): { packets: bigint; bytes: bigint } {
  const c = obj(e?.counter);
  return { packets: BigInt(Number(c?.packets ?? 0)), bytes: BigInt(Number(c?.bytes ?? 0)) };
}

/** `{match:{op,left,right}}` → [left, right] when op is == (or `in` for flags). */
function match(e: unknown, op = '=='): [J, unknown] | null {
  const m = obj(obj(e)?.match);
  if (!m || m.op !== op) return null;
  const left = obj(m.left);
  return left ? [left, m.right] : null;
}
const payload = (l: J | undefined, protocol: string, field: string): boolean => {
  const p = obj(l?.payload);
  return p?.protocol === protocol && p?.field === field;
};
const isFibLocal = (e: unknown): boolean => {
  const m = match(e);
  const fib = obj(m?.[0].fib);
  return (
    !!m &&
    fib?.result === 'type' &&
    Array.isArray(fib.flags) &&
    fib.flags.length === 1 &&
    fib.flags[0] === 'daddr' &&
    m[1] === 'local'
  );
};

/** Recognises the rule shapes iptlb writes in table `<family> iptlb`; anything else is foreign. */
export function decodeRuleJson(rule: J, family: NftFamily = 'ip'): NftRule | { kind: 'foreign'; text: string } {
  const f = family; // payload protocol of daddr/saddr and family of dnat: ip or ip6
  const addr = (v: string): string => addrText(v, f);
  const foreign = {
    kind: 'foreign' as const,
    text: `handle ${String(rule.handle)}: ${JSON.stringify(rule.expr).slice(0, 160)}`,
  };
  const expr = Array.isArray(rule.expr) ? [...rule.expr] : [];
  const comment = typeof rule.comment === 'string' ? rule.comment : undefined;
  const owner = comment?.startsWith('iptlb:') ? comment.slice(6) : undefined;
  // dispatch: [fib local] (ip daddr . P dport) @set, dnat to (ip daddr . P dport . numgen random mod n) map @be_P
  {
    const e = [...expr];
    const local = e.length === 3 && isFibLocal(e[0]) ? (e.shift(), true) : false;
    const m = e.length === 2 ? match(e[0]) : null;
    const concat = m && Array.isArray(obj(m[0])?.concat) ? (obj(m[0])!.concat as J[]) : null;
    const set = typeof m?.[1] === 'string' && m[1].startsWith('@') ? parseDispatchSetName(m[1].slice(1)) : null;
    const dnat = obj(obj(e[1])?.dnat);
    const map = obj(obj(dnat?.addr)?.map);
    const key = obj(map?.key)?.concat as J[] | undefined;
    const ng = obj(key?.[2]?.numgen);
    if (
      set &&
      !comment &&
      concat?.length === 2 &&
      payload(concat[0], f, 'daddr') &&
      payload(concat[1], set.proto, 'dport') &&
      (set.hook === 'loc') === local &&
      dnat?.family === f &&
      map?.data === `@be_${set.proto}` &&
      key?.length === 3 &&
      payload(key[0], f, 'daddr') &&
      payload(key[1], set.proto, 'dport') &&
      ng?.mode === 'random' &&
      ng.mod === set.n &&
      (ng.offset ?? 0) === backendOffset(set.n)
    ) {
      return { kind: 'dispatch', hook: set.hook, proto: set.proto, n: set.n };
    }
  }
  // rr: ip daddr V, P dport port, [fib local], dnat to (ip daddr . P dport . numgen inc mod n offset 1000000+T(n)) map
  // @be_P
  if (owner !== undefined && (expr.length === 3 || expr.length === 4)) {
    const ip = match(expr[0]);
    const port = match(expr[1]);
    const proto = obj(port?.[0].payload)?.protocol;
    const local = expr.length === 4 && isFibLocal(expr[2]);
    const dnat = obj(obj(expr[expr.length - 1])?.dnat);
    const map = obj(obj(dnat?.addr)?.map);
    const key = obj(map?.key)?.concat as J[] | undefined;
    const ng = obj(key?.[2]?.numgen);
    if (
      ip &&
      payload(ip[0], f, 'daddr') &&
      typeof ip[1] === 'string' &&
      typeof proto === 'string' &&
      PROTOS.includes(proto) &&
      payload(port![0], proto, 'dport') &&
      typeof port![1] === 'number' &&
      (expr.length === 3 || local) &&
      dnat?.family === f &&
      map?.data === `@be_${proto}` &&
      key?.length === 3 &&
      payload(key[0], f, 'daddr') &&
      payload(key[1], proto, 'dport') &&
      ng?.mode === 'inc' &&
      typeof ng.mod === 'number' &&
      ng.mod >= 1 &&
      (ng.offset ?? 0) === rrOffset(ng.mod)
    ) {
      return {
        kind: 'rr',
        owner,
        vip: { ip: addr(ip[1]), port: port![1] },
        proto: proto as Protocol,
        local,
        n: ng.mod,
      };
    }
  }
  // aff: ip daddr V, P dport port, [fib local], [ip saddr @S | numgen random mod M < K | numgen inc mod M == 0], update
  // @S { ip saddr }, counter, dnat to D
  if (owner !== undefined && expr.length >= 5 && expr.length <= 7) {
    const e = [...expr];
    const ip = match(e.shift());
    const port = match(e.shift());
    const proto = obj(port?.[0].payload)?.protocol;
    const local = isFibLocal(e[0]) ? (e.shift(), true) : false;
    const dnat = obj(obj(e.pop())?.dnat);
    const counter = obj(obj(e.pop())?.counter);
    const upd = obj(obj(e.pop())?.set);
    const set = typeof upd?.set === 'string' && upd.set.startsWith('@') ? upd.set.slice(1) : undefined;
    let pick: Extract<NftRule, { kind: 'aff' }>['pick'] | undefined;
    if (e.length === 0) pick = { mode: 'rest' };
    else if (e.length === 1) {
      const hit = match(e[0]);
      const lt = match(e[0], '<');
      const ng = obj((hit ?? lt)?.[0].numgen);
      if (hit && payload(hit[0], f, 'saddr') && hit[1] === `@${set}`) pick = { mode: 'hit' };
      else if (
        lt &&
        ng?.mode === 'random' &&
        (ng.offset ?? 0) === 0 &&
        typeof ng.mod === 'number' &&
        typeof lt[1] === 'number'
      )
        pick = { mode: 'random', mod: ng.mod, lt: lt[1] };
      else if (hit && ng?.mode === 'inc' && (ng.offset ?? 0) === 0 && typeof ng.mod === 'number' && hit[1] === 0)
        pick = { mode: 'inc', mod: ng.mod };
    }
    if (
      pick &&
      ip &&
      payload(ip[0], f, 'daddr') &&
      typeof ip[1] === 'string' &&
      typeof proto === 'string' &&
      PROTOS.includes(proto) &&
      payload(port![0], proto, 'dport') &&
      typeof port![1] === 'number' &&
      set &&
      affinitySetTimeout(set) !== null &&
      upd?.op === 'update' &&
      payload(obj(upd.elem), f, 'saddr') &&
      counter &&
      dnat &&
      typeof dnat.addr === 'string' &&
      typeof dnat.port === 'number' &&
      Object.keys(dnat).every((k) => k === 'addr' || k === 'port')
    ) {
      return {
        kind: 'aff',
        owner,
        vip: { ip: addr(ip[1]), port: port![1] },
        proto: proto as Protocol,
        local,
        pick,
        set,
        to: { ip: addr(dnat.addr), port: dnat.port },
        packets: BigInt(Number(counter.packets ?? 0)),
        bytes: BigInt(Number(counter.bytes ?? 0)),
      };
    }
  }
  // log: ip daddr V, P dport port, [fib local], log prefix level
  if (owner !== undefined && (expr.length === 3 || expr.length === 4)) {
    const ip = match(expr[0]);
    const port = match(expr[1]);
    const proto = obj(port?.[0].payload)?.protocol;
    const local = expr.length === 4 && isFibLocal(expr[2]);
    const log = obj(obj(expr[expr.length - 1])?.log);
    if (
      ip &&
      payload(ip[0], f, 'daddr') &&
      typeof ip[1] === 'string' &&
      typeof proto === 'string' &&
      PROTOS.includes(proto) &&
      payload(port![0], proto, 'dport') &&
      typeof port![1] === 'number' &&
      log &&
      typeof log.prefix === 'string' &&
      (expr.length === 3 || local)
    ) {
      const level = log.level === undefined ? 4 : LEVELS.indexOf(String(log.level));
      if (level >= 0 && Object.keys(log).every((k) => k === 'prefix' || k === 'level')) {
        return {
          kind: 'log',
          owner,
          vip: { ip: addr(ip[1]), port: port![1] },
          proto: proto as Protocol,
          local,
          prefix: log.prefix,
          level,
        };
      }
    }
  }
  // masq: ct status dnat, ct original ip daddr V, ct protocol P, ct original proto-dst port, masquerade
  if (owner !== undefined && expr.length === 5 && obj(expr[4])?.masquerade === null) {
    const st = match(expr[0], 'in');
    const ip = match(expr[1]);
    const pr = match(expr[2]);
    const pd = match(expr[3]);
    const ct = (m: [J, unknown] | null): J | undefined => obj(m?.[0].ct);
    if (
      ct(st)?.key === 'status' &&
      st![1] === 'dnat' &&
      ct(ip)?.key === `${f} daddr` &&
      ct(ip)?.dir === 'original' &&
      typeof ip![1] === 'string' &&
      ct(pr)?.key === 'protocol' &&
      typeof pr![1] === 'string' &&
      PROTOS.includes(pr![1]) &&
      ct(pd)?.key === 'proto-dst' &&
      ct(pd)?.dir === 'original' &&
      typeof pd![1] === 'number'
    ) {
      return { kind: 'masq', owner, vip: { ip: addr(ip![1]), port: pd![1] }, proto: pr![1] as Protocol };
    }
  }
  return foreign;
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

/**
 * Each profile of the state compared with table `<view.family> iptlb`, plus what no profile owns,
 * with counters. `state` holds the profiles of that family only.
 */
export function compareNft(state: Map<string, Profile>, view: NftView): ProfileReport[] {
  const family = view.family ?? 'ip';
  const table = `table ${family} iptlb`;
  const dispatch = new Map<string, { set: string; packets: bigint; bytes: bigint }[]>();
  for (const s of view.dispatchSets) {
    for (const e of s.elements) {
      const k = key(e.key);
      dispatch.set(k, [...(dispatch.get(k) ?? []), { set: s.name, packets: e.packets, bytes: e.bytes }]);
    }
  }
  const backends = new Map<string, { to: string; packets: bigint; bytes: bigint }>();
  for (const m of view.backendMaps)
    for (const e of m.elements)
      backends.set(`${m.proto}/${key(e.vip)}/${e.index}`, { to: key(e.to), packets: e.packets, bytes: e.bytes });
  const ruleKey = (chain: string, r: NftRule | { kind: 'foreign'; text: string }): string =>
    `${chain} ${r.kind === 'foreign' ? r.text : renderNftRule(r, family)}`;
  const affSets = new Map((view.affinitySets ?? []).map((x) => [x.name, x.timeout]));
  const claimedAffSets = new Set<string>();
  const haveRules = new Set(view.chains.flatMap((c) => c.rules.map((r) => ruleKey(c.name, r))));
  const dispatchRules = new Set(
    view.chains.flatMap((c) => c.rules.filter((r) => r.kind === 'dispatch').map((r) => ruleKey(c.name, r))),
  );

  const reports: ProfileReport[] = [];
  const claimedDispatch = new Set<string>();
  const claimedBackends = new Set<string>();
  for (const p of [...state.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const plan = planNftProfile(p);
    const vip = key(plan.vip);
    const found = dispatch.get(vip) ?? [];
    const mine = found.find((f) => f.set === plan.set);
    claimedDispatch.add(vip);
    // One line per destination: a weighted destination's slots add up; a drained one has none (weight 0).
    const perDest = new Map<string, DestinationCounters>();
    for (const d of p.destination) {
      const c: DestinationCounters = { destination: d, packets: 0, bytes: 0 };
      if (weightOf(p, d) !== 1) c.weight = weightOf(p, d);
      perDest.set(d, c);
    }
    let slotPackets = 0n;
    let slotBytes = 0n;
    for (const b of plan.backends) {
      const k = `${plan.proto}/${vip}/${b.index}`;
      claimedBackends.add(k);
      const have = backends.get(k);
      const c = perDest.get(key(b.to));
      if (c && have) {
        c.packets += Number(have.packets);
        c.bytes += Number(have.bytes);
        slotPackets += have.packets;
        slotBytes += have.bytes;
      }
    }
    // An affinity profile's connections are counted by its own rules (hits and choices), per destination.
    if (p.affinity) {
      for (const c of view.chains) {
        for (const r of c.rules) {
          if (r.kind !== 'aff' || r.owner !== p.name) continue;
          const d = perDest.get(key(r.to));
          if (d) {
            d.packets += Number(r.packets ?? 0n);
            d.bytes += Number(r.bytes ?? 0n);
            slotPackets += r.packets ?? 0n;
            slotBytes += r.bytes ?? 0n;
          }
        }
      }
      for (const s of plan.affinitySets) claimedAffSets.add(s.name);
    }
    const destinations = [...perDest.values()];
    // A round-robin (or affinity) profile has no dispatch element: its connections are the sum of its backends'
    // (rules').
    const base =
      plan.set === null
        ? {
            name: p.name,
            destinations,
            packets: Number(slotPackets),
            bytes: Number(slotBytes),
            ...(p.affinity ? { affinity: p.affinity } : {}),
          }
        : { name: p.name, destinations, packets: Number(mine?.packets ?? 0n), bytes: Number(mine?.bytes ?? 0n) };
    const haveBackends = plan.backends.filter(
      (b) => backends.get(`${plan.proto}/${vip}/${b.index}`)?.to === key(b.to),
    ).length;
    const haveOwnRules = plan.rules.filter((r) => haveRules.has(ruleKey(r.chain, r.rule))).length;
    const ownRulesHere = view.chains.reduce(
      (n, c) =>
        n +
        c.rules.filter(
          (r) => (r.kind === 'log' || r.kind === 'masq' || r.kind === 'rr' || r.kind === 'aff') && r.owner === p.name,
        ).length,
      0,
    );
    const ownRulesInKernel = ownRulesHere > 0;
    if (found.length === 0 && haveBackends === 0 && !ownRulesInKernel) {
      reports.push({
        ...base,
        status: 'missing',
        detail: view.exists ? `no elements in ${table}` : `${table} does not exist`,
      });
      continue;
    }
    const hook = baseContent([p]).chains;
    const dispatchRule = NFT_BASE_CHAINS.flatMap((c) =>
      hook[c].filter((r) => r.kind === 'dispatch').map((r) => ruleKey(c, r)),
    )[0];
    let detail: string | undefined;
    const missingSet = plan.affinitySets.find((x) => affSets.get(x.name) !== x.timeout);
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
    else if (!dispatchRules.has(dispatchRule)) detail = `the dispatch rule for set ${plan.set} is missing`;
    else if (haveOwnRules !== plan.rules.length)
      detail = `${haveOwnRules} of its ${plan.rules.length} logging/masquerade rules are in the base chains`;
    // e.g. the round-robin rule of a profile that is random now
    if (!detail && ownRulesHere > plan.rules.length)
      detail = `${ownRulesHere} rules in the base chains are its own, ${plan.rules.length} planned`;
    reports.push(detail ? { ...base, status: 'modified', detail } : { ...base, status: 'in-sync' });
  }
  const orphans = new Map<string, string>();
  for (const [vip, sets] of dispatch)
    if (!claimedDispatch.has(vip)) orphans.set(vip, `element ${vip} of set ${sets[0].set}`);
  for (const m of view.backendMaps) {
    for (const e of m.elements) {
      const vip = key(e.vip);
      if (!claimedBackends.has(`${m.proto}/${vip}/${e.index}`) && !orphans.has(vip))
        orphans.set(vip, `element ${vip} . ${e.index} of map be_${m.proto}`);
    }
  }
  for (const c of view.chains) {
    for (const r of c.rules) {
      if ((r.kind === 'log' || r.kind === 'masq' || r.kind === 'rr' || r.kind === 'aff') && !state.has(r.owner))
        orphans.set(`rule:${r.owner}`, `a ${r.kind} rule of ${r.owner} in chain ${c.name}`);
      if (r.kind === 'foreign')
        orphans.set(`foreign:${c.name}:${r.text}`, `a rule iptlb did not write in chain ${c.name}`);
    }
  }
  for (const name of affSets.keys()) if (!claimedAffSets.has(name)) orphans.set(`set:${name}`, `affinity set ${name}`);
  for (const f of view.foreign) orphans.set(`foreign:${f}`, `${f}, a set or chain in ${table} that iptlb did not make`);
  for (const [name, what] of [...orphans].sort()) {
    const detail = name.startsWith('foreign:') ? what : `${what}, and no profile in the state file owns it`;
    reports.push({ name, status: 'orphaned', detail, destinations: [], packets: 0, bytes: 0 });
  }
  return reports;
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
