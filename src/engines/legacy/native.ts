/**
 * The native executor: commits through the addon (libiptc in-process, on a worker thread, under the
 * xtables lock); reads back iptlb's rules with their counters.
 */
import { getSystemErrorName } from 'node:util';
import { IptlbError, type ErrorCode } from '../../model/errors.js';
import {
  JUMPED_BY,
  ORIGINAL_AT,
  TAKEN_HINT,
  bareJumpsOf,
  chainInUse,
  deletedOriginals,
  parseSave,
  renderRestore,
  renderRuleOf,
} from './restore.js';
import { findBinary, run } from '../../platform/spawn.js';
import type { NativeAddon } from '../../platform/addon.js';
import type { AfterCommit, CommitResult, Family, KernelView, Transaction } from '../../model/types.js';
import { LEGACY_CAPABILITIES, legacyPermissionMessage, type LegacyExecutor } from './executor.js';
import type { Capability } from '../../platform/caps.js';
import { HELD_HINT, MOVED_AT, MOVED_HINT } from '../engine.js';

/**
 * Maps what the addon throws or rejects with to an {@link IptlbError}, keeping the code, errno and message.
 * `needs`: the capabilities of the engine that failed, named when missing in a permission failure (default
 * the legacy engine's; the nft engine needs CAP_NET_ADMIN alone); `has` answers for one (this process's).
 */
export function mapNativeError(
  e: unknown,
  needs: readonly Capability[] = LEGACY_CAPABILITIES,
  has?: (c: Capability) => boolean,
): IptlbError {
  if (e instanceof IptlbError) return e;
  const err = (e ?? {}) as { code?: unknown; errno?: unknown; message?: unknown };
  const message = typeof err.message === 'string' ? err.message : String(e);
  if (e instanceof TypeError || err.code === 'EPLAN') {
    // The addon refused the plan itself (a planner bug, never the user's input): name the field.
    const field = /^([\w.[\]]+): /.exec(message)?.[1];
    return new IptlbError(
      'ENATIVE',
      `native addon refused the transaction: ${message}`,
      field ? { field, cause: e } : { cause: e },
    );
  }
  // A profile name the table holds for a profile the state file does not (transaction.cc RefuseHeld),
  // or at another address than the state file's (DeleteOwnedRules, for tx.held); else an address.
  // A rule iptlb did not write jumps to the chain of a profile the state file holds (RefuseShared: it says what to do).
  if (err.code === 'ECONFLICT' && message.startsWith('name: ') && message.includes(JUMPED_BY))
    return new IptlbError('ECONFLICT', message, { field: 'name', cause: e });
  if (err.code === 'ECONFLICT' && message.startsWith('name: '))
    return new IptlbError('ECONFLICT', `${message}${message.includes(MOVED_AT) ? MOVED_HINT : HELD_HINT}`, {
      field: 'name',
      cause: e,
    });
  // The original iptlb's jump at the address (transaction.cc OriginalTaken: the message says what to do).
  if (err.code === 'ECONFLICT' && message.includes(ORIGINAL_AT))
    return new IptlbError('ECONFLICT', `source: ${message}`, { field: 'source', cause: e });
  if (err.code === 'ECONFLICT')
    return new IptlbError('ECONFLICT', `source: ${message}${TAKEN_HINT}`, { field: 'source', cause: e });
  const code: ErrorCode =
    err.code === 'ELOCK' || err.code === 'EPERM' || err.code === 'ERESTART' ? err.code : 'EKERNEL';
  const opts = typeof err.errno === 'number' ? { errno: err.errno, cause: e } : { cause: e };
  const inUse = err.errno === 31 ? /^deleting chain (\S+):/.exec(message) : null; // EMLINK
  // A permission failure names the capability that is missing (CAP_NET_RAW under a unit granting CAP_NET_ADMIN only).
  if (code === 'EPERM') return new IptlbError(code, legacyPermissionMessage(message, has, needs), opts);
  return new IptlbError(code, inUse ? `${message}; ${chainInUse(inUse[1]!)}` : message, opts);
}

/** The error of a write that failed with `errno`, as node:fs reports one (`code`, `errno`, `syscall`). */
function writeError(errno: number): NodeJS.ErrnoException {
  let code: string;
  try {
    code = getSystemErrorName(-errno);
  } catch {
    code = 'EIO';
  }
  return Object.assign(new Error(`${code}: write failed (errno ${errno})`), { code, errno: -errno, syscall: 'write' });
}

/** The save tool of each family: `render` reads the original iptlb's jumps with it. */
const TOOL_NAMES: Record<Family, string> = { ipv4: 'iptables-legacy-save', ipv6: 'ip6tables-legacy-save' };

export class NativeExecutor implements LegacyExecutor {
  readonly kind = 'native' as const;
  readonly engine = 'legacy' as const;
  private readonly lockWaitMs: number;

  constructor(
    private readonly addon: NativeAddon,
    opts: { lockWaitMs?: number } = {},
  ) {
    this.lockWaitMs = opts.lockWaitMs ?? 10_000;
  }

  async commit(tx: Transaction, after?: AfterCommit): Promise<CommitResult> {
    let r: Awaited<ReturnType<NativeAddon['commit']>>;
    try {
      // The plan crosses as JSON text, decoded on the addon's thread (docs/architecture.md).
      r = await this.addon.commit(tx, { lockWaitMs: this.lockWaitMs, ...(after ? { append: after } : {}) });
    } catch (e) {
      throw mapNativeError(e);
    }
    if (r.originals?.length)
      deletedOriginals.set(
        tx,
        r.originals.map((o) => ({ chain: o.chain, rule: renderRuleOf(o.rule, tx.family) })),
      );
    if (!r.appended) return { durationMs: r.durationMs };
    const { written, errno } = r.appended;
    return { durationMs: r.durationMs, appended: errno === 0 ? { written } : { written, error: writeError(errno) } };
  }

  prefetch(): void {
    this.addon.prefetch().catch(() => {}); // a failed prefetch only means the commit does the work
  }

  releasePrefetch(): Promise<void> {
    return this.addon.releasePrefetch().then(
      () => {},
      () => {},
    );
  }

  /** The nat table of `family` (default ipv4; ipv6: that of ip6tables, through libip6tc). */
  async read(family: Family = 'ipv4'): Promise<KernelView> {
    try {
      return await this.addon.read(family);
    } catch (e) {
      throw mapNativeError(e);
    }
  }

  /** Whether `read(family)` would find any of iptlb's objects: the addon's walk of the raw table. */
  async holds(family: Family): Promise<boolean> {
    try {
      return await this.addon.holds(family);
    } catch (e) {
      throw mapNativeError(e);
    }
  }

  /**
   * What iptables-legacy-restore would be fed for `tx` against the kernel as it is now (read-only).
   * The addon's read says where the original iptlb's jumps (no comment, to a profile chain) are, not
   * their text, and the commit deletes those to a chain it deletes or refills (transaction.cc). Only
   * when `tx` touches such a chain is their text read, with iptables-legacy-save (a process: as rare
   * as hosts the original ran on); without it, a comment line names each jump.
   */
  async render(tx: Transaction): Promise<string> {
    const view = await this.read(tx.family);
    if (bareJumpsOf(tx, view).length === 0) return renderRestore(tx, view);
    const tool = TOOL_NAMES[tx.family];
    const save = findBinary(tool);
    const r = save ? await run(save, ['-t', 'nat']) : null;
    if (!r || r.code !== 0)
      return (
        `# the original iptlb's jumps (no comment) below: their text not read (${tool} ${save ? 'failed' : 'not found'})\n` +
        renderRestore(tx, view)
      );
    return renderRestore(tx, { ...view, bareJumps: parseSave(r.stdout).bareJumps ?? [] });
  }
}
