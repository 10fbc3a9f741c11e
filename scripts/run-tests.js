#!/usr/bin/env node
// Runs every compiled test file with node's built-in test runner. Arguments narrow the set:
// `node scripts/run-tests.js unit` runs the files whose path contains "unit".
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
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
// Node's runner sorts the files by path whatever the order given (measured with Node 20: a list that put
// the longest files first ran them in path order), so they are not ordered here.
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
const runDir = mkdtempSync(path.join(tmpdir(), 'iptlb-tests-'));
const verdictFile = path.join(runDir, 'verdict.json');
// Every test process gets this run's own temporary directory (TMPDIR, which os.tmpdir() and mktemp
// follow), removed with everything in it when the run ends: the state files, sockets and data
// directories the tests make do not pile up in /tmp, also when a test fails before its cleanup.
const testTmp = path.join(runDir, 'tmp');
mkdirSync(testTmp, { mode: 0o700 });
const reporter = path.join(root, 'scripts', 'reporter.mjs');
// Test files run side by side, each in its own process (kernel cases each in their own namespaces; the
// legacy ones share the host-wide xtables lock, which they wait for): cores + 1 at once by default, as
// much of a kernel test is waiting. IPTLB_TEST_CONCURRENCY overrides it.
const concurrency = process.env.IPTLB_TEST_CONCURRENCY ?? String(availableParallelism() + 1);
// NODE_EXTRA_CA_CERTS (set on some hosts to a whole CA bundle) makes every Node process parse that
// bundle as it starts: here 144 certificates, 2-3x the time of a bare `node -e 0` (about 30 vs 75 ms
// of CPU). The suite starts over a thousand Node processes (CLI calls, fixtures) and none of them
// makes a TLS connection to a public host, so the tests run without it; the install test hands it
// back to npm, which may need it to reach the registry (test/harness/env.ts, registryEnv).
// The state-file registry (src/core/registry.ts) of processes that run iptlb outside the harness's
// namespaces (which give each namespace a registry of its own): in the run's directory, not /run.
const env = {
  ...process.env,
  IPTLB_TEST_VERDICT: verdictFile,
  TMPDIR: testTmp,
  IPTLB_REGISTRY_DIR: path.join(runDir, 'registry'),
};
if (env.NODE_EXTRA_CA_CERTS) {
  env.IPTLB_TEST_NODE_EXTRA_CA_CERTS = env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_EXTRA_CA_CERTS;
}
// Ctrl-C reaches the test runner too (one process group): this process waits for it to end, then
// removes the run's directory, instead of dying at once and leaving it behind.
process.on('SIGINT', () => {});
const r = spawnSync(
  process.execPath,
  [
    '--expose-gc',
    '--test',
    // A file whose tests have all ended exits even when a failed test left a timer or a socket behind
    // (its `after` hooks and the harness's exit handlers still run). Without it, that file's process,
    // and with it the whole run, waited forever: CI would end only at its time limit.
    '--test-force-exit',
    `--test-concurrency=${concurrency}`,
    `--test-reporter=${reporter}`,
    '--test-reporter-destination=stdout',
    ...files,
  ],
  {
    stdio: 'inherit',
    cwd: root,
    env,
  },
);
let verdict = { failed: false };
try {
  verdict = JSON.parse(readFileSync(verdictFile, 'utf8'));
} catch {}
rmSync(runDir, { recursive: true, force: true });
process.exit(r.status !== 0 ? (r.status ?? 1) : verdict.failed ? 1 : 0);
