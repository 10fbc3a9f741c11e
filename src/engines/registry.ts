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
import type { Engine, HostCheck } from './engine.js';
import type { AddonPart } from '../platform/addon.js';
import type { Capability } from '../platform/caps.js';
import { LEGACY_CAPABILITIES } from './legacy/executor.js';
import { legacyHostChecks } from './legacy/host.js';
import { nftHostChecks } from './nft/host.js';
import { LegacyEngine } from './legacy/index.js';
import { NftEngine } from './nft/index.js';

interface EngineEntry extends ExecutorKinds {
  /** The engine over an executor (`real`: an executor made here, not supplied). */
  over(executor: Executor, real: boolean): Engine;
  /** The addon file its native executor needs beside iptlb_core.node. */
  addonPart: AddonPart;
  /** What it needs of the host (tools, kernel), for `iptlb doctor`. */
  hostChecks(): HostCheck[];
  /** The capabilities reading and changing its rules takes, with either executor. */
  capabilities: readonly Capability[];
}

/** Each engine: its executors, the engine over one, and what it needs. */
const ENGINES: Record<EngineName, EngineEntry> = {
  legacy: {
    addonUse: 'legacy',
    addonPart: 'xt',
    hostChecks: legacyHostChecks,
    capabilities: LEGACY_CAPABILITIES,
    native: (addon, opts) => new NativeExecutor(addon, opts),
    spawn: (opts) => new SpawnExecutor(opts),
    over: (executor, real) => new LegacyEngine(executor as LegacyExecutor, real),
  },
  nft: {
    native: (addon) => new NftNativeExecutor(addon),
    spawn: () => new NftSpawnExecutor(),
    addonUse: 'nft',
    addonPart: 'nft',
    hostChecks: nftHostChecks,
    // netlink only
    capabilities: ['CAP_NET_ADMIN'],
    over: (executor, real) => new NftEngine(executor as NftExecutor, real),
  },
};

/** Engine `name` over the executor `choice` selects for it, and why that executor. */
export function createEngine(
  name: EngineName,
  choice: ExecutorChoice,
  opts: { lockWaitMs?: number } = {},
): { engine: Engine; reason: string; broken?: string } {
  const s = selectExecutor(choice, opts, ENGINES[name]);
  return { engine: ENGINES[name].over(s.executor, true), reason: s.reason, ...(s.broken ? { broken: s.broken } : {}) };
}

/** The engine over a given executor (an embedder's or a test's). */
export function engineOver(executor: Executor): Engine {
  return ENGINES[executor.engine].over(executor, false);
}

/** The engines, in the order doctor reports them. */
export const ENGINE_NAMES = Object.keys(ENGINES) as EngineName[];

/** What engine `name` needs: its addon file, its host checks, its capabilities. */
export function engineNeeds(name: EngineName): {
  addonPart: AddonPart;
  hostChecks(): HostCheck[];
  capabilities: readonly Capability[];
} {
  return ENGINES[name];
}
