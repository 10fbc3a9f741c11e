/**
 * `iptlb watch`: keeps the kernel in step with the state file. A change to the file (the directory
 * is watched, as a file replaced by rename is a new file) is applied once the file has settled: no
 * change of its identity (inode, size, times) for `settleMs`, and it parses as a whole. A file still
 * being written in place, or an empty or half-written one, is never applied while it changes; a
 * writer should write a temporary file in the same directory and rename it over the state file (as
 * iptlb does), which the watcher sees as one change of complete content. A periodic check
 * re-applies rules someone else flushed (it too waits while the file is changing); SIGHUP checks at
 * once. SIGTERM/SIGINT stop the watcher and leave the rules and the state file as they are. An
 * append to the state file's journal (see journal.ts) is a change like a rewrite of the file.
 */
import { watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import type { Core } from './lb.js';
import { stateVersion } from './state.js';
import { journalPath } from './journal.js';

export interface WatchOptions {
  /** Periodic drift check, ms. Default 5000. */
  intervalMs?: number;
  /** Debounce after a file event, ms. Default 20. */
  debounceMs?: number;
  /** How long the file must stay unchanged before it is applied, ms. Default 1000. */
  settleMs?: number;
  log: (line: string) => void;
  /** The file's identity (tests); default: device, inode, size, times and mode, null when absent. */
  version?: (file: string) => Promise<string | null>;
  /** Told of every sync: how many profiles were out of step and whether it committed, or its error (metrics). */
  onSync?: (r: { drifted: number; committed: boolean; commitMs: number } | Error) => void;
}

export const DEFAULT_SETTLE_MS = 1000;

export interface Watcher {
  /** Checks now (as SIGHUP does), without waiting for the file to settle. */
  check(reason: string): Promise<void>;
  /** The state file changed (as a file-system event says): applied once it has settled and parses. */
  changed(): void;
  /** Stops watching; rules and state stay as they are. */
  stop(): Promise<void>;
  /** Resolves when stopped. */
  done: Promise<void>;
}

type WatchedCore = Pick<Core, 'statePath' | 'sync' | 'readState'>;

export function startWatch(core: WatchedCore, opts: WatchOptions): Watcher {
  const intervalMs = opts.intervalMs ?? 5000;
  const debounceMs = opts.debounceMs ?? 20;
  const settleMs = opts.settleMs ?? DEFAULT_SETTLE_MS;
  const version = opts.version ?? stateVersion;
  if (core.statePath === null) throw new Error('watch needs a state file');
  const file: string = core.statePath;
  const base = path.basename(file);
  const journalName = path.basename(journalPath(file));
  let running: Promise<void> | null = null;
  let again = false;
  let stopped = false;
  let debounce: NodeJS.Timeout | null = null;
  let settleTimer: NodeJS.Timeout | null = null;
  let stopResolve!: () => void;
  const done = new Promise<void>((r) => (stopResolve = r));

  // The file's identity as last observed, and since when (Date.now()) it has been so.
  let seen: string | null | undefined;
  let seenAt = -Infinity;
  // The identity of a file that did not parse (logged once per version).
  let unparsed: string | null | undefined;

  // The file version the next sync may apply (set by a settled check); undefined: any (start, SIGHUP).
  let applyOnly: string | null | undefined;
  const check = async (reason: string, settledVersion?: string | null): Promise<void> => {
    if (stopped) return;
    applyOnly = settledVersion;
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        try {
          // Only the version that settled (and parsed) is applied: one rewritten since waits for its own settle.
          const only = applyOnly;
          const r = await core.sync({
            quietWhenInSync: true,
            ...(only !== undefined ? { guard: async () => (await versionOrUnreadable()) === only } : {}),
          });
          if (r.skipped) continue;
          opts.onSync?.({
            drifted: r.before.filter((x) => x.status !== 'in-sync').length,
            committed: r.committed,
            commitMs: r.commitMs,
          });
          if (r.committed)
            opts.log(`watch: ${reason}: kernel brought in step with ${file} (${r.commitMs.toFixed(2)} ms)`);
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

  /** Looks at the file; the ms it has still to stay unchanged before it counts as settled (0: settled). */
  const versionOrUnreadable = async (): Promise<string | null> => {
    try {
      return await version(file);
    } catch {
      return 'unreadable';
    }
  };
  const observe = async (): Promise<number> => {
    const v = await versionOrUnreadable();
    const now = Date.now();
    if (v !== seen) {
      seen = v;
      seenAt = now;
    }
    return Math.max(0, settleMs - (now - seenAt));
  };

  const armSettle = (ms: number): void => {
    if (settleTimer) clearTimeout(settleTimer);
    settleTimer = setTimeout(
      () => {
        settleTimer = null;
        void settled('state file changed');
      },
      Math.max(1, ms),
    );
  };

  /** Applies the file if it has settled and parses as a whole; else waits for it. */
  const settled = async (reason: string): Promise<void> => {
    if (stopped) return;
    const wait = await observe();
    if (wait > 0) return armSettle(wait);
    try {
      await core.readState();
    } catch (e) {
      if (unparsed !== seen) {
        unparsed = seen;
        opts.log(
          `watch: ${file} is not applied: ${(e as Error).message}; the kernel keeps the last state applied (write a temporary file and rename it over the state file)`,
        );
      }
      return;
    }
    unparsed = undefined;
    await check(reason, seen);
  };

  const changed = (): void => {
    if (stopped) return;
    if (debounce) clearTimeout(debounce);
    debounce = setTimeout(() => {
      debounce = null;
      void settled('state file changed');
    }, debounceMs);
  };

  let fsw: FSWatcher | null = null;
  try {
    fsw = watch(path.dirname(file), { persistent: true }, (_event, name) => {
      // The YAML, or its journal (a library handle's appends: see journal.ts).
      if (name !== null && name !== base && name !== journalName) return;
      changed();
    });
  } catch (e) {
    opts.log(
      `watch: cannot watch ${path.dirname(file)} (${(e as Error).message}); relying on the ${intervalMs} ms check`,
    );
  }
  const timer = setInterval(() => void settled('periodic check'), intervalMs);
  const onHup = (): void => void check('SIGHUP');
  process.on('SIGHUP', onHup);

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    if (debounce) clearTimeout(debounce);
    if (settleTimer) clearTimeout(settleTimer);
    fsw?.close();
    process.off('SIGHUP', onHup);
    if (running) await running.catch(() => {});
    opts.log('watch: stopped; rules and state file left as they are');
    stopResolve();
  };
  // At start the file counts as settled: it is what the last writer left.
  void (async () => {
    try {
      seen = await version(file);
    } catch {
      seen = 'unreadable';
    }
    seenAt = -Infinity;
    await check('start');
  })();
  return { check, changed, stop, done };
}
