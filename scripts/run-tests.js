#!/usr/bin/env node
// Runs every compiled test file with node's built-in test runner. Arguments narrow the set:
// `node scripts/run-tests.js unit` runs the files whose path contains "unit".
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'dist', 'test');
function walk(d) {
  return readdirSync(d).flatMap((f) => {
    const p = path.join(d, f);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.test.js') ? [p] : [];
  });
}
const filters = process.argv.slice(2);
const files = walk(dir)
  .sort()
  .filter((f) => !filters.length || filters.some((x) => f.includes(x)));
if (!files.length) {
  console.error(
    `no test files under ${dir}${filters.length ? ` matching ${filters.join(', ')}` : ''}; run npm run build first`,
  );
  process.exit(1);
}
// The reporter adds the kernel cases per pair and the skipped tests to the summary, and leaves its
// verdict in a file: as root, a skipped test fails the run.
const verdictFile = path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-tests-')), 'verdict.json');
const reporter = path.join(root, 'scripts', 'reporter.mjs');
// Test files run side by side, each in its own process (kernel cases each in their own namespaces; the
// legacy ones share the host-wide xtables lock, which they wait for): cores + 1 at once by default, as
// much of a kernel test is waiting. IPTLB_TEST_CONCURRENCY overrides it.
const concurrency = process.env.IPTLB_TEST_CONCURRENCY ?? String(availableParallelism() + 1);
const r = spawnSync(
  process.execPath,
  [
    '--expose-gc',
    '--test',
    `--test-concurrency=${concurrency}`,
    `--test-reporter=${reporter}`,
    '--test-reporter-destination=stdout',
    ...files,
  ],
  {
    stdio: 'inherit',
    cwd: root,
    env: { ...process.env, IPTLB_TEST_VERDICT: verdictFile },
  },
);
let verdict = { failed: false };
try {
  verdict = JSON.parse(readFileSync(verdictFile, 'utf8'));
} catch {}
rmSync(path.dirname(verdictFile), { recursive: true, force: true });
process.exit(r.status !== 0 ? (r.status ?? 1) : verdict.failed ? 1 : 0);
