/**
 * The engines iptlb knows, one entry each: how to make its two executors, and the engine over one.
 * An engine is a folder under src/engines/ whose class implements {@link Engine}.
 */
import { selectExecutor, type ExecutorKinds } from './executors.js';
import { NativeExecutor } from './legacy/native.js';
import { SpawnExecutor } from './legacy/spawn.js';
import { NftNativeExecutor } from './nft/native.js';
import { NftSpawnExecutor } from './nft/spawn.js';
import type { EngineName, ExecutorChoice } from '../model/types.js';
import type { Executor } from './engine.js';
import type { LegacyExecutor } from './legacy/executor.js';
import type { NftExecutor } from './nft/executor.js';
import type { Engine } from './engine.js';
import { LegacyEngine } from './legacy/index.js';
import { NftEngine } from './nft/index.js';

/** Each engine: its executors, and the engine over one (`real`: an executor made here, not supplied). */
const ENGINES: Record<EngineName, ExecutorKinds & { over(executor: Executor, real: boolean): Engine }> = {
  legacy: {
    addonUse: 'legacy',
    native: (addon, opts) => new NativeExecutor(addon, opts),
    spawn: (opts) => new SpawnExecutor(opts),
    over: (executor, real) => new LegacyEngine(executor as LegacyExecutor, real),
  },
  nft: {
    native: (addon) => new NftNativeExecutor(addon),
    spawn: () => new NftSpawnExecutor(),
    addonUse: 'nft',
    over: (executor, real) => new NftEngine(executor as NftExecutor, real),
  },
};

/** Engine `name` over the executor `choice` selects for it, and why that executor. */
export function createEngine(
  name: EngineName,
  choice: ExecutorChoice,
  opts: { lockWaitMs?: number } = {},
): { engine: Engine; reason: string } {
  const s = selectExecutor(choice, opts, ENGINES[name]);
  return { engine: ENGINES[name].over(s.executor, true), reason: s.reason };
}

/** The engine over a given executor (an embedder's or a test's). */
export function engineOver(executor: Executor): Engine {
  return ENGINES[executor.engine].over(executor, false);
}
