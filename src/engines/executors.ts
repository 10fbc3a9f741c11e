/**
 * Executor selection, at load time: `native` when the addon loads, else `spawn`, for the engine in
 * use. The choice and the reason are reported by `iptlb doctor`.
 */
import { IptlbError } from '../model/errors.js';
import { loadAddon, type NativeAddon as Addon } from '../platform/addon.js';
import type { ExecutorChoice } from '../model/types.js';
import type { Executor } from './engine.js';

export interface ExecutorSelection {
  executor: Executor;
  /** Why this executor was chosen, in one line. */
  reason: string;
  /**
   * Set when the spawn executor stands in for an addon that is there but does not load (a damaged
   * file, another ABI): unlike an addon never built (said at install), nothing said so yet.
   */
  broken?: string;
}

export function parseExecutorChoice(value: string | undefined, field = 'executor'): ExecutorChoice {
  const v = (value ?? 'auto').toLowerCase();
  if (v === 'auto' || v === 'native' || v === 'spawn') return v;
  throw new IptlbError('EUSAGE', `${field}: ${JSON.stringify(value)} is not one of native, spawn, auto`, { field });
}

/** The executor asked for: `given` when set, else the environment's `IPTLB_EXECUTOR`, named as such when bad. */
export function executorChoiceOf(given: string | undefined): ExecutorChoice {
  return given !== undefined
    ? parseExecutorChoice(given)
    : parseExecutorChoice(process.env.IPTLB_EXECUTOR, 'IPTLB_EXECUTOR');
}

/** How an engine's two executors are made: over the loaded addon, or spawning the engine's tools. */
export interface ExecutorKinds {
  native(addon: Addon, opts: { lockWaitMs?: number }): Executor;
  spawn(opts: { lockWaitMs?: number }): Executor;
  /** The part of the addon the native executor needs (besides the core part). */
  addonUse: 'legacy' | 'nft';
}

/** The native executor when the addon loads (and serves the engine), else the spawn one; `choice` forces either. */
export function selectExecutor(
  choice: ExecutorChoice,
  opts: { lockWaitMs?: number },
  kinds: ExecutorKinds,
): ExecutorSelection {
  if (choice === 'spawn') return { executor: kinds.spawn(opts), reason: 'spawn executor requested' };
  const loaded = loadAddon(kinds.addonUse);
  if (loaded.ok)
    return {
      executor: kinds.native(loaded.addon, opts),
      reason: choice === 'native' ? 'native executor requested' : 'native addon loaded',
    };
  if (choice === 'native') {
    throw new IptlbError(
      'ENATIVE',
      `native executor unavailable: ${loaded.reason}: ${loaded.detail}; fix: ${loaded.fix}`,
    );
  }
  const reason = `native addon unavailable (${loaded.reason}: ${loaded.detail}); fix: ${loaded.fix}`;
  return {
    executor: kinds.spawn(opts),
    reason,
    ...(loaded.reason === 'load-failed' || loaded.reason === 'abi-mismatch' ? { broken: reason } : {}),
  };
}
