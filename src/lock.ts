/**
 * The inter-process lock that serialises iptlb invocations sharing a state file. It is an flock(2)
 * on `<state file>.lock`, so the kernel drops it when its holder dies (even by SIGKILL). Taken through
 * the native addon when it is loaded, otherwise through a util-linux `flock` child process whose
 * stdin is our pipe: when we exit, it sees EOF and lets go.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { IptlbError } from './errors.js';
import { loadAddon } from './native/addon.js';
import { ensureStateDir } from './state.js';

export interface HeldLock {
  release(): void;
}

export const DEFAULT_LOCK_WAIT_MS = 10_000;

/**
 * Descriptors of the state-file locks this process holds (native locks only). Every child the spawn
 * executors start gets a copy (see executors/spawn.ts), so a lock outlives a holder killed while its
 * `iptables-legacy-restore` or `nft -f` child is still committing: the next iptlb waits for that
 * child instead of planning against a kernel about to change under it.
 */
const heldFds = new Set<number>();
export function inheritedLockFds(): number[] {
  return [...heldFds];
}

/** Refuses a lock path that is a symlink or not a regular file; the locker creates it when absent. */
async function checkLockPath(lockPath: string): Promise<void> {
  const st = await fsp.lstat(lockPath).catch(() => null);
  if (st && !st.isFile()) {
    throw new IptlbError('ESTATE', `lock file ${lockPath} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a regular file'}; refusing to use it`);
  }
}

function lockTimeout(lockPath: string, waitMs: number): IptlbError {
  return new IptlbError('ELOCK', `another iptlb holds ${lockPath}; gave up after ${waitMs} ms`);
}

export async function lockStateFile(statePath: string, waitMs = DEFAULT_LOCK_WAIT_MS): Promise<HeldLock> {
  const lockPath = `${statePath}.lock`;
  await ensureStateDir(statePath);
  await checkLockPath(lockPath);
  const loaded = loadAddon('core');
  if (loaded.ok) {
    try {
      const lock = await loaded.addon.flock(lockPath, waitMs);
      const fd = lock.fd;
      if (fd >= 0) heldFds.add(fd);
      return {
        release() {
          heldFds.delete(fd);
          lock.release();
        },
      };
    } catch (e) {
      const err = e as { code?: string; message?: string };
      if (err.code === 'ELOCK') throw lockTimeout(lockPath, waitMs);
      throw new IptlbError('ELOCK', `cannot lock ${lockPath}: ${err.message}`);
    }
  }
  return flockChild(lockPath, waitMs);
}

function flockChild(lockPath: string, waitMs: number): Promise<HeldLock> {
  return new Promise((resolve, reject) => {
    const seconds = Math.max(0.001, waitMs / 1000).toFixed(3);
    const child = spawn('flock', ['--exclusive', '--wait', seconds, lockPath, '-c', 'echo locked; exec cat >/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let settled = false;
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      out += d;
      if (!settled && out.includes('locked')) {
        settled = true;
        child.stdout.destroy();
        child.unref();
        (child.stdin as unknown as { unref?: () => void }).unref?.();
        let released = false;
        resolve({
          release() {
            if (released) return;
            released = true;
            child.stdin.end();
          },
        });
      }
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => {
      if (settled) return;
      settled = true;
      reject(new IptlbError('ELOCK', `cannot lock ${lockPath}: flock(1) failed to start (${e.message}); install util-linux or build the native addon`));
    });
    child.on('exit', (code) => {
      if (settled) return;
      settled = true;
      reject(code === 1 ? lockTimeout(lockPath, waitMs) : new IptlbError('ELOCK', `cannot lock ${lockPath}: ${err.trim() || `flock exited ${code}`}`));
    });
  });
}
