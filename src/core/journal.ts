/**
 * The state file's journal: `<state file>.journal`, beside the YAML. A long-lived iptlb instance
 * records each change by appending one line to it and syncing it (O(change)), instead of rewriting
 * the whole YAML; the journal is folded into the YAML (written whole, atomically, as before) on a
 * schedule, at close and at exit, and by every writer that does not journal (the CLI).
 *
 * Format (text, one line each):
 *
 *     iptlb-journal 1 base=<dev>:<ino>:<size>:<mtime ns>      (or base=none: no YAML yet)
 *     <16 hex digits> {"set":{"name":{...profile...}},"del":["other"]}
 *
 * The header names the YAML version the records apply to; a journal whose base is not the YAML
 * on disk (the YAML was replaced since: by a fold that then died before it removed the journal,
 * or by a writer that does not know journals) is void. Each record carries the first 64 bits of
 * the SHA-256 of its JSON text; the first record that is incomplete or does not match ends the
 * journal (a writer killed in the middle of its append: its call had not returned). Records hold
 * whole profiles as the YAML spells them (`set`) and names (`del`), so replaying is idempotent.
 */
import { nodeCrypto } from '../platform/builtins.js';
import { constants as C, fstatSync, type BigIntStats } from 'node:fs';
import * as fsp from '../platform/fsp.js';
import * as path from 'node:path';
import type { Profile } from '../model/types.js';
import { IptlbError } from '../model/errors.js';
import { MAX_STATE_BYTES } from '../model/limits.js';

export const JOURNAL_SUFFIX = '.journal';
const MAGIC = 'iptlb-journal 1 base=';

/** The journal beside `stateFile`. */
export function journalPath(stateFile: string): string {
  return stateFile + JOURNAL_SUFFIX;
}

/** The raw mapping of a state file (profile name → its keys, as YAML types). */
export type RawState = Record<string, Record<string, unknown>>;

/** One change: profiles written whole, names deleted. */
export interface JournalRecord {
  set?: RawState;
  del?: string[];
}

/** Identity of a YAML version, as a journal's header names it: device, inode, size, modification time. */
export function baseIdentity(st: BigIntStats | null): string {
  return st ? `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}` : 'none';
}

/** A profile's keys as the YAML has them (what {@link serializeState} writes, as plain values). */
export function profileBody(p: Profile): Record<string, unknown> {
  const b: Record<string, unknown> = {};
  if (p.affinity !== undefined) b.affinity = p.affinity;
  b.destination = [...p.destination];
  if (p.health) b.health = { ...p.health };
  b.logEnabled = p.logEnabled;
  b.logLevel = p.logLevel;
  if (p.masquerade) b.masquerade = true;
  b.protocol = p.protocol;
  b.rulesBackend = p.rulesBackend;
  if (p.scheduler) b.scheduler = p.scheduler;
  b.source = p.source;
  if (p.weights) b.weights = { ...p.weights };
  return b;
}

function digest(json: string): string {
  return nodeCrypto().createHash('sha256').update(json).digest('hex').slice(0, 16);
}

/** One record's line. */
export function encodeRecord(rec: JournalRecord): string {
  const json = JSON.stringify(rec);
  return `${digest(json)} ${json}\n`;
}

/** The header line of a journal over the YAML version `base`. */
export function journalHeader(base: string): string {
  return `${MAGIC}${base}\n`;
}

/** What a journal's text holds for the YAML version `base`. */
export interface DecodedJournal {
  /** The header is complete and names `base`: the records apply. */
  valid: boolean;
  records: JournalRecord[];
  /** Bytes up to the end of the last good record (0 when not valid). */
  validEnd: number;
  /**
   * Intact records after the first bad one (0: none). A killed append leaves its torn record last,
   * and the next append cuts it first: a good record after a bad one means the journal was damaged
   * (or edited), not cut short, and reading its good start would silently drop the changes after.
   */
  intactAfter: number;
}

function isRecord(v: unknown): v is JournalRecord {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const r = v as Record<string, unknown>;
  for (const k of Object.keys(r)) if (k !== 'set' && k !== 'del') return false;
  if (r.del !== undefined && (!Array.isArray(r.del) || r.del.some((n) => typeof n !== 'string'))) return false;
  if (r.set !== undefined) {
    if (r.set === null || typeof r.set !== 'object' || Array.isArray(r.set)) return false;
    for (const b of Object.values(r.set)) if (b === null || typeof b !== 'object' || Array.isArray(b)) return false;
  }
  return true;
}

/** Decodes a journal's text (see the module comment): the good records before the first bad one. */
export function decodeJournal(text: string, base: string): DecodedJournal {
  const nl = text.indexOf('\n');
  if (nl < 0 || text.slice(0, nl) !== `${MAGIC}${base}`)
    return { valid: false, records: [], validEnd: 0, intactAfter: 0 };
  const records: JournalRecord[] = [];
  let at = nl + 1;
  while (at < text.length) {
    const end = text.indexOf('\n', at);
    if (end < 0) break;
    const rec = decodeLine(text.slice(at, end));
    if (rec === null) break;
    records.push(rec);
    at = end + 1;
  }
  // What follows the first bad record: only a torn tail, unless a good record comes after it.
  let intactAfter = 0;
  for (let from = text.indexOf('\n', at) + 1; from > 0 && from < text.length;) {
    const end = text.indexOf('\n', from);
    if (end < 0) break;
    if (decodeLine(text.slice(from, end)) !== null) intactAfter++;
    from = end + 1;
  }
  return { valid: true, records, validEnd: Buffer.byteLength(text.slice(0, at)), intactAfter };
}

/** One record's line: the record, or null when its digest or shape is wrong. */
function decodeLine(line: string): JournalRecord | null {
  const json = line.slice(17);
  if (line.charCodeAt(16) !== 32 || digest(json) !== line.slice(0, 16)) return null;
  let rec: unknown;
  try {
    rec = JSON.parse(json);
  } catch {
    return null;
  }
  return isRecord(rec) ? rec : null;
}

/** Applies records in order to a raw mapping (a copy without prototype: a profile may be named `__proto__`). */
export function applyRecords(data: RawState, records: JournalRecord[]): RawState {
  const out: RawState = Object.create(null);
  for (const [k, v] of Object.entries(data)) out[k] = v;
  for (const r of records) {
    for (const n of r.del ?? []) delete out[n];
    for (const [n, b] of Object.entries(r.set ?? {})) out[n] = b;
  }
  return out;
}

/** Where this process left the journal after reading or appending: what the next append continues. */
export interface JournalAt {
  /** The YAML version it is over. */
  base: string;
  /** Bytes of good records (anything after them is a torn append and is cut before appending). */
  validEnd: number;
  /** Inode of the journal file: an append goes to this file only. */
  ino: bigint;
  /**
   * The journal kept open by the last append of this process (closed with {@link closeJournal}):
   * valid for the next append while the files' version is still the one that append left.
   */
  fh?: fsp.FileHandle;
}

async function syncDir(dir: string): Promise<void> {
  const dh = await fsp.open(dir, C.O_RDONLY | C.O_DIRECTORY);
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/**
 * Writes all of `buf`. A short write (a file system filling up, a file size limit) goes on with the
 * rest, so the next write says why; a write of nothing throws.
 */
async function writeWhole(fh: fsp.FileHandle, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length;) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    if (bytesWritten <= 0) throw new Error(`short write to the journal (${off} of ${buf.length} bytes)`);
    off += bytesWritten;
  }
}

/**
 * A journal longer than a reader accepts ({@link MAX_STATE_BYTES}) would make the state unreadable:
 * the append is refused (the caller undoes the change's kernel commit, as for any failed write).
 */
function checkJournalSize(file: string, size: number): void {
  if (size > MAX_STATE_BYTES)
    throw new IptlbError(
      'ESTATE',
      `state journal ${file}: would be ${size} bytes, more than ${MAX_STATE_BYTES} (64 MiB, the limit of a state file)`,
    );
}

/** Closes the descriptor an append kept open, if any. */
export function closeJournal(at: JournalAt | null | undefined): void {
  const fh = at?.fh;
  if (!fh) return;
  at.fh = undefined;
  fh.close().catch(() => {});
}

/**
 * Appends one record, durably (returns after the data is synced), and the journal's stat after it.
 * `at` is the journal this process read (or last appended to) under the state-file lock, its files
 * unchanged since (the caller compared their version), or null when there is no valid journal over
 * `base` (then a new one is created, replacing a void one). The caller holds the state-file lock.
 * The journal stays open in the returned {@link JournalAt} for the next append.
 */
export async function appendRecord(
  stateFile: string,
  base: string,
  at: JournalAt | null,
  rec: JournalRecord | Buffer,
): Promise<{ at: JournalAt; st: BigIntStats }> {
  const file = journalPath(stateFile);
  // A record, or its line already encoded (prepareAppend's, when its writer did not write it).
  const buf = Buffer.isBuffer(rec) ? rec : Buffer.from(encodeRecord(rec));
  checkJournalSize(file, (at && at.base === base ? at.validEnd : Buffer.byteLength(journalHeader(base))) + buf.length);
  if (at && at.base === base) {
    let fh = at.fh;
    at.fh = undefined;
    if (!fh) {
      try {
        fh = await fsp.open(file, C.O_WRONLY | C.O_APPEND | C.O_NOFOLLOW | C.O_DSYNC);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      if (fh) {
        const st = await fh.stat({ bigint: true }).catch(async (e) => {
          await fh!.close();
          throw e;
        });
        if (!st.isFile() || st.ino !== at.ino) {
          await fh.close();
          fh = undefined;
        } else if (st.size !== BigInt(at.validEnd)) {
          // A torn append of a killed writer after the good records: cut it, or it would hide this one.
          await fh.truncate(at.validEnd).catch(async (e) => {
            await fh!.close();
            throw e;
          });
        }
      }
    }
    if (fh) {
      try {
        // One trip through the thread pool, not three: the journal is open with O_DSYNC, so the
        // write returns once its data is synced (as write + fdatasync), and the stat reads the inode
        // on this thread. (Not the write on this thread: an append that grows the file may wait
        // there for the file system's journal commit, milliseconds on a busy disk.)
        await writeWhole(fh, buf);
        const st = fstatSync(fh.fd, { bigint: true });
        return { at: { base, validEnd: at.validEnd + buf.length, ino: at.ino, fh }, st };
      } catch (e) {
        await fh.close().catch(() => {});
        throw e;
      }
    }
  }
  // A new journal over `base`: any file there is void (another base, a torn header, replaced).
  await fsp.unlink(file).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
  const fh = await fsp.open(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_APPEND | C.O_NOFOLLOW | C.O_DSYNC, 0o600);
  const header = Buffer.from(journalHeader(base));
  const all = Buffer.concat([header, buf]);
  let st: BigIntStats;
  try {
    await writeWhole(fh, all);
    await fh.sync();
    st = await fh.stat({ bigint: true });
    // Its name must survive a crash too.
    await syncDir(path.dirname(file));
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
  return { at: { base, validEnd: all.length, ino: st.ino, fh }, st };
}

/** An append that the thread committing the change makes (see {@link prepareAppend}). */
export interface PreparedAppend {
  /** The open journal's descriptor (`O_APPEND | O_DSYNC`) and the record's line, for the writer. */
  fd: number;
  data: Buffer;
  /**
   * What the writer reported: the same result as {@link appendRecord}'s, or its error thrown (the
   * descriptor closed; the next append reopens the journal and cuts a torn record off).
   */
  finish(r: { written: number; error?: Error }): { at: JournalAt; st: BigIntStats };
}

/**
 * An append made by another thread: the native executor writes the record on its own thread right
 * after the kernel accepted the change (no hop back to this thread and out to the pool in between).
 * Only onto the journal this process holds open over `base` (what {@link appendRecord} appends to
 * without a check); null otherwise, and then the caller appends with appendRecord. The caller holds
 * the state-file lock, and the descriptor stays open until {@link PreparedAppend.finish}.
 */
export function prepareAppend(base: string, at: JournalAt | null, rec: JournalRecord): PreparedAppend | null {
  const fh = at?.fh;
  if (!at || !fh || at.base !== base) return null;
  const data = Buffer.from(encodeRecord(rec));
  // Too long: appendRecord, called instead, refuses it after the commit (then undone).
  if (at.validEnd + data.length > MAX_STATE_BYTES) return null;
  return {
    fd: fh.fd,
    data,
    finish(r) {
      try {
        if (at.fh !== fh) throw new Error('the journal was closed during the append');
        if (r.error) throw r.error;
        if (r.written !== data.length)
          throw new Error(`short write to the journal (${r.written} of ${data.length} bytes)`);
        const st = fstatSync(fh.fd, { bigint: true });
        at.fh = undefined;
        return { at: { base, validEnd: at.validEnd + data.length, ino: at.ino, fh }, st };
      } catch (e) {
        if (at.fh === fh) at.fh = undefined;
        fh.close().catch(() => {});
        throw e;
      }
    },
  };
}

/** Removes the journal (after a fold wrote the YAML it is part of). */
export async function removeJournal(stateFile: string): Promise<void> {
  await fsp.unlink(journalPath(stateFile)).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}
