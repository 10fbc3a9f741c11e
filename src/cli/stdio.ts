/**
 * The CLI's output: each line written straight to fd 1 or 2 with `fs.writeSync`, so that a one-shot
 * command never creates `process.stdout`/`process.stderr`. Creating them costs a start-up about 5 %
 * of a bare `node -e 0`: Node's stream modules for a file, also `node:net` for a pipe and `node:tty`
 * for a terminal (and opening a pipe as a stream sets it non-blocking for every process sharing it).
 * If a direct write fails (EAGAIN: a non-blocking pipe that is full; EPIPE; anything else), that line
 * and every later one of the descriptor go through Node's stream instead, which queues, reports the
 * error its usual way, and which bin/iptlb.cjs drains before it exits: the bytes and their order
 * are the same either way.
 */
import { writeSync } from 'node:fs';

/** One descriptor's lines: written to `fd` directly until that fails, then (and from then on) to `stream()`. */
export function lineWriter(fd: number, stream: () => Pick<NodeJS.WritableStream, 'write'>): (s: string) => void {
  let viaStream = false;
  return (s: string) => {
    const line = s + '\n';
    if (!viaStream) {
      const buf = Buffer.from(line, 'utf8');
      let done = 0;
      try {
        while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done);
        return;
      } catch {
        viaStream = true;
        stream().write(buf.subarray(done));
        return;
      }
    }
    stream().write(line);
  };
}

/** The default output of `iptlb`: lines to stdout and stderr. */
export function processOut(): { out: (s: string) => void; err: (s: string) => void } {
  return { out: lineWriter(1, () => process.stdout), err: lineWriter(2, () => process.stderr) };
}
