/**
 * Polling for kernel-test fixtures, which run real processes and cannot mock their clocks: a hang guard,
 * not a measure.
 */

/** Sleeps `ms` of real time. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Calls `f` every `everyMs` until it gives a truthy value, which it returns; throws `timed out waiting for
 * <what>` after `ms`. An error `f` throws ends the wait with it.
 */
export async function until<T>(
  what: string,
  f: () => T | undefined | false | Promise<T | undefined | false>,
  ms = 15_000,
  everyMs = 25,
): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}
