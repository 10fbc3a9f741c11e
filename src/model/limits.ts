/**
 * Size limits of every input iptlb reads, and a reader that never reads past them: a file that is
 * larger (or endless, as /dev/zero) fails with one line as soon as the limit is passed.
 */
import * as fsp from '../platform/fsp.js';
import { IptlbError } from './errors.js';

/** The state file: 64 MiB (about 300,000 profiles of two destinations). */
export const MAX_STATE_BYTES = 64 * 1024 * 1024;
/** A profile file given to `apply --file` (or `--file -`, standard input): the same as the state file. */
export const MAX_INPUT_BYTES = MAX_STATE_BYTES;

function mib(n: number): string {
  return `${n / 1024 / 1024} MiB`;
}

/**
 * Reads at most `max` bytes from an open file; throws `tooBig()` when there are more. Reads in
 * chunks, so a device or pipe without end costs at most `max` bytes and the time to read them.
 */
export async function readCapped(fh: fsp.FileHandle | number, max: number, tooBig: () => Error): Promise<string> {
  return (await readCappedBytes(fh, max, tooBig)).toString('utf8');
}

/**
 * {@link readCapped}'s bytes, undecoded. `expected`: the size the file should have (its fstat): the
 * first read asks for one byte more, so that a file of that size is read in one buffer (no copy).
 */
export async function readCappedBytes(
  fh: fsp.FileHandle | number,
  max: number,
  tooBig: () => Error,
  expected?: number,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  const chunk = 1 << 20;
  const { read } = await import('node:fs');
  const readFd = (fd: number, buf: Buffer): Promise<number> =>
    new Promise((resolve, reject) => read(fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n))));
  let size = expected !== undefined && expected >= chunk ? expected + 1 : chunk;
  for (;;) {
    const buf = Buffer.allocUnsafe(Math.min(size, max + 1 - total));
    size = chunk;
    const n = typeof fh === 'number' ? await readFd(fh, buf) : (await fh.read(buf, 0, buf.length, null)).bytesRead;
    if (n === 0) break;
    total += n;
    if (total > max) throw tooBig();
    chunks.push(n === buf.length ? buf : buf.subarray(0, n));
  }
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, total);
}

/** Reads a profile file (`-`: standard input) for `field`, at most {@link MAX_INPUT_BYTES}. */
export async function readInputFile(p: string, field: string, max = MAX_INPUT_BYTES): Promise<string> {
  const tooBig = (): IptlbError =>
    new IptlbError(
      'EUSAGE',
      `${field}: ${p === '-' ? 'standard input' : JSON.stringify(p)} is larger than ${mib(max)} (the limit of an input file)`,
      { field },
    );
  if (p === '-') return readCapped(0, max, tooBig);
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(p, 'r');
  } catch (e) {
    throw new IptlbError(
      'EUSAGE',
      `${field}: cannot read ${JSON.stringify(p)} (${(e as NodeJS.ErrnoException).code})`,
      { field },
    );
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new IptlbError('EUSAGE', `${field}: ${JSON.stringify(p)} is a directory`, { field });
    if (st.isFile() && st.size > max) throw tooBig();
    return await readCapped(fh, max, tooBig);
  } catch (e) {
    if (e instanceof IptlbError) throw e;
    throw new IptlbError(
      'EUSAGE',
      `${field}: cannot read ${JSON.stringify(p)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      { field },
    );
  } finally {
    await fh.close();
  }
}
