/**
 * The state files that changed this network namespace's NAT rules, so that one state file's `sync`
 * and `status` tell the profiles of another from leftovers of their own interrupted changes.
 *
 * One small file per state file in `/run/iptlb/state-files/<network namespace inode>/` (tmpfs: gone
 * at a reboot, as the rules are), holding the state file's absolute path. A state-file instance writes
 * its entry before its first commit (one read of the entry per process and state file when it is
 * there already); a reader drops an entry whose state file no longer exists. Best effort both ways:
 * a registry that cannot be written or read is no other state file, as before it existed.
 * `IPTLB_REGISTRY_DIR` (or the `stateRegistry` option) puts it elsewhere.
 *
 * The kernel gives a namespace's inode to a new namespace once the old one is gone, so a directory
 * can hold entries of a dead namespace whose state files still exist. The entry's name says whose it
 * is: `<hash of the path>.<namespace cookie>.path`, the cookie (SO_NETNS_COOKIE, through the core
 * addon) never being reused while the system runs. A reader with a cookie drops an entry of another
 * cookie (a dead namespace's) and keeps one without (`<hash>.path`: an older iptlb's, or a process's
 * without the addon or on a kernel before 5.14, whose namespace cannot be told); a reader without a
 * cookie takes every entry, so there a dead namespace's entries still count for the new one. The
 * directory stays keyed by the inode, the entry's content stays the path alone: older iptlb versions
 * and processes without a cookie share the directory and read every entry as before (a directory
 * split by cookie would hide each one's profiles from the other's sync, which would remove them).
 * A process that writes its entry (the first change of a state file in this namespace) drops the
 * entries of other cookies in the directory then, as a reader does: a namespace holds its inode until it
 * dies, so those are a dead namespace's. Directories of inodes no namespace holds now are not removed:
 * from user space (Linux 6.18, no listns(2), no nsfs file handles) a namespace cannot be proved gone by
 * its inode or cookie; a scan of /proc misses the references of sockets, descriptors in flight and
 * mount namespaces without a process, and of processes of other pid namespaces (docs/state-file.md).
 */
import {
  closeSync,
  existsSync,
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
import { IptlbError } from '../model/errors.js';
import { netnsCookie } from '../platform/addon.js';
import { mkdirsSync } from '../platform/fsp.js';

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
 * Refuses an `IPTLB_REGISTRY_DIR` that is not an absolute path (EUSAGE naming the variable), as the `stateRegistry`
 * option is refused: a relative one named another directory in each working directory, so two processes started
 * from different directories did not see each other's state files, and each one's sync removed the other's
 * profiles as orphans. Empty or unset: the default directory.
 */
export function checkRegistryEnv(): void {
  const v = process.env.IPTLB_REGISTRY_DIR;
  if (v && (!path.isAbsolute(v) || v.includes('\0')))
    throw new IptlbError('EUSAGE', `IPTLB_REGISTRY_DIR: must be an absolute directory path, got ${JSON.stringify(v)}`, {
      field: 'IPTLB_REGISTRY_DIR',
    });
}

/**
 * The registry directory of this network namespace under `base` (default: env `IPTLB_REGISTRY_DIR`,
 * else /run/iptlb/state-files), or null when the namespace cannot be named.
 */
export function registryDir(base?: string): string | null {
  const ns = netnsId();
  return ns === null ? null : path.join(base ?? (process.env.IPTLB_REGISTRY_DIR || DEFAULT_DIR), ns);
}

/**
 * A 64-bit FNV-1a of the path, in hex: the start of its entry's name (no crypto module for a one-shot
 * CLI).
 */
function pathHash(file: string): string {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(file, 'utf8')) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h.toString(16).padStart(16, '0');
}

/** An entry's file name: `<hash>.<cookie>.path`, or `<hash>.path` for a writer without a cookie. */
function entryName(file: string, cookie: string | null): string {
  return cookie === null ? `${pathHash(file)}.path` : `${pathHash(file)}.${cookie}.path`;
}

/** The namespace cookie in an entry's name: a string, null for none, undefined for no entry's name. */
function entryCookie(name: string): string | null | undefined {
  const m = /^[0-9a-f]{16}(?:\.([0-9]+))?\.path$/.exec(name);
  return m ? (m[1] ?? null) : undefined;
}

const registered = new Set<string>();

/**
 * Records `stateFile` (absolute) in the registry, once per process; errors are ignored. `cookie`: this
 * network namespace's when left out (tests give one, or null for none).
 */
export function registerStateFile(stateFile: string, base?: string, cookie?: string | null): string | undefined {
  // Asked before every commit: answered from memory after the first time (a process that moves to
  // another network namespace registers again only for another state file or registry).
  const key = `${base ?? ''}\0${cookie === undefined ? 'own' : (cookie ?? 'none')}\0${stateFile}`;
  if (registered.has(key)) return;
  if (cookie === undefined) cookie = netnsCookie(); // null without the addon or before Linux 5.14
  const dir = registryDir(base);
  if (dir === null) return;
  const entry = path.join(dir, entryName(stateFile, cookie));
  try {
    try {
      if (readFileSync(entry, 'utf8') === `${stateFile}\n`) {
        registered.add(key);
        return;
      }
    } catch {
      // absent: written below
    }
    mkdirsSync(dir, 0o700);
    const tmp = `${entry}.${process.pid}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, `${stateFile}\n`);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, entry);
    registered.add(key);
    // A new entry (the first change of this state file in this namespace): the directory's entries of other cookies
    // are a dead namespace's, the kernel having given its inode to this one (one namespace holds an inode at a time).
    if (cookie !== null) dropDead(dir, cookie);
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

/**
 * A state file of the registry: its path, its entries (one, or two when it was registered with and
 * without a namespace cookie), and whether it exists (its YAML or its journal).
 */
export interface Registered {
  file: string;
  entries: string[];
  exists: boolean;
}

/**
 * The state files of the registry other than `stateFile` (compared by path and by identity: a link
 * to it is itself), each once. One that does not exist may be another process's first change in
 * flight (it registers before its first commit and writes the file after it): see {@link dropEntry}.
 * With a `cookie` (this namespace's; tests give one, null for none), an entry of another cookie is a
 * namespace's that is gone (of the same inode): it is dropped, not listed.
 */
export function otherStateFiles(stateFile: string, base?: string, cookie: string | null = netnsCookie()): Registered[] {
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
  const byFile = new Map<string, Registered>();
  for (const n of names) {
    const entry = path.join(dir, n);
    if (cookie !== null) {
      const theirs = entryCookie(n);
      if (theirs !== undefined && theirs !== null && theirs !== cookie) {
        dropEntry(entry);
        continue;
      }
    }
    let file: string;
    try {
      file = readFileSync(entry, 'utf8').replace(/\n$/, '');
    } catch {
      continue;
    }
    if (!path.isAbsolute(file) || file === stateFile) continue;
    const known = byFile.get(file);
    if (known) {
      // One state file under two entries (one without a cookie, written by an older iptlb or a process
      // without the addon, and one with): listed once, and dropped as one.
      known.entries.push(entry);
      continue;
    }
    let st: { dev: number; ino: number } | undefined;
    try {
      st = statSync(file);
    } catch {
      // A state file is its YAML or its journal alone (a handle that has not folded yet).
      byFile.set(file, { file, entries: [entry], exists: existsSync(journalPath(file)) });
      continue;
    }
    if (own && st.dev === own.dev && st.ino === own.ino) continue;
    byFile.set(file, { file, entries: [entry], exists: true });
  }
  return [...byFile.values()].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
}

/**
 * Removes the entries of `dir` (this namespace's directory) that name another cookie than `cookie` (this namespace's):
 * their namespace had this inode and is gone, since a live namespace holds its inode until it dies and this one holds
 * it now. Entries without a cookie are kept (their namespace cannot be told). One readdir; errors are ignored.
 */
function dropDead(dir: string, cookie: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    const theirs = entryCookie(n);
    if (theirs !== undefined && theirs !== null && theirs !== cookie) dropEntry(path.join(dir, n));
  }
}

/** Removes registry entries (their state file is gone, or their namespace); errors are ignored. */
export function dropEntry(entries: string | readonly string[]): void {
  for (const entry of typeof entries === 'string' ? [entries] : entries) {
    try {
      unlinkSync(entry);
    } catch {
      // another reader removed it
    }
  }
}
