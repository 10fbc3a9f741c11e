/**
 * The iptables-restore dialect: rendering rules and transactions as restore text, and parsing
 * `iptables-save` output back into rules. Pure functions.
 */
import type { Family, HookChain, KernelView, Rule, Target, Transaction } from '../../model/types.js';
import { CHAIN_PREFIX, OWN_CHAIN, OWNER_PREFIX } from './plan.js';
import { familyOf } from '../../model/address.js';
import { canonicalProbability, renderRuleOf, parseRule } from './codec/index.js';
import {
  DISPATCH,
  GATED_HOOKS,
  elementOf,
  gateRuleText,
  hookOfDispatch,
  isGatedHook,
  planGate,
  type GatedHook,
} from './gate.js';
import { IptlbError } from '../../model/errors.js';
import { HELD_HINT, MOVED_AT, MOVED_HINT } from '../engine.js';

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

export { canonicalProbability, parseRule, renderRuleOf } from './codec/index.js';

/** Canonical text of a rule, as the kernel keeps it: probabilities at the kernel's precision, /32 explicit. */
export function canonicalRule(r: Rule): string {
  const c: Rule = {
    ...r,
    matches: r.matches.map((m) =>
      m.name === 'statistic' && m.mode === 'random' ? { ...m, probability: canonicalProbability(m.probability) } : m,
    ),
  };
  return renderRule(c);
}

const HOOKS: readonly string[] = ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'];

/** The rule's arguments as iptables (or, for an IPv6 rule, ip6tables) takes them (after `-A CHAIN`). */
export function renderRule(r: Rule): string {
  return renderRuleOf(r, familyOfRule(r));
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
/** The original iptlb's jumps in `view` (no comment, see {@link KernelView}) to a chain `tx` deletes or refills. */
export function bareJumpsOf(tx: Transaction, view: KernelView): NonNullable<KernelView['bareJumps']> {
  if (!view.bareJumps) return [];
  const targets = new Set([...tx.deleteChains, ...tx.chains.map((c) => c.name)]);
  return view.bareJumps.filter((b) => targets.has(b.target));
}

/**
 * The original iptlb's jumps a committed transaction deleted (see {@link bareJumpsOf}), each as its chain and its
 * rule's arguments: set by the executor that committed it, which alone knows them (the native commit finds them in
 * its own walk of the table), for `--verbose` (LegacyEngine.describeTransaction).
 */
export const deletedOriginals = new WeakMap<Transaction, { chain: string; rule: string }[]>();

export function renderRestore(tx: Transaction, view: KernelView): string {
  const existing = new Set(view.chains.map((c) => c.name));
  const owners = new Set(tx.owners);
  refuseConflicts(tx, view);
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
  // The original iptlb's jumps (no comment) to a chain this change deletes or refills: they would
  // keep the chain from being deleted, and a replaced profile reachable the old way too.
  for (const b of bareJumpsOf(tx, view))
    out.push(
      b.raw === undefined ? `# and the original iptlb's jump in ${b.chain} to ${b.target}` : `-D ${b.chain} ${b.raw}`,
    );
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

/**
 * With `tx.exclusive`: the refusals of a state-file instance's change against the table `view` (a
 * profile of another state file's name, an address another's rule or the original iptlb's jump
 * serves), as the native executor's commit makes them.
 */
export function refuseConflicts(tx: Transaction, view: KernelView): void {
  if (!tx.exclusive) return;
  refuseHeld(tx, view);
  refuseTaken(tx, view, new Set(tx.owners));
}

/** What follows the addon's message that a profile's address is taken by another's rule. */
export const TAKEN_HINT =
  ', which is not part of this change: delete it where it is held (another state file), or, if this state file holds it at another address, apply it with -run (`iptlb status` shows it)';

/**
 * With `tx.exclusive`: refuses a profile the transaction creates (`tx.created`: a name the state
 * file does not hold) whose chain the table has, or whose name a rule carries, unless the table
 * holds it exactly as planned (a change interrupted before its state write: applying it again
 * completes it). As the native executor does, with the same message. The table is read whole for
 * the spawn executor's commit anyway; the rules are gone through once.
 */
export function refuseHeld(tx: Transaction, view: KernelView): void {
  refuseMoved(tx, view);
  if (!tx.created?.length) return;
  const names = new Set(tx.created.map((c) => c.name));
  const rulesOf = new Map<string, KernelView['hookRules']>();
  for (const h of view.hookRules) {
    if (!names.has(h.owner)) continue;
    const list = rulesOf.get(h.owner);
    if (list) list.push(h);
    else rulesOf.set(h.owner, [h]);
  }
  for (const { name, chain } of tx.created) {
    const held = chain === undefined ? undefined : view.chains.find((c) => c.name === chain);
    const rules = rulesOf.get(name) ?? [];
    if (!held && !rules.length) continue;
    if (heldAsPlanned(tx, name, held, chain !== undefined, rules)) continue;
    const where = (h: KernelView['hookRules'][number]): string =>
      isGatedHook(h.chain) && !h.direct ? DISPATCH[h.chain] : h.chain;
    const found = [
      ...(held ? [`chain ${held.name}`] : []),
      ...rules.slice(0, 1).map((h) => `rule iptlb:${name} in ${where(h)}`),
    ];
    throw new IptlbError(
      'ECONFLICT',
      `name: profile ${name}: the ${tx.family === 'ipv6' ? 'ip6tables ' : ''}nat table already holds a profile of that name (${found.join(', ')})${HELD_HINT}`,
      { field: 'name' },
    );
  }
}

/**
 * With `tx.exclusive`: refuses a profile the transaction replaces or deletes that the state file
 * holds (an owner not created) whose name a dispatch rule carries at an address neither planned nor
 * the state file's (`tx.was`), or whose chain a dispatch rule of a profile not among the owners jumps
 * to: another state file's profile of that name, which the change would take over. As the native
 * executor does (in its walk, and before it refills a chain), with the same messages.
 */
function refuseMoved(tx: Transaction, view: KernelView): void {
  const owners = new Set(tx.owners);
  const created = new Set((tx.created ?? []).map((c) => c.name));
  const allowed = new Set<string>(); // the elements a held profile's dispatch rules may select: planned, or tx.was
  const chains = new Map<string, string>(); // a held profile's chain -> the profile
  for (const h of tx.hookRules) {
    if (!isGatedHook(h.chain)) continue;
    const el = elementOf(h.rule);
    if (el) allowed.add(el);
    if (h.rule.target.name === 'jump' && !created.has(h.owner)) chains.set(h.rule.target.chain, h.owner);
  }
  for (const el of tx.was ?? []) allowed.add(el);
  const table = `the ${tx.family === 'ipv6' ? 'ip6tables ' : ''}nat table`;
  for (const h of view.hookRules) {
    if (!isGatedHook(h.chain) || h.direct) continue;
    if (owners.has(h.owner)) {
      const el = created.has(h.owner) ? null : elementOf(h.rule);
      if (el === null || allowed.has(el)) continue;
      throw new IptlbError(
        'ECONFLICT',
        `name: profile ${h.owner}: ${table}${MOVED_AT}'s (rule iptlb:${h.owner} in ${DISPATCH[h.chain]})${MOVED_HINT}`,
        { field: 'name' },
      );
    }
    const target = h.rule.target;
    if (target.name !== 'jump') continue;
    const name = chains.get(target.chain);
    if (name === undefined) continue;
    throw new IptlbError(
      'ECONFLICT',
      `name: profile ${name}: ${table} already holds a profile of that name (chain ${target.chain}, rule iptlb:${h.owner} in ${DISPATCH[h.chain]})${HELD_HINT}`,
      { field: 'name' },
    );
  }
  // A rule iptlb did not write that jumps to such a chain the table has (refilled, it would send that
  // rule's packets to the profile's new rules), as the native commit refuses it (RefuseShared).
  const existing = new Set(view.chains.map((c) => c.name));
  for (const o of view.otherJumps ?? []) {
    const name = chains.get(o.target);
    if (name === undefined || !existing.has(o.target)) continue;
    throw new IptlbError('ECONFLICT', `name: ${jumpedBy(tx.family, name, o.target, o.chain)}`, { field: 'name' });
  }
}

/** How the refusal of a profile whose chain a rule iptlb did not write jumps to says it (the addon says the same). */
export const JUMPED_BY = ', which this change refills, is jumped to by a rule iptlb did not write (in ';

/**
 * The refusal of profile `owner`, held by the state file, whose chain `chain` a rule iptlb did not write (in chain
 * `where`) jumps to: what to do (as transaction.cc RefuseShared writes it).
 */
export function jumpedBy(family: Family, owner: string, chain: string, where: string): string {
  const save = family === 'ipv6' ? 'ip6tables-legacy-save' : 'iptables-legacy-save';
  return `profile ${owner}: its chain ${chain}${JUMPED_BY}${where}), whose packets would reach this profile's new rules: remove that jump (\`${save} -t nat | grep -- '-j ${chain}'\` finds it), then apply again`;
}

/**
 * Whether the table holds profile `name` exactly as `tx` plans it: its chain (when `withChain`) with
 * the planned rules, and the planned rules in the hooks, behind the gate.
 */
function heldAsPlanned(
  tx: Transaction,
  name: string,
  chain: KernelView['chains'][number] | undefined,
  withChain: boolean,
  rules: KernelView['hookRules'],
): boolean {
  if (withChain) {
    const planned = tx.chains.find((c) => c.name === chain?.name);
    if (!chain || !planned) return false;
    const have = chain.rules.map((k) => canonicalRule(k.rule));
    const want = planned.rules.map(canonicalRule);
    if (have.length !== want.length || have.some((r, i) => r !== want[i])) return false;
  }
  if (rules.some((h) => h.direct)) return false;
  const have = rules.map((h) => `${h.chain} ${canonicalRule(h.rule)}`).sort();
  const want = tx.hookRules
    .filter((h) => h.owner === name)
    .map((h) => `${h.chain} ${canonicalRule(h.rule)}`)
    .sort();
  return have.length === want.length && have.every((r, i) => r === want[i]);
}

/**
 * With `tx.exclusive`: refuses a hook rule of the transaction whose address, protocol and port a
 * dispatch rule of a profile not among the owners already selects (as the native executor does; the
 * message is the same).
 */
function refuseTaken(tx: Transaction, view: KernelView, owners: ReadonlySet<string>): void {
  const mine = new Map<string, string>(); // dispatch chain + element -> owner
  for (const h of tx.hookRules) {
    const el = isGatedHook(h.chain) ? elementOf(h.rule) : null;
    if (el) mine.set(`${DISPATCH[h.chain as GatedHook]} ${el}`, h.owner);
  }
  for (const h of view.hookRules) {
    if (owners.has(h.owner) || !isGatedHook(h.chain) || h.direct) continue;
    const el = elementOf(h.rule);
    const owner = el ? mine.get(`${DISPATCH[h.chain]} ${el}`) : undefined;
    if (owner === undefined) continue;
    throw new IptlbError(
      'ECONFLICT',
      `source: profile ${owner}: its address is taken in the kernel by profile ${h.owner} (rule iptlb:${h.owner} in ${DISPATCH[h.chain]})${TAKEN_HINT}`,
      { field: 'source' },
    );
  }
  // The original iptlb's jumps (no comment) in the built-in chain itself, to a chain this change
  // leaves as it is (those to a chain it deletes or refills go with it): one at a planned address
  // would serve it too, and it comes first (the original inserts at position 1).
  if (!view.bareJumps) return;
  const left = new Set(bareJumpsOf(tx, view));
  for (const b of view.bareJumps) {
    if (left.has(b) || !isGatedHook(b.chain) || !b.rule) continue;
    const el = elementOf(b.rule);
    const owner = el ? mine.get(`${DISPATCH[b.chain]} ${el}`) : undefined;
    if (owner === undefined) continue;
    throw new IptlbError('ECONFLICT', `source: ${originalTaken(tx.family, owner, b.chain, el!, b.target)}`, {
      field: 'source',
    });
  }
}

/** What the refusal of a profile at the address of the original iptlb's jump says (the addon's message is the same). */
export const ORIGINAL_AT = " is served by the original iptlb's rule in ";

/**
 * The refusal of profile `owner`'s rule in `hook` at gate element `el` (`ip,proto:port`), where the original iptlb's
 * jump to `target` (no comment) is: what to do, and the command that deletes that jump (as transaction.cc
 * OriginalTaken writes it).
 */
export function originalTaken(family: Family, owner: string, hook: string, el: string, target: string): string {
  const comma = el.lastIndexOf(',');
  const colon = el.lastIndexOf(':');
  const rule = `-p ${el.slice(comma + 1, colon)} -d ${el.slice(0, comma)} --dport ${el.slice(colon + 1)} -j ${target}`;
  const tool = family === 'ipv6' ? 'ip6tables-legacy' : 'iptables-legacy';
  return (
    `profile ${owner}: its address${ORIGINAL_AT}${hook} (${rule}, no comment), which this change would leave in place ` +
    `(two rules for one address: the first in ${hook} wins): take that profile over under its original name (the one ` +
    `chain ${target} was made from, applied with -run through the state file that holds it), or delete the ` +
    `original's rule: ${tool} -t nat -D ${hook} ${rule}`
  );
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
  const gate: { gates: GatedHook[]; dispatch: GatedHook[]; foreign: GatedHook[] } = {
    gates: [],
    dispatch: [],
    foreign: [],
  };
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
    const jumpsTo = words[words.length - 2] === '-j' ? words[words.length - 1]! : '';
    const other = (): void => {
      if (OWN_CHAIN.test(jumpsTo)) (view.otherJumps ??= []).push({ chain, target: jumpsTo });
    };
    if (behind) {
      // A profile's rule behind the gate: read as the hook rule it stands for. Another's keeps the
      // chain and its gate (as the native executor does).
      const owner = ownerOf(words);
      if (owner === null) {
        if (!gate.foreign.includes(behind)) gate.foreign.push(behind);
        other();
        continue;
      }
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
      if (owner === null) {
        // Without any comment (another tool's comment makes it that tool's), to a profile's chain.
        if (OWN_CHAIN.test(jumpsTo) && !words.includes('--comment')) {
          const rule = parseRule(words);
          (view.bareJumps ??= []).push({ chain, target: jumpsTo, raw: args, ...(rule ? { rule } : {}) });
        } else other();
        continue;
      }
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
    } else if (!c) other(); // a chain of another tool's
  }
  if (gate.gates.length || gate.dispatch.length)
    view.gate = gate.foreign.length ? gate : { gates: gate.gates, dispatch: gate.dispatch };
  return view;
}

/**
 * Why a profile chain cannot be deleted, and what to do: a rule of another tool (in a chain of its own,
 * or with a comment of its own in a built-in chain) still jumps to it.
 */
export function chainInUse(chain: string, tool = 'iptables-legacy'): string {
  const save = tool.startsWith('ip6') ? 'ip6tables-legacy-save' : 'iptables-legacy-save';
  return `another rule still jumps to ${chain} (iptlb deletes only its own jumps, and the original iptlb's): find it with \`${save} -t nat | grep -- '-j ${chain}'\` and remove it`;
}
