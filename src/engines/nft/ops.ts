/**
 * The nft engine's plan vocabulary: a transaction is an ordered list of {@link NftOp}s on the table
 * `ip iptlb` (IPv4 profiles) or `ip6 iptlb` (IPv6 ones), pure data. Both nft executors carry out the same list in one
 * netlink batch (native:
 * the addon builds the messages; spawn: {@link renderNft} writes the text fed to `nft -f -`), so the
 * kernel ends up with the same objects either way.
 *
 * Layout of the table (see docs/engines.md):
 *  - dispatch sets `<hook>_<proto>_<n>` (hook `out` = client/output, `pre` = proxy/prerouting,
 *    `loc` = server/prerouting to local addresses), elements `vip . port`, one counter each;
 *  - backend maps `be_<proto>`, elements `vip . port . i : dest-ip . dest-port`, one counter each;
 *  - base chains `output`, `prerouting` (dstnat, -100) and `postrouting` (srcnat, 100) whose rules are
 *    a pure function of all profiles: logging rules first, then one dispatch rule per set in use:
 *    `ip daddr . tcp dport @out_tcp_3 dnat to ip daddr . tcp dport . numgen random mod 3 offset 3 map @be_tcp`
 *    (each destination count has its own index range in the backend map, see {@link backendOffset}).
 * A profile change is element changes only; base chains are rewritten only when the set of rules
 * changes (a new destination count, logging or masquerade switched).
 *
 * Table `ip6 iptlb` has the same layout: the same names, offsets and rule shapes, with `ip6 daddr` /
 * `ip6 saddr`, keys `ipv6_addr . inet_service [. index]` and data `ipv6_addr . inet_service`. The two
 * tables are independent: each transaction and each read is of one of them.
 */
import { release as osRelease } from 'node:os';
import { ipv6Groups, type Family } from '../../model/address.js';
import type { Protocol } from '../../model/types.js';

export const NFT_TABLE = 'iptlb';
export const NFT_FAMILY = 'ip';
/** The nft family of a table: `ip` holds the IPv4 profiles, `ip6` the IPv6 ones (same layout, 16-byte addresses). */
export type NftFamily = 'ip' | 'ip6';
/** The nft family of the table that holds profiles of address family `f`. */
export function nftTableFamily(f: Family): NftFamily {
  return f === 'ipv6' ? 'ip6' : 'ip';
}
export type NftHook = 'out' | 'pre' | 'loc';
export type NftBaseChain = 'output' | 'prerouting' | 'postrouting';
export const NFT_BASE_CHAINS: readonly NftBaseChain[] = ['output', 'prerouting', 'postrouting'];
/** Hook and priority of each base chain (all type nat, policy accept). */
export const NFT_CHAIN_HOOKS: Record<NftBaseChain, { hook: NftBaseChain; priority: number }> = {
  output: { hook: 'output', priority: -100 },
  prerouting: { hook: 'prerouting', priority: -100 },
  postrouting: { hook: 'postrouting', priority: 100 },
};

/** An address (IPv4, or canonical IPv6 text without brackets in table ip6 iptlb) and a port. */
export interface NftEndpoint {
  ip: string;
  port: number;
}

/**
 * Name of the dispatch set of hook `h`, protocol `proto` and `n` slots (destinations, or the sum of the reduced
 * weights).
 */
export function dispatchSetName(h: NftHook, proto: Protocol, n: number): string {
  return `${h}_${proto}_${n}`;
}
export const DISPATCH_SET_PATTERN = /^(out|pre|loc)_(tcp|udp|sctp)_([1-9][0-9]*)$/;
export function parseDispatchSetName(name: string): { hook: NftHook; proto: Protocol; n: number } | null {
  const m = DISPATCH_SET_PATTERN.exec(name);
  return m ? { hook: m[1] as NftHook, proto: m[2] as Protocol, n: Number(m[3]) } : null;
}
/**
 * First backend index of a profile with `n` destinations: each destination count uses its own index
 * range of `be_<proto>`, [T(n), T(n)+n) with T(n) = n(n-1)/2, so a profile can hold elements for its
 * old and its new count at once while it moves between dispatch sets.
 */
export function backendOffset(n: number): number {
  return (n * (n - 1)) / 2;
}
/**
 * Backend indexes of round-robin profiles start here, above every range of the random ones
 * (T(1024) + 1024 < 1,000,000): a profile switching scheduler, or an object a killed process left
 * behind, never shares backend elements with the other kind.
 */
export const RR_INDEX_BASE = 1_000_000;
/** First backend index of a round-robin profile with `n` slots: RR_INDEX_BASE + T(n). */
export function rrOffset(n: number): number {
  return RR_INDEX_BASE + backendOffset(n);
}

/**
 * Name of the set that remembers the clients profile `suffix` (its chain suffix) sent to destination
 * `to`, with affinity `timeout` seconds: `aff_<SUFFIX>_<a>_<b>_<c>_<d>_<port>_<timeout>`, or for an
 * IPv6 destination its eight groups in upper-case hex, `aff_<SUFFIX>_2001_DB8_0_0_0_0_0_1_<port>_<timeout>`
 * (always eight, never `::`, so the name stays unambiguous). The timeout is part of the name because
 * the kernel cannot change a set's timeout in place.
 */
export function affinitySetName(suffix: string, to: NftEndpoint, timeout: number): string {
  const groups = to.ip.includes(':') ? ipv6Groups(to.ip) : null;
  const ip = groups ? groups.map((g) => g.toString(16).toUpperCase()).join('_') : to.ip.replace(/\./g, '_');
  return `aff_${suffix}_${ip}_${to.port}_${timeout}`;
}
/**
 * Name of the set of every client profile `suffix` (its chain suffix) holds an affinity entry for, with affinity
 * `timeout` seconds: `aff_<SUFFIX>_C_<timeout>`. A destination's set never ends in `_C_<timeout>` (its last part but
 * one is a port), so the names cannot meet. Each balancing rule records the client here before its choice: when this
 * set is full, every rule that records fails alike whatever it would choose, and the fallback rules balance the
 * client unrecorded (see docs/balancing.md).
 */
export function affinityClientSetName(suffix: string, timeout: number): string {
  return `aff_${suffix}_C_${timeout}`;
}
/** Whether an affinity set name is a profile's client set ({@link affinityClientSetName}). */
export function isAffinityClientSet(name: string): boolean {
  return /_C_[1-9][0-9]*$/.test(name);
}
/**
 * Client addresses a session-affinity profile remembers at once (the size of its client set). A destination's set
 * holds at most the clients of the client set (every rule that adds to it updates the client set first, and both are
 * refreshed together) and is made twice as large, so it is never the one that fills. Elements are allocated as
 * clients come: a full IPv6 set of 65,535 takes about 9 MB of kernel memory (docs/balancing.md).
 * IPTLB_TEST_AFFINITY_CLIENTS sets a smaller size for tests.
 */
export const AFFINITY_CLIENTS = 65535;
export function affinityClients(): number {
  const v = process.env.IPTLB_TEST_AFFINITY_CLIENTS;
  const n = v === undefined ? NaN : Number(v);
  return Number.isInteger(n) && n >= 1 && n <= AFFINITY_CLIENTS ? n : AFFINITY_CLIENTS;
}
/** The limit of an affinity set: the client limit for a client set, twice that for a destination's. */
export function affinitySetSize(name: string): number {
  return isAffinityClientSet(name) ? affinityClients() : 2 * affinityClients();
}
let release: string | undefined;
/**
 * Whether this kernel takes a new size for an existing set (Linux 6.5, "permit update of set size"; checked as 6.6
 * or later). The kernel sizes a set's hash table by the size the set is made with, at once and empty (about 2 MB for
 * 65,535); a set made without one grows with its elements. IPTLB_TEST_NFT_SET_SIZE_UPDATE=0/1 overrides the kernel's
 * release for tests.
 */
export function kernelUpdatesSetSize(kernel: string = (release ??= osRelease())): boolean {
  const o = process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE;
  if (o === '0' || o === '1') return o === '1';
  const m = /^(\d+)\.(\d+)/.exec(kernel);
  return !!m && (Number(m[1]) > 6 || (Number(m[1]) === 6 && Number(m[2]) >= 6));
}
/**
 * The limit the kernel gives a set without a size when a rule updates it (nft_dynset_init; seen in kernels from 4.x
 * to 6.18): 65,535. The set keeps the small hash table it was made with.
 */
export const KERNEL_DYNSET_SIZE = 65535;
/**
 * The op that makes an affinity set, none of them sized at creation when it can be helped (the kernel would give
 * its hash table the size at once, empty: 2 MB for 65,535). On a kernel that updates a set's size
 * ({@link kernelUpdatesSetSize}) every set is made without a size and given its limit in the same transaction. On an
 * older one a set is made without a size and gets the kernel's limit for a set that rules update
 * ({@link KERNEL_DYNSET_SIZE}): the client set's own limit by default (a destination's set then has that limit too,
 * not twice it; the client set still bounds it); a client set of another limit (IPTLB_TEST_AFFINITY_CLIENTS) is made
 * with it.
 */
export function affinitySetOp(name: string, timeout: number): Extract<NftOp, { op: 'addAffinitySet' }> {
  const size = affinitySetSize(name);
  if (kernelUpdatesSetSize()) return { op: 'addAffinitySet', name, timeout, size, sizeByUpdate: true };
  const sized = isAffinityClientSet(name) && size !== KERNEL_DYNSET_SIZE;
  return { op: 'addAffinitySet', name, timeout, size: sized ? size : 0 };
}
export const AFFINITY_SET_PATTERN = /^aff_[A-Z0-9_]+_([1-9][0-9]*)$/;
/** The timeout (seconds) of an affinity set, from its name; null when the name is not one. */
export function affinitySetTimeout(name: string): number | null {
  const m = AFFINITY_SET_PATTERN.exec(name);
  return m ? Number(m[1]) : null;
}

export function backendMapName(proto: Protocol): string {
  return `be_${proto}`;
}

/** The rules iptlb writes, structured (never text) so both executors encode them identically. */
export type NftRule =
  | {
      /**
       * `[fib daddr type local] ip daddr . P dport @set dnat to ip daddr . P dport . numgen random mod n offset T(n)
       * map @be_P` (see {@link backendOffset})
       */
      kind: 'dispatch';
      hook: NftHook;
      proto: Protocol;
      n: number;
    }
  | {
      /** `ip daddr V P dport port [fib daddr type local] log prefix "…" level L comment "iptlb:<owner>"` */
      kind: 'log';
      owner: string;
      vip: NftEndpoint;
      proto: Protocol;
      local: boolean;
      prefix: string;
      /** syslog level 0-7 */
      level: number;
    }
  | {
      /**
       * A round-robin profile's own rule (numgen inc keeps its counter in the rule, so each profile
       * needs its own for an exact rotation):
       * `ip daddr V P dport port [fib daddr type local] dnat to ip daddr . P dport . numgen inc mod n offset
       * 1000000+T(n) map @be_P comment "iptlb:<owner>"`
       * (see {@link rrOffset}). It comes after the dispatch rules of its chain.
       */
      kind: 'rr';
      owner: string;
      vip: NftEndpoint;
      proto: Protocol;
      local: boolean;
      /** Slots (the sum of the reduced weights). */
      n: number;
    }
  | {
      /**
       * A session-affinity profile's rule (it has no dispatch element and no backends; its rules are
       * self-contained, after the dispatch rules of its chain):
       * `ip daddr V P dport port [fib daddr type local] [ip saddr @S] update @C { ip saddr } <pick> update @S
       * { ip saddr } counter dnat to D comment "iptlb:<owner>"`
       * where `ip saddr @S` makes a hit rule (the client's entry is live, refreshed by the updates) and <pick> is
       * `numgen random mod M < K` (weighted cascade), `numgen inc mod M 0` (round-robin cascade) or nothing (the last
       * destination, or a hit). S is the destination's affinity set, C the profile's client set. After them the
       * fallback rules, the same cascade without `update`s, for the clients the full client set refused.
       */
      kind: 'aff';
      owner: string;
      vip: NftEndpoint;
      proto: Protocol;
      local: boolean;
      pick:
        { mode: 'hit' } | { mode: 'random'; mod: number; lt: number } | { mode: 'inc'; mod: number } | { mode: 'rest' };
      /**
       * The destination's affinity set (`update @S { ip saddr }`); absent in a fallback rule, which records nothing:
       * `<selector> <pick> counter dnat to D` (never 'hit').
       */
      set?: string;
      /**
       * The profile's client set ({@link affinityClientSetName}), updated before <pick>: `… [ip saddr @S] update @C
       * { ip saddr } <pick> update @S …`. Absent in a fallback rule, and in rules written before the client set
       * (read back only).
       */
      gate?: string;
      to: NftEndpoint;
      /** Read back only: the rule's counter (new connections it sent). */
      packets?: bigint;
      bytes?: bigint;
    }
  | {
      /**
       * `ct status dnat ct original ip daddr V ct original protocol P ct original proto-dst port masquerade comment
       * "iptlb:<owner>"`
       */
      kind: 'masq';
      owner: string;
      vip: NftEndpoint;
      proto: Protocol;
    };

export interface NftBackendElement {
  vip: NftEndpoint;
  index: number;
  to: NftEndpoint;
}

export type NftOp =
  /** `add table ip iptlb` (no-op when it exists). */
  | { op: 'addTable' }
  /** `delete table ip iptlb`; planned only right after an addTable, so it never fails. */
  | { op: 'deleteTable' }
  /** `add map ip iptlb be_P { typeof ip daddr . P dport . numgen random mod 1 : ip daddr . P dport; counter; }` */
  | { op: 'addBackendMap'; proto: Protocol }
  /** `add set ip iptlb <name> { type ipv4_addr . inet_service; counter; }` */
  | { op: 'addDispatchSet'; name: string }
  | { op: 'deleteSet'; name: string }
  /**
   * `add set ip iptlb <name> { type ipv4_addr; size <size>; flags dynamic,timeout; timeout <s>s; }` (no-op when it
   * exists; a new size replaces the old one on a kernel that takes it). `size` 0: no `size` (no limit); absent: 65535
   * (plans of older versions). `sizeByUpdate`: the set is first added without a size, then again with it (the kernel
   * then sizes its hash table by its elements, not by the limit; {@link kernelUpdatesSetSize}).
   */
  | { op: 'addAffinitySet'; name: string; timeout: number; size?: number; sizeByUpdate?: boolean }
  /** `add chain ip iptlb <name> { type nat hook <hook> priority <prio>; policy accept; }` */
  | { op: 'addBaseChain'; name: NftBaseChain }
  | { op: 'flushChain'; name: NftBaseChain }
  /** `add rule ip iptlb <chain> …` (appended). */
  | { op: 'addRule'; chain: NftBaseChain; rule: NftRule }
  /** `add element ip iptlb <set> { v . p, … }` */
  | { op: 'addDispatchElements'; set: string; elements: NftEndpoint[] }
  | { op: 'deleteDispatchElements'; set: string; elements: NftEndpoint[] }
  /** `add element ip iptlb be_P { v . p . i : d . q, … }` */
  | { op: 'addBackendElements'; proto: Protocol; elements: NftBackendElement[] }
  /** deletes by key `v . p . i`; `to` is ignored. */
  | { op: 'deleteBackendElements'; proto: Protocol; elements: NftBackendElement[] }
  /**
   * `delete rule <family> nat <chain> handle N`: the original iptlb's jump (no comment) to chain `target` in
   * iptables-nft's `table <family> nat`, taken over (see src/engines/nft/original.ts). Not of table iptlb: the only
   * ops that are, with deleteNatChain. A handle gone by commit time fails the batch (ENOENT), nothing else deleted.
   */
  | { op: 'deleteNatRule'; chain: NftOriginalJump['chain']; handle: number; target: string }
  /**
   * `flush chain <family> nat <name>` and `delete chain <family> nat <name>`: the original iptlb's chain
   * (`IPTLB_NAT_…`) whose jumps the same batch deletes; another rule still jumping to it fails the batch (EBUSY).
   */
  | { op: 'deleteNatChain'; name: string };

/**
 * One atomic change of table `<family> iptlb` (and, for a takeover of the original iptlb's rules, of iptables-nft's
 * `table <family> nat`: deleteNatRule, deleteNatChain): lands whole or not at all.
 */
export interface NftTransaction {
  /** The table's family: every address in `ops` is of it. */
  family: NftFamily;
  table: 'iptlb';
  ops: NftOp[];
  /** When set, the commit fails with ERESTART (code `ERESTART`) if the ruleset generation differs. */
  expectGenid?: number;
}

/** What the kernel holds in table `<family> iptlb`, with counters. */
export interface NftView {
  /** Ruleset generation id at the time of the read. */
  genid: number;
  /** The table read: `ip iptlb` or `ip6 iptlb`. Absent means `ip`. */
  family?: NftFamily;
  exists: boolean;
  /** Every set of the table whose name matches DISPATCH_SET_PATTERN. */
  dispatchSets: { name: string; elements: { key: NftEndpoint; packets: bigint; bytes: bigint }[] }[];
  backendMaps: { proto: Protocol; elements: (NftBackendElement & { packets: bigint; bytes: bigint })[] }[];
  /**
   * The base chains that exist, with their rules in order. A rule iptlb did not write is `{ kind: 'foreign', text }`.
   */
  chains: { name: NftBaseChain; rules: (NftRule | { kind: 'foreign'; text: string })[] }[];
  /**
   * The affinity sets (names matching AFFINITY_SET_PATTERN) with their timeout; their elements are the kernel's, not
   * compared. Absent from reads that do not know them.
   */
  affinitySets?: { name: string; timeout: number }[];
  /** Names of the table's objects iptlb does not know (other sets or chains): drift. */
  foreign: string[];
  /**
   * A narrow read (NftExecutor.lookup): the dispatch sets hold only the elements asked for, the
   * backend maps none; the rest as in a whole read. Only for "does the table serve this address?".
   */
  narrow?: true;
}

/**
 * The original iptlb's jump on a host whose iptables is the nf_tables one: a rule of iptables-nft's `table <family>
 * nat`, chain OUTPUT or PREROUTING, without a comment, that jumps to a chain named `IPTLB_NAT_…`, with what it matches
 * as far as iptlb reads it (NftExecutor.originalJumps).
 */
export interface NftOriginalJump {
  chain: 'OUTPUT' | 'PREROUTING';
  /** Its handle (`nft delete rule <family> nat <chain> handle N`). */
  handle: number;
  /** The chain it jumps to: `IPTLB_NAT_…`. */
  target: string;
  /** The destination address it matches; absent: any (or not read, see `unknown`). */
  ip?: string;
  /** The protocol it matches: a name (tcp, udp, sctp) or a number; absent: any. */
  proto?: string;
  /** The destination port it matches; absent: any. */
  port?: number;
  /** The parts of its match iptlb does not read (`xt match multiport`, `bitwise`…); absent when it read them all. */
  unknown?: string;
}

/** nft's address type of a family's tables: `ipv4_addr` / `ipv6_addr`. */
export function nftAddrType(family: NftFamily): string {
  return family === 'ip6' ? 'ipv6_addr' : 'ipv4_addr';
}
