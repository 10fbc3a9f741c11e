/**
 * The legacy engine's wait for the xtables lock occupies no libuv pool thread: eight commits waiting
 * for a lock another process holds leave fs calls free to run, and land in call order afterwards
 * (fixtures/pool.ts, in a throwaway namespace with a private lock file).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fixture, kernelSkip, runInNetns } from './netns-child.js';

describe('x_tables lock wait off the libuv pool', { skip: kernelSkip() }, () => {
  test('8 commits waiting for a held xtables lock: fs.promises.readFile settles while they wait; they then land in call order', async () => {
    const r = await runInNetns<Record<string, unknown>>(fixture('pool'), [], {
      timeoutMs: 90_000,
      env: { UV_THREADPOOL_SIZE: '4' },
    });
    const { readMs, ...rest } = r;
    assert.equal(typeof readMs, 'number');
    assert.deepEqual(rest, {
      heldByOther: true,
      readsComplete: true,
      readsBeforeRelease: true,
      commitsStillWaiting: true,
      commitsOk: 8,
      settledOrder: [0, 1, 2, 3, 4, 5, 6, 7],
      outputOwners: ['q7', 'q6', 'q5', 'q4', 'q3', 'q2', 'q1', 'q0'],
    });
  });
});
