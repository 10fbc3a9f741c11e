/**
 * Several takers of the state-file lock in one process (library handles on one state file): they
 * queue in the process, behind one wait in the kernel, so waiting handles do not fill the libuv
 * thread pool that the holder's own state and journal writes need (probe: five handles of one
 * process, five applies each, locked up until the calls failed with ELOCK after 30 s).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { open, IptlbError } from '../../src/index.js';
import { loadAddon } from '../../src/platform/addon.js';
import { lockStateFile } from '../../src/platform/lock.js';
import { FakeNftKernel } from '../harness/fake-kernel.js';

const native = loadAddon('core');
const skip = native.ok ? false : 'the native addon is not built (the lock is then taken by flock(1), off the pool)';
const tmp = (): string => mkdtempSync(path.join(tmpdir(), 'iptlb-turns-'));

test(
  'eight waiters of one process: the thread pool stays free, and they get the lock in call order',
  { skip },
  async () => {
    const dir = tmp();
    try {
      const state = path.join(dir, 'state.db');
      const holder = await lockStateFile(state, 5000);
      const order: number[] = [];
      const waiters = Array.from({ length: 8 }, (_, i) =>
        lockStateFile(state, 5000).then((l) => {
          order.push(i);
          l.release();
        }),
      );
      await new Promise((r) => setTimeout(r, 100));
      // A pool job while the holder holds and eight wait (4 pool threads unless UV_THREADPOOL_SIZE says): it
      // completes before the holder lets go. Had the waiters' native waits taken the pool threads, it would
      // queue behind them until the holder let go; the 30 s release only keeps that case from hanging (what
      // is asserted is the order, not a time).
      const events: string[] = [];
      const fallback = setTimeout(() => (events.push('holder released'), holder.release()), 30_000);
      await fsp.readFile(state + '.lock');
      events.push('pool read');
      clearTimeout(fallback);
      holder.release();
      assert.deepEqual(events, ['pool read'], "a pool read waited behind the lock's waiters");
      await Promise.all(waiters);
      assert.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('a waiter of one process times out as against another process, and leaves the queue', { skip }, async () => {
  const dir = tmp();
  try {
    const state = path.join(dir, 'state.db');
    const holder = await lockStateFile(state, 1000);
    const fail = (ms: number) =>
      lockStateFile(state, ms).then(
        () => 'ok',
        (e: IptlbError) => `${e.code} ${e.errno}: ${e.message}`,
      );
    assert.match(await fail(0), /^ELOCK 11: /);
    assert.match(await fail(200), /^ELOCK 11: another iptlb holds .*state\.db\.lock; gave up after 200 ms$/);
    holder.release();
    holder.release(); // idempotent: releases the turn once
    const a = await lockStateFile(state, 0);
    a.release();
    (await lockStateFile(state, 0)).release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(
  'eight library handles on one state file, five concurrent applies each: all done, none times out',
  { skip },
  async () => {
    const dir = tmp();
    try {
      const file = path.join(dir, 'state.db');
      const kernel = new FakeNftKernel();
      const handles = await Promise.all(
        Array.from({ length: 8 }, () => open({ stateFile: file, lockWaitMs: 4000, stateFoldMs: 50 }, kernel)),
      );
      const results = await Promise.allSettled(
        handles.flatMap((lb, h) =>
          Array.from({ length: 5 }, (_, k) =>
            lb.apply({ name: `h${h}_${k}`, source: `127.93.${h}.${k + 1}:80`, destination: ['127.0.0.1:9001'] }),
          ),
        ),
      );
      const failed = results.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
      assert.deepEqual(failed, []);
      assert.equal((await handles[0].list()).length, 40);
      for (const lb of handles) await lb.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'eight waits for eight different lock files held elsewhere: the thread pool stays free, and each wait ends when its lock is let go',
  { skip },
  async () => {
    if (!native.ok) return;
    const addon = native.addon;
    const dir = tmp();
    try {
      const files = Array.from({ length: 8 }, (_, i) => path.join(dir, `s${i}.lock`));
      // A lock taken by another open file description conflicts as another process's would.
      const held = await Promise.all(files.map((f) => addon.flock(f, 0)));
      const events: string[] = [];
      const waits = files.map((f, i) =>
        addon.flock(f, 30_000).then(
          (l) => {
            events.push(`lock ${i}`);
            l.release();
          },
          (e: Error) => events.push(`lock ${i} failed: ${e.message}`),
        ),
      );
      // A pool job while eight native waits are pending (4 pool threads unless UV_THREADPOOL_SIZE says
      // otherwise): it completes first, before any lock is let go. Had the waits taken pool threads,
      // it would queue behind them until their 30 s ran out.
      await fsp.readFile(files[0]);
      events.push('pool read');
      for (const l of held) l.release();
      await Promise.all(waits);
      assert.equal(events[0], 'pool read');
      assert.deepEqual(events.slice(1).sort(), files.map((_, i) => `lock ${i}`).sort());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'the native lock: a free lock is taken at once; an unusable lock file rejects with its errno',
  { skip },
  async () => {
    if (!native.ok) return;
    const addon = native.addon;
    const dir = tmp();
    try {
      const f = path.join(dir, 'a.lock');
      const a = await addon.flock(f, 0);
      assert.ok(a.fd >= 0);
      // Busy and no wait: the timeout's errno (EWOULDBLOCK).
      await assert.rejects(addon.flock(f, 0), (e: { errno?: number }) => e.errno === 11);
      a.release();
      const b = await addon.flock(f, 0);
      b.release();
      // A directory cannot be opened read-write: EISDIR (21), at once.
      await assert.rejects(addon.flock(dir, 10_000), (e: { errno?: number }) => e.errno === 21);
      // A missing directory: ENOENT (2).
      await assert.rejects(
        addon.flock(path.join(dir, 'no', 'x.lock'), 10_000),
        (e: { errno?: number }) => e.errno === 2,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  "a sync beside another state file's handle that keeps its lock across runs of commits gets that lock in turn, and removes a leftover of no state file; the busy line is said once per run of busy syncs",
  { skip },
  async () => {
    const dir = tmp();
    try {
      const kernel = new FakeNftKernel();
      const stateRegistry = path.join(dir, 'registry');
      const file = (n: string) => path.join(dir, `${n}.db`);
      // A leftover: C's profile reaches the kernel, then C's state file is lost.
      const c = await open({ stateFile: file('c'), stateRegistry }, kernel);
      await c.apply({ name: 'gone', source: '127.94.0.99:80', destination: ['127.0.0.1:9009'] });
      await c.close();
      rmSync(file('c'), { force: true });
      const a = await open({ stateFile: file('a'), stateRegistry, stateFoldMs: 50 }, kernel);
      const lines: string[] = [];
      const b = await open({ stateFile: file('b'), stateRegistry, log: (l) => lines.push(l) }, kernel);
      // A churns (runs of group commits under a kept lock) until B's sync is done, and a little after.
      let synced = false;
      let after = 0;
      let n = 0;
      const worker = async (): Promise<void> => {
        while (!synced || after < 50) {
          const k = n++;
          await a.apply({
            name: `a${k % 8}`,
            source: `127.94.1.${(k % 8) + 1}:80`,
            destination: [`127.0.0.1:${9100 + k}`],
          });
          if (synced) after++;
        }
      };
      const churn = Promise.all(Array.from({ length: 8 }, worker));
      while (n < 40) await new Promise((r) => setImmediate(r));
      const r = await b.sync();
      synced = true;
      await churn;
      assert.equal(r.committed, true, `the leftover is removed beside the churn: ${lines.join('\n')}`);
      assert.ok(!lines.some((l) => l.startsWith('another state file was being changed')), lines.join('\n'));
      const names = (await b.status()).map((p) => `${p.name} ${p.status}`);
      assert.deepEqual(names, [], "B holds nothing; A's profiles are A's, the leftover is gone");
      assert.equal((await a.list()).length, 8);
      assert.deepEqual(
        (await a.status()).map((p) => p.status),
        Array(8).fill('in-sync'),
      );
      // A's lock held elsewhere the whole time: busy, said once for two syncs in a row, then again
      // after a sync that was not busy.
      const held = await lockStateFile(file('a'), 1000);
      const busyLines = (): number => lines.filter((l) => l.startsWith('another state file was being changed')).length;
      const quick = await open(
        { stateFile: file('b'), stateRegistry, lockWaitMs: 100, log: (l) => lines.push(l) },
        kernel,
      );
      await quick.sync();
      await quick.sync();
      assert.equal(busyLines(), 1);
      held.release();
      await quick.sync();
      const again = await lockStateFile(file('a'), 1000);
      await quick.sync();
      again.release();
      assert.equal(busyLines(), 2);
      for (const h of [a, b, quick]) await h.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
