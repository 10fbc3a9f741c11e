/**
 * Running the host's tools: finding an executable (PATH and the sbin directories) and running it with its
 * input on stdin, never through a shell.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { childProcess } from './builtins.js';
import { accessSync, constants as C } from 'node:fs';
import * as path from 'node:path';
import { inheritedLockFds } from './held-fds.js';

const SBIN = ['/usr/sbin', '/sbin', '/usr/local/sbin'];

/** Absolute path of an executable, looked up in PATH and the sbin directories; null when absent. */
export function findBinary(name: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SBIN];
  for (const d of dirs) {
    const p = path.join(d, name);
    try {
      accessSync(p, C.X_OK);
      return p;
    } catch {
      /* keep looking */
    }
  }
  return null;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function run(file: string, args: string[], input?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    // Held state-file locks go along (as fds 3…): a child that outlives us keeps them (see lock.ts).
    const child = childProcess().spawn(file, args, {
      stdio: ['pipe', 'pipe', 'pipe', ...inheritedLockFds()],
    }) as ChildProcessWithoutNullStreams;
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.on('error', () => {}); // EPIPE when the child died early; its stderr says why
    child.stdin.end(input ?? '');
  });
}
