/**
 * The CLI's output: each line written straight to fd 1 or 2 with `fs.writeSync`, so that a one-shot
 * command never creates `process.stdout`/`process.stderr`. Creating them costs a start-up about 5 %
 * of a bare `node -e 0`: Node's stream modules for a file, also `node:net` for a pipe and `node:tty`
 * for a terminal (and opening a pipe as a stream sets it non-blocking for every process sharing it).
 * If a direct write fails (EAGAIN: a non-blocking pipe that is full; anything else), that line and
 * every later one of the descriptor go through Node's stream instead, which queues, and which
 * bin/iptlb.cjs drains before it exits: the bytes and their order are the same either way.
 *
 * When the reader has gone away (EPIPE: `iptlb top | head -3` after head exited), nothing more can be
 * delivered: that line and every later one of the descriptor are dropped, and `closed` is aborted, so
 * that a long-running command (top, status --watch, watch, agent) stops as on SIGTERM, without a stack,
 * as a Unix tool dies of SIGPIPE. A one-shot command finishes and keeps its exit status.
 *
 * Any other failure of a write to stdout (a full disk, ENOSPC; EIO; a file over its size limit, EFBIG)
 * lost output the reader is there to get: `failed` gives its code, and the run ends with one line saying
 * so and exit 1 (src/cli/main.ts), not a silent 0 over a truncated `status --json > f` or completion file.
 */
import { writeSync } from 'node:fs';

type Stream = Pick<NodeJS.WritableStream, 'write'> & Partial<Pick<NodeJS.WritableStream, 'on'>>;

/**
 * One descriptor's lines: written to `fd` directly until that fails, then (and from then on) to
 * `stream()`; dropped once the reader is gone (EPIPE, or any error of the stream), which calls `gone`.
 */
export function lineWriter(
  fd: number,
  stream: () => Stream,
  gone: () => void = () => {},
  failed: (code: string) => void = () => {},
): (s: string) => void {
  let viaStream = false;
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    gone();
  };
  let s: Stream | undefined;
  const sink = (): Stream => {
    if (s) return s;
    s = stream();
    // An error of the stream (EPIPE…) is reported here, not thrown as an unhandled 'error' event.
    s.on?.('error', close);
    return s;
  };
  return (text: string) => {
    if (closed) return;
    const line = text + '\n';
    if (!viaStream) {
      const buf = Buffer.from(line, 'utf8');
      let done = 0;
      try {
        while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done);
        return;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException)?.code;
        if (code === 'EPIPE') return close();
        // EAGAIN (a full non-blocking pipe) is what the stream is for; anything else lost this line.
        if (code !== 'EAGAIN') failed(code ?? String(e));
        viaStream = true;
        sink().write(buf.subarray(done));
        return;
      }
    }
    sink().write(line);
  };
}

/**
 * The default output of `iptlb`: lines to stdout and stderr; `closed` is aborted once the reader of
 * either has gone away.
 */
export function processOut(): {
  out: (s: string) => void;
  err: (s: string) => void;
  closed: AbortSignal;
  failed: () => string | undefined;
} {
  const ac = new AbortController();
  const gone = (): void => ac.abort();
  let outFailure: string | undefined;
  return {
    out: lineWriter(
      1,
      () => process.stdout,
      gone,
      (code) => (outFailure ??= code),
    ),
    err: lineWriter(2, () => process.stderr, gone),
    closed: ac.signal,
    failed: () => outFailure,
  };
}
