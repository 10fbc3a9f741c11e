/**
 * The addon runs a commit's kernel work below the JavaScript thread's priority (see
 * native/thread_priority.h), and gives every thread its priority back afterwards.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fixture, kernelSkip, runInNetns } from './netns-child.js';

describe('worker priority', { skip: kernelSkip() }, () => {
  test('a commit runs at nice IPTLB_WORKER_NICE on its worker thread; every thread is back at nice 0 after it', async () => {
    const r = await runInNetns<{
      seenDuringCommits: number;
      afterCommits: number[];
      helpers: number[];
      decoder: boolean;
    }>(fixture('priority'), [], { timeoutMs: 60_000, env: { IPTLB_WORKER_NICE: '7' } });
    // The malloc trimmer and the plan decoder (started by the first commit) run at the workers' nice for good.
    assert.deepEqual(r, { seenDuringCommits: 7, afterCommits: [0], helpers: [7], decoder: true });
  });
});
