/**
 * The one place that loads the native addon (build/Release/iptlb.node). Never throws: a missing or
 * broken addon is reported once, with the reason and the command that fixes it.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { Family, KernelView, Transaction } from '../types.js';
import type { NftFamily, NftTransaction, NftView } from '../nft/ops.js';
import { packageRoot } from '../paths.js';

/** ABI of the addon this TypeScript expects (native/addon.cc exports the same number). */
export const EXPECTED_ABI = 10;

/** Conntrack entries to delete: original destination `vip`, protocol, reply source `destination` (flows DNATed to it). */
export interface ConntrackFlow {
  protocol: 'tcp' | 'udp' | 'sctp';
  /** IPv4 dotted quad, or canonical IPv6 text without brackets (then `destination` is IPv6 too). */
  vip: { ip: string; port: number };
  destination: { ip: string; port: number };
}

/** What {@link NativeAddon.conntrackFlush} did, per flow in the order given. */
export interface ConntrackFlushResult {
  durationMs: number;
  /** `false` when the kernel refused the dump filter (before 5.8) and the table was read whole. */
  kernelFilter: boolean;
  /** `true` when the namespace's nf_conntrack_count was 0 (or conntrack is not loaded): nothing was read. */
  skipped: boolean;
  /** Dumps of the conntrack table made: one per address family and protocol asked (filtered in the kernel), or one of the whole table; 0 when skipped. */
  dumps: number;
  /** `deleted`: entries deleted; `kept`: tcp connections still open (established or closing), left to finish. */
  flows: { deleted: number; kept: number }[];
}

/** A held flock; `release()` is idempotent, and the lock also goes with the object (finalizer) or the process. */
export interface FileLock {
  release(): void;
  /** The descriptor that holds the lock; -1 once released. A child process given a copy holds the lock until it exits too. */
  readonly fd: number;
}

/**
 * The addon's exports. Every method checks its arguments synchronously (a TypeError naming the
 * field) and does its kernel or file work on a worker thread. Rejections are Errors with `code`
 * ('EKERNEL' | 'ELOCK' | 'EPERM', or 'EPLAN' from commitJson) and a numeric `errno`.
 */
export interface NativeAddon {
  readonly abiVersion: number;
  /** Commits a transaction in one libiptc handle and one iptc_commit, under the xtables lock (waiting at most `lockWaitMs`, default 10,000). */
  commit(tx: Transaction, opts?: { lockWaitMs?: number }): Promise<{ durationMs: number; attempts: number }>;
  /**
   * The same commit with the transaction as `JSON.stringify(tx)`: decoded and checked on the worker
   * thread (the JS thread only copies one string). A plan that fails a check rejects with code
   * 'EPLAN', the message naming the field as commit()'s TypeErrors do.
   */
  commitJson(json: string, opts?: { lockWaitMs?: number }): Promise<{ durationMs: number; attempts: number }>;
  /**
   * Prepares the next commit on a worker thread: takes the xtables lock (without waiting) and copies
   * the nat table out; the next commit()/commitJson() uses both. Resolves false when the lock was busy
   * or the table unreadable (the commit then does that work itself). Must be followed by a commit or
   * by releasePrefetch(), which gives the lock back (ordered with commits and reads, in call order).
   */
  prefetch(): Promise<boolean>;
  releasePrefetch(): Promise<boolean>;
  /** iptlb's chains (IPTLB_*) and comment-owned hook rules of the nat table of `family` (default ipv4: iptables; ipv6: ip6tables), decoded, with counters. */
  read(family?: Family): Promise<KernelView>;
  /** An exclusive flock(2) on `path` (created 0600, symlinks refused), waiting at most `waitMs`. */
  flock(path: string, waitMs: number): Promise<FileLock>;
  info(): { libiptc: true; xtablesLockPath: string };
  /**
   * Commits all ops of `tx` on table `<tx.family> iptlb` (ip or ip6) in one nf_tables netlink batch
   * (all or nothing); an address not of `tx.family` is a TypeError.
   * Rejects with code 'EKERNEL' (message `nft op <i> (<kind> <object>): <error>`), 'EPERM', or
   * 'ERESTART' when `tx.expectGenid` is set and the ruleset generation differs. Bad input is a
   * synchronous TypeError naming the field. `genid` is the generation right after the commit.
   */
  nftCommit(tx: NftTransaction): Promise<{ durationMs: number; genid: number }>;
  /** Table `<family> iptlb` (default ip) as the kernel holds it, with counters (a missing table is `exists: false`; an ip6 view has `family: 'ip6'`). */
  nftRead(family?: NftFamily): Promise<NftView>;
  /**
   * Deletes the conntrack entries (IPv4 or IPv6, as the flow's addresses are) of the current
   * network namespace that go to `vip` with `protocol` and were DNATed to `destination`
   * (ctnetlink: one dump per address family and protocol asked, filtered in the kernel, for every
   * virtual address at once, then one delete per entry). udp and sctp: every such entry;
   * tcp: only entries the destination has not answered (SYN_SENT); open
   * connections are left to finish and counted as `kept` (TIME_WAIT and CLOSE entries are left
   * to expire, uncounted). `opts.kernelFilter: false` reads the table whole and filters in the
   * addon, as on kernels before 5.8 (default `true`). Bad input is a synchronous TypeError with
   * code 'EINVAL' naming the field; rejects with 'EPERM' (no CAP_NET_ADMIN) or 'EKERNEL'.
   */
  conntrackFlush(flows: ConntrackFlow[], opts?: { kernelFilter?: boolean }): Promise<ConntrackFlushResult>;
}

export type LoadFailureReason = 'not-built' | 'library-missing' | 'abi-mismatch' | 'load-failed';

export type LoadResult =
  | { ok: true; addon: NativeAddon; path: string }
  | { ok: false; reason: LoadFailureReason; detail: string; fix: string };

export const BUILD_FIX = 'apt-get install -y libiptc-dev libxtables-dev libnftnl-dev libmnl-dev pkg-config g++ make python3 && npm run build:addon';
const LIBRARY_FIX = 'apt-get install -y libip4tc2 libip6tc2 libxtables12 libnftnl11 libmnl0 (or rebuild: npm run build:addon)';
const REBUILD_FIX = 'npm run build:addon';

let loaded: LoadResult | undefined;

export function addonPath(): string {
  return path.join(packageRoot(), 'build', 'Release', 'iptlb.node');
}

/** Sorts a dlopen/require failure of the addon into a reason and the command that fixes it. */
export function classifyLoadError(message: string): { reason: Exclude<LoadFailureReason, 'not-built'>; fix: string } {
  if (/cannot open shared object file/i.test(message)) return { reason: 'library-missing', fix: LIBRARY_FIX };
  if (/NODE_MODULE_VERSION|compiled against a different Node\.js version|invalid ELF header|wrong ELF class|undefined symbol: napi_/.test(message)) {
    return { reason: 'abi-mismatch', fix: REBUILD_FIX };
  }
  return { reason: 'load-failed', fix: BUILD_FIX };
}

/** Loads the addon at `file` (not memoised; for tests and diagnostics). Never throws. */
export function loadAddonFrom(file: string): LoadResult {
  if (!existsSync(file)) return { ok: false, reason: 'not-built', detail: `${file} does not exist`, fix: BUILD_FIX };
  let addon: NativeAddon;
  try {
    addon = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (e) {
    const detail = String((e as Error)?.message ?? e).split('\n')[0];
    return { ok: false, detail, ...classifyLoadError(detail) };
  }
  if (!addon || typeof addon !== 'object' || addon.abiVersion !== EXPECTED_ABI) {
    const got = addon && typeof addon === 'object' ? String(addon.abiVersion) : typeof addon;
    return { ok: false, reason: 'abi-mismatch', detail: `${file} has addon ABI ${got}, this iptlb expects ${EXPECTED_ABI}`, fix: REBUILD_FIX };
  }
  return { ok: true, addon, path: file };
}

/** Loads the addon once and remembers the outcome. `IPTLB_NO_NATIVE=1` pretends it is not built. */
export function loadAddon(): LoadResult {
  if (loaded) return loaded;
  if (process.env.IPTLB_NO_NATIVE === '1') {
    return (loaded = { ok: false, reason: 'not-built', detail: 'disabled by IPTLB_NO_NATIVE=1', fix: 'unset IPTLB_NO_NATIVE' });
  }
  let file: string;
  try {
    file = addonPath();
  } catch (e) {
    return (loaded = { ok: false, reason: 'load-failed', detail: (e as Error).message, fix: 'reinstall iptlb' });
  }
  return (loaded = loadAddonFrom(file));
}
