/**
 * The one place that loads the native addon (build/Release/iptlb.node). Never throws: a missing or
 * broken addon is reported once, with the reason and the command that fixes it.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { KernelView, Transaction } from '../types.js';
import { packageRoot } from '../paths.js';

/** ABI of the addon this TypeScript expects (native/addon.cc exports the same number). */
export const EXPECTED_ABI = 1;

/** A held flock; `release()` is idempotent, and the lock also goes when the process dies. */
export interface FileLock {
  release(): void;
}

/** The addon's exports. */
export interface NativeAddon {
  readonly abiVersion: number;
  /** Commits a transaction in one libiptc handle under the xtables lock, on a worker thread. */
  commit(tx: Transaction, opts?: { lockWaitMs?: number }): Promise<{ durationMs: number; attempts: number }>;
  /** iptlb's chains and comment-owned hook rules of the nat table, with counters, read on a worker thread. */
  read(opts?: { lockWaitMs?: number }): Promise<KernelView>;
  /** An exclusive flock(2) on `path` (created 0600, symlinks refused), waiting at most `waitMs` on a worker thread. */
  flock(path: string, waitMs: number): Promise<FileLock>;
  info(): { libiptc: boolean; xtablesLockPath: string };
}

export type LoadResult =
  | { ok: true; addon: NativeAddon; path: string }
  | { ok: false; reason: 'not-built' | 'library-missing' | 'abi-mismatch' | 'load-failed'; detail: string; fix: string };

const BUILD_FIX = 'apt-get install -y libiptc-dev libxtables-dev pkg-config g++ make python3 && npm run build:addon';
let loaded: LoadResult | undefined;

export function addonPath(): string {
  return path.join(packageRoot(), 'build', 'Release', 'iptlb.node');
}

/** Loads the addon once and remembers the outcome. */
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
  if (!existsSync(file)) {
    return (loaded = { ok: false, reason: 'not-built', detail: `${file} does not exist`, fix: BUILD_FIX });
  }
  try {
    const addon = createRequire(file)(file) as NativeAddon;
    if (addon.abiVersion !== EXPECTED_ABI) {
      return (loaded = { ok: false, reason: 'abi-mismatch', detail: `addon ABI ${addon.abiVersion}, expected ${EXPECTED_ABI}`, fix: 'npm run build:addon' });
    }
    return (loaded = { ok: true, addon, path: file });
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0];
    if (/cannot open shared object file/.test(msg)) {
      return (loaded = { ok: false, reason: 'library-missing', detail: msg, fix: 'apt-get install -y libip4tc2 libxtables12 (or rebuild: npm run build:addon)' });
    }
    if (/NODE_MODULE_VERSION|compiled against a different Node\.js version|invalid ELF|wrong ELF class/.test(msg)) {
      return (loaded = { ok: false, reason: 'abi-mismatch', detail: msg, fix: 'npm run build:addon' });
    }
    return (loaded = { ok: false, reason: 'load-failed', detail: msg, fix: BUILD_FIX });
  }
}
