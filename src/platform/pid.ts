import { existsSync, readFileSync } from 'node:fs';

/**
 * Whether process `pid` runs: it exists (signal 0; EPERM means it exists but is another user's) and
 * is not a zombie. A writer that died and was not yet reaped by its parent (a supervisor that waits
 * late) still answers signal 0, but holds nothing any more.
 */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return !exited(pid);
}

/** Whether `/proc/<pid>/stat` says the process has exited (Z: a zombie, X: being reaped). */
function exited(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch (e) {
    // Gone between the signal and the read; without /proc, trust the signal.
    return (e as NodeJS.ErrnoException).code === 'ENOENT' && existsSync('/proc/self/stat');
  }
  // The state follows the command name, which may hold spaces and parentheses.
  const state = stat.charAt(stat.lastIndexOf(')') + 2);
  return state === 'Z' || state === 'X';
}

let bootId: string | undefined;

/**
 * What tells process `pid` apart from a later one given the same number: this boot's id and the
 * process's start time (`/proc/<pid>/stat`, field 22). Undefined when it cannot be read (no such
 * process, no /proc).
 */
export function pidIdentity(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // Fields after the command name (which may hold spaces and parentheses): state is field 3.
    const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    if (!start || !/^[0-9]+$/.test(start)) return undefined;
    bootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim();
    return `${bootId}:${start}`;
  } catch {
    return undefined;
  }
}
