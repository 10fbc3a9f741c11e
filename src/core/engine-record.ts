/**
 * The engine record: `<state file>.engine`, one word (`legacy` or `nft`), written by `iptlb migrate`
 * under the state-file lock once every profile is installed in the engine it moves to. Writers check
 * it under the lock (one lstat when nothing changed) and follow the move; `auto` takes the recorded
 * engine without asking the kernel, which also keeps a migration across a reboot. See docs/engines.md.
 */
import { lstatSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import * as fsp from '../platform/fsp.js';
import { IptlbError } from '../model/errors.js';
import { fsFailure } from '../platform/fsafety.js';
import type { EngineName } from '../model/types.js';
import { fileVersionOf } from './state.js';

/** The record beside state file `statePath`. */
export function engineRecordOf(statePath: string): string {
  return `${statePath}.engine`;
}

/** The record's identity (changes whenever it is replaced or edited), null when there is none. One lstat. */
export function engineRecordVersion(file: string): string | null {
  // No exception for a missing record (the usual case): about 3 µs instead of 20.
  let st;
  try {
    st = lstatSync(file, { bigint: true, throwIfNoEntry: false });
  } catch (e) {
    // EACCES (a state directory only root may search, as the default one), ENOTDIR…: one line that
    // says which file, with code EPERM when it is a permission (doctor: the engine is not known).
    throw fsFailure(e, 'read the engine record', file);
  }
  return st === undefined ? null : fileVersionOf(st);
}

/** The recorded engine and the record's identity (read first), or `engine` undefined when there is no record. */
export function readEngineRecord(file: string): { version: string | null; engine?: EngineName } {
  const version = engineRecordVersion(file);
  if (version === null) return { version };
  const bad = (what: string): IptlbError =>
    new IptlbError(
      'ESTATE',
      `${file}: ${what}; it records the engine \`iptlb migrate\` moved the profiles to: run \`iptlb migrate --to legacy\` (or --to nft) to write it again`,
    );
  let text: string;
  try {
    if (!lstatSync(file).isFile()) throw bad('is not a regular file');
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof IptlbError) throw e;
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { version: null };
    throw bad(`cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const engine = text.trim();
  if (engine !== 'legacy' && engine !== 'nft') throw bad(`${JSON.stringify(text.slice(0, 40))} is not legacy or nft`);
  return { version, engine };
}

/** The record's text as it is (to put back), null when there is none. */
export function engineRecordText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/**
 * Writes the record atomically (see {@link writeBeside}), or removes it when `text` is null. Under the lock.
 */
export function writeEngineRecord(statePath: string, text: string | null): Promise<void> {
  return writeBeside(statePath, engineRecordOf(statePath), text);
}

/**
 * Writes `file`, beside state file `statePath`, atomically (a temporary file named as the state file's,
 * which a killed writer's cleanup removes, fsync, rename, directory fsync), or removes it (and fsyncs the
 * directory) when `text` is null; `sync` false: neither fsync.
 */
async function writeBeside(statePath: string, file: string, text: string | null, sync = true): Promise<void> {
  if (text === null) {
    await fsp.unlink(file).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
    if (sync) await fsp.syncDir(path.dirname(file));
  } else await fsp.replaceFile(file, (fh) => fh.writeFile(text, 'utf8'), { tmpName: path.basename(statePath), sync });
}

/**
 * The move marker: `<state file>.engine.moving`, written by `iptlb migrate` under the lock before its
 * first commit and removed once the engine it leaves is emptied. A migrate killed in between (or failed
 * without its undo) leaves it: the next change under the lock asks both engines whether iptlb's rules
 * are in each (a copy in the engine left may still take the traffic), says so while they are, and
 * removes the marker once they are not. One lstat per change otherwise.
 */
export function movingMarkerOf(statePath: string): string {
  return `${statePath}.engine.moving`;
}

/** Whether the move marker is there (one lstat; false when it cannot be read). */
export function movingMarkerExists(statePath: string): boolean {
  try {
    return lstatSync(movingMarkerOf(statePath), { throwIfNoEntry: false }) !== undefined;
  } catch {
    return false;
  }
}

/** Writes the move marker (`from to`, durable), or removes it when `move` is null. Under the lock. */
export function writeMovingMarker(statePath: string, move: { from: EngineName; to: EngineName } | null): Promise<void> {
  return writeBeside(statePath, movingMarkerOf(statePath), move && `${move.from} ${move.to}\n`);
}

/**
 * The nft move marker: `<state file>.nft-move`, written under the lock before the first transaction of a change the
 * nft engine commits in two (a profile moving to another dispatch set, scheduler, mode or address: see
 * docs/engines.md), and removed once the change is recorded in the state file. It holds the new versions of the
 * change's profiles, as the kernel was to hold them (JSON, one profile a line). A process killed in between (after
 * the first transaction, or after the second before its state write) leaves it, and the kernel holding a version of
 * those profiles the state file does not: the next change under the lock sees it (one lstat, only when the lock was
 * not kept since the last look) and has the engine look for them (see PlanContext.interrupted).
 */
export function nftMoveMarkerOf(statePath: string): string {
  return `${statePath}.nft-move`;
}

/** Whether the nft move marker is there (one lstat; false when it cannot be read). */
export function nftMoveMarkerExists(statePath: string): boolean {
  try {
    return lstatSync(nftMoveMarkerOf(statePath), { throwIfNoEntry: false }) !== undefined;
  } catch {
    return false;
  }
}

/** The marker's text for `profiles` (what {@link readNftMoveMarker} reads back). */
export function nftMoveMarkerText(profiles: Iterable<unknown>): string {
  let text = '';
  for (const p of profiles) text += JSON.stringify(p) + '\n';
  return text;
}

/**
 * The profiles the nft move marker holds, as written (each line parsed; a line that does not parse, or a marker that
 * cannot be read, gives none of its profiles: the marker is still removed by the next recorded change).
 */
export function readNftMoveMarker(statePath: string): unknown[] {
  let text: string;
  try {
    const st = lstatSync(nftMoveMarkerOf(statePath), { throwIfNoEntry: false });
    // A planted symlink or a directory is not read (and a marker is a few lines).
    if (!st?.isFile() || st.size > 1 << 20) return [];
    text = readFileSync(nftMoveMarkerOf(statePath), 'utf8');
  } catch {
    return [];
  }
  const out: unknown[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // a torn line: skipped
    }
  }
  return out;
}

/**
 * Writes the nft move marker atomically ({@link writeBeside}), or removes it when `text` is null. Under the lock.
 * Without fsync: it describes what the kernel holds, which a crash of the machine empties too (a marker lost then
 * is not missed; one left, empty or not, costs the next change one read); a killed process loses nothing.
 */
export function writeNftMoveMarker(statePath: string, text: string | null): Promise<void> {
  return writeBeside(statePath, nftMoveMarkerOf(statePath), text, false);
}
