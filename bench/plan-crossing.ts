/**
 * How the legacy plan crosses into C++: the main-thread time of one commit call, by plan size.
 * Measured is the synchronous part only (from the call until it returns its promise: JSON.stringify,
 * one string copy and the option checks); the kernel work on the addon's thread is awaited outside
 * the timing. Until ABI 13 the addon also took the plan as N-API objects; docs/architecture.md has
 * both measured side by side with this script. Must run in a throwaway namespace:
 *   npx tsc -p . && unshare -n -- node dist/bench/plan-crossing.js [iterations]
 */
import { loadAddon } from '../src/platform/addon.js';
import type { Transaction } from '../src/model/types.js';
import { validateProfile } from '../src/model/profile.js';
import { planTransaction } from '../src/engines/legacy/plan.js';

const loaded = loadAddon();
if (!loaded.ok) throw new Error(`${loaded.reason}: ${loaded.detail}`);
const A = loaded.addon;
const N = Number(process.argv[2] ?? 200);

/** The plan of `profiles` profiles of `dests` destinations each, as the legacy planner writes it. */
function plan(profiles: number, dests: number): Transaction {
  const ps = Array.from({ length: profiles }, (_, i) =>
    validateProfile({
      name: `p${i}`,
      source: `127.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}:80`,
      destination: Array.from({ length: dests }, (_, d) => `127.0.0.1:${8000 + d}`),
    }),
  );
  return planTransaction(ps, []);
}

const ways: Record<string, (tx: Transaction) => Promise<unknown>> = { json: (tx) => A.commit(tx) };

const stat = (xs: number[]): string => {
  const s = [...xs].sort((a, b) => a - b);
  return `median ${(s[s.length >> 1]! * 1000).toFixed(1)} us  p99 ${(s[Math.floor(s.length * 0.99)]! * 1000).toFixed(1)} us`;
};
for (const [profiles, dests] of [
  [1, 3],
  [20, 3],
  [200, 3],
  [1000, 3],
] as const) {
  const tx = plan(profiles, dests);
  const iterations = Math.max(10, Math.round(N / Math.max(1, profiles / 20)));
  const row: string[] = [];
  for (const [way, call] of Object.entries(ways)) {
    const times: number[] = [];
    for (let i = 0; i < iterations; i++) {
      const t0 = performance.now();
      const p = call(tx);
      times.push(performance.now() - t0);
      await p;
    }
    row.push(`${way}: ${stat(times)}`);
  }
  console.log(`plan of ${String(profiles).padStart(4)} profiles (${iterations} commits): ${row.join('  |  ')}`);
}
