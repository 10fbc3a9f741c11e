/**
 * The native executor: commits through the addon (libiptc in-process, on a worker thread, under the
 * xtables lock); reads back iptlb's rules with their counters.
 */
import { IptlbError, type ErrorCode } from '../errors.js';
import { renderRestore } from '../restore.js';
import type { NativeAddon } from '../native/addon.js';
import type { CommitResult, Executor, KernelView, Transaction } from '../types.js';

function mapError(e: unknown): IptlbError {
  const err = e as { code?: string; errno?: number; message?: string };
  if (e instanceof TypeError) return new IptlbError('EKERNEL', `native addon refused its input: ${err.message}`);
  const code: ErrorCode = err.code === 'ELOCK' ? 'ELOCK' : err.code === 'EPERM' ? 'EPERM' : 'EKERNEL';
  const opts = err.errno !== undefined ? { errno: err.errno, cause: e } : { cause: e };
  return new IptlbError(code, String(err.message ?? e), opts);
}

export class NativeExecutor implements Executor {
  readonly kind = 'native' as const;
  readonly engine = 'legacy' as const;
  private readonly lockWaitMs: number;

  constructor(
    private readonly addon: NativeAddon,
    opts: { lockWaitMs?: number } = {},
  ) {
    this.lockWaitMs = opts.lockWaitMs ?? 10_000;
  }

  async commit(tx: Transaction): Promise<CommitResult> {
    try {
      const r = await this.addon.commit(tx, { lockWaitMs: this.lockWaitMs });
      return { durationMs: r.durationMs };
    } catch (e) {
      throw mapError(e);
    }
  }

  async read(): Promise<KernelView> {
    try {
      return await this.addon.read({ lockWaitMs: this.lockWaitMs });
    } catch (e) {
      throw mapError(e);
    }
  }

  async render(tx: Transaction): Promise<string> {
    return renderRestore(tx, await this.read());
  }
}
