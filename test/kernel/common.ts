/** Shared helpers of the kernel tests: which executors can run here, and the step runner. */
import { describe } from 'node:test';
import { kernelTestSupport } from '../harness/env.js';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { loadAddon } from '../../src/platform/addon.js';
import { findBinary } from '../../src/platform/spawn.js';
import { pairOf } from '../harness/pair.js';
import type { Step } from './fixtures/steps.js';
import type { CliResult } from '../harness/cli.js';

/** What one run of a step printed, and its exit code (the harness's CLI and process runs give it). */
export type Proc = CliResult;

const support = kernelTestSupport();
/** `false` when kernel tests can run, else the reason they are skipped. */
export const KERNEL_SKIP: string | false = support.ok ? false : support.reason;

const addon = loadAddon();
const nativeSkip = addon.ok ? false : `native addon unavailable: ${addon.reason}: ${addon.detail}`;
const nftNativeSkip =
  nativeSkip ||
  (typeof (addon.ok && addon.addon.nftCommit) === 'function' ? false : 'this build of the addon has no nft support');
const nftSkip = findBinary('nft') ? false : 'nft is not installed (apt-get install nftables)';

/** An engine × executor pair the contract suite runs against, with the reason it is skipped here (false = runs). */
export interface Pair {
  engine: 'legacy' | 'nft';
  executor: 'native' | 'spawn';
  /** e.g. `nft/native` */
  name: string;
  skip: string | false;
}
export const PAIRS: Pair[] = [
  { engine: 'legacy', executor: 'native', name: 'legacy/native', skip: KERNEL_SKIP || nativeSkip },
  { engine: 'legacy', executor: 'spawn', name: 'legacy/spawn', skip: KERNEL_SKIP },
  { engine: 'nft', executor: 'native', name: 'nft/native', skip: KERNEL_SKIP || nftNativeSkip },
  { engine: 'nft', executor: 'spawn', name: 'nft/spawn', skip: KERNEL_SKIP || nftSkip },
];
/**
 * A suite per pair, the pairs side by side and each pair's tests in order: `title over <pair>`,
 * inside a suite `title`. Every kernel case runs in namespaces of its own, so pairs share nothing but
 * the host-wide xtables lock, which legacy cases wait for. A file's time is then its longest pair's,
 * not the sum of four.
 */
export function describePairs(title: string, body: (pair: Pair) => void, pairs: Pair[] = PAIRS): void {
  describe(title, { concurrency: pairs.length }, () => {
    for (const p of pairs) describe(`${title} over ${p.name}`, { skip: p.skip, concurrency: 1 }, () => body(p));
  });
}

/** IPTLB_SOAK=1 (`npm run soak`): every pair runs every test, with the long counts. */
export const SOAK = !!process.env.IPTLB_SOAK;

/**
 * Whether `pair` runs a test of a layer above the executor: the state file's journal, the lock
 * (fairness, concurrent invocations), validation, the core's drift checks beside its own commits,
 * watch's settling, the CLI's output into pipes, health checks. Such a test commits through the executor as
 * any other, but what it checks is code that does not depend on which executor commits, and the
 * executors' own behaviour is proved by the tests that run on all four pairs. These tests run on the
 * native pairs (both engines), and on the spawn pairs too with IPTLB_SOAK=1: CI's time (the suite is
 * CPU-bound on 2 cores). The test is then not registered on the spawn pairs (as root a skipped test
 * fails the run), so the kernel cases per pair differ; the summary counts them.
 */
export function aboveExecutor(pair: Pick<Pair, 'executor'>): boolean {
  return SOAK || pair.executor === 'native';
}

/**
 * Whether `pair` runs a test of what the kernel does with a profile's rules once committed (how
 * connections split, rotate, stick): on the native pairs, and on the spawn pairs too with
 * IPTLB_SOAK=1, as {@link aboveExecutor}. Each engine's executors commit the same rules: test/native
 * compares the tables both leave (iptables-legacy-save and ip6tables-legacy-save of random profile
 * sets; nft's tables, IPv4 and IPv6, after the same op lists including weights, round-robin and
 * affinity), and the spawn pairs' other tests carry traffic through what they commit.
 */
export function rulesOnly(pair: Pick<Pair, 'executor'>): boolean {
  return aboveExecutor(pair);
}

/** The pairs that run the tests of layers above the executor ({@link aboveExecutor}). */
export const ABOVE_EXECUTOR_PAIRS: Pair[] = PAIRS.filter(aboveExecutor);

/** The legacy pairs only (tests of x_tables specifics). */
export const EXECUTORS = PAIRS.filter((p) => p.engine === 'legacy').map((p) => ({ name: p.executor, skip: p.skip }));

/** The flags that select a pair. */
export function pairFlags(p: Pair): string[] {
  return [`--engine=${p.engine}`, `--executor=${p.executor}`];
}

const STEPS = new URL('./fixtures/steps.js', import.meta.url).pathname;

/** Runs steps in a fresh network namespace; returns one result per step. */
export async function runSteps(steps: Step[], timeoutMs = 180_000): Promise<any[]> {
  return (await runJsonInFreshNetns(STEPS, [], { timeoutMs, input: JSON.stringify(steps) })) as any[];
}

/**
 * CLI args with the engine and executor (a pair, or an executor name for the legacy engine) and a private state file.
 */
export function cli(pair: Pair | string, ...args: string[]): Step {
  const flags = typeof pair === 'string' ? pairOf(pair).flags : pairFlags(pair);
  return { op: 'cli', args: [...flags, '-state-file=$WORK/state.db', ...args] };
}

export const VIP = '127.100.0.10';
export const BACKENDS = [9001, 9002, 9003];
export const DEST = BACKENDS.map((p) => `127.0.0.1:${p}`).join(',');

export function ok(p: Proc, what = 'iptlb'): void {
  if (p.code !== 0) throw new Error(`${what} exited ${p.code}: ${p.stderr.trim()}`);
}

/**
 * Polls `fn` every 50 ms until it gives a truthy value, which it returns; after `ms` it throws, naming
 * `what` and the last error `fn` threw (a hang guard for a test, not a measure).
 */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end)
      throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
