/**
 * Who may have written the files iptlb trusts. As ssh and sudo do for their configuration, the state
 * file, its lock and every directory above them must be owned by root or by the user running iptlb,
 * and not writable by anyone else (a directory writable by others is accepted only with the sticky
 * bit, as /tmp: then nobody can replace another user's file in it). Otherwise another local user
 * could plant the rules root applies, or hold the lock to block root's changes.
 */
import { lstatSync, realpathSync, type Stats } from 'node:fs';
import * as path from 'node:path';
import { IptlbError } from '../model/errors.js';

const S_IWGRP = 0o020;
const S_IWOTH = 0o002;
const S_ISVTX = 0o1000;

function euid(): number {
  return process.geteuid?.() ?? 0;
}

function ownerName(uid: number): string {
  return `uid ${uid}`;
}

/** Why `st` (of `what` at `p`) may not be trusted; null when it may. */
export function untrusted(p: string, st: Pick<Stats, 'uid' | 'mode'>, what: string, isDir: boolean): string | null {
  const me = euid();
  if (st.uid !== 0 && st.uid !== me)
    return `${what} ${p} is owned by ${ownerName(st.uid)}, another user; refusing to use it (it must belong to root${me !== 0 ? ` or uid ${me}` : ''})`;
  const writable = (st.mode & (S_IWGRP | S_IWOTH)) !== 0;
  if (writable && !(isDir && (st.mode & S_ISVTX) !== 0)) {
    const who = (st.mode & S_IWOTH) !== 0 ? 'anyone' : 'its group';
    return `${what} ${p} is writable by ${who} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})${isDir ? ' without the sticky bit' : ''}; refusing to use it (chmod go-w ${p})`;
  }
  return null;
}

/** Throws ESTATE when `st` may not be trusted. */
export function checkTrusted(p: string, st: Pick<Stats, 'uid' | 'mode'>, what: string, isDir = false): void {
  const why = untrusted(p, st, what, isDir);
  if (why) throw new IptlbError('ESTATE', why);
}

/**
 * Checks the directory holding `file` and each directory above it (after resolving symbolic links
 * of the directories, as they are followed on the way to the file). The directory must exist.
 */
export function checkDirChain(file: string): void {
  // Synchronous: a handful of cheap system calls on every transaction, not worth a thread-pool trip each.
  let dir = realpathSync.native(path.dirname(file));
  for (;;) {
    const st = lstatSync(dir);
    checkTrusted(dir, st, 'directory', true);
    const up = path.dirname(dir);
    if (up === dir) return;
    dir = up;
  }
}

/** One line for a failed file-system call on `p` (what it was doing), by errno code. */
export function fsFailure(e: unknown, doing: string, p: string): IptlbError {
  const err = e as NodeJS.ErrnoException;
  if (e instanceof IptlbError) return e;
  const reasons: Record<string, string> = {
    EROFS: 'the file system is read-only',
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    ENOTDIR: 'a component of the path is not a directory',
    EEXIST: 'a component of the path exists and is not a directory',
    ENAMETOOLONG: 'the path is too long',
    ENOENT: 'a directory of the path does not exist and cannot be created there',
    ELOOP: 'too many symbolic links, or a symbolic link where none is allowed',
    ENOSPC: 'no space left on the device',
    EDQUOT: 'disk quota exceeded',
    EISDIR: 'it is a directory',
    EINVAL: 'invalid path for this file system',
    ENXIO: 'no such device',
  };
  const code = err?.code ?? '';
  const why = reasons[code] ?? (err?.message ? err.message.split('\n')[0] : String(e));
  return new IptlbError(
    code === 'EACCES' || code === 'EPERM' ? 'EPERM' : 'ESTATE',
    `cannot ${doing} ${p}: ${why}${code ? ` (${code})` : ''}`,
    { cause: e },
  );
}
