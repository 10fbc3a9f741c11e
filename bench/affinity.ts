/**
 * Kernel memory of nft session-affinity profiles before any client comes (`npm run bench -- affinity`). The kernel
 * sizes a set's hash table by the size the set is made with, at once and empty (about 2 MB for 65,535 elements), and
 * an affinity profile has a client set and one set per destination. Three ways of making the sets, side by side in
 * one run, each loaded with one `nft -f` into table ip iptlb of this namespace:
 *  - every set made with its limit (iptlb until 2026-12-07);
 *  - every set made without a size, the kernel giving it 65,535 when a rule updates it (kernels before 6.6:
 *    IPTLB_TEST_NFT_SET_SIZE_UPDATE=0);
 *  - every set made without a size and given its limit by a second `add set` in the same transaction (6.6 and
 *    later: IPTLB_TEST_NFT_SET_SIZE_UPDATE=1).
 * Counted: the machine's Slab (/proc/meminfo) after the load minus before, per profile, and the load's time. The
 * machine is shared: other processes' slab moves too (read the spreads).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { validateProfile } from '../src/model/profile.js';
import { planNftRebuild } from '../src/engines/nft/plan.js';
import { renderNft } from '../src/engines/nft/render.js';
import { affinitySetSize, type NftOp } from '../src/engines/nft/ops.js';
import type { Profile } from '../src/model/types.js';

const slabKb = (): number => Number(/^Slab:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const flush = (): void =>
  void execFileSync('nft', ['-f', '-'], { input: 'add table ip iptlb\ndelete table ip iptlb\n' });

function profiles(n: number, dests: number): Profile[] {
  return Array.from({ length: n }, (_, i) =>
    validateProfile({
      name: `a${i}`,
      source: `127.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}:8081`,
      destination: Array.from({ length: dests }, (_, k) => `127.0.0.1:${9001 + k}`),
      affinity: 600,
    }),
  );
}

const MODES = [
  { key: 'atCreation', label: 'every set made with its limit (until 2026-12-07)', update: '1', old: true },
  {
    key: 'kernelLimit',
    label: "sets made without a size, the kernel's limit (kernels before 6.6)",
    update: '0',
    old: false,
  },
  { key: 'byUpdate', label: 'sets made without a size, then given it (6.6 and later)', update: '1', old: false },
] as const;

/** The nft text of the profiles' table in one mode. */
function text(list: Profile[], mode: (typeof MODES)[number]): string {
  const before = process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE;
  process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE = mode.update;
  try {
    const tx = planNftRebuild(list);
    if (!mode.old) return renderNft(tx);
    const ops: NftOp[] = tx.ops.map((o) =>
      o.op === 'addAffinitySet' ? { op: o.op, name: o.name, timeout: o.timeout, size: affinitySetSize(o.name) } : o,
    );
    return renderNft({ ...tx, ops });
  } finally {
    if (before === undefined) delete process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE;
    else process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE = before;
  }
}

/** Waits (up to 10 s) for the machine's slab to come back near `base` after a flush (the kernel frees sets late). */
async function settle(base: number): Promise<void> {
  for (let i = 0; i < 50 && slabKb() - base > 20 * 1024; i++) await sleep(200);
}

export async function benchAffinity(o: { log: (s: string) => void; runs: number; n: number; dests: number }) {
  const list = profiles(o.n, o.dests);
  const texts = new Map(MODES.map((m) => [m.key, text(list, m)]));
  const mb: Record<string, number[]> = Object.fromEntries(MODES.map((m) => [m.key, []]));
  const ms: Record<string, number[]> = Object.fromEntries(MODES.map((m) => [m.key, []]));
  o.log(`\n## nft affinity sets' kernel memory, ${o.n} profiles of ${o.dests} destinations, before any client`);
  for (let run = 0; run < o.runs; run++)
    for (const m of MODES) {
      flush();
      await sleep(300);
      const base = slabKb();
      const t0 = performance.now();
      execFileSync('nft', ['-f', '-'], { input: texts.get(m.key), maxBuffer: 1 << 30 });
      ms[m.key].push(performance.now() - t0);
      await sleep(500);
      mb[m.key].push((slabKb() - base) / 1024 / o.n);
      flush();
      await settle(base);
    }
  const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  const spread = (xs: number[], f: (x: number) => string): string =>
    `${f(med(xs))} [${f(Math.min(...xs))}..${f(Math.max(...xs))}]`;
  const out: Record<string, unknown> = { profiles: o.n, destinations: o.dests, runs: o.runs };
  for (const m of MODES) {
    o.log(
      `  ${m.label}: ${spread(mb[m.key], (x) => x.toFixed(2))} MB of slab per profile; load ${spread(ms[m.key], (x) => x.toFixed(0))} ms`,
    );
    out[m.key] = { mbPerProfile: mb[m.key], loadMs: ms[m.key] };
  }
  const ratio = mb.byUpdate.map((x, i) => x / mb.atCreation[i]);
  o.log(`  by update / at creation: ${spread(ratio, (x) => x.toFixed(3))}×`);
  out.ratio = ratio;
  return out;
}
