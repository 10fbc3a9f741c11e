/**
 * src/platform/heap.ts: after a change of at least LARGE_CHANGE profiles, and QUIET_MS without
 * another, V8 is asked once for a memory-reducing GC (mock timers: no wall clock). The addon's
 * reduceMemory() itself: its argument checks, and that it runs on this Node.
 */
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { LARGE_CHANGE, QUIET_MS, noteChange, reductionCount } from '../../src/platform/heap.js';
import { loadAddon } from '../../src/platform/addon.js';

const core = loadAddon('core');

test('a large change is followed by one reduction once quiet; small changes and IPTLB_REDUCE_MEMORY=0 by none', () => {
  assert.ok(core.ok, `the core addon loads: ${core.ok ? '' : core.detail}`);
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const before = reductionCount();
    noteChange(LARGE_CHANGE - 1);
    mock.timers.tick(QUIET_MS * 3);
    assert.equal(reductionCount(), before, 'a small change: none');

    noteChange(LARGE_CHANGE);
    mock.timers.tick(QUIET_MS - 1);
    noteChange(LARGE_CHANGE * 10); // a burst: the quiet time starts again
    mock.timers.tick(QUIET_MS - 1);
    assert.equal(reductionCount(), before, 'not before the burst has been quiet for QUIET_MS');
    mock.timers.tick(1);
    assert.equal(reductionCount(), before + 1, 'one reduction for the burst');
    mock.timers.tick(QUIET_MS * 3);
    assert.equal(reductionCount(), before + 1, 'and only one');

    process.env.IPTLB_REDUCE_MEMORY = '0';
    noteChange(LARGE_CHANGE * 10);
    mock.timers.tick(QUIET_MS * 3);
    assert.equal(reductionCount(), before + 1, 'IPTLB_REDUCE_MEMORY=0: none');
  } finally {
    delete process.env.IPTLB_REDUCE_MEMORY;
    mock.timers.reset();
  }
});

test('reduceMemory(level): 1 and 2 run on this Node; any other level is a TypeError naming it', () => {
  assert.ok(core.ok);
  const A = core.addon;
  assert.equal(A.reduceMemory(1), true);
  assert.equal(A.reduceMemory(2), true);
  for (const bad of [0, 3, '2', undefined])
    assert.throws(() => (A.reduceMemory as (l: unknown) => boolean)(bad), { name: 'TypeError', message: /^level: / });
});
