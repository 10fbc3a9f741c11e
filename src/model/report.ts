/**
 * What `status` reports of a profile: whether the kernel holds it as the state file says, and its counters. Both
 * engines' comparisons (legacy's drift.ts, nft's view.ts) produce it; the CLI, the API and the metrics read it.
 */
export type ProfileStatus = 'in-sync' | 'missing' | 'modified' | 'orphaned';

export interface DestinationCounters {
  destination: string;
  packets: number;
  bytes: number;
  /** The destination's weight when it is not 1 (0: drained, it takes no new connections). */
  weight?: number;
  /**
   * Profiles with a health check: the weight the kernel has, when health checks changed it (0: drained because down).
   */
  effectiveWeight?: number;
  /** Profiles with a health check: `up`, `down` or `unchecked` (no process runs the checks, or none finished yet). */
  health?: 'up' | 'down' | 'unchecked';
  /** When its last check finished (ISO 8601). */
  lastCheck?: string;
  /** Why its last check failed. */
  lastError?: string;
}

export interface ProfileReport {
  name: string;
  status: ProfileStatus;
  /** Why it is not in sync, one line. */
  detail?: string;
  /** New connections balanced per destination (nat rules count the first packet of each flow). */
  destinations: DestinationCounters[];
  /** Packets that hit the profile's jump rule. */
  packets: number;
  bytes: number;
  /** Session affinity of the profile (seconds), when it has one. */
  affinity?: number;
}

/** Another state file's profiles in the kernel, which this state file's `status` neither lists nor calls orphaned. */
export interface OtherStateFile {
  stateFile: string;
  profiles: string[];
}

/**
 * Another tool's objects where iptlb keeps its own (nft: chains, sets and maps in table ip/ip6 iptlb), which iptlb
 * leaves as they are: neither drift nor orphans.
 */
export interface ForeignObjects {
  /** `table ip iptlb` or `table ip6 iptlb`. */
  where: string;
  /** Their names. */
  objects: string[];
}

/**
 * The health file another process publishes beside the state file (`<state file>.health.json`: the process that runs
 * the health checks, iptlb watch or agent), as this process read it. Whether its drains count here (`followed`) or
 * not: a file not followed means that nobody drives the weights from health checks now, and the configured weights
 * hold (a drain the kernel still has from it is reported `modified`, and `sync` gives the destination its weight back).
 */
export interface HealthFileStatus {
  /** The file. */
  file: string;
  /**
   * `followed`: its writer runs and wrote it recently: its drains count. `stale`: its writer's pid runs but it has not
   * written the file within `staleAfterMs` (stopped, frozen or hung; `ageMs` negative: written ahead of this clock, a
   * clock set back). `not-running`: the process that wrote it does not run (killed without stopping its checks, a pid
   * given to another process) or, for a file naming this process, no checker of it publishes the file.
   */
  state: 'followed' | 'stale' | 'not-running';
  /** The process that wrote it. */
  pid: number;
  /** When it was written (ISO 8601, the writer's clock); absent when the file says no valid time. */
  updatedAt?: string;
  /** How long ago, by this process's clock, in ms (negative: ahead of it). */
  ageMs?: number;
  /** How long its writer may leave it unwritten while it runs (absent from files of versions before 2026-12-07). */
  staleAfterMs?: number;
  /**
   * Not followed only: the destinations it says drained, per profile (the kernel may still hold those drains); absent
   * when none.
   */
  drained?: Record<string, string[]>;
}

/** What `status` finds, whole: `iptlb status --json` prints it, `statusReport()` returns it. */
export interface StatusReport {
  /**
   * Every profile in sync, and iptlb's rules in one engine only. For a handle without a state file (`stateFile:
   * false`), every profile it was given: the orphans it lists (profiles of others) are left alone by its `sync()` and
   * do not count.
   */
  inSync: boolean;
  /** Set when iptlb's rules are in both engines (traffic may use the copy no change reaches): what to run. */
  split?: string;
  /**
   * Set when the engine asked for (`--engine`, `IPTLB_ENGINE`, the `engine` option) is not the one holding
   * iptlb's rules (the other holds them, or `iptlb migrate` moved them): the profiles read as missing in it;
   * the line a change through it is refused with, naming the engine and the fix.
   */
  otherEngine?: string;
  /**
   * Per address family, IPv4 first: this state file's profiles of it, then the kernel's rules of it that no state
   * file owns (`orphaned`); so an IPv4 orphan comes before the IPv6 profiles.
   */
  profiles: ProfileReport[];
  /** The other state files (in the registry) whose profiles the kernel holds; absent when there are none. */
  otherStateFiles?: OtherStateFile[];
  /** Another tool's chains, sets and maps in iptlb's nft tables, which iptlb keeps (not drift); absent when none. */
  foreignObjects?: ForeignObjects[];
  /**
   * The original iptlb's chains in iptables-nft's nat tables (`table ip nat`, `ip6 nat`), which still balance the
   * addresses they match and which iptlb never changes (not drift); asked through the addon's nft part only (no
   * process); absent when none, or when it cannot ask.
   */
  originalRules?: { table: string; chain: string }[];
  /**
   * The health file of the process that checks this state file's destinations, when there is one and this process
   * follows such files (the CLI, library handles without a checker of their own): whether its drains count
   * (`state: 'followed'`) or not (`stale`, `not-running`: nobody drives the weights from health checks). Not drift:
   * `inSync` does not depend on it.
   */
  healthFile?: HealthFileStatus;
}
