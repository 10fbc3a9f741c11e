/**
 * Giving V8's heap back after a large change. Planning, committing and recording thousands of
 * profiles at once (a sync, a bulk apply) makes V8 grow its heap to tens of MiB, most of it garbage
 * once the change is done; V8 keeps that room committed (measured: 50 MiB committed for 17 MiB live
 * after a sync of 10,000 profiles) and gives it back only if its memory reducer runs, which it did
 * not in a process left idle for 30 s. So once a process has been quiet for {@link QUIET_MS} after
 * a change of at least {@link LARGE_CHANGE} profiles, iptlb tells V8 the memory pressure is critical
 * (the addon's `reduceMemory(2)`, `v8::Isolate::MemoryPressureNotification`): one or two
 * memory-reducing full GCs, synchronously, then back to no pressure. That is a pause of the JS thread
 * (at 10,000 profiles 86–118 ms on this project's loaded 2-core machine, load average 11–13; the sync
 * it follows took about a second), at a quiet moment, once per burst of large changes; it took the
 * process from 122–134 MiB to 72 MiB. The incremental alternative (moderate pressure) paused the loop
 * as long (26–118 ms) and shrank the heap less reliably (72–82 MiB). `IPTLB_REDUCE_MEMORY=0` turns it off.
 */
import { loadAddon } from './addon.js';

/** Profiles a change must touch (applied + deleted, or a sync's profiles) to be followed by a reduction. */
export const LARGE_CHANGE = 1000;
/** How long no further large change must come before the reduction runs. */
export const QUIET_MS = 1000;

let timer: ReturnType<typeof setTimeout> | undefined;
let reductions = 0;

/** Notes a change of `profiles` profiles; a large one (re)arms the quiet timer (unref'd: it keeps no process alive). */
export function noteChange(profiles: number): void {
  if (profiles < LARGE_CHANGE || process.env.IPTLB_REDUCE_MEMORY === '0') return;
  if (timer) clearTimeout(timer); // a burst: the quiet time starts again (only large changes get here)
  timer = setTimeout(() => {
    timer = undefined;
    const r = loadAddon('core');
    if (r.ok && typeof r.addon.reduceMemory === 'function' && r.addon.reduceMemory(2)) reductions++;
  }, QUIET_MS);
  timer.unref();
}

/** How many reductions ran in this process (for tests and benches). */
export function reductionCount(): number {
  return reductions;
}
