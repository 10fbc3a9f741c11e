/**
 * The state files that changed this network namespace's NAT rules, so that one state file's `sync`
 * and `status` tell the profiles of another from leftovers of their own interrupted changes.
 *
 * One small file per state file in `/run/iptlb/state-files/<network namespace>/` (tmpfs: gone at a
 * reboot, as the rules are), holding the state file's absolute path. A state-file instance writes
 * its entry before its first commit (one read of the entry per process and state file when it is
 * there already); a reader drops an entry whose state file no longer exists. Best effort both ways:
 * a registry that cannot be written or read is no other state file, as before it existed.
 * `IPTLB_REGISTRY_DIR` (or the `stateRegistry` option) puts it elsewhere.
 */
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { journalPath } from './journal.js';

const DEFAULT_DIR = '/run/iptlb/state-files';

/** This process's network namespace, as the kernel names it (the inode of /proc/self/ns/net). */
function netnsId(): string | null {
  try {
    return String(statSync('/proc/self/ns/net').ino);
  } catch {
    return null;
  }
}

/**
 * The registry directory of this network namespace under `base` (default: env `IPTLB_REGISTRY_DIR`,
 * else /run/iptlb/state-files), or null when the namespace cannot be named.
 */
export function registryDir(base?: string): string | null {
  const ns = netnsId();
  return ns === null ? null : path.join(base ?? (process.env.IPTLB_REGISTRY_DIR || DEFAULT_DIR), ns);
}

/** An entry's file name: a 64-bit FNV-1a of the path, in hex (no crypto module for a one-shot CLI). */
function entryName(file: string): string {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(file, 'utf8')) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return `${h.toString(16).padStart(16, '0')}.path`;
}

const registered = new Set<string>();

/** Records `stateFile` (absolute) in the registry, once per process; errors are ignored. */
export function registerStateFile(stateFile: string, base?: string): string | undefined {
  // Asked before every commit: answered from memory after the first time (a process that moves to
  // another network namespace registers again only for another state file or registry).
  const key = `${base ?? ''}\0${stateFile}`;
  if (registered.has(key)) return;
  const dir = registryDir(base);
  if (dir === null) return;
  const entry = path.join(dir, entryName(stateFile));
  try {
    try {
      if (readFileSync(entry, 'utf8') === `${stateFile}\n`) {
        registered.add(key);
        return;
      }
    } catch {
      // absent: written below
    }
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = `${entry}.${process.pid}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, `${stateFile}\n`);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, entry);
    registered.add(key);
  } catch (e) {
    // A registry that cannot be written: this state file's profiles look orphaned to another's
    // status, and another's sync removes them. Not tried again by this process (it is asked before
    // every commit); the caller says so once.
    registered.add(key);
    const err = e as NodeJS.ErrnoException;
    return `cannot register ${stateFile} in ${dir} (${err.code ?? err.message})`;
  }
  return undefined;
}

/** A state file of the registry: its path, its entry, and whether it exists (its YAML or its journal). */
export interface Registered {
  file: string;
  entry: string;
  exists: boolean;
}

/**
 * The state files of the registry other than `stateFile` (compared by path and by identity: a link
 * to it is itself). One that does not exist may be another process's first change in flight (it
 * registers before its first commit and writes the file after it): see {@link dropEntry}.
 */
export function otherStateFiles(stateFile: string, base?: string): Registered[] {
  const dir = registryDir(base);
  if (dir === null) return [];
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.path'));
  } catch {
    return [];
  }
  let own: { dev: number; ino: number } | undefined;
  try {
    own = statSync(stateFile);
  } catch {
    own = undefined;
  }
  const out: Registered[] = [];
  for (const n of names) {
    const entry = path.join(dir, n);
    let file: string;
    try {
      file = readFileSync(entry, 'utf8').replace(/\n$/, '');
    } catch {
      continue;
    }
    if (!path.isAbsolute(file) || file === stateFile) continue;
    let st: { dev: number; ino: number } | undefined;
    try {
      st = statSync(file);
    } catch {
      // A state file is its YAML or its journal alone (a handle that has not folded yet).
      out.push({ file, entry, exists: existsSync(journalPath(file)) });
      continue;
    }
    if (own && st.dev === own.dev && st.ino === own.ino) continue;
    out.push({ file, entry, exists: true });
  }
  return out.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
}

/** Removes a registry entry (its state file is gone); errors are ignored. */
export function dropEntry(entry: string): void {
  try {
    unlinkSync(entry);
  } catch {
    // another reader removed it
  }
}
