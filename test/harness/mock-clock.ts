/**
 * Helpers for tests on Node's mocked timers (`t.mock.timers`): let pending promises and I/O callbacks
 * run, and move the clock on in small steps so that what each step schedules runs in order.
 */
import type { TestContext } from 'node:test';

/** Lets pending promise chains settle (a few turns of the event loop). */
export async function flush(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}

/** Moves the mocked clock on by `ms`, `step` ms at a time, flushing after each step. */
export async function advance(t: TestContext, ms: number, step = 10): Promise<void> {
  for (let left = ms; left > 0; left -= step) {
    t.mock.timers.tick(Math.min(step, left));
    await flush();
  }
}
