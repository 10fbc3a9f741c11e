/**
 * The inter-process lock that serialises iptlb invocations sharing a state file. It is an flock(2)
 * on `<state file>.lock`, so the kernel drops it when its holder dies (even by SIGKILL). Taken through
 * the native addon when it is loaded, otherwise through a util-linux `flock` child process whose
 * stdin is our pipe: when we exit, it sees EOF and lets go.
 */
import { pidAlive } from './pid.js';
import { childProcess } from './builtins.js';
import { existsSync, fstatSync, futimesSync, lstatSync, readdirSync, statSync, utimesSync, type Stats } from 'node:fs';
import * as fsp from './fsp.js';
import * as path from 'node:path';
import { checkDirChain, checkTrusted, fsFailure } from './fsafety.js';
import { IptlbError } from '../model/errors.js';
import { loadAddon } from './addon.js';
import { ensureStateDir } from '../core/state.js';
import { heldLockFds } from './held-fds.js';

export interface HeldLock {
  release(): void;
  /**
   * Whether the lock file's path still names the file this lock holds (one lstat, no more): false once
   * the file was removed or another file renamed over it, when a newcomer locks the file now at the
   * path at once, whatever this holder holds. Absent where that cannot be told (the flock(1) fallback).
   */
  stillAtPath?(): boolean;
  /**
   * No lock was taken: the state file's directory is on a file system mounted read-only here (see
   * {@link lockStateFile}'s `readOnly`), so the state file cannot be written by this process.
   */
  readonly unlocked?: true;
}

/** Whether `e` is a failure to create or open a file because the file system is read-only (EROFS). */
export function onReadOnlyFs(e: unknown): boolean {
  return e instanceof IptlbError && (e.cause as NodeJS.ErrnoException | undefined)?.code === 'EROFS';
}

export const DEFAULT_LOCK_WAIT_MS = 10_000;

/**
 * Refuses a lock path that is a symlink, not a regular file, or that another user owns or could replace; the locker
 * creates it when absent.
 */
function checkLockPath(lockPath: string): void {
  // Synchronous: between the queue lock and the lock, no trip through the thread pool (a free lock is
  // then taken without one too, see flockFile).
  let st: Stats | null;
  try {
    st = lstatSync(lockPath);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw fsFailure(e, 'open the lock file', lockPath);
    st = null;
  }
  if (st && !st.isFile()) {
    throw new IptlbError(
      'ESTATE',
      `lock file ${lockPath} is ${st.isSymbolicLink() ? 'a symbolic link' : st.isDirectory() ? 'a directory' : 'not a regular file'}; refusing to use it`,
    );
  }
  if (st) checkTrusted(lockPath, st, 'lock file');
}

function lockTimeout(lockPath: string, waitMs: number): IptlbError {
  return new IptlbError('ELOCK', `another iptlb holds ${lockPath}; gave up after ${waitMs} ms`, { errno: EWOULDBLOCK });
}

/** errno of a lock that was not free in time (the addon's poll loop ran out). */
const EWOULDBLOCK = 11;

/**
 * This process's turns at each lock file (by resolved path): present while one of its takers holds
 * or waits for the file's flock, with the takers that wait behind it, in order. Several handles of
 * one process on one state file so queue here, behind one wait in the kernel, and get the lock in
 * call order. (Each native wait used to hold a libuv pool thread, and with a waiter per handle the
 * pool was full; the addon now waits on a thread of its own per wait, and takes a free lock at once.)
 */
const turns = new Map<string, Array<() => void>>();

/**
 * Takes this process's turn at `key`, waiting at most `waitMs` (FIFO); resolves to its release, or to
 * undefined when another taker of this process kept it for the whole wait.
 */
function processTurn(key: string, waitMs: number): Promise<(() => void) | undefined> {
  const release = (): (() => void) => {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = turns.get(key)?.shift();
      if (next) next();
      else turns.delete(key);
    };
  };
  const queue = turns.get(key);
  if (!queue) {
    turns.set(key, []);
    return Promise.resolve(release());
  }
  if (waitMs <= 0) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    const grant = (): void => {
      clearTimeout(timer);
      resolve(release());
    };
    queue.push(grant);
    const timer = setTimeout(() => {
      const i = queue.indexOf(grant);
      if (i >= 0) queue.splice(i, 1);
      resolve(undefined);
    }, waitMs);
  });
}

/**
 * Takes one flock on `lockPath`, waiting at most `waitMs`: first this process's turn at the file (see
 * {@link turns}), then the flock itself, and the turn is kept until the lock is released. A lock
 * file that cannot be opened (a read-only file system, permissions, a path in /proc) is reported as
 * such, at once when no other taker of this process has the file: only a lock held by someone else
 * for the whole wait is a timeout.
 */
async function flockOne(
  lockPath: string,
  waitMs: number,
  reportAs: string,
  totalMs: number,
  inherit = true,
): Promise<HeldLock & { fd: number }> {
  checkLockPath(lockPath);
  const deadline = Date.now() + waitMs;
  const turn = await processTurn(path.resolve(lockPath), waitMs);
  if (!turn) throw lockTimeout(reportAs, totalMs);
  let held: (HeldLock & { fd: number }) | undefined;
  try {
    // The file locked is no longer the one at the path (removed, or replaced, while this taker opened or
    // waited for it): its lock excludes nobody who opens the path now, so the file at the path is locked
    // instead, within the same wait (and a few tries more where there is no wait, or none left).
    for (let tries = 0; ; tries++) {
      held = await flockFile(lockPath, Math.max(0, deadline - Date.now()), reportAs, totalMs, inherit);
      if (held) break;
      if (tries >= STALE_TRIES && Date.now() >= deadline) throw lockTimeout(reportAs, totalMs);
      checkLockPath(lockPath);
    }
  } catch (e) {
    turn();
    throw e;
  }
  const h = held;
  return {
    fd: h.fd,
    ...(h.stillAtPath ? { stillAtPath: h.stillAtPath } : {}),
    release() {
      h.release();
      turn();
    },
  };
}

/** How many times a lock file found replaced is locked again once the wait is spent (see {@link flockOne}). */
const STALE_TRIES = 3;

/**
 * Whether `lockPath` names the file `held` (the held descriptor's fstat): the same device and inode,
 * so still linked there. One lstat (never through a symbolic link: a link there is not the file).
 */
function namesFile(lockPath: string, held: { dev: number; ino: number }): boolean {
  const st = lstatSync(lockPath, { throwIfNoEntry: false });
  return st !== undefined && st.dev === held.dev && st.ino === held.ino;
}

/**
 * {@link flockOne} without the turn: the flock itself, natively or through flock(1). With `inherit`,
 * the children the spawn executors start hold it too ({@link heldLockFds}). Undefined, nothing
 * held, when the file locked is not (or no longer) the one at `lockPath` (see {@link namesFile}).
 */
async function flockFile(
  lockPath: string,
  waitMs: number,
  reportAs: string,
  totalMs: number,
  inherit = true,
): Promise<(HeldLock & { fd: number }) | undefined> {
  const loaded = loadAddon('core');
  if (loaded.ok) {
    let lock;
    try {
      lock = await loaded.addon.flock(lockPath, waitMs);
    } catch (e) {
      const err = e as { code?: string; message?: string; errno?: number };
      if (err.errno === EWOULDBLOCK) throw lockTimeout(reportAs, totalMs);
      if (typeof err.errno === 'number' && err.errno > 0) {
        const code = errnoCode(err.errno);
        throw fsFailure(Object.assign(new Error(err.message ?? ''), { code }), 'open the lock file', lockPath);
      }
      throw new IptlbError('ELOCK', `cannot lock ${lockPath}: ${err.message}`);
    }
    const fd = lock.fd;
    let id: { dev: number; ino: number } | undefined;
    // What was locked is what was checked: the descriptor's own file (no race with a rename in between).
    // And the path must still name it: a file removed or replaced while it was opened or waited for is
    // locked by nobody else, but a newcomer locks the file now at the path. (The same fstat, and one lstat.)
    try {
      if (fd >= 0) {
        const st = fstatSync(fd);
        if (st.nlink === 0 || !namesFile(lockPath, st)) {
          lock.release();
          return undefined;
        }
        checkTrusted(lockPath, st, 'lock file');
        id = { dev: st.dev, ino: st.ino };
      }
    } catch (e) {
      lock.release();
      throw e;
    }
    if (fd >= 0 && inherit) heldLockFds.add(fd);
    const held = id;
    return {
      fd,
      ...(held ? { stillAtPath: () => namesFile(lockPath, held) } : {}),
      release() {
        heldLockFds.delete(fd);
        lock.release();
      },
    };
  }
  const child = await flockChild(lockPath, waitMs, reportAs, totalMs);
  if (!childHoldsPath(child.pid, lockPath)) {
    child.release();
    return undefined;
  }
  return { release: child.release, fd: -1 };
}

/**
 * Whether the flock(1) process `pid` holds the file now at `lockPath` open (its lock descriptor: it
 * has no other file open but its pipes), as {@link namesFile} asks of a native lock. Read through
 * /proc: a readdir and an lstat of the path, and a stat per descriptor it has past its standard three.
 * Where /proc cannot be read (not mounted, another user's process), it cannot be told: taken as held.
 */
function childHoldsPath(pid: number | undefined, lockPath: string): boolean {
  if (pid === undefined) return true;
  const dir = `/proc/${pid}/fd`;
  let fds: string[];
  try {
    fds = readdirSync(dir);
  } catch {
    return true;
  }
  const at = lstatSync(lockPath, { throwIfNoEntry: false });
  if (!at) return false;
  for (const n of fds) {
    if (n === '0' || n === '1' || n === '2') continue;
    const st = statSync(`${dir}/${n}`, { throwIfNoEntry: false });
    if (st && st.dev === at.dev && st.ino === at.ino) return true;
  }
  return false;
}

const ERRNO_CODES: Record<number, string> = {
  1: 'EPERM',
  2: 'ENOENT',
  13: 'EACCES',
  17: 'EEXIST',
  20: 'ENOTDIR',
  21: 'EISDIR',
  22: 'EINVAL',
  28: 'ENOSPC',
  30: 'EROFS',
  36: 'ENAMETOOLONG',
  40: 'ELOOP',
  6: 'ENXIO',
  122: 'EDQUOT',
};
function errnoCode(n: number): string {
  return ERRNO_CODES[n] ?? `errno ${n}`;
}

/** The longest a waiter waits while the lock keeps changing hands: this many times its wait. */
export const MAX_WAIT_FACTOR = 6;

/** The lock file's modification time (stamped by each holder), '' when it cannot be read. */
function lockMark(lockPath: string): string {
  try {
    return String(statSync(lockPath, { bigint: true }).mtimeNs);
  } catch {
    return '';
  }
}

/**
 * `file` itself when its directory exists, else a path in the deepest directory above it that does
 * (for {@link checkDirChain} before anything is created).
 */
function existingPart(file: string): string {
  let dir = path.dirname(file);
  while (!existsSync(dir) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return path.join(dir, path.basename(file));
}

/** State files whose stale temporary files this process has already looked for. */
const swept = new Set<string>();

/**
 * Checks the directories of `statePath` and creates the missing ones (0700). The directories that
 * exist are checked before any is created: a refused run leaves nothing behind (`sudo iptlb` in a
 * user's directory made `local/` there, then refused it). With `readOnly`, false where the directory
 * cannot be created because the file system is read-only; else true.
 */
async function prepareStateDir(statePath: string, readOnly: boolean): Promise<boolean> {
  const existing = existingPart(statePath);
  try {
    checkDirChain(existing);
  } catch (e) {
    throw fsFailure(e, 'check the directories of the state file', statePath);
  }
  if (existing === statePath) return true;
  try {
    await ensureStateDir(statePath);
  } catch (e) {
    const err = fsFailure(e, 'create the directory of the state file', statePath);
    if (readOnly && onReadOnlyFs(err)) return false;
    throw err;
  }
  try {
    checkDirChain(statePath);
  } catch (e) {
    throw fsFailure(e, 'check the directories of the state file', statePath);
  }
  return true;
}

/**
 * Takes the state-file lock, fairly: a waiter first takes the queue lock `<state file>.lock.queue`
 * and holds it while it waits for the lock itself, and every taker goes through the queue lock. So a
 * process that releases the lock and at once wants it again (an API instance doing one group commit
 * after another) queues behind a waiter that was there first instead of winning every race. Then
 * the state file's directory, the lock file and every directory above them are checked (see
 * fsafety.ts), and the first time in this process, stale temporary files of killed writers are removed.
 */
export async function lockStateFile(
  statePath: string,
  waitMs = DEFAULT_LOCK_WAIT_MS,
  log?: (line: string) => void,
  opts: {
    /**
     * The caller writes nothing to the state file (or refuses to, when it finds the lock
     * {@link HeldLock.unlocked}): where the lock file cannot be created or opened because the file
     * system is read-only (a boot-time restore from a read-only root), nothing is locked and the
     * lock returned is `unlocked` (the caller says so). Nobody writes the state file there either.
     */
    readOnly?: boolean;
  } = {},
): Promise<HeldLock> {
  const lockPath = `${statePath}.lock`;
  const unlocked: HeldLock = { unlocked: true, release() {} };
  if (!(await prepareStateDir(statePath, !!opts.readOnly))) return unlocked;
  // The wait measures a lack of progress: while the lock keeps changing hands (each holder stamps
  // the lock file's time, see below) a waiter queued behind many others waits on, up to
  // MAX_WAIT_FACTOR times the wait; a holder that keeps it for the whole wait times it out.
  const started = Date.now();
  let mark = lockMark(lockPath);
  let held: HeldLock & { fd: number };
  for (;;) {
    const deadline = Date.now() + waitMs;
    try {
      const queue = await flockOne(`${lockPath}.queue`, waitMs, lockPath, waitMs);
      try {
        held = await flockOne(lockPath, Math.max(0, deadline - Date.now()), lockPath, waitMs);
      } finally {
        queue.release();
      }
      break;
    } catch (e) {
      if (opts.readOnly && onReadOnlyFs(e)) return unlocked;
      if (!(e instanceof IptlbError && e.code === 'ELOCK' && e.errno === EWOULDBLOCK)) throw e;
      const now = lockMark(lockPath);
      const waited = Date.now() - started;
      if (now === mark || waited + waitMs > MAX_WAIT_FACTOR * waitMs) {
        throw waited > waitMs * 1.5
          ? new IptlbError(
              'ELOCK',
              `${lockPath} stayed busy: gave up after ${waited} ms of waiting behind other iptlb processes`,
              { errno: EWOULDBLOCK },
            )
          : e;
      }
      mark = now;
    }
  }
  // Progress, for the waiters: the lock changed hands.
  try {
    const t = new Date();
    if (held.fd >= 0) futimesSync(held.fd, t, t);
    else utimesSync(lockPath, t, t);
  } catch {
    /* a lock file we may not stamp only costs waiters their patience */
  }
  if (!swept.has(statePath)) {
    swept.add(statePath);
    await removeStaleTemps(statePath, log).catch(() => {});
  }
  return held;
}

/**
 * Takes an flock on `<statePath><suffix>` beside the state file without waiting, held until released
 * and not by the children this process spawns; undefined when another holder has it (another
 * process, or another taker of this one). The directories are checked and created first, and the
 * lock file checked, as {@link lockStateFile} does. Where the file system is read-only (nothing can be
 * written beside the state file there), an `unlocked` lock.
 */
export async function tryLockBeside(statePath: string, suffix: string): Promise<HeldLock | undefined> {
  const unlocked: HeldLock = { unlocked: true, release() {} };
  if (!(await prepareStateDir(statePath, true))) return unlocked;
  try {
    return await flockOne(`${statePath}${suffix}`, 0, `${statePath}${suffix}`, 0, false);
  } catch (e) {
    if (e instanceof IptlbError && e.code === 'ELOCK' && e.errno === EWOULDBLOCK) return undefined;
    if (onReadOnlyFs(e)) return unlocked;
    throw e;
  }
}

/**
 * Whether another process waits for the state-file lock of `statePath` (it holds the queue lock while
 * it waits: see {@link lockStateFile}), asked without waiting and without a trip through the thread
 * pool; undefined when this process cannot tell (no native addon, or one built without `flockBusy`).
 */
export function lockWaiters(statePath: string): boolean | undefined {
  const loaded = loadAddon('core');
  if (!loaded.ok || typeof loaded.addon.flockBusy !== 'function') return undefined;
  return loaded.addon.flockBusy(`${statePath}.lock.queue`);
}

/** A temporary file {@link writeState} makes: `.<state file name>.tmp-<pid>-<random>`. */
export function tempPattern(statePath: string): RegExp {
  const base = path.basename(statePath).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^\\.${base}\\.tmp-([1-9][0-9]{0,9})-[a-z0-9]{1,8}$`);
}

/** How old a temporary file must be before it is removed even though a process of its pid is alive (pid reuse). */
export const STALE_TEMP_AGE_MS = 60_000;

/**
 * Removes the temporary files a killed writer left beside the state file. Called with the lock
 * held (every writer holds it while its temporary file exists): only regular files named as ours,
 * and only when their writer's pid is dead or the file is older than {@link STALE_TEMP_AGE_MS}.
 */
export async function removeStaleTemps(
  statePath: string,
  log?: (line: string) => void,
  now = Date.now(),
): Promise<string[]> {
  const dir = path.dirname(statePath);
  const re = tempPattern(statePath);
  const removed: string[] = [];
  for (const name of await fsp.readdir(dir)) {
    const m = re.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    const p = path.join(dir, name);
    const st = await fsp.lstat(p).catch(() => null);
    if (!st || !st.isFile()) continue;
    if (pid === process.pid) continue;
    if (pidAlive(pid) && now - st.mtimeMs < STALE_TEMP_AGE_MS) continue;
    await fsp.unlink(p).then(
      () => removed.push(p),
      () => {},
    );
  }
  if (removed.length)
    log?.(`removed ${removed.length} temporary file(s) left by killed writers: ${removed.join(', ')}`);
  return removed;
}

function flockChild(
  lockPath: string,
  waitMs: number,
  reportAs: string,
  totalMs: number,
): Promise<HeldLock & { pid: number | undefined }> {
  return new Promise((resolve, reject) => {
    const seconds = Math.max(0.001, waitMs / 1000).toFixed(3);
    const child = childProcess().spawn(
      'flock',
      ['--exclusive', '--wait', seconds, lockPath, '-c', 'echo locked; exec cat >/dev/null'],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
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
          pid: child.pid,
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
      reject(
        new IptlbError(
          'ELOCK',
          `cannot lock ${lockPath}: flock(1) failed to start (${e.message}); install util-linux or build the native addon`,
        ),
      );
    });
    child.on('exit', (code) => {
      if (settled) return;
      settled = true;
      reject(
        /Read-only file system/.test(err)
          ? fsFailure(Object.assign(new Error(err.trim()), { code: 'EROFS' }), 'open the lock file', lockPath)
          : code === 1
            ? lockTimeout(reportAs, totalMs)
            : new IptlbError('ELOCK', `cannot lock ${lockPath}: ${err.trim() || `flock exited ${code}`}`),
      );
    });
  });
}
