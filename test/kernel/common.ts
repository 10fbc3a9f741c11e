/** Shared helpers of the kernel tests: which executors can run here, and the step runner. */
import { kernelTestSupport } from '../harness/env.js';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { loadAddon } from '../../src/native/addon.js';
import type { Step } from './fixtures/steps.js';

export interface Proc {
  code: number | null;
  stdout: string;
  stderr: string;
}

const support = kernelTestSupport();
/** `false` when kernel tests can run, else the reason they are skipped. */
export const KERNEL_SKIP: string | false = support.ok ? false : support.reason;

const addon = loadAddon();
/** Each executor with the reason it is skipped here (false = runs). */
export const EXECUTORS: { name: 'native' | 'spawn'; skip: string | false }[] = [
  { name: 'native', skip: KERNEL_SKIP || (addon.ok ? false : `native addon unavailable: ${addon.reason}: ${addon.detail}`) },
  { name: 'spawn', skip: KERNEL_SKIP },
];

const STEPS = new URL('./fixtures/steps.js', import.meta.url).pathname;

/** Runs steps in a fresh network namespace; returns one result per step. */
export async function runSteps(steps: Step[], timeoutMs = 180_000): Promise<any[]> {
  return (await runJsonInFreshNetns(STEPS, [], { timeoutMs, input: JSON.stringify(steps) })) as any[];
}

/** CLI args with the executor and a private state file. */
export function cli(executor: string, ...args: string[]): Step {
  return { op: 'cli', args: [`--executor=${executor}`, '-state-file=$WORK/state.db', ...args] };
}

export const VIP = '127.100.0.10';
export const BACKENDS = [9001, 9002, 9003];
export const DEST = BACKENDS.map((p) => `127.0.0.1:${p}`).join(',');

export function ok(p: Proc, what = 'iptlb'): void {
  if (p.code !== 0) throw new Error(`${what} exited ${p.code}: ${p.stderr.trim()}`);
}
