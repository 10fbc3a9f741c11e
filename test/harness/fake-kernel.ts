/**
 * Stateful fake kernels, one per engine, for unit tests that need no root: each is an executor of
 * its engine that keeps the tables in memory and applies transactions with the kernel's semantics
 * (all or nothing; a missing object is ENOENT, a map element with other data or a set still in use is
 * EBUSY, a stale generation is ERESTART), so the core's sync, migrate, repair and undo paths run
 * against something that remembers. Tamper with `tables` to simulate other tools, reboots and flushes.
 */
import { IptlbError } from '../../src/model/errors.js';
import { deletedOriginals, refuseConflicts, renderRestore, renderRuleOf } from '../../src/engines/legacy/restore.js';
import { OWN_CHAIN } from '../../src/engines/legacy/plan.js';
import {
  type NftBaseChain,
  type NftEndpoint,
  type NftFamily,
  type NftOriginalJump,
  type NftRule,
  type NftTransaction,
  type NftView,
} from '../../src/engines/nft/ops.js';
import { renderNft } from '../../src/engines/nft/render.js';
import type { CommitResult, Family, HookChain, KernelView, Rule, Transaction } from '../../src/model/types.js';
import type { LegacyExecutor } from '../../src/engines/legacy/executor.js';
import type { NftExecutor } from '../../src/engines/nft/executor.js';

const clone = <T>(v: T): T => structuredClone(v);
export const kernelError = (errno: number, what: string): IptlbError =>
  new IptlbError('EKERNEL', `${what} (errno ${errno})`, { errno });

/**
 * One x_tables nat table: built-in chains with iptlb's rules (owner set) and others' (owner undefined), and user
 * chains.
 */
export interface FakeNatTable {
  hooks: Record<HookChain | 'INPUT', { owner?: string; rule: Rule }[]>;
  chains: Map<string, Rule[]>;
}

function emptyNat(): FakeNatTable {
  return { hooks: { OUTPUT: [], PREROUTING: [], POSTROUTING: [], INPUT: [] }, chains: new Map() };
}

export class FakeLegacyKernel implements LegacyExecutor {
  readonly kind = 'native' as const;
  readonly engine = 'legacy' as const;
  /** The nat table of each family; absent until the first commit (as the kernel's, created on first use). */
  readonly tables = new Map<Family, FakeNatTable>();
  /** Transactions committed, in order. */
  readonly commits: Transaction[] = [];
  /** Shared with other fakes to see the order of commits across engines: `legacy <family>` per commit. */
  journal?: string[];
  /** Refuses the transactions it returns an error for, before changing anything (a kernel refusal). */
  fail?: (tx: Transaction) => IptlbError | undefined;

  async commit(tx: Transaction): Promise<CommitResult> {
    const refused = this.fail?.(tx);
    if (refused) throw refused;
    // A state-file instance's change: a profile it creates under a name the table holds, or at an
    // address another's rule (or the original iptlb's jump) serves, is refused, as the native
    // executor's commit does (the same checks as the spawn executor's, restore.ts).
    refuseConflicts(tx, await this.read(tx.family));
    const t = clone(this.tables.get(tx.family) ?? emptyNat());
    const owners = new Set(tx.owners);
    // The original iptlb's jumps (no owner here: no comment) to a chain the change deletes or refills go too.
    const targets = new Set([...tx.deleteChains, ...tx.chains.map((c) => c.name)]);
    const bare = (r: { owner?: string; rule: Rule }): boolean =>
      !r.owner && r.rule.target.name === 'jump' && OWN_CHAIN.test(r.rule.target.chain);
    // Those are said as the executors say them (--verbose).
    const originals: { chain: string; rule: string }[] = [];
    for (const k of Object.keys(t.hooks) as (keyof FakeNatTable['hooks'])[])
      t.hooks[k] = t.hooks[k].filter((r) => {
        const original = bare(r) && targets.has((r.rule.target as { chain: string }).chain);
        if (original) originals.push({ chain: k, rule: renderRuleOf(r.rule, tx.family) });
        return (!r.owner || !owners.has(r.owner)) && !original;
      });
    for (const c of tx.deleteChains) {
      if (!t.chains.has(c)) continue;
      const referenced = [
        ...Object.values(t.hooks)
          .flat()
          .map((r) => r.rule),
        ...[...t.chains.values()].flat(),
      ].some((r) => r.target.name === 'jump' && r.target.chain === c);
      if (referenced) throw kernelError(39, `deleting chain ${c}: still referenced`);
      t.chains.delete(c);
    }
    for (const c of tx.chains) t.chains.set(c.name, clone(c.rules));
    for (const h of [...tx.hookRules].reverse()) t.hooks[h.chain].unshift({ owner: h.owner, rule: clone(h.rule) });
    for (const r of [
      ...Object.values(t.hooks)
        .flat()
        .map((x) => x.rule),
      ...[...t.chains.values()].flat(),
    ]) {
      if (r.target.name === 'jump' && !t.chains.has(r.target.chain))
        throw kernelError(2, `jump to missing chain ${r.target.chain}`);
    }
    this.tables.set(tx.family, t);
    this.commits.push(clone(tx));
    this.journal?.push(`legacy ${tx.family}`);
    if (originals.length) deletedOriginals.set(tx, originals);
    return { durationMs: 0.1 };
  }

  async read(family: Family = 'ipv4'): Promise<KernelView> {
    const t = this.tables.get(family) ?? emptyNat();
    const hookRules: KernelView['hookRules'] = [];
    const bareJumps: NonNullable<KernelView['bareJumps']> = [];
    for (const [chain, rules] of Object.entries(t.hooks) as [HookChain | 'INPUT', { owner?: string; rule: Rule }[]][]) {
      rules.forEach((r, i) => {
        if (r.owner)
          hookRules.push({ chain, owner: r.owner, position: i + 1, rule: clone(r.rule), packets: 0n, bytes: 0n });
        // No owner (no comment), a jump to a profile's chain: the original iptlb's, as the addon reads it.
        else if (r.rule.target.name === 'jump' && OWN_CHAIN.test(r.rule.target.chain))
          bareJumps.push({ chain, target: r.rule.target.chain, rule: clone(r.rule) });
      });
    }
    // Another tool's chains' jumps to a profile's chain (as the spawn executor's read reports them).
    const otherJumps: NonNullable<KernelView['otherJumps']> = [];
    for (const [name, rules] of t.chains)
      if (!name.startsWith('IPTLB_'))
        for (const r of rules)
          if (r.target.name === 'jump' && OWN_CHAIN.test(r.target.chain))
            otherJumps.push({ chain: name, target: r.target.chain });
    const chains = [...t.chains]
      .filter(([name]) => name.startsWith('IPTLB_'))
      .map(([name, rules]) => ({ name, rules: rules.map((rule) => ({ rule: clone(rule), packets: 0n, bytes: 0n })) }));
    // The gated layout (src/engines/legacy/gate.ts): iptlb's OUTPUT/PREROUTING rules sit behind a gate per hook, which
    // exists while the hook has any; the fake keeps them in the hook's list and reports the gates.
    const gated = (['OUTPUT', 'PREROUTING'] as const).filter((h) => t.hooks[h].some((r) => r.owner));
    return {
      chains,
      hookRules,
      ...(gated.length ? { gate: { gates: [...gated], dispatch: [...gated] } } : {}),
      ...(bareJumps.length ? { bareJumps } : {}),
      ...(otherJumps.length ? { otherJumps } : {}),
    };
  }

  async render(tx: Transaction): Promise<string> {
    return renderRestore(tx, await this.read(tx.family));
  }
}

/** One nf_tables table `<family> iptlb`. */
export interface FakeNftTable {
  sets: Map<string, Set<string>>;
  affinitySets: Map<string, number>;
  maps: Map<string, Map<string, string>>;
  chains: Map<NftBaseChain, (NftRule | { kind: 'foreign'; text: string })[]>;
  /** Objects another tool added (a chain or set iptlb does not know). */
  foreign: string[];
}

const key = (e: NftEndpoint): string => `${e.ip} . ${e.port}`;

/** The sets a rule uses (a set in use cannot be deleted). */
function setsOf(r: NftRule | { kind: 'foreign' }): string[] {
  if (r.kind === 'dispatch') return [`${r.hook}_${r.proto}_${r.n}`, `be_${r.proto}`];
  if (r.kind === 'rr') return [`be_${r.proto}`];
  if (r.kind === 'aff') return [r.gate, r.set].filter((x): x is string => x !== undefined);
  return [];
}

export class FakeNftKernel implements NftExecutor {
  readonly kind = 'native' as const;
  readonly engine = 'nft' as const;
  readonly tables = new Map<NftFamily, FakeNftTable>();
  genid = 1;
  readonly commits: NftTransaction[] = [];
  /** Shared with other fakes to see the order of commits across engines: `nft <family>` per commit. */
  journal?: string[];
  /** Refuses the transactions it returns an error for, before changing anything (a kernel refusal). */
  fail?: (tx: NftTransaction) => IptlbError | undefined;

  async commit(tx: NftTransaction): Promise<CommitResult> {
    const refused = this.fail?.(tx);
    if (refused) throw refused;
    if (tx.expectGenid !== undefined && tx.expectGenid !== this.genid)
      throw new IptlbError('ERESTART', `ruleset changed (generation ${this.genid}, expected ${tx.expectGenid})`);
    const before = this.tables.get(tx.family);
    let t: FakeNftTable | undefined = before && clone(before);
    // iptables-nft's table nat: the original iptlb's jumps and chains, changed only by a takeover.
    let jumps = clone(this.originals.get(tx.family) ?? []);
    const natChains = new Set(this.natChains.get(tx.family));
    const need = (): FakeNftTable => {
      if (!t) throw kernelError(2, `table ${tx.family} iptlb does not exist`);
      return t;
    };
    const set = (name: string): Set<string> =>
      need().sets.get(name) ??
      (() => {
        throw kernelError(2, `set ${name} does not exist`);
      })();
    const map = (name: string): Map<string, string> =>
      need().maps.get(name) ??
      (() => {
        throw kernelError(2, `map ${name} does not exist`);
      })();
    for (const op of tx.ops) {
      switch (op.op) {
        case 'addTable':
          t ??= { sets: new Map(), affinitySets: new Map(), maps: new Map(), chains: new Map(), foreign: [] };
          break;
        case 'deleteTable':
          need();
          t = undefined;
          break;
        case 'addBackendMap':
          if (!need().maps.has(`be_${op.proto}`)) t!.maps.set(`be_${op.proto}`, new Map());
          break;
        case 'addDispatchSet':
          if (!need().sets.has(op.name)) t!.sets.set(op.name, new Set());
          break;
        case 'addAffinitySet':
          if (!need().affinitySets.has(op.name)) t!.affinitySets.set(op.name, op.timeout);
          break;
        case 'deleteSet': {
          const tb = need();
          if (!tb.sets.has(op.name) && !tb.affinitySets.has(op.name))
            throw kernelError(2, `set ${op.name} does not exist`);
          if ([...tb.chains.values()].flat().some((r) => setsOf(r).includes(op.name)))
            throw kernelError(16, `set ${op.name} is in use`);
          tb.sets.delete(op.name);
          tb.affinitySets.delete(op.name);
          break;
        }
        case 'addBaseChain':
          if (!need().chains.has(op.name)) t!.chains.set(op.name, []);
          break;
        case 'flushChain':
          if (!need().chains.has(op.name)) throw kernelError(2, `chain ${op.name} does not exist`);
          t!.chains.set(op.name, []);
          break;
        case 'addRule': {
          const tb = need();
          if (!tb.chains.has(op.chain)) throw kernelError(2, `chain ${op.chain} does not exist`);
          for (const s of setsOf(op.rule))
            if (!tb.sets.has(s) && !tb.maps.has(s) && !tb.affinitySets.has(s))
              throw kernelError(2, `set ${s} does not exist`);
          tb.chains.get(op.chain)!.push(clone(op.rule));
          break;
        }
        case 'addDispatchElements':
          for (const e of op.elements) set(op.set).add(key(e));
          break;
        case 'deleteDispatchElements':
          for (const e of op.elements)
            if (!set(op.set).delete(key(e))) throw kernelError(2, `element ${key(e)} is not in set ${op.set}`);
          break;
        case 'addBackendElements':
          for (const e of op.elements) {
            const m = map(`be_${op.proto}`);
            const k = `${key(e.vip)} . ${e.index}`;
            const v = key(e.to);
            if (m.has(k) && m.get(k) !== v) throw kernelError(16, `element ${k} of map be_${op.proto} has other data`);
            m.set(k, v);
          }
          break;
        case 'deleteBackendElements':
          for (const e of op.elements) {
            const k = `${key(e.vip)} . ${e.index}`;
            if (!map(`be_${op.proto}`).delete(k)) throw kernelError(2, `element ${k} is not in map be_${op.proto}`);
          }
          break;
        case 'deleteNatRule': {
          const n = jumps.length;
          jumps = jumps.filter((j) => !(j.chain === op.chain && j.handle === op.handle));
          if (jumps.length === n)
            throw kernelError(2, `rule handle ${op.handle} is not in chain ${op.chain} of table ${tx.family} nat`);
          break;
        }
        case 'deleteNatChain':
          if (!natChains.has(op.name)) throw kernelError(2, `chain ${op.name} is not in table ${tx.family} nat`);
          if (jumps.some((j) => j.target === op.name) || this.natJumpers.get(tx.family)?.includes(op.name))
            throw kernelError(16, `chain ${op.name} of table ${tx.family} nat is in use`);
          natChains.delete(op.name);
          break;
      }
    }
    if (t) this.tables.set(tx.family, t);
    else this.tables.delete(tx.family);
    if (this.originals.has(tx.family)) this.originals.set(tx.family, jumps);
    if (this.natChains.has(tx.family)) this.natChains.set(tx.family, natChains);
    this.genid++;
    this.commits.push(clone(tx));
    this.journal?.push(`nft ${tx.family}`);
    return { durationMs: 0.1 };
  }

  async read(family: NftFamily = 'ip'): Promise<NftView> {
    this.asked.reads++;
    const t = this.tables.get(family);
    if (!t)
      return { genid: this.genid, family, exists: false, dispatchSets: [], backendMaps: [], chains: [], foreign: [] };
    const endpoint = (s: string): NftEndpoint => {
      const [ip, port] = s.split(' . ');
      return { ip, port: Number(port) };
    };
    return {
      genid: this.genid,
      family,
      exists: true,
      dispatchSets: [...t.sets].map(([name, els]) => ({
        name,
        elements: [...els].map((k) => ({ key: endpoint(k), packets: 0n, bytes: 0n })),
      })),
      backendMaps: [...t.maps].map(([name, els]) => ({
        proto: name.slice(3) as 'tcp',
        elements: [...els].map(([k, v]) => {
          const [ip, port, index] = k.split(' . ');
          return { vip: { ip, port: Number(port) }, index: Number(index), to: endpoint(v), packets: 0n, bytes: 0n };
        }),
      })),
      chains: [...t.chains].map(([name, rules]) => ({ name, rules: clone(rules) })),
      affinitySets: [...t.affinitySets].map(([name, timeout]) => ({ name, timeout })),
      foreign: [...t.foreign],
    };
  }

  /** Whole reads and narrow ones (lookup) so far: what a change costs. */
  readonly asked = { reads: 0, lookups: 0 };

  /** As the addon's narrow read: of the dispatch sets' elements only those asked for; no backend elements. */
  async lookup(family: NftFamily, addresses: NftEndpoint[]): Promise<NftView> {
    this.asked.lookups++;
    this.asked.reads--; // (read() below counts itself)
    const v = await this.read(family);
    const wanted = new Set(addresses.map(key));
    return {
      ...v,
      dispatchSets: v.dispatchSets.map((s) => ({ ...s, elements: s.elements.filter((e) => wanted.has(key(e.key))) })),
      backendMaps: v.backendMaps.map((m) => ({ ...m, elements: [] })),
      narrow: true,
    };
  }

  /**
   * The original iptlb's jumps in iptables-nft's `table <family> nat` (chains OUTPUT and PREROUTING), as the executors
   * read them: tests put them here (iptlb never changes them); `originalReads` counts the reads.
   */
  readonly originals = new Map<NftFamily, NftOriginalJump[]>();
  /** The chains of iptables-nft's `table <family> nat` the original's jumps go to (what a takeover deletes). */
  readonly natChains = new Map<NftFamily, Set<string>>();
  /** Chains of `table <family> nat` another rule (not one of `originals`) jumps to: deleting them fails (EBUSY). */
  readonly natJumpers = new Map<NftFamily, string[]>();
  originalReads = 0;

  async originalJumps(
    family: NftFamily,
    chains: readonly NftOriginalJump['chain'][] = ['OUTPUT', 'PREROUTING'],
  ): Promise<NftOriginalJump[]> {
    this.originalReads++;
    return clone((this.originals.get(family) ?? []).filter((j) => chains.includes(j.chain)));
  }

  async render(tx: NftTransaction): Promise<string> {
    return renderNft(tx);
  }
}
