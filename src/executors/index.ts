/**
 * Executor selection, at load time: `native` when the addon loads, else `spawn`, for the engine in
 * use. The choice and the reason are reported by `iptlb doctor`.
 */
import { IptlbError } from '../errors.js';
import { loadAddon } from '../native/addon.js';
import type { EngineName, Executor, ExecutorChoice } from '../types.js';
import { NativeExecutor } from './native.js';
import { NftNativeExecutor } from './nft-native.js';
import { NftSpawnExecutor } from './nft-spawn.js';
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

export function selectExecutor(
  choice: ExecutorChoice = parseExecutorChoice(process.env.IPTLB_EXECUTOR),
  opts: { lockWaitMs?: number } = {},
  engine: EngineName = 'legacy',
): ExecutorSelection {
  const spawned = (): Executor => (engine === 'nft' ? new NftSpawnExecutor() : new SpawnExecutor(opts));
  if (choice === 'spawn') return { executor: spawned(), reason: 'spawn executor requested' };
  const loaded = loadAddon(engine === 'nft' ? 'nft' : 'legacy');
  if (loaded.ok) {
    const executor = engine === 'nft' ? new NftNativeExecutor(loaded.addon) : new NativeExecutor(loaded.addon, opts);
    return { executor, reason: choice === 'native' ? 'native executor requested' : 'native addon loaded' };
  }
  if (choice === 'native') {
    throw new IptlbError('ENATIVE', `native executor unavailable: ${loaded.reason}: ${loaded.detail}; fix: ${loaded.fix}`);
  }
  return { executor: spawned(), reason: `native addon unavailable (${loaded.reason}: ${loaded.detail}); fix: ${loaded.fix}` };
}
