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
      // A pool job while the holder holds and eight wait (4 pool threads unless UV_THREADPOOL_SIZE says);
      // the holder lets go when it is done, or after 4 s (then the waiters' native waits had the pool).
      const t0 = Date.now();
      const fallback = setTimeout(() => holder.release(), 4000);
      await fsp.readFile(state + '.lock');
      const readMs = Date.now() - t0;
      clearTimeout(fallback);
      holder.release();
      assert.ok(readMs < 3000, `a pool read waited ${readMs} ms behind the lock's waiters`);
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
