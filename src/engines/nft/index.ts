/**
 * The `nft` engine: profiles as elements of dispatch sets and backend maps in iptlb's own nf_tables
 * tables, `ip iptlb` (IPv4) and `ip6 iptlb` (IPv6), whose base chains are a pure function of all
 * profiles (see src/engines/nft/ops.ts for the layout). A change is element changes, plus base-chain rules
 * when a set starts or stops being used; when the kernel turns out not to be as planned (a reboot, a
 * flush, a process killed between its commit and its state write), the table is replaced whole.
 */
import { IptlbError } from '../../model/errors.js';
import { nftTablesViaCli } from '../select.js';
import { findBinary } from '../../platform/spawn.js';
import { chainName, familyOfProfile, slotCount } from '../../model/profile.js';
import {
  baseContent,
  baseUnchanged,
  countUsage,
  dispatchSetOf,
  dispatchSetUsage,
  foreignObjects,
  holdsOwn,
  keepsAnything,
  planNftClear,
  planNftMergedRebuild,
  unknownObjects,
  nftHookOf,
  profileEndpoint,
  profileVipKey,
  servesAddress,
  objectsOf,
  ruleElsewhere,
  ownsRules,
  planNftChange,
  planNftProfile,
  planNftRebuild,
  planNftRemoveAll,
} from './plan.js';
import {
  dispatchSetName,
  nftTableFamily,
  type NftFamily,
  type NftOriginalJump,
  type NftEndpoint,
  type NftRule,
  type NftTransaction,
  type NftView,
} from './ops.js';
import { renderNft, renderNftRule } from './render.js';
import {
  originalChainOf,
  originalServing,
  originalTakenError,
  takeoverBusyError,
  takeoverOps,
  takesOver,
} from './original.js';
import { compareNft, heldBeyondPlan, servedNft, strayRoundRobin } from './view.js';
import type { Family } from '../../model/address.js';
import type { Profile } from '../../model/types.js';
import type { NftExecutor } from './executor.js';
import {
  ChangedProfiles,
  HELD_HINT,
  MOVED_AT,
  MOVED_HINT,
  shapesOf,
  type Change,
  type Engine,
  type FamilyCommit,
  type FamilyPlan,
  type KeepOthers,
  type Memo,
  type PlanContext,
  type ShownProfile,
} from '../engine.js';

/** A bulk change of at least this many profiles, all of them, plans from nothing when the table is absent. */
const BULK = 256;

/**
 * Whether `now` plans exactly what `old` planned: its elements and its rules in the base chains.
 * (Four plans and their JSON: about 5 µs a profile, so only for profiles with rules of their own.)
 */
function samePlan(old: Profile | undefined, now: Profile): boolean {
  return (
    old !== undefined &&
    JSON.stringify(planNftProfile(old)) === JSON.stringify(planNftProfile(now)) &&
    JSON.stringify(baseContent([old])) === JSON.stringify(baseContent([now]))
  );
}

/**
 * True when a commit failed because the kernel does not hold what the plan assumed (an element or set missing or
 * different).
 */
function outOfStep(e: unknown): boolean {
  const err = e as IptlbError;
  return (
    err instanceof IptlbError && err.code === 'EKERNEL' && (err.errno === 2 || err.errno === 17 || err.errno === 16)
  );
}

/**
 * The profiles of `touched` that a change of `state` into `next` makes new at their address: created, or moved to
 * another address, protocol or hook (its chain in iptables-nft's nat table). A profile the state file holds where
 * it was is not (the original's own profile, taken over through its state file, as the legacy engine takes it over).
 */
function newAtAddress(
  f: Family,
  state: ReadonlyMap<string, Profile>,
  next: ReadonlyMap<string, Profile>,
  touched: readonly string[],
): Profile[] {
  const out: Profile[] = [];
  for (const n of new Set(touched)) {
    const p = next.get(n);
    if (!p || familyOfProfile(p) !== f) continue;
    const old = state.get(n);
    // Compared as written (validated profiles' canonical text): no parse for the profiles a bulk change re-applies.
    if (!old || old.source !== p.source || old.protocol !== p.protocol || nftHookOf(old) !== nftHookOf(p)) out.push(p);
  }
  return out;
}

/**
 * A state-file instance does not put a profile beside the original iptlb's jump (iptables-nft's `table ip nat` /
 * `ip6 nat`, which iptlb changes only to take over a profile's, see takeoverOps) at the address it serves: `fresh`,
 * the profiles new at their address, are refused when one of `jumps` serves one of them (or may: a match iptlb does
 * not read whole), naming that rule and the command that deletes it. As the legacy engine refuses a new profile at
 * its original's jump.
 */
function refuseOriginal(nf: NftFamily, fresh: readonly Profile[], jumps: readonly NftOriginalJump[]): void {
  if (!jumps.length) return;
  for (const p of fresh) {
    const hit = originalServing(jumps, p);
    if (hit) throw originalTakenError(nf, p, hit.jump, hit.sure);
  }
}

/**
 * The chains the original iptlb used for the profiles of `touched` that the state file holds in family `f`
 * (`IPTLB_NAT_<NAME>`, as the legacy engine names a profile's chain: chainName), each with the chain of iptables-nft's
 * nat table its jumps are in (that of the hook the state file has the profile at): what a state-file instance's change
 * that applies or deletes them takes over.
 */
function takeoverTargets(
  f: Family,
  state: ReadonlyMap<string, Profile>,
  touched: readonly string[],
): Map<string, NftOriginalJump['chain']> {
  const out = new Map<string, NftOriginalJump['chain']>();
  for (const n of touched) {
    const old = state.get(n);
    if (old && familyOfProfile(old) === f) out.set(chainName(n), originalChainOf(old));
  }
  return out;
}

export class NftEngine implements Engine<NftView, NftTransaction> {
  readonly name = 'nft' as const;
  /** How many profiles of the long-lived map use each dispatch set, per family, kept change by change. */
  private usage = new Map<Family, { generation: number; counts: Map<string, number> }>();

  /**
   * @param listTables whether `nft list tables` may answer "does a table exist" (cheap at any size)
   * instead of a read through the executor: for the real executors, not for a supplied one.
   */
  constructor(
    readonly executor: NftExecutor,
    private readonly listTables = false,
  ) {}

  where(f: Family): string {
    return `table ${nftTableFamily(f)} iptlb`;
  }

  /** Reading an nf_tables table creates nothing: always worth asking. */
  mayHold(): boolean {
    return true;
  }

  read(f: Family): Promise<NftView> {
    return this.executor.read(nftTableFamily(f));
  }

  /**
   * Whether either table holds iptlb's rules or sets ({@link holdsOwn}), not merely exists: another tool's
   * object keeps table ip iptlb after iptlb's last profile left it (a migrate to legacy, a delete), with
   * iptlb's empty base chains and maps, and that is no copy of iptlb's rules.
   */
  async holdsObjects(): Promise<boolean> {
    const { executor } = this;
    // A narrow read for no address (the native executor) reads the sets' names and the base chains' rules,
    // not a set's elements: cheap at any table size, and no process (`nft list tables` costs a CLI command
    // about 40 ms).
    if (executor.lookup) {
      for (const nf of ['ip', 'ip6'] as const) if (holdsOwn(await executor.lookup(nf, []))) return true;
      return false;
    }
    // `nft list tables` lists names only, and `nft -t` leaves out the sets' elements: cheap at any table
    // size, and one process more only for a table that exists.
    const tables = this.listTables && findBinary('nft') ? await nftTablesViaCli() : (['ip', 'ip6'] as const);
    for (const nf of tables) {
      const view = executor.survey ? await executor.survey(nf) : await executor.read(nf);
      if (holdsOwn(view)) return true;
    }
    return false;
  }

  compare(profiles: ReadonlyMap<string, Profile>, view: NftView) {
    return compareNft(profiles as Map<string, Profile>, view);
  }

  served(view: NftView) {
    return servedNft(view);
  }

  /** Profiles per dispatch set of `state`: O(1) for a long-lived map once counted, else a scan. */
  private setUsage(f: Family, state: ReadonlyMap<string, Profile>, memo?: Memo): Map<string, number> {
    // A map that knows its profiles by shape (the CLI's index of the state file): counted per shape.
    const shapes = shapesOf(state);
    if (shapes) {
      const counts = new Map<string, number>();
      for (const [p, n] of shapes) {
        const set = dispatchSetOf(p);
        if (set !== null) counts.set(set, (counts.get(set) ?? 0) + n);
      }
      return counts;
    }
    if (!memo) return dispatchSetUsage(state.values());
    let u = this.usage.get(f);
    if (u?.generation !== memo.generation)
      this.usage.set(f, (u = { generation: memo.generation, counts: dispatchSetUsage(state.values()) }));
    return u.counts;
  }

  changed(edits: readonly [Profile | undefined, Profile | undefined][], memo: Memo): void {
    for (const [f, u] of this.usage) {
      if (u.generation !== memo.generation - 1) {
        this.usage.delete(f);
        continue;
      }
      for (const [before, after] of edits) {
        if (before && familyOfProfile(before) === f) countUsage(u.counts, before, -1);
        if (after && familyOfProfile(after) === f) countUsage(u.counts, after, +1);
      }
      u.generation = memo.generation;
    }
  }

  async planChange(
    f: Family,
    state: ReadonlyMap<string, Profile>,
    change: Change,
    ctx: PlanContext = {},
  ): Promise<FamilyPlan<NftTransaction>> {
    const { memo, partial } = ctx;
    const exclusive = ctx.exclusive ?? !partial;
    const nf = nftTableFamily(f);
    const next = new ChangedProfiles(state, change);
    const touched = [...change.upsert.map((p) => p.name), ...change.remove];
    const touchedSet = new Set(touched);
    // A bulk change of every profile (`-use-state -run` at boot): if the table is not there at all,
    // plan from nothing rather than send a large batch that fails on its first missing element. (A
    // small change just fails fast and falls back to the replacement in commitPlan.)
    let all = state.size >= BULK && touchedSet.size >= state.size;
    if (all) for (const n of state.keys()) if (!touchedSet.has(n)) all = false;
    // The original iptlb's jumps in iptables-nft's nat table, asked only for a state-file instance's change that
    // makes a profile new at its address (see refuseOriginal), started before the plan's reads (the spawn executor's
    // processes run beside them) and awaited after refuseTaken, whose refusals come first.
    const newHere = exclusive && this.executor.originalJumps ? newAtAddress(f, state, next, touched) : [];
    // And the original's own rules of the profiles of the state file this change applies or deletes (its jumps to the
    // chain it used for the profile, in the chain of the hook the state file has it at): taken over (takeoverOps).
    const takeover = exclusive && this.executor.originalJumps ? takeoverTargets(f, state, touched) : new Map();
    const readChains = new Set([...newHere.map(originalChainOf), ...takeover.values()]);
    const originals = readChains.size ? this.executor.originalJumps!(nf, [...readChains]) : undefined;
    originals?.catch(() => undefined); // a refusal before it is awaited must not leave its failure unhandled
    const usage = this.setUsage(f, state, memo);
    // The base chains change (a destination count, logging or masquerade starts or stops): read
    // which dispatch sets the kernel really fills first, so no rule another process left in use is
    // dropped. Element-only changes, the common case, read nothing. One read serves both.
    const baseChanges = state.size === 0 || !baseUnchanged(state, next, touchedSet, usage);
    // A profile re-applied as the state holds it plans nothing, which is right only when the kernel
    // holds it. One written to the state file without -run (and then applied with -run, or with
    // -use-state -run) is not there. A profile without rules of its own has its elements added
    // again when they are unchanged (see inPlace: a no-op for elements the kernel holds; a missing
    // set fails the batch, and the table is replaced, see commitPlan); one with rules of its own,
    // unchanged, is looked up in a read of the table (below). Both checks cost O(touched) and the
    // second only for such profiles. An in-memory instance's profiles are the ones it committed.
    const readd = new Set(partial ? [] : change.upsert.filter((p) => !ownsRules(p)).map((p) => p.name));
    const lookUp = partial ? [] : change.upsert.filter((p) => ownsRules(p) && samePlan(state.get(p.name), p));
    // Versions of profiles that a change of this state file, interrupted after its first kernel transaction, may have
    // left in the kernel (the nft move marker, see PlanContext.interrupted): looked for in a read of the table. Only a
    // change after such an interruption has any (the marker is one lstat, when the state-file lock was not kept).
    const interrupted = partial ? [] : (ctx.interrupted ?? []).filter((p) => familyOfProfile(p) === f);
    const view =
      all || baseChanges || next.size === 0 || lookUp.length || interrupted.length
        ? await this.executor.read(nf)
        : undefined;
    // The profiles this change knows of: those after it, and the old versions of those it touches.
    // The table may hold others: another state file's in the same table, an in-memory instance's
    // unknowns (its own before a restart, another agent's), or leftovers of an interrupted change
    // (`status` shows them as orphaned; `sync` removes them). No change of these profiles drops
    // them: a plan that replaces the base chains or the table carries them over, in the same
    // transaction. (Only `sync` and `migrate` make the table exactly one state's profiles.)
    const old = touched.flatMap((n) => (state.get(n) ? [state.get(n)!] : []));
    const others = (): ReturnType<typeof unknownObjects> | undefined => {
      if (!view?.exists) return undefined;
      // (The versions an interrupted change left are this state file's: not carried over, see `halfDone` below.)
      const kept = unknownObjects(view, [...next.values(), ...old, ...interrupted], touchedSet);
      return keepsAnything(kept) ? kept : undefined;
    };
    const keptNote = (kept: { vips: Set<string> }): string =>
      partial
        ? `${this.where(f)} holds ${kept.vips.size} virtual address(es) this in-memory instance was not told about: kept as they are`
        : `${this.where(f)} holds ${kept.vips.size} virtual address(es) of profiles this state file does not hold (another state file's, or left by an interrupted change): kept as they are`;
    const known = { old, touched };
    if (exclusive) await this.refuseTaken(f, next, known, view, interrupted);
    const jumps = originals ? await originals : [];
    const targets = new Set(takeover.keys());
    // A jump this change takes over serves no address after it: not in the way of a profile new there.
    refuseOriginal(
      nf,
      newHere,
      jumps.filter((j) => !targets.has(j.target)),
    );
    let takeOps = takeoverOps(jumps, targets);
    const taking = (steps: NftTransaction[]): NftTransaction[] => {
      if (!takeOps.length) return steps;
      const [first, ...rest] = steps;
      const tx: NftTransaction = first ?? { family: nf, table: 'iptlb', ops: [] };
      return [{ ...tx, ops: [...takeOps, ...tx.ops] }, ...rest];
    };
    if (next.size === 0 && view?.exists) {
      // The last profile of this state goes. Profiles it does not hold stay, and so does the table
      // when someone else keeps objects in it: only these profiles' content goes, and never a chain,
      // set, map or rule iptlb did not make.
      const { foreign, foreignRules } = foreignObjects(view);
      if (foreignRules.length) {
        throw this.foreignRulesRefusal(f, foreignRules, 'removing its last profile would remove them');
      }
      const kept = others();
      if (kept)
        return {
          family: f,
          steps: taking([planNftMergedRebuild([], kept, nf, view)]),
          next,
          note: keptNote(kept),
          known,
          ...(partial ? { partial } : {}),
        };
      if (foreign.length) {
        const note = `${this.where(f)} also holds objects iptlb did not make (${foreign.slice(0, 5).join(', ')}${foreign.length > 5 ? ', …' : ''}): removing only iptlb's rules, sets and elements, and keeping the table`;
        return { family: f, steps: taking([planNftClear(view, nf)]), next, note, known };
      }
    }
    // What an interrupted change of this state file left in the kernel (a move killed between its two transactions, or
    // after them before its state write: both versions of a profile at its address, or its new address served) is
    // found through the nft move marker below, by a delete as by any change: a delete reads nothing more of the table.
    const leftover: string[] = [];
    // A version an interrupted change of this state file left (the marker's): at an address the state has a profile
    // at, the kernel holds more there than that profile plans; at another address (a move to another address), the
    // kernel holds anything there. Either way the incremental plan (from the state's versions) would leave it (an
    // orphan, still serving its address, or a second version beside the state's): the table is replaced instead,
    // which drops everything at those addresses (they are known, see others()).
    const halfDone = new Set<string>();
    if (interrupted.length && view?.exists && next.size > 0) {
      const at = new Map<string, Profile>();
      for (const p of state.values()) at.set(profileVipKey(p), p);
      for (const m of interrupted) {
        const s = at.get(profileVipKey(m));
        if (s ? heldBeyondPlan(s, view).length > 0 : servesAddress(view, m)) halfDone.add(m.name);
      }
      for (const n of halfDone) if (!leftover.includes(n)) leftover.push(n);
      // Nothing left behind, and nothing asked of this family: no commit.
      if (!leftover.length && !touched.length)
        return { family: f, steps: [], next, known, ...(partial ? { partial } : {}) };
    }
    const fresh = view !== undefined && !view.exists;
    const kernelSets =
      view?.exists && baseChanges ? new Map(view.dispatchSets.map((d) => [d.name, d.elements.length])) : undefined;
    const kept = view?.exists && (baseChanges || lookUp.length || leftover.length) ? others() : undefined;
    // A round-robin rule the state does not explain (a process killed between its commit and its
    // state write, or between the two steps of a move) would be dropped by the rewrite and leave its
    // backends behind; a dispatch element of a round-robin profile's address would shadow its rule.
    // Either way the incremental plan is wrong: replace the table instead. (Not when no profile is left: the table goes
    // whole, see above; a replacement with no profiles left an empty table behind.)
    const stray = view?.exists && baseChanges && !fresh && next.size > 0 ? strayRoundRobin(state, view) : [];
    const absent =
      view?.exists && lookUp.length
        ? compareNft(new Map(lookUp.map((p) => [p.name, p])), view)
            .filter((r) => touchedSet.has(r.name) && r.status !== 'in-sync')
            .map((r) => r.name)
        : [];
    let note: string | undefined;
    let steps: NftTransaction[];
    // An incremental rewrite of the base chains keeps the dispatch rules of the sets the kernel still
    // fills (kernelSets), but not the rules of others' profiles (round-robin, affinity, logging,
    // masquerade): with those, or a table to replace, the plan carries everything over instead.
    const merged =
      !!kept &&
      ((baseChanges && (kept.rules.length > 0 || stray.length > 0)) || absent.length > 0 || leftover.length > 0);
    if (merged) {
      steps = [planNftMergedRebuild(next.values(), kept!, nf, view)];
      note = keptNote(kept!);
    } else if (absent.length) {
      steps = [planNftRebuild(next.values(), view!.genid || undefined, nf, view)];
      note = `${this.where(f)} does not hold ${absent.length > 1 ? 'profiles' : 'profile'} ${absent.slice(0, 3).join(', ')}${absent.length > 3 ? ', …' : ''} as the state file does (written without -run?); replacing it with all ${next.size} profile(s) in one transaction`;
    } else if (leftover.length) {
      // (Not bound to the read's generation when the marker asked: the change may plan the other family's table
      // too, whose commit comes first and moves the generation on.)
      steps = [planNftRebuild(next.values(), halfDone.size ? undefined : view!.genid || undefined, nf, view)];
      note = `${this.where(f)} holds more of ${leftover.length > 1 ? 'profiles' : 'profile'} ${leftover.slice(0, 3).join(', ')}${leftover.length > 3 ? ', …' : ''} than the state file does (a change interrupted between the two steps of a move); replacing it with all ${next.size} profile(s) in one transaction`;
    } else if (stray.length) {
      steps = [planNftRebuild(next.values(), undefined, nf, view)];
      note = `${this.where(f)} holds objects of round-robin profiles the state does not explain (${stray.slice(0, 3).join(', ')}); replacing it with all ${next.size} profile(s) in one transaction`;
    } else if (fresh) {
      // No table (a process killed after removing it with the last profile, before its state
      // write, or someone else removed it): every profile is created, not only the touched ones,
      // or the base chains would get the rules of the others without their elements.
      steps = planNftChange(new Map(), next, next.keys());
    } else steps = planNftChange(state, next, touched, usage, kernelSets, nf, readd);
    // A plan that writes every profile of the table (a rebuild) applies the state file's untouched profiles too: the
    // original's rules of those are taken over as well (one more read, only for such a plan).
    if (
      exclusive &&
      this.executor.originalJumps &&
      (merged || absent.length || leftover.length || stray.length || fresh)
    ) {
      const all = takeoverTargets(f, state, [...next.keys()]);
      for (const [t, c] of takeover) all.set(t, c);
      if (all.size > takeover.size)
        takeOps = takeoverOps(await this.executor.originalJumps(nf, [...new Set(all.values())]), new Set(all.keys()));
    }
    // A change that rewrites a base chain holding rules iptlb did not write would drop them (a rule
    // is not carried over from what a read shows of it): refused, as removing the last profile is.
    if (view?.exists) {
      const rewritten = new Set<string>(
        steps.flatMap((t) => t.ops.flatMap((o) => (o.op === 'flushChain' ? [o.name] : []))),
      );
      const held = foreignObjects(view).foreignRules.filter((c) => rewritten.has(c));
      if (held.length)
        throw this.foreignRulesRefusal(
          f,
          held,
          `this change rewrites ${held.length > 1 ? 'them' : 'it'}, which would remove them`,
        );
    }
    return {
      family: f,
      steps: taking(steps),
      next,
      known,
      ...(note ? { note } : {}),
      ...(partial ? { partial } : {}),
      ...(exclusive ? { exclusive } : {}),
    };
  }

  async commitPlan(
    plan: FamilyPlan<NftTransaction>,
    log: (line: string) => void,
  ): Promise<FamilyCommit<NftTransaction>> {
    const nf = nftTableFamily(plan.family);
    if (plan.note) log(plan.note);
    let durationMs = 0;
    // The original iptlb's rules this plan takes over (takeoverOps): its chains, each with the chain of its jumps.
    const taken = new Map<string, NftOriginalJump['chain']>();
    for (const o of plan.steps[0]?.ops ?? []) if (o.op === 'deleteNatRule') taken.set(o.target, o.chain);
    // A commit of a takeover that fails with EBUSY: a rule other than the original's jumps still jumps to its chain.
    const commit = async (tx: NftTransaction): Promise<number> => {
      try {
        return (await this.executor.commit(tx)).durationMs;
      } catch (e) {
        if ((e as IptlbError).errno === 16 && takesOver(tx)) {
          const chains = tx.ops.flatMap((o) => (o.op === 'deleteNatChain' ? [o.name] : []));
          const name = plan.known?.touched?.find((n) => chains.includes(chainName(n))) ?? chains[0]!;
          throw takeoverBusyError(nf, name, chains);
        }
        throw e;
      }
    };
    // The takeover again, of the original's rules as they are now (a jump deleted meanwhile is not asked for).
    const retake = async (tx: NftTransaction): Promise<NftTransaction> => {
      if (!plan.exclusive || !this.executor.originalJumps) return tx;
      // The replacement writes every profile of the state file: the original's rules of each are taken over (not
      // those of a profile this change creates: not the original's, refused at the original's address).
      const old = new Set(plan.known?.old.map((p) => p.name));
      const created = new Set(plan.known?.touched?.filter((n) => !old.has(n)));
      for (const p of plan.next.values())
        if (!created.has(p.name) && !taken.has(chainName(p.name))) taken.set(chainName(p.name), originalChainOf(p));
      if (!taken.size) return tx;
      const jumps = await this.executor.originalJumps(nf, [...new Set(taken.values())]);
      const ops = takeoverOps(jumps, new Set(taken.keys()));
      return ops.length ? { ...tx, ops: [...ops, ...tx.ops] } : tx;
    };
    try {
      // A second step only removes what the first one superseded; if it fails, the replacement below
      // (or, for another error, the next change or `sync`) removes the leftovers.
      for (const step of plan.steps) durationMs += await commit(step);
      const committed =
        plan.steps.length === 1
          ? plan.steps[0]
          : { family: nf, table: 'iptlb' as const, ops: plan.steps.flatMap((s) => s.ops) };
      return { durationMs, committed };
    } catch (e) {
      if (!outOfStep(e)) throw e;
      // The table as it is now, so that the rebuild empties it in place (see rebuildStart in plan.ts).
      const view = await this.executor.read(nf);
      this.refuseForeignRules(
        plan.family,
        view,
        `the table is not as planned (${(e as Error).message}) and replacing its content rewrites them, which would remove them`,
      );
      if (plan.exclusive && plan.known) await this.refuseTaken(plan.family, plan.next, plan.known, view);
      let rebuild = planNftRebuild(plan.next.values(), undefined, nf, view);
      // What the kernel holds beyond the profiles this change knows of stays (see planChange).
      const old = plan.known?.old ?? [];
      const kept = view.exists
        ? unknownObjects(view, [...plan.next.values(), ...old], new Set(old.map((p) => p.name)))
        : undefined;
      if (kept && keepsAnything(kept)) {
        log(
          `table ${nf} iptlb is not as ${plan.partial ? "this in-memory instance's profiles say" : 'the state says'} (${(e as Error).message}); replacing its ${plan.next.size} profile(s) in one transaction and keeping the ${kept.vips.size} virtual address(es) of profiles ${plan.partial ? 'it was not told about' : 'this state file does not hold'}`,
        );
        rebuild = await retake(planNftMergedRebuild(plan.next.values(), kept, nf, view));
        durationMs += await commit(rebuild);
        return { durationMs, committed: rebuild };
      }
      log(
        view.exists
          ? `table ${nf} iptlb is not as the state says (${(e as Error).message}); replacing it with all ${plan.next.size} profile(s) in one transaction`
          : // No table at all: a boot (or a new network namespace) re-applying the state file, or a table
            // someone deleted. Nothing of it is out of step; said plainly, not as drift.
            `table ${nf} iptlb does not exist yet (after a reboot, or deleted); creating it with all ${plan.next.size} profile(s) in one transaction`,
      );
      rebuild = await retake(rebuild);
      durationMs += await commit(rebuild);
      return { durationMs, committed: rebuild, ...(view.exists ? {} : { created: true as const }) };
    }
  }

  /**
   * A state-file instance does not take over an address the kernel gives to a profile it does not
   * hold, nor a profile of a name it does not hold. A profile this change creates (a name this state
   * does not hold) whose name a rule of the table carries (`comment "iptlb:<name>"`: logging,
   * masquerade, round-robin and affinity rules; elements carry no name), or one it creates or moves
   * to another address whose address the table already serves (another state file's profile, or
   * one left by an interrupted change), is refused, unless the table holds that very profile as
   * planned (a change interrupted before its state write leaves that: applying it again completes
   * it). Asked with `view` when the plan read the table, else with a narrow read (NftExecutor.lookup:
   * the addresses' elements and the base chains' rules), confirmed by a whole read when it finds
   * something. Elements carry no profile name: the other profile of an address is not named. (An
   * in-memory instance cannot tell its own profiles of before a restart from another's, and takes
   * the address and the name.)
   */
  private async refuseTaken(
    f: Family,
    next: ReadonlyMap<string, Profile>,
    known: { old: Profile[]; touched?: string[] },
    view: NftView | undefined,
    interrupted: readonly Profile[] = [],
  ): Promise<void> {
    // (Another profile of this state file cannot hold the address: the core refused that already.)
    const before = new Set(known.old.map((p) => profileVipKey(p)));
    const held = new Set(known.old.map((p) => p.name));
    const moved: Profile[] = [];
    const created: Profile[] = [];
    for (const n of known.touched ?? []) {
      const p = next.get(n);
      if (!p) continue;
      if (!held.has(n)) created.push(p);
      if (!before.has(profileVipKey(p))) moved.push(p);
    }
    // A profile this state file holds, replaced or deleted: a rule of its name at neither the address
    // the state file has it at nor the new one is another state file's profile of that name (one written to
    // this file without -run, then applied, would take it over: a plan drops the rules of the names it
    // knows), or one an interrupted change moved. Asked of the table when the plan read it (only a
    // plan that reads the table rewrites rules), or of the narrow read below.
    const addresses = new Map<string, Set<string>>();
    for (const o of known.old) {
      const p = next.get(o.name);
      addresses.set(o.name, new Set([profileVipKey(o), ...(p ? [profileVipKey(p)] : [])]));
    }
    // Where an interrupted change of this state file moved a profile (the move marker's versions): its rules and its
    // address there are this state file's, replaced by the plan (see planChange), not another's.
    const left = new Set<string>();
    for (const m of interrupted) {
      addresses.get(m.name)?.add(profileVipKey(m));
      left.add(`${m.name} ${profileVipKey(m)}`);
    }
    const refuseElsewhere = (v: NftView): void => {
      const r = addresses.size ? ruleElsewhere(v, addresses) : undefined;
      if (r)
        throw new IptlbError(
          'ECONFLICT',
          `name: profile ${r.owner}: ${this.where(f)}${MOVED_AT}'s (rule iptlb:${r.owner} in chain ${r.chain})${MOVED_HINT}`,
          { field: 'name' },
        );
    };
    if (view?.exists) refuseElsewhere(view);
    if (!moved.length && !created.length) return;
    const nf = nftTableFamily(f);
    const asked = new Map<string, NftEndpoint>();
    for (const p of [...moved, ...created]) asked.set(profileVipKey(p), profileEndpoint(p));
    let v =
      view ??
      (this.executor.lookup ? await this.executor.lookup(nf, [...asked.values()]) : await this.executor.read(nf));
    if (!v.exists) return;
    if (!view) refuseElsewhere(v);
    const asPlanned = async (p: Profile): Promise<boolean> => {
      if (v.narrow) v = await this.executor.read(nf);
      return compareNft(new Map([[p.name, p]]), v)[0]?.status === 'in-sync';
    };
    if (created.length) {
      const names = new Set(created.map((p) => p.name));
      const ruleOf = new Map<string, string>(); // name -> the base chain of its first rule
      for (const c of v.chains)
        for (const r of c.rules)
          if ('owner' in r && names.has(r.owner) && !ruleOf.has(r.owner)) ruleOf.set(r.owner, c.name);
      for (const p of created) {
        const chain = ruleOf.get(p.name);
        if (chain === undefined || (await asPlanned(p))) continue;
        throw new IptlbError(
          'ECONFLICT',
          `name: profile ${p.name}: ${this.where(f)} already holds a profile of that name (rule iptlb:${p.name} in chain ${chain})${HELD_HINT}`,
          { field: 'name' },
        );
      }
    }
    for (const p of moved) {
      if (left.has(`${p.name} ${profileVipKey(p)}`) || !servesAddress(v, p)) continue;
      if (v.narrow) v = await this.executor.read(nf);
      if (!servesAddress(v, p) || (await asPlanned(p))) continue;
      throw new IptlbError(
        'ECONFLICT',
        `source: profile ${p.name}: its address ${p.source}/${p.protocol} is taken in ${this.where(f)} by a profile this state file does not hold: another state file's (delete it there), or one left by an interrupted change (\`iptlb status\` shows it orphaned; \`iptlb sync\` removes it)`,
        { field: 'source' },
      );
    }
  }

  planReplace(
    f: Family,
    profiles: ReadonlyMap<string, Profile>,
    view: NftView,
    { keep, keepUnknown }: KeepOthers = {},
  ): NftTransaction {
    // The replacement flushes the base chains: another tool's rule in one of them would go.
    this.refuseForeignRules(f, view, 'replacing its content (sync, migrate) rewrites them, which would remove them');
    // Another state file's profiles (keep), or everything no profile here claims, stay as they are,
    // carried over by the rebuild.
    const kept = !view.exists
      ? undefined
      : keepUnknown
        ? unknownObjects(view, profiles.values(), new Set())
        : keep?.size
          ? objectsOf(view, profiles.values(), keep.values())
          : undefined;
    if (kept && keepsAnything(kept)) {
      // Only if the table is still as read: what another state file adds meanwhile is not in `kept`.
      const tx = planNftMergedRebuild(profiles.values(), kept, nftTableFamily(f), view);
      return view.genid ? { ...tx, expectGenid: view.genid } : tx;
    }
    // No profile of this family: the table goes, as with the last profile deleted (not left empty,
    // its NAT hooks registered), unless another tool's objects keep it: then only iptlb's content goes.
    if (profiles.size === 0) {
      const tx = view.foreign.length ? planNftClear(view, nftTableFamily(f)) : planNftRemoveAll(nftTableFamily(f));
      return view.genid ? { ...tx, expectGenid: view.genid } : tx;
    }
    return planNftRebuild(profiles.values(), view.genid || undefined, nftTableFamily(f), view);
  }

  /**
   * As deleting the last profile does: the table goes when iptlb made everything in it; objects of
   * another tool keep it (only iptlb's content goes, and nothing when none is left: a table a move
   * to legacy left to another tool's objects); a rule of another tool in a base chain refuses, unless
   * nothing of iptlb's is left to remove.
   */
  async planRemoveAll(f: Family): Promise<NftTransaction | undefined> {
    const view = await this.read(f);
    if (!view.exists) return undefined;
    const { foreign, foreignRules } = foreignObjects(view);
    if (!foreign.length && !foreignRules.length) return planNftRemoveAll(nftTableFamily(f));
    if (!holdsOwn(view)) return undefined;
    if (foreignRules.length)
      throw this.foreignRulesRefusal(f, foreignRules, "removing iptlb's objects would remove them");
    return planNftClear(view, nftTableFamily(f));
  }

  /**
   * Refuses a replacement of iptlb's content (which flushes every base chain) when a base chain of `view` holds a rule
   * another tool wrote: nothing is changed, and the refusal says which chains.
   */
  private refuseForeignRules(f: Family, view: NftView, what: string): void {
    if (!view.exists) return;
    const { foreignRules } = foreignObjects(view);
    if (foreignRules.length) throw this.foreignRulesRefusal(f, foreignRules, what);
  }

  /**
   * Another tool's chains, sets and maps in table `<family> iptlb`, which iptlb keeps: not drift, and no change, sync
   * or migrate removes them (a rule another tool wrote in one of iptlb's base chains is not among them: it is
   * reported orphaned, see compareNft).
   */
  othersObjects(view: NftView): string[] {
    return view.exists ? [...view.foreign] : [];
  }

  /** A change refused because base chains `chains` hold rules another tool wrote: `what` would remove them. */
  private foreignRulesRefusal(f: Family, chains: string[], what: string): IptlbError {
    const t = `${nftTableFamily(f)} iptlb`;
    return new IptlbError(
      'ECONFLICT',
      `${this.where(f)} holds rules iptlb did not write in its base chain${chains.length > 1 ? 's' : ''} ${chains.join(', ')}; ${what}: delete those rules first (${chains.map((c) => `\`nft -a list chain ${t} ${c}\``).join(', ')} shows each rule's handle; \`nft delete rule ${t} ${chains[0]} handle <N>\` deletes one)`,
    );
  }

  async commit(tx: NftTransaction): Promise<number> {
    return (await this.executor.commit(tx)).durationMs;
  }

  stale(e: unknown): boolean {
    return outOfStep(e);
  }

  render(tx: NftTransaction): Promise<string> {
    return this.executor.render(tx);
  }

  describeTransaction(tx: NftTransaction): string[] {
    // The original iptlb's rules taken over (iptables-nft's table nat): said as such.
    const jumps = new Map<string, string>();
    for (const o of tx.ops)
      if (o.op === 'deleteNatRule') jumps.set(`delete rule ${tx.family} nat ${o.chain} handle ${o.handle}`, o.target);
    const chains = new Set(
      tx.ops.flatMap((o) => (o.op === 'deleteNatChain' ? [`delete chain ${tx.family} nat ${o.name}`] : [])),
    );
    return renderNft(tx)
      .trimEnd()
      .split('\n')
      .map((line) =>
        jumps.has(line)
          ? `[nft] ${line} (the original iptlb's jump to ${jumps.get(line)}, no comment)`
          : chains.has(line)
            ? `[nft] ${line} (the original iptlb's chain)`
            : `[nft] ${line}`,
      );
  }

  describeProfile(p: Profile): string {
    const rr = p.scheduler === 'round-robin';
    const n = slotCount(p);
    const chain = nftHookOf(p) === 'out' ? 'output' : 'prerouting';
    const rules = p.affinity
      ? `${planNftProfile(p).rules.filter((r) => r.rule.kind === 'aff').length} affinity rules (${p.affinity} s${rr ? ', round-robin' : ''}) in chain ${chain}`
      : `${rr ? `round-robin rule in chain ${chain}` : `element of set ${dispatchSetName(nftHookOf(p), p.protocol, n)}`} and ${n} of map be_${p.protocol}`;
    return `${p.rulesBackend}: ${rules} in ${this.where(familyOfProfile(p))}${p.logEnabled ? `, logging at level ${p.logLevel}` : ''}${p.masquerade ? ', masquerade in postrouting' : ''}`;
  }

  describeRemoval(name: string, f: Family): string {
    return `delete profile ${name}: no element or rule of it left in ${this.where(f)}`;
  }

  async show(name: string, profile: Profile | undefined, families: readonly Family[]): Promise<ShownProfile> {
    let family = families[0];
    let view = await this.read(family);
    const owns = (v: NftView): boolean => v.chains.some((c) => c.rules.some((r) => 'owner' in r && r.owner === name));
    // A name only the kernel knows (an orphan): looked for in the next family too.
    for (const f of families.slice(1)) {
      if (profile || owns(view)) break;
      family = f;
      view = await this.read(f);
    }
    const vip = profile ? planNftProfile(profile).vip : undefined;
    const same = (e: { ip: string; port: number }): boolean => !!vip && e.ip === vip.ip && e.port === vip.port;
    const dispatch = view.dispatchSets.flatMap((s) =>
      s.elements.filter((e) => same(e.key)).map((e) => ({ set: s.name, ...e })),
    );
    const backends = view.backendMaps.flatMap((m) =>
      m.proto === profile?.protocol ? m.elements.filter((e) => same(e.vip)) : [],
    );
    const rules = view.chains.flatMap((c) =>
      c.rules
        .filter(
          (r) => (r.kind === 'log' || r.kind === 'masq' || r.kind === 'rr' || r.kind === 'aff') && r.owner === name,
        )
        .map((r) => ({ chain: c.name, rule: r })),
    );
    const lines = [
      ...dispatch.map((d) => `set ${d.set}\t${d.packets} pkts ${d.bytes} bytes\t${d.key.ip} . ${d.key.port}`),
      ...backends.map(
        (b) =>
          `map be_${profile!.protocol}\t${b.packets} pkts ${b.bytes} bytes\t${b.vip.ip} . ${b.vip.port} . ${b.index} : ${b.to.ip} . ${b.to.port}`,
      ),
      ...rules.map((r) => `chain ${r.chain}\t${renderNftRule(r.rule as NftRule, view.family ?? 'ip')}`),
    ];
    return {
      // Without a profile, only rules carry the name (elements are keyed by address).
      found: rules.length > 0 || (!!profile && lines.length > 0),
      where: `${this.where(family)}, ${this.name}/${this.executor.kind}`,
      lines: lines.length ? lines : ['nothing in the kernel'],
      json: { dispatch, backends, rules },
    };
  }
}
