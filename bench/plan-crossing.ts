/**
 * How the legacy plan crosses into C++: the main-thread time of one commit call, by plan size.
 * Measured is the synchronous part only (from the call until it returns its promise: JSON.stringify,
 * one string copy and the option checks); the kernel work on the addon's thread is awaited outside
 * the timing. Until ABI 13 the addon also took the plan as N-API objects; docs/architecture.md has
 * both measured side by side with this script. Must run in a throwaway namespace:
 *   npx tsc -p . && unshare -n -- node dist/bench/plan-crossing.js [iterations]
 */
import { loadAddon } from '../src/platform/addon.js';
import type { Rule, Transaction } from '../src/model/types.js';

const loaded = loadAddon();
if (!loaded.ok) throw new Error(`${loaded.reason}: ${loaded.detail}`);
const A = loaded.addon;
const N = Number(process.argv[2] ?? 200);

function plan(profiles: number, dests: number): Transaction {
  const tx: Transaction = { family: 'ipv4', table: 'nat', owners: [], deleteChains: [], chains: [], hookRules: [] };
  for (let i = 0; i < profiles; i++) {
    const name = `p${i}`;
    const chain = `IPTLB_NAT_P${i}`;
    const vip = `127.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
    const rules: Rule[] = [];
    for (let d = 0; d < dests; d++)
      rules.push({
        dst: `${vip}/32`,
        proto: 'tcp',
        matches: [
          { name: 'tcp', dport: 80 },
          ...(d < dests - 1
            ? [{ name: 'statistic' as const, mode: 'random' as const, probability: (1 / (dests - d)).toFixed(10) }]
            : []),
        ],
        target: { name: 'DNAT', toDestination: `127.0.0.1:${8000 + d}` },
      });
    rules.push({ matches: [], target: { name: 'RETURN' } });
    tx.owners.push(name);
    tx.chains.push({ name: chain, rules });
    tx.hookRules.push({
      chain: 'OUTPUT',
      owner: name,
      rule: {
        dst: `${vip}/32`,
        proto: 'tcp',
        matches: [
          { name: 'comment', comment: `iptlb:${name}` },
          { name: 'tcp', dport: 80 },
        ],
        target: { name: 'jump', chain },
      },
    });
  }
  return tx;
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
