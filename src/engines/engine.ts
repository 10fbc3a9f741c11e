/**
 * The engine seam: everything that differs between the ways iptlb can hold its rules (the x_tables
 * nat tables, `legacy`; the nf_tables tables `ip iptlb` / `ip6 iptlb`, `nft`) behind one interface.
 * The core (src/core/core.ts), the CLI and the API talk only to an {@link Engine}; each engine lives in its
 * own folder (src/engines/<name>/) and is listed once in src/engines/registry.ts.
 *
 * An engine wraps one executor of its own kind (native addon or spawned tools); both executors of an
 * engine commit the same plans with the same kernel result.
 */
import type { Family } from '../model/address.js';
import type { ProfileReport } from '../model/report.js';
import type {
  AfterCommit,
  CommitResult,
  EngineName,
  KernelView,
  Profile,
  Protocol,
  Transaction,
} from '../model/types.js';
import type { NftTransaction, NftView } from './nft/ops.js';
import type { LegacyExecutor } from './legacy/executor.js';
import type { NftExecutor } from './nft/executor.js';

/** An executor of either engine. */
export type Executor = LegacyExecutor | NftExecutor;
/** A transaction of either engine, as the core logs and keeps it. */
export type AnyTransaction = Transaction | NftTransaction;
/** iptlb's objects in the kernel as either engine reads them. */
export type AnyView = KernelView | NftView;

/** One line of `iptlb doctor`: something the host has or lacks, and how to fix it. */
export interface HostCheck {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

/**
 * What follows the message that the kernel already holds a profile of the name a change creates
 * (ECONFLICT naming `name`, both engines).
 */
export const HELD_HINT =
  ', which this state file does not hold: delete it through the state file that holds it, or, if an interrupted change left it, `iptlb status` shows it orphaned and `iptlb sync` removes it';

/**
 * How the refusal of a profile the state file holds says that the kernel has its name at another
 * address (both engines; the legacy addon's message says it too).
 */
export const MOVED_AT = ' holds a profile of that name at another address than this state file';

/**
 * What follows the message that the kernel holds a profile of the name a change replaces at another
 * address than the state file's (ECONFLICT naming `name`, both engines).
 */
export const MOVED_HINT =
  ": another state file's profile of that name (delete it there, or give this one another name; -delete without -run removes this one from this state file only), or one an interrupted change of this state file moved (`iptlb sync` puts back this state file's)";

/** A virtual address (`ip:port` or `[v6]:port`) and protocol, and a destination the kernel sends it to. */
export interface ServedPair {
  protocol: Protocol;
  source: string;
  destination: string;
}

/** The address families, in the order a change commits them. */
export const FAMILIES: readonly Family[] = ['ipv4', 'ipv6'];

/** What a replacement of one family's objects (a sync) leaves as it is. */
export interface KeepOthers {
  /** Another state file's profiles of that family: their objects. */
  keep?: ReadonlyMap<string, Profile>;
  /** Every object no profile of the replacement claims (another state file's change is in flight). */
  keepUnknown?: boolean;
}

/** A change decided against the current profiles: profiles created or replaced, names removed. */
export interface Change {
  upsert: Profile[];
  remove: string[];
}

/**
 * The part of a change that concerns one address family, planned against the kernel: the
 * transactions to commit, in order (usually one), and what to do if the kernel turns out not to be
 * as planned. `steps` is empty when the kernel has nothing to do.
 */
export interface FamilyPlan<Tx = unknown> {
  family: Family;
  steps: Tx[];
  /** The profiles of this family after the change (for a replacement when the kernel is out of step). */
  next: ReadonlyMap<string, Profile>;
  /** A line to log when the plan is committed (why it is not the usual one). */
  note?: string;
  /** The profiles given are not all the kernel may hold (see {@link PlanContext.partial}). */
  partial?: boolean;
  /** See {@link PlanContext.exclusive}: checked again when the commit finds the kernel out of step. */
  exclusive?: boolean;
  /**
   * The old versions of the profiles the change touches: with `next`, every profile whose objects a
   * replacement may drop. A replacement keeps what the kernel holds for any other profile.
   */
  known?: { old: Profile[]; /** The names of the profiles the change touches. */ touched?: string[] };
}

/** What the core tells an engine about the profiles it plans against. */
export interface PlanContext {
  /** Given when the profiles are a long-lived map whose derived data the engine may cache. */
  memo?: Memo;
  /**
   * The profiles are only those this instance was told about (an in-memory instance, e.g. an agent
   * after a restart): the kernel may hold others, which no plan may drop.
   */
  partial?: boolean;
  /**
   * Refuse (ECONFLICT) a profile created or moved onto an address the kernel serves for a profile these
   * profiles do not hold, and a profile created (a name these profiles do not hold) under a name
   * the kernel already holds a profile of, unless the kernel holds it exactly as planned. Default:
   * `!partial` (a state file's profiles).
   */
  exclusive?: boolean;
  /**
   * Versions of profiles of this family that a change of this state file, interrupted after its first kernel
   * transaction (killed between the two of a move, or after them before its state write), may have left in the
   * kernel beside (or instead of) the state's: the nft move marker's (src/core/engine-record.ts). The engine looks
   * for them in a read of the table and, when the kernel holds one, plans a replacement that drops them; planned
   * even when the change touches none of them (an empty change of the family).
   */
  interrupted?: readonly Profile[];
}

/** What a commit of a {@link FamilyPlan} did. */
export interface FamilyCommit<Tx = unknown> {
  durationMs: number;
  /** The transaction(s) that reached the kernel, as one (for `--verbose`). */
  committed: Tx;
  /** The executor wrote the plan's {@link AfterCommit} bytes after its last commit (see CommitResult). */
  appended?: CommitResult['appended'];
  /**
   * The commit created the engine's table, which did not exist, with every profile of the state
   * (nft, after a reboot or a deleted table): undoing the change means removing all of them, not only
   * the changed ones.
   */
  created?: true;
}

/** A profile's objects in the kernel, as `iptlb show` prints them. */
export interface ShownProfile {
  /** Whether the kernel holds anything of the profile. */
  found: boolean;
  /** Where they were found, e.g. `nat table, legacy/native`. */
  where: string;
  /** One line per object, with counters. */
  lines: string[];
  /** The same as data (`show --json`'s `kernel`). */
  json: unknown;
}

/**
 * The derived data of a long-lived profile map (an in-memory instance's), kept up to date change by
 * change so that planning stays O(change): `generation` counts the map's changes.
 */
export interface Memo {
  generation: number;
}

export interface Engine<View = unknown, Tx = unknown> {
  readonly name: EngineName;
  readonly executor: Executor;
  /** Where profiles of family `f` are kept, as messages name it (`nat table`, `table ip iptlb`). */
  where(f: Family): string;
  /**
   * Whether the kernel may hold iptlb objects of family `f` when no profile of it exists, known
   * without creating anything (reading a legacy table by name creates it).
   */
  mayHold(f: Family): boolean;
  /** iptlb's objects of family `f` (never creates a table). */
  read(f: Family): Promise<View>;
  /** Whether the kernel holds any iptlb object of either family (engine selection, `auto`). */
  holdsObjects(): Promise<boolean>;
  /** Each profile (all of family `f`) compared with `view`, plus the view's orphans, with counters. */
  compare(profiles: ReadonlyMap<string, Profile>, view: View): ProfileReport[];
  /**
   * Every virtual address, protocol and destination `view`'s objects DNAT new connections to (whichever profile,
   * state file or leftover they belong to; canonical endpoint text): what a replacement of them may take out, for the
   * conntrack cleanup of `sync` and of a profile applied again.
   */
  served(view: View): ServedPair[];
  /**
   * Objects of another tool that `view` holds where iptlb keeps its own (nft: a chain, set or map in table
   * `<family> iptlb`), which iptlb leaves as they are: not drift, not orphans (`status` lists them apart).
   */
  othersObjects?(view: View): string[];
  /**
   * Plans the part of `change` of family `f` against `state` (that family's profiles now), making the
   * kernel reads the plan needs (see {@link PlanContext}).
   */
  planChange(
    f: Family,
    state: ReadonlyMap<string, Profile>,
    change: Change,
    ctx?: PlanContext,
  ): Promise<FamilyPlan<Tx>>;
  /**
   * Commits a plan; when the kernel is not as planned, replaces the family's objects with `plan.next` if the engine
   * can.
   */
  commitPlan(plan: FamilyPlan<Tx>, log: (line: string) => void, after?: AfterCommit): Promise<FamilyCommit<Tx>>;
  /**
   * One transaction that makes family `f`'s objects exactly `profiles` (which are all of that
   * family), given the kernel as read in `view`: sync, repair, and the install half of a migration.
   * What `keep` names stays as it is.
   */
  planReplace(f: Family, profiles: ReadonlyMap<string, Profile>, view: View, keep?: KeepOthers): Tx;
  /** One transaction that removes every iptlb object of family `f`; undefined when there is none. */
  planRemoveAll(f: Family): Promise<Tx | undefined>;
  /** Commits one transaction. */
  commit(tx: Tx): Promise<number>;
  /**
   * True when a commit failed because the kernel no longer holds what the transaction was planned
   * against (another tool deleted or flushed iptlb's objects between the read and the commit, where no
   * generation id caught it): read again and plan anew. Absent: only `ERESTART` says so.
   */
  stale?(e: unknown): boolean;
  /** The text the spawn executor would feed its tool for `tx` (`iptables-restore` or `nft -f` dialect). */
  render(tx: Tx): Promise<string>;
  /** The rules a committed transaction wrote, one line each (`--verbose`). */
  describeTransaction(tx: Tx): string[];
  /** Where an applied profile's rules went, for its log line. */
  describeProfile(p: Profile): string;
  /** The log line of a deleted profile: true whether or not the kernel held it (a profile recorded without -run). */
  describeRemoval(name: string, f: Family): string;
  /** A profile's objects in the kernel, looked for in `families` in order. */
  show(name: string, profile: Profile | undefined, families: readonly Family[]): Promise<ShownProfile>;
  /**
   * The long-lived map of {@link Memo} went from generation `memo.generation - 1` to `memo.generation`
   * by `edits` (each profile before and after; undefined: absent): update what was derived from it.
   */
  changed?(edits: readonly [Profile | undefined, Profile | undefined][], memo: Memo): void;
  /** Native legacy only: prepare the next commit while JavaScript plans (see prefetch.h). */
  prefetch?(): boolean;
  /** Gives back what {@link prefetch} prepared; resolves once it is given back (never rejects). */
  releasePrefetch?(): Promise<void>;
}

/**
 * A profile map that can group its profiles by shape without building each one: every field but
 * the name and the addresses (the family, the number of destinations, protocol, mode, logging,
 * masquerade; no weights, scheduler, affinity or health check) is the same within a shape. The CLI's
 * index of the state file is one (src/core/state-index.ts).
 */
export interface ShapedProfiles {
  /** One profile of each shape and how many have it; null when not known without iterating. */
  shapes(): [Profile, number][] | null;
}

/** {@link ShapedProfiles.shapes} of `profiles` when it has them, else null (then iterate it). */
export function shapesOf(profiles: ReadonlyMap<string, Profile>): [Profile, number][] | null {
  const shapes = (profiles as Partial<ShapedProfiles>).shapes;
  return typeof shapes === 'function' ? shapes.call(profiles) : null;
}

/** What ReadonlyMap<string, Profile>'s entries() returns, in whichever TypeScript lib reads the declarations. */
type MapEntries = ReturnType<ReadonlyMap<string, Profile>['entries']>;

/** The profiles after a change, as a read-only view over the profiles before it: building it costs O(change). */
export class ChangedProfiles implements ReadonlyMap<string, Profile> {
  private readonly upsert = new Map<string, Profile>();
  private readonly removed = new Set<string>();
  readonly size: number;

  constructor(
    private readonly base: ReadonlyMap<string, Profile>,
    change: Change,
  ) {
    for (const n of change.remove) this.removed.add(n);
    for (const p of change.upsert) {
      this.upsert.set(p.name, p);
      this.removed.delete(p.name);
    }
    let size = base.size;
    for (const n of this.removed) if (base.has(n) && !this.upsert.has(n)) size--;
    for (const n of this.upsert.keys()) if (!base.has(n)) size++;
    this.size = size;
  }
  get(name: string): Profile | undefined {
    return this.upsert.get(name) ?? (this.removed.has(name) ? undefined : this.base.get(name));
  }
  has(name: string): boolean {
    return this.get(name) !== undefined;
  }
  // Typed as ReadonlyMap's own methods (not IterableIterator): the declarations ship to users, whose
  // TypeScript (5.6+) types them MapIterator, and with esnext.disposable (which @types/node 22+ and
  // target esnext bring) an IterableIterator lacks [Symbol.dispose]: their tsc refused this class.
  entries(): MapEntries {
    return this.walk() as MapEntries;
  }
  keys(): ReturnType<ReadonlyMap<string, Profile>['keys']> {
    return this.names() as ReturnType<ReadonlyMap<string, Profile>['keys']>;
  }
  values(): ReturnType<ReadonlyMap<string, Profile>['values']> {
    return this.profiles() as ReturnType<ReadonlyMap<string, Profile>['values']>;
  }
  [Symbol.iterator](): MapEntries {
    return this.entries();
  }
  private *walk(): Generator<[string, Profile], void, undefined> {
    for (const [n, p] of this.base) {
      if (this.upsert.has(n)) yield [n, this.upsert.get(n)!];
      else if (!this.removed.has(n)) yield [n, p];
    }
    for (const [n, p] of this.upsert) if (!this.base.has(n)) yield [n, p];
  }
  private *names(): Generator<string, void, undefined> {
    for (const [n] of this.walk()) yield n;
  }
  private *profiles(): Generator<Profile, void, undefined> {
    for (const [, p] of this.walk()) yield p;
  }
  forEach(fn: (value: Profile, key: string, map: ReadonlyMap<string, Profile>) => void): void {
    for (const [n, p] of this.walk()) fn(p, n, this);
  }
}
