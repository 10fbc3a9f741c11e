/**
 * `iptlb watch`: keeps the kernel in step with the state file. A change to the file (it is replaced
 * by rename, so the directory is watched) triggers a sync after a short debounce; a periodic check
 * re-applies rules someone else flushed; SIGHUP checks at once. SIGTERM/SIGINT stop the watcher and
 * leave the rules and the state file as they are.
 */
import { watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import type { Core } from './lb.js';

export interface WatchOptions {
  /** Periodic drift check, ms. Default 5000. */
  intervalMs?: number;
  /** Debounce after a file event, ms. Default 20. */
  debounceMs?: number;
  log: (line: string) => void;
  /** Told of every sync: how many profiles were out of step and whether it committed, or its error (metrics). */
  onSync?: (r: { drifted: number; committed: boolean; commitMs: number } | Error) => void;
}

export interface Watcher {
  /** Checks now (as SIGHUP does). */
  check(reason: string): Promise<void>;
  /** Stops watching; rules and state stay as they are. */
  stop(): Promise<void>;
  /** Resolves when stopped. */
  done: Promise<void>;
}

export function startWatch(core: Core, opts: WatchOptions): Watcher {
  const intervalMs = opts.intervalMs ?? 5000;
  const debounceMs = opts.debounceMs ?? 20;
  if (core.statePath === null) throw new Error('watch needs a state file');
  const file: string = core.statePath;
  const base = path.basename(file);
  let running: Promise<void> | null = null;
  let again = false;
  let stopped = false;
  let debounce: NodeJS.Timeout | null = null;
  let stopResolve!: () => void;
  const done = new Promise<void>((r) => (stopResolve = r));

  const check = async (reason: string): Promise<void> => {
    if (stopped) return;
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        try {
          const r = await core.sync({ quietWhenInSync: true });
          opts.onSync?.({ drifted: r.before.filter((x) => x.status !== 'in-sync').length, committed: r.committed, commitMs: r.commitMs });
          if (r.committed) opts.log(`watch: ${reason}: kernel brought in step with ${file} (${r.commitMs.toFixed(2)} ms)`);
        } catch (e) {
          opts.onSync?.(e as Error);
          opts.log(`watch: ${reason}: ${(e as Error).message}`);
        }
      } while (again && !stopped);
    })();
    try {
      await running;
    } finally {
      running = null;
    }
  };

  let fsw: FSWatcher | null = null;
  try {
    fsw = watch(path.dirname(file), { persistent: true }, (_event, name) => {
      if (name !== null && name !== base) return;
      if (debounce) clearTimeout(debounce);
      debounce = setTimeout(() => void check('state file changed'), debounceMs);
    });
  } catch (e) {
    opts.log(`watch: cannot watch ${path.dirname(file)} (${(e as Error).message}); relying on the ${intervalMs} ms check`);
  }
  const timer = setInterval(() => void check('periodic check'), intervalMs);
  const onHup = (): void => void check('SIGHUP');
  process.on('SIGHUP', onHup);

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    if (debounce) clearTimeout(debounce);
    fsw?.close();
    process.off('SIGHUP', onHup);
    if (running) await running.catch(() => {});
    opts.log('watch: stopped; rules and state file left as they are');
    stopResolve();
  };
  void check('start');
  return { check, stop, done };
}
