/**
 * Executor selection, at load time: `native` when the addon loads, else `spawn`. The choice and the
 * reason are reported by `iptlb doctor`.
 */
import { IptlbError } from '../errors.js';
import { loadAddon } from '../native/addon.js';
import type { Executor, ExecutorChoice } from '../types.js';
import { NativeExecutor } from './native.js';
import { SpawnExecutor } from './spawn.js';

export interface ExecutorSelection {
  executor: Executor;
  /** Why this executor was chosen, in one line. */
  reason: string;
}

export function parseExecutorChoice(value: string | undefined): ExecutorChoice {
  const v = (value ?? 'auto').toLowerCase();
  if (v === 'auto' || v === 'native' || v === 'spawn') return v;
  throw new IptlbError('EUSAGE', `executor: ${JSON.stringify(value)} is not one of native, spawn, auto`, { field: 'executor' });
}

export function selectExecutor(choice: ExecutorChoice = parseExecutorChoice(process.env.IPTLB_EXECUTOR), opts: { lockWaitMs?: number } = {}): ExecutorSelection {
  if (choice === 'spawn') return { executor: new SpawnExecutor(opts), reason: 'spawn executor requested' };
  const loaded = loadAddon();
  if (loaded.ok) {
    return { executor: new NativeExecutor(loaded.addon, opts), reason: choice === 'native' ? 'native executor requested' : 'native addon loaded' };
  }
  if (choice === 'native') {
    throw new IptlbError('ENATIVE', `native executor unavailable: ${loaded.reason}: ${loaded.detail}; fix: ${loaded.fix}`);
  }
  return { executor: new SpawnExecutor(opts), reason: `native addon unavailable (${loaded.reason}: ${loaded.detail}); fix: ${loaded.fix}` };
}
