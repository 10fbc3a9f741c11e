/**
 * The iptables-restore dialect: rendering rules and transactions as restore text, and parsing
 * `iptables-save` output back into rules. Pure functions.
 */
import type { Family, HookChain, KernelView, Match, Rule, Target, Transaction } from '../../model/types.js';
import { CHAIN_PREFIX, OWNER_PREFIX } from './plan.js';
import { canonicalIpv6, familyOf } from '../../model/address.js';
import { DISPATCH, GATED_HOOKS, gateRuleText, hookOfDispatch, isGatedHook, planGate, type GatedHook } from './gate.js';

/** xt_recent's `--mask` of one host, as the save tools print it (the whole address). */
const HOST_MASK: Record<Family, string> = { ipv4: '255.255.255.255', ipv6: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff' };

/**
 * The family of a planned or parsed rule: that of the first address it holds (IPv6 text has colons, an IPv4 endpoint
 * one at most).
 */
export function familyOfRule(r: Rule): Family {
  const t = r.target;
  const text =
    r.dst ?? (t.name === 'DNAT' ? t.toDestination : r.matches.find((m) => m.name === 'conntrack')?.ctorigdst) ?? '';
  return familyOf(text);
}

const HOOKS: readonly string[] = ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'];

function quote(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

function renderMatch(m: Match, family: Family): string {
  switch (m.name) {
    case 'tcp':
    case 'udp':
    case 'sctp':
      return `-m ${m.name} --dport ${m.dport}`;
    case 'statistic':
      return m.mode === 'nth'
        ? `-m statistic --mode nth --every ${m.every} --packet ${m.packet}`
        : `-m statistic --mode random --probability ${m.probability}`;
    case 'comment':
      return `-m comment --comment ${quote(m.comment)}`;
    case 'recent':
      return m.mode === 'set'
        ? `-m recent --set --name ${m.recentName} --mask ${HOST_MASK[family]} --rsource`
        : `-m recent --update --seconds ${m.seconds} --reap --name ${m.recentName} --mask ${HOST_MASK[family]} --rsource`;
    case 'addrtype':
      return `-m addrtype --dst-type ${m.dstType}`;
    case 'conntrack':
      return `-m conntrack --ctstate ${m.ctstate} --ctorigdst ${m.ctorigdst} --ctorigdstport ${m.ctorigdstport}`;
  }
}

function renderTarget(t: Target): string {
  switch (t.name) {
    case 'DNAT':
      return `-j DNAT --to-destination ${t.toDestination}`;
    case 'LOG':
      return `-j LOG --log-prefix ${quote(t.prefix)} --log-level ${t.level}`;
    case 'RETURN':
      return '-j RETURN';
    case 'MASQUERADE':
      return '-j MASQUERADE';
    case 'jump':
      return `-j ${t.chain}`;
  }
}

/** The rule's arguments as iptables (or, for an IPv6 rule, ip6tables) takes them (after `-A CHAIN`). */
export function renderRule(r: Rule): string {
  return renderRuleOf(r, familyOfRule(r));
}

/** {@link renderRule} for a rule of the nat table of `family`. */
export function renderRuleOf(r: Rule, family: Family): string {
  const parts: string[] = [];
  if (r.dst) parts.push(`-d ${r.dst}`);
  if (r.proto) parts.push(`-p ${r.proto}`);
  for (const m of r.matches) parts.push(renderMatch(m, family));
  parts.push(renderTarget(r.target));
  return parts.join(' ');
}

/**
 * Restore text (for `iptables-restore --noflush`, or `ip6tables-restore` when `tx.family` is ipv6) that performs `tx`
 * against the kernel state `view`:
 * chains are declared (created, or flushed when they exist), the owners' hook rules are deleted by
 * their exact text, stale chains deleted, chains filled, hook rules inserted at the top of their
 * dispatch chain (OUTPUT/PREROUTING, behind the gate, see gate.ts) or of POSTROUTING; a gate and its
 * dispatch chain are created with the first rule behind them and deleted with the last. The gate's
 * set must exist when the text is fed to iptables-restore (it resolves the set by name).
 */
export function renderRestore(tx: Transaction, view: KernelView): string {
  const existing = new Set(view.chains.map((c) => c.name));
  const owners = new Set(tx.owners);
  const gate = planGate(tx, view);
  const gates = new Set(view.gate?.gates ?? []);
  const dispatch = new Set(view.gate?.dispatch ?? []);
  const needed = GATED_HOOKS.filter((h) => gate.remaining[h] > 0);
  const unneeded = GATED_HOOKS.filter((h) => gate.remaining[h] === 0);
  const out: string[] = ['*nat'];
  for (const h of needed) if (!dispatch.has(h)) out.push(`:${DISPATCH[h]} - [0:0]`);
  for (const c of tx.chains) out.push(`:${c.name} - [0:0]`);
  const dropping = tx.deleteChains.filter((c) => existing.has(c));
  for (const c of dropping) out.push(`:${c} - [0:0]`);
  for (const h of view.hookRules) {
    // Our own rendering of a parsed rule, not the saved text: iptables-save prints `--ctorigdst a.b.c.d`
    // for a /32, which iptables parses back with another mask, so `-D` with the saved text misses.
    const parsed = (h.rule.target.name as string) !== 'unknown';
    const chain = isGatedHook(h.chain) && !h.direct ? DISPATCH[h.chain] : h.chain;
    if (owners.has(h.owner)) out.push(`-D ${chain} ${parsed || !h.raw ? renderRuleOf(h.rule, tx.family) : h.raw}`);
  }
  for (const h of unneeded) {
    if (gates.has(h)) out.push(`-D ${h} ${gateRuleText(h, tx.family)}`);
    if (dispatch.has(h)) out.push(`-X ${DISPATCH[h]}`);
  }
  for (const c of dropping) out.push(`-X ${c}`);
  for (const c of tx.chains) for (const r of c.rules) out.push(`-A ${c.name} ${renderRuleOf(r, tx.family)}`);
  const position = new Map<string, number>();
  for (const h of tx.hookRules) {
    const chain = isGatedHook(h.chain) ? DISPATCH[h.chain] : h.chain;
    const pos = (position.get(chain) ?? 0) + 1;
    position.set(chain, pos);
    out.push(`-I ${chain} ${pos} ${renderRuleOf(h.rule, tx.family)}`);
  }
  for (const h of needed) if (!gates.has(h)) out.push(`-I ${h} 1 ${gateRuleText(h, tx.family)}`);
  out.push('COMMIT', '');
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Parsing iptables-save output

/** Splits an iptables-save rule line into words, honouring double quotes and backslash escapes. */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === ' ') i++;
    if (i >= line.length) break;
    let w = '';
    if (line[i] === '"') {
      i++;
      while (i < line.length && line[i] !== '"') {
        if (line[i] === '\\' && i + 1 < line.length) i++;
        w += line[i++];
      }
      i++;
    } else {
      while (i < line.length && line[i] !== ' ') w += line[i++];
    }
    words.push(w);
  }
  return words;
}

/** Canonical probability text as iptables-save prints it (11 decimals of the kernel's 31-bit value). */
export function canonicalProbability(p: string): string {
  const v = Math.round(0x80000000 * Number(p));
  return (v / 0x80000000).toFixed(11);
}

/**
 * An address as the save tools print it, with its prefix made explicit (`/32`, `/128`: ip6tables-save
 * prints `-d` with it, conntrack's `--ctorigdst` without), IPv6 in canonical text (glibc writes some
 * addresses with a dotted IPv4 tail). Null when it is neither family's.
 */
function cidrText(v: string): string | null {
  const slash = v.indexOf('/');
  const ip = slash < 0 ? v : v.slice(0, slash);
  if (!ip.includes(':')) return slash < 0 ? `${v}/32` : v;
  const c = canonicalIpv6(ip);
  return c === null ? null : `${c}${slash < 0 ? '/128' : v.slice(slash)}`;
}

/** `a.b.c.d:port` as printed, or `[v6]:port` with the address in canonical text; null when malformed. */
function endpointText(v: string): string | null {
  if (!v.startsWith('[')) return v;
  const close = v.indexOf(']');
  const c = close < 0 ? null : canonicalIpv6(v.slice(1, close));
  return c === null ? null : `[${c}]${v.slice(close + 1)}`;
}

/**
 * Parses the arguments of one rule (`-d … -j …`) in the dialect iptables-save (and ip6tables-save) prints. Returns null
 * when the rule uses anything iptlb does not write (so it can only be handled by its raw text).
 */
export function parseRule(words: string[]): Rule | null {
  const rule: Rule = { matches: [], target: { name: 'RETURN' } };
  let target: Target | null = null;
  let i = 0;
  const next = (): string | undefined => words[++i];
  while (i < words.length) {
    const w = words[i];
    if (w === '-d') {
      const v = next();
      const cidr = v ? cidrText(v) : null;
      if (!cidr) return null;
      rule.dst = cidr;
    } else if (w === '-p') {
      const v = next();
      if (v !== 'tcp' && v !== 'udp' && v !== 'sctp') return null;
      rule.proto = v;
    } else if (w === '-m') {
      const name = next();
      if (name === 'tcp' || name === 'udp' || name === 'sctp') {
        if (next() !== '--dport') return null;
        const port = Number(next());
        if (!Number.isInteger(port)) return null;
        rule.matches.push({ name, dport: port });
      } else if (name === 'statistic') {
        if (next() !== '--mode') return null;
        const mode = next();
        if (mode === 'nth') {
          // iptables-save leaves out `--packet 0`.
          if (next() !== '--every') return null;
          const every = Number(next());
          let packet = 0;
          if (words[i + 1] === '--packet') {
            i++;
            packet = Number(next());
          }
          if (!Number.isInteger(every) || every < 1 || !Number.isInteger(packet) || packet < 0 || packet >= every)
            return null;
          rule.matches.push({ name: 'statistic', mode: 'nth', every, packet });
        } else {
          if (mode !== 'random' || next() !== '--probability') return null;
          const v = next();
          if (!v) return null;
          rule.matches.push({ name: 'statistic', mode: 'random', probability: v });
        }
      } else if (name === 'comment') {
        if (next() !== '--comment') return null;
        const v = next();
        if (v === undefined) return null;
        rule.matches.push({ name: 'comment', comment: v });
      } else if (name === 'recent') {
        // iptables-save's order: --set | --update, --seconds S, --reap, --name N, --mask M, --rsource.
        const mode = next();
        if (mode !== '--set' && mode !== '--update') return null;
        let seconds: number | undefined;
        if (words[i + 1] === '--seconds') {
          i++;
          seconds = Number(next());
          if (!Number.isInteger(seconds) || seconds < 1) return null;
        }
        if (mode === '--update' && (seconds === undefined || next() !== '--reap')) return null;
        if (mode === '--set' && seconds !== undefined) return null;
        if (next() !== '--name') return null;
        const recentName = next();
        if (!recentName || next() !== '--mask') return null;
        const mask = next();
        if ((mask !== HOST_MASK.ipv4 && mask !== HOST_MASK.ipv6) || next() !== '--rsource') return null;
        rule.matches.push(
          mode === '--set'
            ? { name: 'recent', mode: 'set', recentName }
            : { name: 'recent', mode: 'update', recentName, seconds },
        );
      } else if (name === 'addrtype') {
        if (next() !== '--dst-type' || next() !== 'LOCAL') return null;
        rule.matches.push({ name: 'addrtype', dstType: 'LOCAL' });
      } else if (name === 'conntrack') {
        if (next() !== '--ctstate' || next() !== 'DNAT' || next() !== '--ctorigdst') return null;
        const a = next();
        const ctorigdst = a ? cidrText(a) : null;
        if (!ctorigdst || next() !== '--ctorigdstport') return null;
        const port = Number(next());
        if (!Number.isInteger(port)) return null;
        rule.matches.push({ name: 'conntrack', ctstate: 'DNAT', ctorigdst, ctorigdstport: port });
      } else {
        return null;
      }
    } else if (w === '-j') {
      const t = next();
      if (t === 'DNAT') {
        if (next() !== '--to-destination') return null;
        const v = next();
        const toDestination = v ? endpointText(v) : null;
        if (!toDestination) return null;
        target = { name: 'DNAT', toDestination };
      } else if (t === 'LOG') {
        let prefix = '';
        let level = 4;
        while (words[i + 1]?.startsWith('--')) {
          const opt = next();
          const v = next();
          if (v === undefined) return null;
          if (opt === '--log-prefix') prefix = v;
          else if (opt === '--log-level') level = Number(v);
          else return null;
        }
        target = { name: 'LOG', prefix, level };
      } else if (t === 'RETURN') target = { name: 'RETURN' };
      else if (t === 'MASQUERADE') target = { name: 'MASQUERADE' };
      else if (t && t.startsWith(CHAIN_PREFIX)) target = { name: 'jump', chain: t };
      else return null;
      if (i !== words.length - 1) return null;
    } else {
      return null;
    }
    i++;
  }
  if (!target) return null;
  rule.target = target;
  return rule;
}

function ownerOf(words: string[]): string | null {
  const k = words.indexOf('--comment');
  if (k < 0 || words[k - 1] !== 'comment') return null;
  const c = words[k + 1];
  return c !== undefined && c.startsWith(OWNER_PREFIX) ? c.slice(OWNER_PREFIX.length) : null;
}

/** A kernel view whose hook rules also carry their raw save text (what `-D` needs). */
export type SavedView = KernelView;

/**
 * Extracts iptlb's objects from `iptables-save -t nat [-c]` (or `ip6tables-save`) output: chains named IPTLB_* with
 * their
 * rules, and hook-chain rules whose comment starts with `iptlb:`. Unknown rule shapes inside iptlb
 * chains are kept with an `unknown` target so drift is visible.
 */
export function parseSave(text: string): KernelView {
  const view: KernelView = { chains: [], hookRules: [] };
  const gate: { gates: GatedHook[]; dispatch: GatedHook[] } = { gates: [], dispatch: [] };
  const chains = new Map<string, KernelView['chains'][number]>();
  const positions = new Map<string, number>();
  let inNat = false;
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trimEnd();
    if (line.startsWith('*')) {
      inNat = line === '*nat';
      continue;
    }
    if (!inNat) continue;
    if (line.startsWith(':')) {
      const name = line.slice(1).split(' ')[0];
      const dispatchOf = hookOfDispatch(name);
      if (dispatchOf) gate.dispatch.push(dispatchOf);
      else if (name.startsWith(CHAIN_PREFIX)) {
        const c = { name, rules: [] };
        chains.set(name, c);
        view.chains.push(c);
      }
      continue;
    }
    let rest = line;
    let packets = 0n;
    let bytes = 0n;
    const counters = /^\[(\d+):(\d+)\] /.exec(rest);
    if (counters) {
      packets = BigInt(counters[1]);
      bytes = BigInt(counters[2]);
      rest = rest.slice(counters[0].length);
    }
    if (!rest.startsWith('-A ')) continue;
    const sp = rest.indexOf(' ', 3);
    const chain = rest.slice(3, sp);
    const args = rest.slice(sp + 1);
    const pos = (positions.get(chain) ?? 0) + 1;
    positions.set(chain, pos);
    const words = splitWords(args);
    const c = chains.get(chain);
    const behind = hookOfDispatch(chain);
    if (behind) {
      // A profile's rule behind the gate: read as the hook rule it stands for.
      const owner = ownerOf(words);
      if (owner === null) continue;
      const rule = parseRule(words) ?? { matches: [], target: { name: 'unknown', raw: args } as unknown as Target };
      view.hookRules.push({ chain: behind, owner, position: pos, rule, packets, bytes, raw: args });
    } else if (c) {
      const rule = parseRule(words) ?? { matches: [], target: { name: 'unknown', raw: args } as unknown as Target };
      c.rules.push({ rule, packets, bytes });
    } else if (HOOKS.includes(chain)) {
      if (isGatedHook(chain) && words[words.length - 2] === '-j' && words[words.length - 1] === DISPATCH[chain]) {
        gate.gates.push(chain);
        continue;
      }
      const owner = ownerOf(words);
      if (owner === null) continue;
      const rule = parseRule(words) ?? { matches: [], target: { name: 'unknown', raw: args } as unknown as Target };
      const h: KernelView['hookRules'][number] = {
        chain: chain as HookChain,
        owner,
        position: pos,
        rule,
        packets,
        bytes,
        raw: args,
      };
      if (isGatedHook(chain)) h.direct = true;
      view.hookRules.push(h);
    }
  }
  if (gate.gates.length || gate.dispatch.length) view.gate = gate;
  return view;
}
