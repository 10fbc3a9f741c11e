import { readFileSync } from 'node:fs';

/** Whether process `pid` exists (signal 0; EPERM means it exists but is another user's). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
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
