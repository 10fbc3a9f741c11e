/**
 * The one place that loads the native addon. It is three N-API files, so that a host with only one
 * engine's libraries still runs that engine natively:
 *   iptlb_core.node  file locks, conntrack flushes     (libmnl)
 *   iptlb_xt.node    legacy engine over libiptc        (libip4tc, libip6tc)
 *   iptlb_nft.node   nft engine over netlink           (libnftnl, libmnl)
 * Each is looked for in build/Release/ (a local build) and then in prebuilds/<platform>-<arch>/ (the
 * binaries shipped in the npm package). Never throws: a part that does not load is reported, once,
 * with the reason and a command that fixes it where the user is (a consumer project or this repo).
 */
import { createRequire } from 'node:module';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import * as path from 'node:path';
import type { AfterCommit, Family, KernelView, Rule, Transaction } from '../model/types.js';
import type { NftEndpoint, NftFamily, NftOriginalJump, NftTransaction, NftView } from '../engines/nft/ops.js';
import { packageRoot } from './paths.js';

/** ABI of the addon this TypeScript expects (native/common/addon_args.h: kAbiVersion). */
export const EXPECTED_ABI = 27;

/**
 * Conntrack entries to delete: original destination `vip`, protocol, reply source `destination` (flows DNATed to it).
 */
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
  /**
   * Dumps of the conntrack table made: one per address family and protocol asked (filtered in the kernel), or one of
   * the whole table; 0 when skipped.
   */
  dumps: number;
  /**
   * `true`: the IPv4 tcp entries half-open in the dump were deleted by the kernel's own check, only if still
   * unanswered then (a filtered flush per flow, Linux 6.12+), or there were none; `false`: one by one by tuple, as
   * the dump saw them (older kernels, or `kernelFilter: false`). IPv6 tcp entries always go one by one: the kernel's
   * filter compares IPv6 addresses the wrong way round.
   */
  conditionalDelete: boolean;
  /** Filtered flushes asked for: one per IPv4 tcp flow that had half-open entries. */
  sweeps: number;
  /**
   * `true` when half-open tcp entries were deleted by tuple (IPv6, older kernels): after a 250 ms pause, each read
   * again first and deleted only if still half-open (one answered meanwhile is left; counted as kept if open).
   */
  paused: boolean;
  /** `deleted`: entries deleted; `kept`: tcp connections still open (established or closing), left to finish. */
  flows: { deleted: number; kept: number }[];
}

/** A held flock; `release()` is idempotent, and the lock also goes with the object (finalizer) or the process. */
export interface FileLock {
  release(): void;
  /**
   * The descriptor that holds the lock; -1 once released. A child process given a copy holds the lock until it exits
   * too.
   */
  readonly fd: number;
}

/** Options of {@link NativeAddon.commit}. */
export interface CommitOptions {
  lockWaitMs?: number;
  /**
   * Written to `fd` on the addon's thread right after the commit succeeded (never when it failed),
   * before the promise settles; the descriptor must stay open until then. Addons built before it
   * ignore it (no `appended` in the result).
   */
  append?: AfterCommit;
}

/** What {@link NativeAddon.commit} resolves with. */
export interface NativeCommitResult {
  durationMs: number;
  attempts: number;
  /** With `append`: the bytes written, and the errno of a write that failed (0: all written). */
  appended?: { written: number; errno: number };
  /** The original iptlb's jumps (no comment, in a built-in chain) the commit deleted: their chain and rule. */
  originals?: { chain: string; rule: Rule }[];
}

/**
 * The addon as {@link loadAddon} hands it out. Every method checks its arguments synchronously (a
 * TypeError naming the field) and does its kernel or file work off the JavaScript thread: the legacy
 * engine's on one thread of its own (a commit waiting for the xtables lock never holds a libuv pool
 * thread), the rest on the libuv pool. The table operations are kept in call order here, one in flight
 * per engine (see {@link TableQueue}). Rejections are Errors with `code` ('EKERNEL' | 'ELOCK' |
 * 'EPERM' | 'ERESTART', or 'EPLAN' for a legacy plan that fails a check) and a numeric `errno`.
 */
export interface NativeAddon {
  readonly abiVersion: number;
  /** Which file(s) this object was assembled from ('core', 'xt', 'nft'); see {@link loadAddon}. */
  readonly parts?: readonly AddonPart[];
  /**
   * Commits a transaction in one libiptc handle and one iptc_commit, under the xtables lock (waiting at most
   * `lockWaitMs`, default 10,000). The plan crosses into the addon as `JSON.stringify(tx)` (a value JSON
   * cannot carry, such as a BigInt, is a TypeError here), decoded and checked on the addon's thread: a
   * plan that fails a check rejects with code 'EPLAN', the message naming the field.
   */
  commit(tx: Transaction, opts?: CommitOptions): Promise<NativeCommitResult>;
  /** The same commit, given the JSON text itself (the one way a plan crosses into the addon). */
  commitJson(json: string, opts?: CommitOptions): Promise<NativeCommitResult>;
  /**
   * Prepares the next commit on a worker thread: takes the xtables lock (without waiting) and copies
   * the nat table out; the next commit()/commitJson() uses both. Resolves false when the lock was busy
   * or the table unreadable (the commit then does that work itself). Must be followed by a commit or
   * by releasePrefetch(), which gives the lock back (ordered with commits and reads, in call order).
   */
  prefetch(): Promise<boolean>;
  releasePrefetch(): Promise<boolean>;
  /**
   * iptlb's chains (IPTLB_*) and comment-owned hook rules of the nat table of `family` (default ipv4: iptables; ipv6:
   * ip6tables), decoded, with counters.
   */
  read(family?: Family): Promise<KernelView>;
  /**
   * Whether the nat table of `family` holds any of iptlb's objects (what {@link read} would find: a
   * rule commented `iptlb:` in a built-in or dispatch chain, or a profile chain), asked without
   * libiptc: one copy of the table's entries, walked once. Only for a nat table that exists (asking
   * creates it).
   */
  holds(family?: Family): Promise<boolean>;
  /** An exclusive flock(2) on `path` (created 0600, symlinks refused), waiting at most `waitMs`. */
  flock(path: string, waitMs: number): Promise<FileLock>;
  /**
   * Whether another open file holds an flock on `path`, asked without waiting (synchronous, on this
   * thread); a file that does not exist or cannot be opened is not busy. Absent from addons built
   * before it (then callers do without).
   */
  flockBusy?(path: string): boolean;
  info(): { libiptc: true; xtablesLockPath: string };
  /**
   * Commits all ops of `tx` on table `<tx.family> iptlb` (ip or ip6) in one nf_tables netlink batch
   * (all or nothing); an address not of `tx.family` is a TypeError.
   * Rejects with code 'EKERNEL' (message `nft op <i> (<kind> <object>): <error>`), 'EPERM', or
   * 'ERESTART' when `tx.expectGenid` is set and the ruleset generation differs. Bad input is a
   * synchronous TypeError naming the field. `genid` is the generation right after the commit.
   */
  nftCommit(tx: NftTransaction): Promise<{ durationMs: number; genid: number }>;
  /**
   * Table `<family> iptlb` (default ip) as the kernel holds it, with counters (a missing table is `exists: false`; an
   * ip6 view has `family: 'ip6'`).
   */
  /** Table `<family> iptlb`; with `addresses`, a narrow read of those (see NftExecutor.lookup). */
  nftRead(family?: NftFamily, addresses?: NftEndpoint[]): Promise<NftView>;
  /**
   * The names of the chains of any nftables table `<family> <table>` (none when it does not exist):
   * doctor's look for the original iptlb's chains in iptables-nft's `table ip nat`, without spawning nft.
   */
  nftChains(family: NftFamily, table: string): Promise<string[]>;
  /**
   * The original iptlb's jumps in iptables-nft's `table <family> nat`, chains OUTPUT and PREROUTING only (two filtered
   * rule dumps; none when the table does not exist), with their match decoded (`proto` as a protocol number).
   */
  nftOriginalJumps(family: NftFamily): Promise<(Omit<NftOriginalJump, 'proto'> & { proto?: number })[]>;
  /**
   * Deletes the conntrack entries (IPv4 or IPv6, as the flow's addresses are) of the current
   * network namespace that go to `vip` with `protocol` and were DNATed to `destination`
   * (ctnetlink: one dump per address family and protocol asked, filtered in the kernel, for every
   * virtual address at once, then one delete per entry). udp and sctp: every such entry;
   * tcp: only entries the destination has not answered (SYN_SENT), and only if still unanswered
   * when deleted: for IPv4 on Linux 6.12+ the kernel checks (one filtered flush per flow), else
   * each is read again after a 250 ms pause (a handshake answered after the dump is left); open
   * connections are left to finish and counted as `kept` (TIME_WAIT and CLOSE entries are left to
   * expire, uncounted). `opts.kernelFilter: false` reads the table whole and filters in the addon,
   * as on kernels before 5.8, and deletes tcp entries by tuple (default `true`). Bad input is a
   * synchronous TypeError with code 'EINVAL' naming the field; rejects with 'EPERM' (no
   * CAP_NET_ADMIN) or 'EKERNEL'.
   */
  conntrackFlush(flows: ConntrackFlow[], opts?: { kernelFilter?: boolean }): Promise<ConntrackFlushResult>;
  /**
   * The health checks' TCP prober (iptlb_core, native/health/prober.h): one thread, one epoll set, non-blocking
   * connects closed with an RST. `probe(jobs)` hands over a batch of {@link PROBE_JOB_BYTES}-byte jobs (see
   * src/health/native-probe.ts); `onResults` gets (id, errno) pairs in batches, errno 0 for success and ETIMEDOUT for
   * a timeout. Idle, it does not keep the process alive.
   */
  HealthProber: new (onResults: (results: Int32Array) => void) => NativeHealthProber;
  /**
   * Tells V8 the memory pressure is moderate (1: an incremental, memory-reducing mark-compact starts)
   * or critical (2: a memory-reducing full GC, synchronously), then back to none
   * (`v8::Isolate::MemoryPressureNotification`). False (and nothing done) when the runtime does not
   * export that function. Another level is a TypeError.
   */
  reduceMemory(level: 1 | 2): boolean;
  /**
   * A large state file's bytes (native/common/read_text.h): read from `fd` (at offset 0, synchronously) into
   * memory mapped whole and populated at once, and given back twice without a copy, as an external Buffer and
   * an external Latin-1 string over the same bytes (a copy of them where Node has no external strings). It
   * spares the page faults of Node's two fresh copies (the Buffer, then the string). null when the file
   * holds more than `size` bytes (it grew since its fstat) or the runtime refuses external memory: read it
   * the usual way. A read error throws an Error whose `code` is the errno's name; bad arguments a TypeError.
   */
  readText(fd: number, size: number): { text: string; bytes: Buffer } | null;
  /**
   * The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE` of a socket made for the
   * question), in decimal: unlike the namespace's inode, never given to another namespace while the
   * system runs. null on kernels before 5.14. Absent from addons built before it: see {@link netnsCookie}.
   */
  netnsCookie?(): string | null;
}

/** Bytes of one job of {@link NativeHealthProber.probe}. */
export const PROBE_JOB_BYTES = 28;

export interface NativeHealthProber {
  probe(jobs: Uint8Array): void;
  close(): void;
}

/** The three addon files; see the top of this file. */
export type AddonPart = 'core' | 'xt' | 'nft';
export const ADDON_PARTS: readonly AddonPart[] = ['core', 'xt', 'nft'];

export type LoadFailureReason = 'not-built' | 'library-missing' | 'abi-mismatch' | 'load-failed';

export type LoadResult =
  | { ok: true; addon: NativeAddon; path: string }
  | { ok: false; reason: LoadFailureReason; detail: string; fix: string };

/** Debian packages of the libraries the parts link (runtime) and of their headers (build). */
const RUNTIME_PACKAGES: Record<AddonPart, string[]> = {
  core: ['libmnl0'],
  xt: ['libip4tc2', 'libip6tc2'],
  nft: ['libnftnl11', 'libmnl0'],
};
export const BUILD_PACKAGES = [
  'libiptc-dev',
  'libxtables-dev',
  'libnftnl-dev',
  'libmnl-dev',
  'pkg-config',
  'g++',
  'make',
  'python3',
];
/** Debian package of each shared library a part may fail to find. */
const SONAME_PACKAGES: Record<string, string> = {
  'libip4tc.so.2': 'libip4tc2',
  'libip6tc.so.2': 'libip6tc2',
  'libxtables.so.12': 'libxtables12',
  'libnftnl.so.11': 'libnftnl11',
  'libmnl.so.0': 'libmnl0',
};

/** True when this package sits in some project's node_modules (then `npm run build:addon` does not exist there). */
export function installedAsDependency(root = safeRoot()): boolean {
  return !!root && root.split(path.sep).includes('node_modules');
}

function safeRoot(): string | undefined {
  try {
    return packageRoot();
  } catch {
    return undefined;
  }
}

/**
 * The npm prefix of a global install (`npm install -g`: `<prefix>/lib/node_modules/iptlb`, with no project's
 * package.json in `<prefix>/lib`), else undefined. There a plain `npm rebuild iptlb` rebuilds nothing: it looks
 * in the project of the current directory, says "rebuilt dependencies successfully" and exits 0.
 */
export function globalInstallPrefix(root = safeRoot()): string | undefined {
  if (!root) return undefined;
  const lib = path.dirname(path.dirname(root));
  if (path.basename(path.dirname(root)) !== 'node_modules' || path.basename(lib) !== 'lib') return undefined;
  return existsSync(path.join(lib, 'package.json')) ? undefined : path.dirname(lib);
}

/** The project whose node_modules holds this package: the directory above the first node_modules of its path. */
export function projectDir(root = safeRoot()): string | undefined {
  const parts = root?.split(path.sep) ?? [];
  const i = parts.indexOf('node_modules');
  return i > 0 ? parts.slice(0, i).join(path.sep) || path.sep : undefined;
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

function cwdOrUndefined(): string | undefined {
  try {
    return process.cwd();
  } catch {
    return undefined; // the directory was removed
  }
}

/**
 * The command that rebuilds the addon from source, where the user is: a clone, a project's dependency, or a global
 * install (`-g`, and `--prefix` unless it is npm's default one, beside the running node). `npm rebuild` acts on the
 * project of the current directory: run from another one (a shell elsewhere reading a systemd unit's journal) it
 * rebuilds nothing and exits 0, so the project is named (`--prefix`) unless it is the current directory.
 */
export function rebuildCommand(
  consumer = installedAsDependency(),
  globalPrefix = consumer ? globalInstallPrefix() : undefined,
  project = consumer && globalPrefix === undefined ? projectDir() : undefined,
  cwd = cwdOrUndefined(),
): string {
  if (!consumer) return 'npm run build:addon';
  if (globalPrefix !== undefined) {
    const own = path.dirname(path.dirname(process.execPath)) === globalPrefix;
    return `npm rebuild -g${own ? '' : ` --prefix ${shellQuote(globalPrefix)}`} iptlb --foreground-scripts`;
  }
  if (project === undefined || project === cwd) return 'npm rebuild iptlb --foreground-scripts';
  return `npm rebuild --prefix ${shellQuote(project)} iptlb --foreground-scripts`;
}

/** Installing the build dependencies, then rebuilding (Debian/Ubuntu package names). */
export function buildFix(consumer = installedAsDependency()): string {
  return `apt-get install -y ${BUILD_PACKAGES.join(' ')} && ${rebuildCommand(consumer)}`;
}

/** The fix of a consumer project or of this repo, as loadAddon() reports it here. */
export const BUILD_FIX = buildFix();

/** Where the build script keeps the output of the last node-gyp run (see scripts/build-addon.js). */
export function buildLogPath(): string {
  return path.join(safeRoot() ?? '.', 'build', 'build-addon.log');
}

/** The last `n` lines of the last build's log, or undefined when there is none. */
export function buildLogTail(n = 8): { path: string; lines: string[] } | undefined {
  const file = buildLogPath();
  try {
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
    return { path: file, lines: lines.slice(-n) };
  } catch {
    return undefined;
  }
}

/** Sorts a dlopen/require failure of an addon file into a reason and the command that fixes it. */
export function classifyLoadError(
  message: string,
  consumer = installedAsDependency(),
): { reason: Exclude<LoadFailureReason, 'not-built'>; fix: string } {
  // "libip4tc.so.2: cannot open shared object file: No such file or directory" (or "file too short",
  // "invalid ELF header" when something unusable sits at that name): a library the part links.
  const lib =
    /^(?:\/[^:]*\/)?(lib[\w+-]+\.so(?:\.\d+)*): (?:cannot open shared object file|file too short|invalid ELF header|wrong ELF class)/.exec(
      message,
    );
  if (lib) {
    const pkg = SONAME_PACKAGES[lib[1]!];
    return {
      reason: 'library-missing',
      fix: pkg ? `apt-get install -y ${pkg}` : `install the package that provides ${lib[1]}`,
    };
  }
  if (/cannot open shared object file/i.test(message))
    return {
      reason: 'library-missing',
      fix: `apt-get install -y ${[...new Set(Object.values(SONAME_PACKAGES))].join(' ')}`,
    };
  if (
    /NODE_MODULE_VERSION|compiled against a different Node\.js version|invalid ELF header|wrong ELF class|undefined symbol: napi_|version `(GLIBC|GLIBCXX|CXXABI)_[\d.]+' not found/.test(
      message,
    )
  ) {
    return { reason: 'abi-mismatch', fix: `${buildFix(consumer)} (builds it from source for this system)` };
  }
  return { reason: 'load-failed', fix: buildFix(consumer) };
}

/** Directories searched for the addon files, in order: a local build, then the shipped prebuilds. */
export function addonDirs(root = safeRoot()): string[] {
  if (!root) return [];
  return [path.join(root, 'build', 'Release'), path.join(root, 'prebuilds', `${process.platform}-${process.arch}`)];
}

/** The file of `part` that would be loaded (the first that exists), or the build path when none does. */
export function addonPath(part: AddonPart = 'core'): string {
  const dirs = addonDirs();
  for (const d of dirs) {
    const f = path.join(d, `iptlb_${part}.node`);
    if (existsSync(f)) return f;
  }
  return path.join(dirs[0] ?? '.', `iptlb_${part}.node`);
}

/**
 * Why the ELF file `file` cannot be handed to dlopen, or undefined when nothing is found (also for a file that is
 * no ELF at all, or too short for a header: dlopen says so itself). A file cut short (an interrupted copy or
 * install, a full disk) still has its headers, and dlopen maps its segments past the end: the first page read there
 * killed the process with SIGBUS, no message, no fallback. The program headers say how long the file must be.
 */
export function truncatedElf(file: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return undefined;
  }
  try {
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(Math.min(size, 4096));
    const got = readSync(fd, head, 0, head.length, 0);
    if (got < 64 || head.readUInt32BE(0) !== 0x7f454c46) return undefined;
    const is64 = head[4] === 2;
    const le = head[5] === 1;
    const u16 = (o: number): number => (le ? head.readUInt16LE(o) : head.readUInt16BE(o));
    const u32 = (o: number): number => (le ? head.readUInt32LE(o) : head.readUInt32BE(o));
    const word = (o: number): number =>
      is64 ? Number(le ? head.readBigUInt64LE(o) : head.readBigUInt64BE(o)) : u32(o);
    const phoff = word(is64 ? 0x20 : 0x1c);
    const phentsize = u16(is64 ? 0x36 : 0x2a);
    const phnum = u16(is64 ? 0x38 : 0x2c);
    let need = phoff + phentsize * phnum;
    if (need <= got) {
      for (let i = 0; i < phnum; i++) {
        const ph = phoff + i * phentsize;
        if (u32(ph) !== 1) continue; // PT_LOAD: what dlopen maps
        need = Math.max(need, word(ph + (is64 ? 8 : 4)) + word(ph + (is64 ? 32 : 16)));
      }
    }
    if (size >= need) return undefined;
    return `${file}: damaged: ${size} bytes, shorter than the ${need} its ELF headers give (cut short by an interrupted copy or install?)`;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * Loads the addon file `file` (not memoised; for tests and diagnostics). Never throws. The object is the
 * file's own: its table operations return job numbers for its `start(n)`, unordered ({@link loadAddonPart}
 * orders them).
 */
export function loadAddonFrom(file: string): LoadResult {
  if (!existsSync(file)) {
    const log = buildLogTail(1);
    const why = log ? `; the last build failed or was skipped, see ${log.path}` : '';
    return { ok: false, reason: 'not-built', detail: `${file} does not exist${why}`, fix: BUILD_FIX };
  }
  const damaged = truncatedElf(file);
  if (damaged) return { ok: false, reason: 'load-failed', detail: damaged, fix: BUILD_FIX };
  let addon: NativeAddon;
  try {
    addon = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (e) {
    const detail = String((e as Error)?.message ?? e).split('\n')[0]!;
    return { ok: false, detail, ...classifyLoadError(detail) };
  }
  if (!addon || typeof addon !== 'object' || addon.abiVersion !== EXPECTED_ABI) {
    const got = addon && typeof addon === 'object' ? String(addon.abiVersion) : typeof addon;
    return {
      ok: false,
      reason: 'abi-mismatch',
      detail: `${file} has addon ABI ${got}, this iptlb expects ${EXPECTED_ABI}`,
      fix: rebuildCommand(),
    };
  }
  return { ok: true, addon, path: file };
}

/**
 * Keeps one engine's table operations in call order, one in flight at a time: the next is started when
 * the previous one settled (as node-sqlite3 and serialport's bindings order their calls). The addon's
 * table entry points check their arguments at once (a synchronous TypeError) and return a job number;
 * the queue starts it (`start(n)`) when the operation's turn has come. Nothing waits in the C++ for a turn.
 */
export class TableQueue {
  private running = false;
  private readonly waiting: (() => void)[] = [];

  /** Operations started or waiting (for tests and diagnostics). */
  get length(): number {
    return this.waiting.length + (this.running ? 1 : 0);
  }

  run<T>(start: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const go = (): void => {
        let p: Promise<T>;
        try {
          p = start();
        } catch (e) {
          p = Promise.reject(e);
        }
        p.then(resolve, reject).finally(() => this.next());
      };
      if (this.running) this.waiting.push(go);
      else {
        this.running = true;
        go();
      }
    });
  }

  private next(): void {
    const go = this.waiting.shift();
    if (go) go();
    else this.running = false;
  }
}

/** The two table queues of the process: x_tables (ipv4 and ipv6 share the xtables lock) and nftables. */
export const tableQueues = { xt: new TableQueue(), nft: new TableQueue() } as const;

type Fn = (...a: unknown[]) => unknown;

/**
 * The part's functions as {@link NativeAddon} has them: the table operations of `xt` and `nft`, whose
 * raw entry points check their arguments and return the number of a job that the part's `start(n)`
 * queues, go through their {@link TableQueue}; commit() stringifies the plan. The rest is the part's own.
 */
function ordered(part: AddonPart, raw: NativeAddon): NativeAddon {
  if (part === 'core') return raw;
  const r = raw as unknown as Record<string, Fn>;
  const q = part === 'xt' ? tableQueues.xt : tableQueues.nft;
  const queued =
    (name: string) =>
    (...args: unknown[]): Promise<unknown> => {
      const id = r[name]!(...args);
      return q.run(() => r.start!(id) as Promise<unknown>);
    };
  const out: Record<string, unknown> = { ...raw };
  delete out.start;
  if (part === 'xt') {
    const commitJson = queued('commit');
    out.commitJson = commitJson;
    out.commit = (tx: unknown, ...rest: unknown[]) => {
      let json: unknown;
      try {
        json = JSON.stringify(tx);
      } catch (e) {
        throw new TypeError(`transaction: cannot be written as JSON (${(e as Error).message})`);
      }
      if (typeof json !== 'string') throw new TypeError('transaction: must be an object');
      return commitJson(json, ...rest);
    };
    out.read = queued('read');
    out.holds = queued('holds');
    // A prefetch (and its release) goes to the job thread at once, not through the queue: the thread
    // runs its jobs in the order they were handed to it, so the commit that follows still finds it
    // done, and it starts the moment the prefetch ends on that thread rather than after this thread
    // has seen the prefetch settle (a wake-up of each thread less on the path between two commits).
    // A prefetch only prepares (the lock and a copy of the table); nothing queued behind it minds.
    for (const name of ['prefetch', 'releasePrefetch']) out[name] = (...args: unknown[]) => r.start(r[name]!(...args));
  } else {
    for (const name of ['nftCommit', 'nftRead', 'nftChains', 'nftOriginalJumps']) out[name] = queued(name);
  }
  return out as unknown as NativeAddon;
}

const parts = new Map<AddonPart, LoadResult>();
const assembled = new Map<string, LoadResult>();

/** Loads one addon file once and remembers the outcome. `IPTLB_NO_NATIVE=1` pretends none is built. */
export function loadAddonPart(part: AddonPart): LoadResult {
  const known = parts.get(part);
  if (known) return known;
  let r: LoadResult;
  if (process.env.IPTLB_NO_NATIVE === '1') {
    r = { ok: false, reason: 'not-built', detail: 'disabled by IPTLB_NO_NATIVE=1', fix: 'unset IPTLB_NO_NATIVE' };
  } else if (!safeRoot()) {
    r = {
      ok: false,
      reason: 'load-failed',
      detail: 'cannot find the package root (package.json named iptlb)',
      fix: 'reinstall iptlb',
    };
  } else {
    // The first file that loads: a local build that does not (damaged, another ABI) leaves the
    // shipped prebuild to serve; when none loads, the first one's failure is reported.
    const files = addonDirs()
      .map((d) => path.join(d, `iptlb_${part}.node`))
      .filter((f) => existsSync(f));
    let first: LoadResult | undefined;
    for (const f of files) {
      const x = loadAddonFrom(f);
      first ??= x;
      if (x.ok) {
        first = x;
        break;
      }
    }
    r = first ?? loadAddonFrom(addonPath(part));
    if (r.ok) r = { ...r, addon: ordered(part, r.addon) };
    if (!r.ok && r.reason === 'library-missing') {
      // The one dlopen named, and the others this part links (dlopen stops at the first missing).
      const named = /^apt-get install -y (\S+)$/.exec(r.fix)?.[1];
      if (named) r = { ...r, fix: `apt-get install -y ${[...new Set([named, ...RUNTIME_PACKAGES[part]])].join(' ')}` };
    }
  }
  parts.set(part, r);
  return r;
}

/**
 * The fix of a use whose parts do not load for want of libraries: the packages of every such part, not only of the
 * first. Each part names the one library dlopen stopped at: with libmnl0 and libip4tc2 missing (a minimal
 * container), core's `apt-get install -y libmnl0` alone left the legacy engine falling back once it was installed.
 * A part stopped at a library no package is known for keeps its own fix ("install the package that provides …")
 * after the packages: dropped, the fix no longer named the library that part still missed. Undefined when no part
 * misses a library.
 */
export function libraryFix(results: readonly LoadResult[]): string | undefined {
  const pkgs: string[] = [];
  const others: string[] = [];
  for (const r of results) {
    if (r.ok || r.reason !== 'library-missing') continue;
    const m = /^apt-get install -y (.+)$/.exec(r.fix);
    if (m) pkgs.push(...m[1]!.split(' '));
    else if (!others.includes(r.fix)) others.push(r.fix);
  }
  const fixes = [...(pkgs.length ? [`apt-get install -y ${[...new Set(pkgs)].join(' ')}`] : []), ...others];
  return fixes.length ? fixes.join('; ') : undefined;
}

/**
 * The addon for a use: 'legacy' needs core + xt, 'nft' core + nft, 'core' core alone, 'all' every part
 * (the default: what the addon's own tests and benches use). The object has the functions of the
 * parts needed, and only those are loaded; the failure is that of the first part needed that did not
 * load. Memoised.
 */
export function loadAddon(use: 'all' | 'core' | 'legacy' | 'nft' = 'all'): LoadResult {
  const known = assembled.get(use);
  if (known) return known;
  const needed: AddonPart[] =
    use === 'all' ? [...ADDON_PARTS] : use === 'core' ? ['core'] : ['core', use === 'legacy' ? 'xt' : 'nft'];
  const results = needed.map((p) => [p, loadAddonPart(p)] as const); // only what this use needs: one dlopen less
  let r: LoadResult | undefined;
  for (const [p, res] of results) {
    if (!needed.includes(p) || res.ok) continue;
    r = res.detail.includes(`iptlb_${p}.node`) ? res : { ...res, detail: `iptlb_${p}.node: ${res.detail}` };
    if (res.reason === 'library-missing') r = { ...r, fix: libraryFix(results.map(([, x]) => x)) ?? res.fix };
    break;
  }
  if (!r) {
    const addon = {} as Record<string, unknown>;
    const have: AddonPart[] = [];
    for (const [p, res] of results) {
      if (!res.ok) continue;
      Object.assign(addon, res.addon);
      have.push(p);
    }
    delete addon.part;
    addon.parts = have;
    const first = results.find(([p]) => p === needed[needed.length - 1])![1] as { path: string };
    r = { ok: true, addon: addon as unknown as NativeAddon, path: first.path };
  }
  assembled.set(use, r);
  return r;
}

/**
 * The cookie of this process's network namespace (see {@link NativeAddon.netnsCookie}), or null when it
 * cannot be had: no core addon (not built, `IPTLB_NO_NATIVE=1`), one built before it, or a kernel
 * before 5.14. Never throws.
 */
export function netnsCookie(): string | null {
  const loaded = loadAddon('core');
  if (!loaded.ok || typeof loaded.addon.netnsCookie !== 'function') return null;
  try {
    const c = loaded.addon.netnsCookie();
    return typeof c === 'string' && /^[0-9]+$/.test(c) ? c : null;
  } catch {
    return null;
  }
}
