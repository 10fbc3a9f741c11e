/**
 * Micro benchmark of the native executor: wall time of one commit (xtables lock + iptc_init + modify
 * + iptc_commit, on the worker thread) for a one-profile change, on an empty nat table and with 1,000
 * profiles (chain + hook rule each) already loaded. Must run in a throwaway namespace:
 *   npx tsc -p . && unshare -n -- node dist/bench/native-commit.js [iterations]
 */
import { readFileSync } from 'node:fs';
import { loadAddon } from '../src/platform/addon.js';
import type { Rule, Transaction } from '../src/model/types.js';

if (
  readFileSync('/proc/self/net/dev', 'utf8')
    .split('\n')
    .slice(2)
    .some((l) => l.includes(':') && l.split(':')[0].trim() !== 'lo')
) {
  console.error('run me in a fresh network namespace: unshare -n -- node dist/bench/native-commit.js');
  process.exit(2);
}
const loaded = loadAddon();
if (!loaded.ok) throw new Error(`${loaded.reason}: ${loaded.detail}`);
const A = loaded.addon;
const N = Number(process.argv[2] ?? 2000);

function profile(i: number, dests: number): Transaction {
  const name = `b${i}`;
  const chain = `IPTLB_NAT_B${i}`;
  const vip = `127.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
  const rules: Rule[] = [];
  for (let d = 0; d < dests; d++) {
    rules.push({
      dst: `${vip}/32`,
      proto: 'tcp',
      matches: [
        { name: 'tcp', dport: 80 },
        ...(d < dests - 1
          ? [{ name: 'statistic' as const, mode: 'random' as const, probability: (1 / (dests - d)).toFixed(10) }]
          : []),
      ],
      target: { name: 'DNAT', toDestination: `10.0.${d}.1:8080` },
    });
  }
  rules.push({ matches: [], target: { name: 'RETURN' } });
  return {
    family: 'ipv4',
    table: 'nat',
    owners: [name],
    deleteChains: [],
    chains: [{ name: chain, rules }],
    hookRules: [
      {
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
      },
    ],
  };
}

async function measure(label: string): Promise<void> {
  const inWorker: number[] = [];
  const wall: number[] = [];
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    const r = await A.commit(profile(999_999 - (i % 2), 3));
    wall.push(performance.now() - t0);
    inWorker.push(r.durationMs);
  }
  const stat = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return `median ${s[s.length >> 1].toFixed(3)} ms, p99 ${s[Math.floor(s.length * 0.99)].toFixed(3)} ms, mean ${(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(3)} ms`;
  };
  console.log(`${label}: commit (worker: lock+init+modify+commit) ${stat(inWorker)}; promise round trip ${stat(wall)}`);
}

await measure('empty table');
for (let i = 0; i < 1000; i += 100) {
  const txs = Array.from({ length: 100 }, (_, k) => profile(i + k, 3));
  await A.commit({
    family: 'ipv4',
    table: 'nat',
    owners: txs.flatMap((t) => t.owners),
    deleteChains: [],
    chains: txs.flatMap((t) => t.chains),
    hookRules: txs.flatMap((t) => t.hookRules),
  });
}
const view = await A.read();
console.log(`loaded ${view.chains.length} chains, ${view.hookRules.length} hook rules`);
await measure('1,000 profiles loaded');
