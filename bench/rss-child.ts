/**
 * Child of `npm run bench -- rss` (bench/legacy-perf.ts), in a network namespace of its own:
 * `rss-child.js <n> <engine> [bare]` opens an instance holding n profiles (a state file of n
 * profiles, synced into the kernel), applies one more profile, and prints two RSS figures in MiB:
 *  - `settled`: 600 ms after that apply, after two forced full GCs (the addon's deferred malloc trim
 *    runs 250 ms after the last commit) and 300 ms more, so that V8's background unmapper has given
 *    the pages freed by the last GC back (read at once, they still count: up to ~30 MiB here);
 *  - `idle`: IDLE_MS (default 20 s) after that apply, with no forced GC since: what a held instance
 *    that is left alone settles at, once V8's memory reducer has shrunk the heap (it starts about 8 s
 *    after the last full GC).
 * `bare` prints the same two figures of a Node process that loaded nothing. The library is the
 * package's ESM entry, dist/index.mjs (IPTLB_BENCH_RSS_ENTRY=../src/index.js: the unbundled files).
 */
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

const [nText, engine, bare] = process.argv.slice(2);
const mib = (): number => process.memoryUsage().rss / 1048576;
const IDLE_MS = Number(process.env.IPTLB_BENCH_RSS_IDLE_MS ?? 20000);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Prints "<settled> <idle>", measured from `t0` (just after the last change). */
const measure = async (t0: number): Promise<void> => {
  (globalThis as { gc?: () => void }).gc?.();
  await sleep(600);
  (globalThis as { gc?: () => void }).gc?.();
  await sleep(300);
  const settled = mib();
  await sleep(Math.max(0, t0 + IDLE_MS - performance.now()));
  process.stdout.write(`${settled.toFixed(1)} ${mib().toFixed(1)}\n`);
};
if (bare) {
  await measure(performance.now());
} else {
  // The package's ESM entry as `import 'iptlb'` loads it (dist/index.mjs: the one CommonJS bundle, re-exported).
  const entry = process.env.IPTLB_BENCH_RSS_ENTRY ?? '../index.mjs';
  const { open, validateProfile, serializeState } = (await import(entry)) as typeof import('../src/index.js');
  const n = Number(nText);
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-rss-'));
  const stateFile = path.join(dir, 'state.db');
  const profiles = Array.from({ length: n }, (_, i) =>
    validateProfile({
      name: `p${i}`,
      source: `127.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}:8081`,
      destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
    }),
  );
  writeFileSync(stateFile, serializeState(profiles), { mode: 0o600 });
  profiles.length = 0;
  const lb = await open({ stateFile, engine: engine as 'legacy' | 'nft', executor: 'native' });
  if (n) await lb.sync();
  await lb.apply({ name: 'extra', source: '127.99.0.1:80', destination: ['127.0.0.1:9005'] });
  await measure(performance.now());
  await lb.delete('extra');
  await lb.close();
  rmSync(dir, { recursive: true, force: true });
}
