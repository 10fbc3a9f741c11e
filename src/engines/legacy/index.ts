/**
 * The `legacy` engine: profiles as chains `IPTLB_NAT_<NAME>` and commented jumps in the x_tables nat
 * table of iptables (IPv4) or ip6tables (IPv6). A change is one transaction per table: the planner
 * (src/engines/legacy/plan.ts) writes it as data, the executor commits it through libiptc or iptables-restore.
 */
import { xtablesTables, ip6tablesTables } from '../select.js';
import { compare, served, syncTransaction } from './drift.js';
import { chainName, familyOfProfile } from '../../model/profile.js';
import {
  OWN_CHAIN,
  addressElement,
  holdsAny,
  hookChainOf,
  isEmptyTransaction,
  planProfile,
  planTransaction,
} from './plan.js';
import { deletedOriginals, renderRestore, renderRule } from './restore.js';
import { DISPATCH, GATE_SET, isGatedHook, physicalChain } from './gate.js';
import type { Family } from '../../model/address.js';
import type { AfterCommit, KernelView, Profile, Transaction } from '../../model/types.js';
import type { LegacyExecutor } from './executor.js';
import {
  ChangedProfiles,
  type Change,
  type Engine,
  type FamilyCommit,
  type FamilyPlan,
  type KeepOthers,
  type PlanContext,
  type ShownProfile,
} from '../engine.js';

const EMPTY: KernelView = { chains: [], hookRules: [] };

/** Tables x_tables has instantiated for family `f` in this network namespace ('unreadable': not root). */
function tablesOf(f: Family): string[] | null | 'unreadable' {
  return f === 'ipv6' ? ip6tablesTables() : xtablesTables();
}

export class LegacyEngine implements Engine<KernelView, Transaction> {
  readonly name = 'legacy' as const;
  /**
   * @param realTables whether the executor reads this network namespace's tables (those made here:
   * then an absent nat table is not read, which would create it); a supplied executor is read as is.
   */
  constructor(
    readonly executor: LegacyExecutor,
    private readonly realTables = false,
  ) {}

  where(f: Family): string {
    return f === 'ipv6' ? 'ip6tables nat table' : 'nat table';
  }

  mayHold(f: Family): boolean {
    if (!this.realTables) return true;
    const tables = tablesOf(f);
    // A list this process may not read (not root): the read says why it fails, or what is there.
    return tables === 'unreadable' || (tables?.includes('nat') ?? false);
  }

  /**
   * An absent nat table is read as empty: asking the kernel for it by name would create it. Only
   * iptlb's own chains are in the view ({@link OWN_CHAIN}): what is not read is never removed.
   */
  async read(f: Family, opts: { leftSet?: boolean } = {}): Promise<KernelView> {
    if (!this.mayHold(f)) return EMPTY;
    let view = await this.executor.read(f);
    // The gate set's elements (the native read has them): a profile whose address is not among them
    // is not reached by its rules, which `compare` reports and `sync` repairs.
    if (view.gate?.dispatch.length && !view.gate.members && this.executor.gateMembers) {
      const members = await this.executor.gateMembers(f);
      if (members) view = { ...view, gate: { ...view.gate, members } };
    }
    // No dispatch chain: the gate's set, when it is there all the same, is left over (see KernelView.leftSet).
    // (One `ipset list` with the spawn executor: not for holdsObjects, which asks about rules only.)
    if (!view.gate?.dispatch.length && opts.leftSet !== false) {
      const left = view.leftSet ?? (await this.executor.leftGateSet?.(f));
      if (left) view = { ...view, leftSet: { ...left, set: GATE_SET[f] } };
    }
    return view.chains.every((c) => OWN_CHAIN.test(c.name))
      ? view
      : { ...view, chains: view.chains.filter((c) => OWN_CHAIN.test(c.name)) };
  }

  async holdsObjects(): Promise<boolean> {
    for (const f of ['ipv4', 'ipv6'] as const) {
      if (!this.mayHold(f)) continue;
      // The native executor asks without libiptc's parse of the whole table (someone else's rules included).
      if (this.executor.holds ? await this.executor.holds(f) : holdsAny(await this.read(f, { leftSet: false })))
        return true;
    }
    return false;
  }

  compare(profiles: ReadonlyMap<string, Profile>, view: KernelView) {
    return compare(profiles as Map<string, Profile>, view);
  }

  served(view: KernelView) {
    return served(view);
  }

  /** A legacy plan touches only the chains and jumps of the profiles it names: nothing of others is ever at stake. */
  async planChange(
    f: Family,
    state: ReadonlyMap<string, Profile>,
    change: Change,
    ctx: PlanContext = {},
  ): Promise<FamilyPlan<Transaction>> {
    const tx = planTransaction(change.upsert, change.remove, f);
    // A state-file instance does not take over an address the kernel gives to a profile it does not
    // hold, nor a profile of a name it does not hold (refused at commit, where the kernel's rules are
    // at hand: the native commit reads every rule's comment anyway); an in-memory one cannot tell its
    // own profiles of before a restart from another's, and takes them, as the fleet agent does.
    const exclusive = ctx.exclusive ?? !ctx.partial;
    if (exclusive && tx.hookRules.length) {
      tx.exclusive = true;
      const fresh = change.upsert.filter((p) => !state.has(p.name));
      if (fresh.length) {
        // A chain a profile this state holds keeps through this change is its own (a rename from
        // `web` to `WEB` in one change): only the new name's rules are asked about.
        const kept = new Set<string>();
        for (const n of tx.owners) if (state.has(n)) kept.add(chainName(n));
        tx.created = fresh.map((p) =>
          kept.has(chainName(p.name)) ? { name: p.name } : { name: p.name, chain: chainName(p.name) },
        );
      }
    }
    // A profile the state file holds, replaced or deleted: its name's rules in the table must be its
    // own, at the address the state file has it or at the new one (asked in the commit's walk).
    if (exclusive && (tx.hookRules.length || change.remove.length)) {
      tx.exclusive = true;
      const upserts = new Map(change.upsert.map((p) => [p.name, p]));
      const was: string[] = [];
      for (const name of tx.owners) {
        const old = state.get(name);
        const now = upserts.get(name);
        if (!old || (now && old.source === now.source && old.protocol === now.protocol)) continue;
        was.push(addressElement(old));
      }
      if (was.length) tx.was = was;
    }
    return { family: f, steps: isEmptyTransaction(tx) ? [] : [tx], next: new ChangedProfiles(state, change) };
  }

  async commitPlan(
    plan: FamilyPlan<Transaction>,
    _log?: (line: string) => void,
    after?: AfterCommit,
  ): Promise<FamilyCommit<Transaction>> {
    let durationMs = 0;
    let appended: FamilyCommit['appended'];
    for (const [i, tx] of plan.steps.entries()) {
      // `after` goes with the last step: written once the whole plan is in the kernel.
      const r = await this.executor.commit(tx, i === plan.steps.length - 1 ? after : undefined);
      durationMs += r.durationMs;
      appended = r.appended;
    }
    return { durationMs, committed: plan.steps[0], ...(appended ? { appended } : {}) };
  }

  planReplace(
    f: Family,
    profiles: ReadonlyMap<string, Profile>,
    view: KernelView,
    others: KeepOthers = {},
  ): Transaction {
    return syncTransaction(profiles as Map<string, Profile>, view, f, others);
  }

  async planRemoveAll(f: Family): Promise<Transaction | undefined> {
    const view = await this.read(f);
    // The gate's set left with no rule of iptlb's (see KernelView.leftSet) is iptlb's object too: a transaction of
    // nothing, whose commit destroys a set no gate refers to (unless another tool's rule uses it). Left out, a
    // migrate to nft left it, and nothing looked at the legacy engine again.
    const leftSet = view.leftSet !== undefined && view.leftSet.references === 0;
    return view.chains.length || view.hookRules.length || leftSet ? syncTransaction(new Map(), view, f) : undefined;
  }

  async commit(tx: Transaction): Promise<number> {
    return (await this.executor.commit(tx)).durationMs;
  }

  /**
   * Read-only: the executor's render reads the nat table (libiptc, or `iptables-legacy-save -t nat`),
   * and asking for a table by name creates it. Where x_tables has no nat table of this family yet,
   * the text is rendered against the empty view {@link read} gives (`iptlb plan --engine legacy` on a
   * host without one created it).
   */
  render(tx: Transaction): Promise<string> {
    return this.mayHold(tx.family) ? this.executor.render(tx) : Promise.resolve(renderRestore(tx, EMPTY));
  }

  /**
   * Each chain named as the kernel has it: a profile's jump (and LOG rule) goes into the dispatch
   * chain IPTLB_OUTPUT / IPTLB_PREROUTING behind the gate (gate.ts), not into OUTPUT / PREROUTING.
   * The gate rule and the set element the executor adds with the first profile behind a gate are not
   * part of the transaction, and not listed. The original iptlb's jumps (no comment) to a chain the transaction
   * deletes or refills, which the commit deleted too, are listed as the executor found them.
   */
  describeTransaction(tx: Transaction): string[] {
    const table = tx.family === 'ipv6' ? 'ip6tables nat' : 'nat';
    // Every rule of an owner is deleted first; an owner whose rules come back is a replacement, said by its inserts.
    const inserted = new Set(tx.hookRules.map((h) => h.owner));
    return [
      ...tx.owners.filter((o) => !inserted.has(o)).map((o) => `[delete] ${table}: the rules commented "iptlb:${o}"`),
      ...(deletedOriginals.get(tx) ?? []).map(
        (b) => `[delete] ${table}/${b.chain}: ${b.rule} (the original iptlb's jump, no comment)`,
      ),
      ...tx.deleteChains.map((c) => `[delete] ${table}/${c}: the chain`),
      ...tx.chains.flatMap((c) => c.rules.map((r) => `[append] ${table}/${c.name}: ${renderRule(r)}`)),
      ...tx.hookRules.map((h) => `[insert] ${table}/${physicalChain(h.chain)}: ${renderRule(h.rule)}`),
    ];
  }

  describeProfile(p: Profile): string {
    const hook = hookChainOf(p);
    return (
      `${p.rulesBackend}: jump in ${familyOfProfile(p) === 'ipv6' ? 'ip6tables ' : ''}nat ${physicalChain(hook)} (behind the gate in ${hook}), chain ${chainName(p.name)} with ${planProfile(p).chain.rules.length} rules` +
      `${p.scheduler === 'round-robin' ? ', round-robin' : ''}${p.affinity ? `, affinity ${p.affinity} s` : ''}` +
      `${p.logEnabled ? `, logging at level ${p.logLevel}` : ''}${p.masquerade ? ', masquerade in POSTROUTING' : ''}`
    );
  }

  describeRemoval(name: string, f: Family): string {
    return `delete profile ${name}: no jump rule or chain ${chainName(name)} of it left in the ${this.where(f)}`;
  }

  async show(name: string, profile: Profile | undefined, families: readonly Family[]): Promise<ShownProfile> {
    let chain: KernelView['chains'][number] | undefined;
    let hooks: KernelView['hookRules'] = [];
    let family = families[0];
    for (const f of families) {
      const view = await this.read(f);
      chain = view.chains.find((c) => c.name === chainName(name));
      hooks = view.hookRules.filter((h) => h.owner === name);
      family = f;
      if (chain || hooks.length) break;
    }
    // The chain the rule is in: behind the gate, the dispatch chain; an older iptlb's jump, the hook itself.
    const inChain = (h: KernelView['hookRules'][number]): string =>
      isGatedHook(h.chain) && !h.direct ? DISPATCH[h.chain] : h.chain;
    const lines = [
      ...hooks.map(
        (h) => `${inChain(h)} #${h.position}\t${h.packets} pkts ${h.bytes} bytes\t${h.raw ?? renderRule(h.rule)}`,
      ),
      ...(chain
        ? chain.rules.map((r) => `${chain!.name}\t${r.packets} pkts ${r.bytes} bytes\t${renderRule(r.rule)}`)
        : []),
    ];
    return {
      found: !!chain || hooks.length > 0,
      where: `${this.where(family)}, ${this.name}/${this.executor.kind}`,
      lines: lines.length ? lines : ['no rules in the kernel'],
      // `chain` as in the text (the chain the rule is in, with `position` in it); `hook` the built-in
      // chain whose packets reach it.
      json: { chain: chain ?? null, hookRules: hooks.map((h) => ({ ...h, chain: inChain(h), hook: h.chain })) },
    };
  }

  prefetch(): boolean {
    if (!this.executor.prefetch) return false;
    this.executor.prefetch();
    return true;
  }

  releasePrefetch(): Promise<void> {
    return this.executor.releasePrefetch?.() ?? Promise.resolve();
  }
}
