/**
 * A lock file removed or replaced while its lock is held or waited for (`rm state.db.lock` by a
 * configuration-management tool, a tmp cleaner, a person): a taker that was waiting on the old file
 * gets that file's lock when its holder lets go, but a newcomer opening the path locks the new file at
 * once, and the two would both "hold" the lock. The taker checks, once granted, that the path still
 * names the file it locked (fstat of its descriptor, lstat of the path) and else locks the file now at
 * the path, within the same wait. A library handle keeping the lock across a run of commits checks it
 * before each commit it makes under the kept lock, and a health checker its checker lock at each refresh.
 *
 * No root: flocks on a temporary directory. "Another process" is another open file of this process
 * (the addon's own flock, which knows nothing of this process's turns) or a child without the addon.
 * The sequencing is explicit: a taker is known to wait on a file when /proc/locks shows it blocked on
 * that file's inode; the polls below end on such an event, their long limits only guard against a hang.
 */
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { open, IptlbError, type LegacyExecutor, type Transaction, type KernelView } from '../../src/index.js';
import { loadAddon, type FileLock } from '../../src/platform/addon.js';
import { lockStateFile, type HeldLock } from '../../src/platform/lock.js';
import { readStateFull } from '../../src/core/state.js';
import { PROJECT_ROOT } from '../harness/env.js';

const native = loadAddon('core');
const skip = native.ok && typeof native.addon.flockBusy === 'function' ? false : 'the native addon is not built';
const addon = () => {
  if (!native.ok) throw new Error('unreachable');
  return native.addon;
};
const tmp = (): string => mkdtempSync(path.join(tmpdir(), 'iptlb-moved-'));

/** Runs `fn` with a temporary directory, its state file's path and its lock file's, then removes the directory. */
async function inStateDir(fn: (dir: string, state: string, lockPath: string) => Promise<void>): Promise<void> {
  const dir = tmp();
  try {
    const state = path.join(dir, 'state.db');
    await fn(dir, state, `${state}.lock`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** How many takers /proc/locks shows blocked on inode `ino` (an flock waiting for it). */
function blockedOn(ino: number): number {
  let n = 0;
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] !== '->') continue;
    const id = f.find((x) => /^[0-9a-f]+:[0-9a-f]+:\d+$/.test(x));
    if (id && Number(id.split(':')[2]) === ino) n++;
  }
  return n;
}

/** Polls `cond` until it holds (the limit only guards against a hang). */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 5000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`never happened: ${what}`);
}

/** A promise's state, readable synchronously. */
function track<T>(p: Promise<T>): { p: Promise<T>; settled: () => boolean } {
  let done = false;
  const q = p.finally(() => (done = true));
  return { p: q, settled: () => done };
}

/** Another process's lock attempt on `f` without waiting: 'free' (taken and given back) or 'busy'. */
async function newcomer(f: string): Promise<'free' | 'busy'> {
  try {
    (await addon().flock(f, 0)).release();
    return 'free';
  } catch (e) {
    if ((e as { errno?: number }).errno === 11) return 'busy';
    throw e;
  }
}

test(
  'the lock file removed while a taker waits on it: once the holder lets go, the taker holds the file at the path, and a newcomer waits for it',
  { skip },
  async () => {
    await inStateDir(async (dir, state, lockPath) => {
      const a = await addon().flock(lockPath, 0); // the holder: another open file
      const old = statSync(lockPath).ino;
      const b = track(lockStateFile(state, 30_000));
      await until(() => blockedOn(old) === 1, 'the taker waits on the lock file');
      unlinkSync(lockPath);
      a.release();
      const held = await b.p;
      try {
        assert.ok(existsSync(lockPath), 'the taker made the lock file again');
        assert.equal(
          await newcomer(lockPath),
          'busy',
          "a newcomer opening the path is refused: the taker's lock is on it",
        );
      } finally {
        held.release();
      }
      assert.equal(await newcomer(lockPath), 'free');
    });
  },
);

test(
  'the lock file replaced (renamed over) while a taker waits, and the new file locked by a newcomer: the taker waits for that newcomer too',
  { skip },
  async () => {
    await inStateDir(async (dir, state, lockPath) => {
      const a = await addon().flock(lockPath, 0);
      const old = statSync(lockPath).ino;
      const b = track(lockStateFile(state, 30_000));
      await until(() => blockedOn(old) === 1, 'the taker waits on the lock file');
      writeFileSync(`${dir}/other`, '', { mode: 0o600 });
      renameSync(`${dir}/other`, lockPath);
      const fresh = statSync(lockPath).ino;
      // The newcomer locks the new file at once: the holder of the old one is not in its way (what no
      // check of the taker's can change; see docs/state-file.md).
      const c = await addon().flock(lockPath, 0);
      a.release();
      await until(() => b.settled() || blockedOn(fresh) === 1, 'the taker holds a lock, or waits on the new file');
      assert.equal(b.settled(), false, 'the taker did not take the old file (as the newcomer holds the new one)');
      c.release();
      const held = await b.p;
      try {
        assert.equal(await newcomer(lockPath), 'busy');
      } finally {
        held.release();
      }
    });
  },
);

test(
  'the queue lock file removed while a taker waits on it: the taker holds the new one while it waits for the lock, and a window holder sees it waiting',
  { skip },
  async () => {
    await inStateDir(async (dir, state, lockPath) => {
      const queuePath = `${lockPath}.queue`;
      const h = await addon().flock(lockPath, 0); // holds the lock
      const q = await addon().flock(queuePath, 0); // holds the queue lock (a waiter before ours)
      const lockIno = statSync(lockPath).ino;
      const old = statSync(queuePath).ino;
      const b = track(lockStateFile(state, 30_000));
      await until(() => blockedOn(old) === 1, 'the taker waits on the queue lock file');
      unlinkSync(queuePath);
      q.release();
      await until(() => blockedOn(lockIno) === 1, 'the taker waits for the lock under the queue lock');
      assert.equal(addon().flockBusy!(queuePath), true, 'the holder of a kept lock sees a waiter (flockBusy)');
      assert.equal(await newcomer(queuePath), 'busy', 'a newcomer queues behind the taker');
      h.release();
      (await b.p).release();
      assert.equal(await newcomer(queuePath), 'free');
      assert.equal(await newcomer(lockPath), 'free');
    });
  },
);

test(
  'without the addon (flock(1)): the lock file removed while a taker waits on it, the taker holds the file at the path',
  { skip },
  async () => {
    await inStateDir(async (dir, state, lockPath) => {
      const a = await addon().flock(lockPath, 0);
      const old = statSync(lockPath).ino;
      const root = pathToFileURL(PROJECT_ROOT + '/').href;
      // The child takes the lock through flock(1), says so, and lets go when its stdin ends.
      const child = spawn(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `const { lockStateFile } = await import(${JSON.stringify(root + 'dist/src/platform/lock.js')});
         const held = await lockStateFile(${JSON.stringify(state)}, 30000);
         process.stdout.write('held\\n');
         process.stdin.on('data', () => {}).on('end', () => { held.release(); process.stdout.write('released\\n'); });`,
        ],
        { env: { ...process.env, IPTLB_NO_NATIVE: '1' }, stdio: ['pipe', 'pipe', 'inherit'] },
      );
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      const exited = new Promise((r) => child.on('exit', r));
      try {
        await until(() => blockedOn(old) === 1, "the child's flock(1) waits on the lock file");
        unlinkSync(lockPath);
        a.release();
        await until(() => out.includes('held'), 'the child holds the lock');
        assert.ok(existsSync(lockPath), 'the child made the lock file again');
        assert.equal(
          await newcomer(lockPath),
          'busy',
          "a newcomer is refused: the child's flock(1) holds the file at the path",
        );
        child.stdin.end();
        await until(() => out.includes('released'), 'the child let go');
        // flock(1) exits a moment after its stdin ends.
        await until(
          () => !readFileSync('/proc/locks', 'utf8').includes(`:${statSync(lockPath).ino} `),
          'flock(1) gone',
        );
        assert.equal(await newcomer(lockPath), 'free');
      } finally {
        child.kill();
        await exited;
      }
    });
  },
);

/** Commits that wait for the test's word (a gate per commit), recorded. */
class Gated implements LegacyExecutor {
  readonly kind = 'native' as const;
  readonly engine = 'legacy' as const;
  txs: Transaction[] = [];
  gates: Array<() => void> = [];
  /** Set once the test is over: commits no longer wait. */
  open = false;
  async commit(tx: Transaction) {
    if (!this.open) await new Promise<void>((r) => this.gates.push(r));
    this.txs.push(tx);
    return { durationMs: 0 };
  }
  async read(): Promise<KernelView> {
    return { chains: [], hookRules: [] };
  }
  async render(): Promise<string> {
    return '';
  }
}

const prof = (name: string, port: number) => ({
  name,
  source: `127.100.0.1:${port}`,
  destination: ['127.0.0.1:9000'],
});

test(
  'a handle keeping the lock across a run of commits: its lock file removed and the new one locked by a newcomer, the next commit waits for that newcomer',
  { skip },
  async (t) => {
    // The window's age is read from Date: frozen, the window is not given up for its age (100 ms) meanwhile.
    mock.timers.enable({ apis: ['Date'], now: Date.now() });
    t.after(() => mock.timers.reset());
    const dir = tmp();
    const state = path.join(dir, 'state.db');
    const lockPath = `${state}.lock`;
    const ex = new Gated();
    const log: string[] = [];
    const lb = await open({ stateFile: state, stateFoldMs: 60_000, stateRegistry: false, log: (l) => log.push(l) }, ex);
    let c: FileLock | undefined;
    const next = async (n: number): Promise<void> => {
      await until(() => ex.gates.length === 1, `commit ${n} is in flight`);
    };
    try {
      // A run of commits: a lone call, then batches of two; the lock is kept from the third commit on
      // (the run keeps it once a batch of several calls has been committed: see Core.beginLockWindow).
      const calls = [track(lb.apply(prof('a', 1001)))];
      await next(1);
      calls.push(track(lb.apply(prof('b', 1002))), track(lb.apply(prof('c', 1003))));
      ex.gates.shift()!();
      await next(2);
      calls.push(track(lb.apply(prof('d', 1004))), track(lb.apply(prof('e', 1005))));
      ex.gates.shift()!();
      await next(3);
      const core = (lb as unknown as { core: { window?: { lock: HeldLock } } }).core;
      assert.ok(core.window, 'the run keeps the lock');
      const later = track(lb.apply(prof('f', 1006))); // the next commit of the run
      await Promise.all(calls.slice(0, 3).map((x) => x.p));
      unlinkSync(lockPath);
      // The newcomer: gets the new file at once (the commit in flight is not in its way).
      c = await addon().flock(lockPath, 0);
      const fresh = statSync(lockPath).ino;
      ex.gates.shift()!();
      await Promise.all(calls.map((x) => x.p));
      await until(
        () => ex.gates.length === 1 || later.settled() || blockedOn(fresh) === 1,
        'the next commit is under way, or waits for the lock',
      );
      assert.equal(ex.gates.length, 0, 'the next commit did not start under the lock kept on the removed file');
      assert.equal(blockedOn(fresh), 1, 'it waits for the newcomer');
      assert.ok(
        log.some((l) => /lock file .*state\.db\.lock was removed or replaced/.test(l)),
        log.join('\n'),
      );
      c.release();
      c = undefined;
      await until(() => ex.gates.length === 1, 'the next commit is in flight');
      assert.equal(await newcomer(lockPath), 'busy', 'under the lock taken again, on the file at the path');
      ex.gates.shift()!();
      await later.p;
      assert.deepEqual([...(await readStateFull(state)).profiles.keys()], ['a', 'b', 'c', 'd', 'e', 'f']);
    } finally {
      c?.release();
      ex.open = true;
      for (const g of ex.gates) g();
      await lb.close().catch((e: IptlbError) => e);
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  "a health checker's lock file removed while it runs: it locks the file at the path again; when another checker got there first, it says so and takes the lock once that one lets go",
  { skip },
  async () => {
    const { FakeLegacyKernel } = await import('../harness/fake-kernel.js');
    const dir = tmp();
    const state = path.join(dir, 'state.db');
    const lockPath = `${state}.health.lock`;
    const log: string[] = [];
    const lb = await open(
      { stateFile: state, stateRegistry: false, health: { refreshMs: 10 }, log: (l) => log.push(l) },
      new FakeLegacyKernel(),
    );
    let c: FileLock | undefined;
    try {
      assert.equal(await newcomer(lockPath), 'busy', 'the checker holds its lock');
      // Removed: a checker started now would lock a new file. The running one locks it first, at its next refresh.
      unlinkSync(lockPath);
      await until(
        () => log.some((l) => /health\.lock was removed or replaced .*; locked it again$/.test(l)),
        'locked again',
      );
      assert.equal(await newcomer(lockPath), 'busy', 'a checker started now is refused');
      // Replaced, and the new file locked by another checker before the next refresh: said once.
      writeFileSync(`${dir}/other`, '', { mode: 0o600 });
      renameSync(`${dir}/other`, lockPath);
      c = await addon().flock(lockPath, 0);
      await until(() => log.some((l) => /another checker holds the new file/.test(l)), 'said');
      c.release();
      c = undefined;
      await until(() => log.filter((l) => /locked it again$/.test(l)).length === 2, 'locked again once free');
      assert.equal(await newcomer(lockPath), 'busy');
      await lb.close();
      assert.equal(await newcomer(lockPath), 'free', 'closed: the checker let go');
    } finally {
      c?.release();
      await lb.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
