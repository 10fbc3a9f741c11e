/**
 * Child of `npm run bench -- rss` (bench/legacy-perf.ts), inside the bench's namespace:
 * `rss-child.js <n> <engine> [bare]` opens an instance holding n profiles (a state file of n
 * profiles, synced into the kernel), waits for the addon's deferred malloc trim, and prints its RSS
 * in MiB. `bare` prints the RSS of a Node process that loaded nothing.
 */
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

const [nText, engine, bare] = process.argv.slice(2);
const mib = (): number => process.memoryUsage().rss / 1048576;
const settle = async (): Promise<void> => {
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((r) => setTimeout(r, 600));
  (globalThis as { gc?: () => void }).gc?.();
};
if (bare) {
  await settle();
  process.stdout.write(`${mib().toFixed(1)}\n`);
} else {
  const { open } = await import('../src/index.js');
  const { validateProfile } = await import('../src/model/profile.js');
  const { serializeState } = await import('../src/core/state.js');
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
  await settle();
  process.stdout.write(`${mib().toFixed(1)}\n`);
  await lb.delete('extra');
  await lb.close();
  rmSync(dir, { recursive: true, force: true });
}
