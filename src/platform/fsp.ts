/**
 * The part of `node:fs/promises` iptlb uses, on Node's callback API, with a synchronous mode for
 * one-shot CLI runs.
 *
 * Why not `node:fs/promises` itself: the first use of `fs.promises` loads about ten of Node's internal
 * modules (file handles, directory streams, watchers, readline) and every call goes through a
 * promise-based request; in a one-shot `iptlb` process that costs about 5 % of a bare Node start.
 * The callback API is already loaded.
 *
 * {@link useSyncFs}: a one-shot command (apply, list, status…) does one thing at a time, so each call
 * may as well run on the main thread. The functions then do the `*Sync` call and return a settled
 * promise: callers see the same promises and the same errors (same `code`), without the thread
 * pool's round trips. Long-running processes (the library, watch, agent) keep the asynchronous
 * calls, so that an fsync never stalls their event loop.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

let syncMode = false;

/** Makes every call of this module synchronous (on) or asynchronous again (off). */
export function useSyncFs(on = true): void {
  syncMode = on;
}

/** Whether calls are synchronous now ({@link useSyncFs}). */
export function syncFs(): boolean {
  return syncMode;
}

type Callback<T> = (err: NodeJS.ErrnoException | null, value: T) => void;

/** Runs `sync` in synchronous mode, else `async` with a callback; a promise either way. */
function run<T>(sync: () => T, async: (cb: Callback<T>) => void): Promise<T> {
  if (syncMode) {
    try {
      return Promise.resolve(sync());
    } catch (e) {
      return Promise.reject(e);
    }
  }
  return new Promise<T>((resolve, reject) => async((err, value) => (err ? reject(err) : resolve(value))));
}

type StatOptions = { bigint?: boolean };

/** An open file, as much of `fs.promises.FileHandle` as iptlb uses. */
export class FileHandle {
  constructor(readonly fd: number) {}

  stat(opts: { bigint: true }): Promise<fs.BigIntStats>;
  stat(opts?: { bigint?: false }): Promise<fs.Stats>;
  stat(opts: StatOptions = {}): Promise<fs.Stats | fs.BigIntStats> {
    return run(
      () => fs.fstatSync(this.fd, opts as fs.StatSyncOptions) as fs.Stats | fs.BigIntStats,
      (cb) => fs.fstat(this.fd, opts as fs.StatOptions, cb as Callback<fs.Stats | fs.BigIntStats>),
    );
  }

  read(
    buffer: Buffer,
    offset: number,
    length: number,
    position: number | null,
  ): Promise<{ bytesRead: number; buffer: Buffer }> {
    return run(
      () => ({ bytesRead: fs.readSync(this.fd, buffer, offset, length, position), buffer }),
      (cb) => fs.read(this.fd, buffer, offset, length, position, (err, bytesRead) => cb(err, { bytesRead, buffer })),
    );
  }

  write(buffer: Buffer, offset: number, length: number): Promise<{ bytesWritten: number; buffer: Buffer }> {
    return run(
      () => ({ bytesWritten: fs.writeSync(this.fd, buffer, offset, length), buffer }),
      (cb) => fs.write(this.fd, buffer, offset, length, (err, bytesWritten) => cb(err, { bytesWritten, buffer })),
    );
  }

  /** One vectored write from the current position (it may write less than all of them). */
  writev(buffers: Buffer[]): Promise<{ bytesWritten: number; buffers: Buffer[] }> {
    return run(
      () => ({ bytesWritten: fs.writevSync(this.fd, buffers), buffers }),
      (cb) => fs.writev(this.fd, buffers, (err, bytesWritten) => cb(err, { bytesWritten, buffers })),
    );
  }

  /** Writes all of `data` from the current position (as FileHandle.writeFile on a file just opened). */
  writeFile(data: string | Buffer, encoding: BufferEncoding = 'utf8'): Promise<void> {
    return run(
      () => fs.writeFileSync(this.fd, data, encoding),
      (cb) => fs.writeFile(this.fd, data, encoding, (err) => cb(err, undefined)),
    );
  }

  truncate(len = 0): Promise<void> {
    return run(
      () => fs.ftruncateSync(this.fd, len),
      (cb) => fs.ftruncate(this.fd, len, (err) => cb(err, undefined)),
    );
  }

  sync(): Promise<void> {
    return run(
      () => fs.fsyncSync(this.fd),
      (cb) => fs.fsync(this.fd, (err) => cb(err, undefined)),
    );
  }

  close(): Promise<void> {
    return run(
      () => fs.closeSync(this.fd),
      (cb) => fs.close(this.fd, (err) => cb(err, undefined)),
    );
  }
}

export function open(file: string, flags: string | number, mode?: number): Promise<FileHandle> {
  return run(
    () => new FileHandle(fs.openSync(file, flags, mode)),
    (cb) => fs.open(file, flags, mode, (err, fd) => cb(err, err ? (undefined as never) : new FileHandle(fd))),
  );
}

export function lstat(file: string, opts: { bigint: true }): Promise<fs.BigIntStats>;
export function lstat(file: string, opts?: { bigint?: false }): Promise<fs.Stats>;
export function lstat(file: string, opts: StatOptions = {}): Promise<fs.Stats | fs.BigIntStats> {
  return run(
    () => fs.lstatSync(file, opts as fs.StatSyncOptions) as fs.Stats | fs.BigIntStats,
    (cb) => fs.lstat(file, opts as fs.StatOptions, cb as Callback<fs.Stats | fs.BigIntStats>),
  );
}

/**
 * Creates `dir` and the parents it lacks, each with `mode`, as `mkdir -p`; a directory there already is fine.
 *
 * Not Node's `{ recursive: true }`: on Node 20 it loops for ever when a directory's mkdir fails with ENOENT though
 * its parent is there (under /proc: `--state-file /proc/x/state.db`), retrying parent and child in turn; in a
 * one-shot CLI's synchronous mode that loop held the main thread, so that not even SIGTERM's handler ran (found
 * 2026-12-07). Here each directory is made at most twice (before and after its parents), then its error is thrown.
 */
export function mkdirs(dir: string, mode: number): Promise<void> {
  return run(
    () => mkdirsSync(dir, mode),
    (cb) => mkdirsAsync(dir, mode, cb),
  );
}

/** {@link mkdirs}, synchronous (for callers on node:fs's synchronous API, such as the registry). */
export function mkdirsSync(dir: string, mode: number): void {
  for (let first = true; ; first = false) {
    try {
      fs.mkdirSync(dir, mode);
      return;
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'EEXIST' && fs.statSync(dir).isDirectory()) return;
      const parent = path.dirname(dir);
      if (err.code !== 'ENOENT' || !first || parent === dir) throw err;
      mkdirsSync(parent, mode);
    }
  }
}

function mkdirsAsync(dir: string, mode: number, cb: Callback<void>, first = true): void {
  fs.mkdir(dir, mode, (err) => {
    if (!err) return cb(null, undefined);
    if (err.code === 'EEXIST') return fs.stat(dir, (e, st) => cb(e ?? (st.isDirectory() ? null : err), undefined));
    const parent = path.dirname(dir);
    if (err.code !== 'ENOENT' || !first || parent === dir) return cb(err, undefined);
    mkdirsAsync(parent, mode, (e) => (e ? cb(e, undefined) : mkdirsAsync(dir, mode, cb, false)));
  });
}

export function readdir(dir: string): Promise<string[]> {
  return run(
    () => fs.readdirSync(dir),
    (cb) => fs.readdir(dir, cb),
  );
}

export function rename(from: string, to: string): Promise<void> {
  return run(
    () => fs.renameSync(from, to),
    (cb) => fs.rename(from, to, (err) => cb(err, undefined)),
  );
}

export function unlink(file: string): Promise<void> {
  return run(
    () => fs.unlinkSync(file),
    (cb) => fs.unlink(file, (err) => cb(err, undefined)),
  );
}

export function writeFile(file: string, data: string, opts: { mode: number }): Promise<void> {
  return run(
    () => fs.writeFileSync(file, data, opts),
    (cb) => fs.writeFile(file, data, opts, (err) => cb(err, undefined)),
  );
}

/** fsyncs directory `dir`, so that a rename or unlink in it survives a power loss. */
export async function syncDir(dir: string): Promise<void> {
  const dh = await open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/**
 * Replaces `file` durably and atomically, the way the state file and the files beside it are
 * written: `write` fills a new temporary file (0600, O_EXCL, O_NOFOLLOW) in the same directory, named
 * `.<tmpName>.tmp-<pid>-<random>` (a killed writer's cleanup removes those of the state file's name),
 * which is fsynced, `beforeRename` may still refuse the replacement, then the rename and a directory
 * fsync. The temporary file is removed on any failure. Returns the new file's stat (taken after its fsync).
 * `sync: false`: atomic for other processes, without either fsync (a file whose content matters only while
 * this boot's kernel holds what it describes: after a crash of the machine it may be empty or gone).
 */
export async function replaceFile(
  file: string,
  write: (fh: FileHandle) => Promise<void>,
  opts: { tmpName?: string; beforeRename?: () => Promise<void>; sync?: boolean } = {},
): Promise<fs.BigIntStats> {
  const dir = path.dirname(file);
  const tmp = path.join(
    dir,
    `.${opts.tmpName ?? path.basename(file)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`,
  );
  const C = fs.constants;
  const fh = await open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  let st: fs.BigIntStats;
  try {
    await write(fh);
    if (opts.sync !== false) await fh.sync();
    st = await fh.stat({ bigint: true });
  } catch (e) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fh.close();
  try {
    await opts.beforeRename?.();
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  if (opts.sync !== false) await syncDir(dir);
  return st;
}
