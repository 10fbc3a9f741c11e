/**
 * Shared vocabulary of iptlb. The field names of {@link Profile} are the state file's keys, the
 * API's field names and the CLI's concepts. The rule-plan types ({@link Rule}, {@link Transaction})
 * are the contract between the pure planner and every executor (native addon and spawn).
 */
import type { Family } from './address.js';
import type { HealthConfig, HealthInput } from '../health/config.js';
export type { Family } from './address.js';

/** Transport protocol a profile balances. */
export type Protocol = 'tcp' | 'udp' | 'sctp';
/**
 * Where the rules sit: client → nat OUTPUT; proxy → nat PREROUTING; server → nat PREROUTING, local destinations only.
 */
export type RulesBackend = 'client' | 'proxy' | 'server';

/** How new connections are spread: `random` (weighted random, the default) or `round-robin` (an exact rotation). */
export type Scheduler = 'random' | 'round-robin';

export const PROTOCOLS: readonly Protocol[] = ['tcp', 'udp', 'sctp'];
export const SCHEDULERS: readonly Scheduler[] = ['random', 'round-robin'];
export const RULES_BACKENDS: readonly RulesBackend[] = ['client', 'proxy', 'server'];

/**
 * A validated, normalised profile: exactly what the state file stores. The profiles iptlb returns (`list()`,
 * `applied`, `validateProfile`) are frozen, their destination list too: change one as a copy,
 * `{ ...p, destination: [...] }`, which `apply()` takes.
 */
export interface Profile {
  /**
   * Profile name: 1-63 of `A-Za-z0-9_-`, not starting with `-`; a profile read from the state file, or looked up by
   * name (to delete it), may also follow the old rule: 1-18 of them, a leading `-` allowed (`-x`).
   */
  name: string;
  /** Virtual address, `ipv4:port` or `[ipv6]:port` (canonical RFC 5952 text). */
  source: string;
  /** Destinations, `ip:port` each in the family of `source`, at least one, no duplicates. */
  destination: readonly string[];
  /** Default `tcp`. */
  protocol: Protocol;
  /** Default `client`. */
  rulesBackend: RulesBackend;
  /** Default `false`. */
  logEnabled: boolean;
  /** Syslog level as a decimal string `"0"`…`"7"`. Default `"4"`. */
  logLevel: string;
  /**
   * Proxy mode only: masquerade the balanced flows so replies return through the proxy. Default `false`; omitted from
   * the state file when false.
   */
  masquerade?: boolean;
  /**
   * Weight of each destination whose weight is not 1 (integers 0..1000; 0 drains the destination:
   * no new connections, existing ones live). Keys are entries of `destination`, in its order.
   * Omitted when every weight is 1 (and from the state file then).
   */
  weights?: Readonly<Record<string, number>>;
  /** `round-robin` when set; absent means `random` (the default, omitted from the state file). */
  scheduler?: 'round-robin';
  /**
   * Session affinity, seconds (1..86400): a client address keeps the destination it was given for
   * that long after its last new connection. Absent (the default) means none; omitted from the
   * state file then.
   */
  affinity?: number;
  /**
   * Active health check of the destinations (see docs/health.md). Absent (the default): none; omitted from the state
   * file then.
   */
  health?: HealthConfig;
}

/** What a caller may pass for a profile: optional fields take their defaults. */
export interface ProfileInput {
  name: string;
  source: string;
  /** `ip:port` items; an item may carry its weight as `ip:port*W` (normalised into `weights`). */
  destination: readonly string[] | string;
  protocol?: string;
  rulesBackend?: string;
  logEnabled?: boolean;
  logLevel?: string | number;
  masquerade?: boolean;
  /** Destination → integer weight 0..1000 (default 1). */
  weights?: Record<string, number>;
  /** `random` (default) or `round-robin`. */
  scheduler?: string;
  /** Session affinity in seconds, 1..86400; 0 or absent: none. */
  affinity?: number | string;
  /**
   * Health check: `{ kind: 'tcp' | 'http' | 'none', intervalMs, timeoutMs, rise, fall, port, address, path, expect,
   * allDown }`.
   */
  health?: HealthInput | null;
}

// ---------------------------------------------------------------------------------------------
// Rule plan: pure data. Everything an executor needs, nothing it has to interpret.

/** Match extensions the planner uses, in the order they are written in a rule. */
export type Match =
  | { name: 'tcp' | 'udp' | 'sctp'; dport: number }
  | { name: 'statistic'; mode: 'random'; /** decimal string as written, e.g. "0.3333333333" */ probability: string }
  /**
   * `-m statistic --mode nth --every N --packet P`: matches one packet in every N (with P = 0, the first of each N).
   */
  | { name: 'statistic'; mode: 'nth'; every: number; packet: number }
  | { name: 'comment'; comment: string }
  /**
   * `-m recent --name N [--set | --update --seconds S --reap] --mask 255.255.255.255 --rsource`
   * (xt_recent revision 1): `set` records the source address in list N; `update` matches a source
   * seen within S seconds (and refreshes it), dropping older entries.
   */
  | { name: 'recent'; mode: 'set' | 'update'; recentName: string; seconds?: number }
  | { name: 'addrtype'; dstType: 'LOCAL' }
  | { name: 'conntrack'; ctstate: 'DNAT'; ctorigdst: string; ctorigdstport: number };

/** Targets the planner uses. `jump` is a jump to a user chain. */
export type Target =
  | { name: 'DNAT'; toDestination: string }
  | { name: 'LOG'; prefix: string; level: number }
  | { name: 'RETURN' }
  | { name: 'MASQUERADE' }
  | { name: 'jump'; chain: string };

/**
 * One rule. `dst` is `a.b.c.d/32` (or `v6/128` in an ipv6 transaction) when present; `proto` is the `-p` of the IP
 * header.
 */
export interface Rule {
  dst?: string;
  proto?: Protocol;
  matches: Match[];
  target: Target;
}

/** Built-in chains iptlb writes into. */
export type HookChain = 'OUTPUT' | 'PREROUTING' | 'POSTROUTING';

/** A user chain owned by iptlb, with its complete rule list. */
export interface ChainPlan {
  name: string;
  rules: Rule[];
}

/** A rule that lives in a built-in chain; it carries the comment `iptlb:<owner>`. */
export interface HookRulePlan {
  chain: HookChain;
  owner: string;
  rule: Rule;
}

/**
 * One atomic change of the nat table, declarative:
 *  1. every hook rule (OUTPUT/PREROUTING/POSTROUTING) whose comment is `iptlb:<n>` for n in `owners` is deleted;
 *  2. every chain in `deleteChains` that exists is flushed and deleted;
 *  3. every chain in `chains` is created, or flushed if it exists, and filled with its rules in order;
 *  4. the rules of `hookRules` are inserted at the top of their chain, keeping their order
 *     (the first listed ends up first).
 * All of it is one kernel commit: it lands whole or not at all.
 */
export interface Transaction {
  /**
   * `ipv4`: the x_tables nat table of iptables; `ipv6`: that of ip6tables (addresses in rules are then IPv6: `v6/128`,
   * DNAT to `[v6]:port`).
   */
  family: Family;
  table: 'nat';
  /**
   * Refuse (ECONFLICT) a hook rule whose address:port/protocol a rule of a profile not among
   * `owners` already sends to its chain (set by a state-file instance's changes: it does not take
   * over an address the kernel gives to a profile it does not hold).
   */
  exclusive?: boolean;
  /**
   * With `exclusive`: the profiles this change creates (names the state file does not hold) and
   * their chains. Refuse (ECONFLICT naming `name`) one whose chain the table already has, or whose
   * name rules carry (`iptlb:<name>`), unless the table holds it exactly as planned (a change
   * interrupted before its state write: applying it again completes it). A state-file instance does
   * not take over a profile the kernel holds for another state file. `chain` is left out when a
   * profile the state file holds keeps that chain in the same change (a rename between two names
   * that share a chain, such as `web` and `WEB`).
   */
  created?: { name: string; chain?: string }[];
  /**
   * With `exclusive`, of the profiles this change replaces or deletes that the state file holds (the
   * owners not `created`): the address of the version the state file holds of each one it moves to
   * another address or deletes, as its gate element `ip,proto:port` (ipset's text; IPv6 without
   * brackets), one short string each (a `delete --all` of 10,000 profiles sends 10,000). Refuse
   * (ECONFLICT naming `name`) such a profile whose name a dispatch rule of the table carries at an
   * address neither planned nor here, or whose chain a rule of a profile not among the owners jumps
   * to: another state file's profile of that name (one written to this state file without `-run`,
   * then applied, would take it over), or one an interrupted change of this state file moved.
   */
  was?: string[];
  /**
   * Elements of the gate's set (`ip,proto:port`, ipset's text) that no rule behind the gate selected
   * when the table was read: added by hand or by another tool (`iptlb sync`, see drift.ts
   * strayElements). Deleted after the commit, each unless a rule of the committed table selects it.
   */
  strays?: string[];
  owners: string[];
  deleteChains: string[];
  chains: ChainPlan[];
  hookRules: HookRulePlan[];
}

/** A rule as read back from the kernel, with its counters. */
export interface KernelRule {
  rule: Rule;
  packets: bigint;
  bytes: bigint;
}

/**
 * iptlb's objects as they are in the kernel: chains named IPTLB_* (the legacy engine keeps its own, IPTLB_NAT_*) and
 * hook rules whose comment starts with `iptlb:`.
 */
export interface KernelView {
  chains: { name: string; rules: KernelRule[] }[];
  hookRules: {
    chain: HookChain | 'INPUT';
    owner: string;
    /** 1-based position in its chain. */
    position: number;
    rule: Rule;
    packets: bigint;
    bytes: bigint;
    /** The rule's text as iptables-save printed it (spawn executor only); used to delete it exactly. */
    raw?: string;
    /**
     * Legacy engine: true when an OUTPUT/PREROUTING rule sits in the built-in chain itself (the layout
     * of iptlb before the gate, see gate.ts); absent when it sits in its dispatch chain behind the gate.
     */
    direct?: boolean;
  }[];
  /**
   * Legacy engine: which gates and dispatch chains exist (gate.ts); absent means none. `foreign`:
   * dispatch chains that also hold rules iptlb did not write (they keep the chain and its gate).
   */
  /**
   * Legacy engine: rules without any comment in a built-in chain that jump to a profile's chain (the
   * original iptlb's jumps). A change that deletes or refills that chain deletes them (the native
   * executor does so in its commit). `raw`, their saved text, comes with the spawn executor's read;
   * `rule` (their address, protocol and port: a change that puts a profile's rule at the address of
   * one it leaves is refused) with both reads, when the rule is one iptlb reads.
   */
  bareJumps?: { chain: string; target: string; raw?: string; rule?: Rule }[];
  /**
   * Legacy engine, the spawn executor's read: rules iptlb did not write (another tool's comment, or in a chain of its
   * own) that jump to a profile's chain. With `exclusive`, a change that refills the chain of a profile the state file
   * holds is refused while one does (the native executor's commit counts the chain's references instead).
   */
  otherJumps?: { chain: string; target: string }[];
  gate?: {
    gates: ('OUTPUT' | 'PREROUTING')[];
    dispatch: ('OUTPUT' | 'PREROUTING')[];
    foreign?: ('OUTPUT' | 'PREROUTING')[];
    /**
     * The elements of the gate's set (`ip,proto:port`, ipset's text), read for `status` and `sync`
     * when a dispatch chain exists; absent when not read (then nothing is compared with them).
     */
    members?: string[];
  };
  /**
   * Legacy engine: the gate's set, there while no dispatch chain is (so no gate refers to it: left over when the
   * profiles were deleted by another means, or the gate and the chain removed by hand), read for `status` and
   * `sync`: its name, elements (`ip,proto:port`) and references (x_tables rules of another tool that use it).
   */
  leftSet?: { set: string; members: string[]; references: number };
}

export interface CommitResult {
  /** Wall time of the kernel commit path (lock + read + modify + commit), milliseconds. */
  durationMs: number;
  /**
   * Set when the executor wrote the commit's {@link AfterCommit} bytes itself (after the kernel
   * accepted the commit): `error` when that write failed (`written` bytes of them got there).
   */
  appended?: { written: number; error?: NodeJS.ErrnoException };
}

/**
 * Bytes to write to an open descriptor right after the kernel accepted a commit, by the thread that
 * committed (the state journal's record, on a descriptor opened `O_APPEND | O_DSYNC`): no thread hop
 * between the commit and its record. An executor that cannot leaves them to the caller (no `appended`).
 */
export interface AfterCommit {
  fd: number;
  data: Uint8Array;
}

/**
 * The two ways of holding iptlb's rules: the x_tables nat table (`legacy`) or the nf_tables table `ip iptlb` (`nft`).
 */
export type EngineName = 'legacy' | 'nft';
export type EngineChoice = EngineName | 'auto';
export const ENGINES: readonly EngineName[] = ['legacy', 'nft'];

export type ExecutorChoice = 'native' | 'spawn' | 'auto';
