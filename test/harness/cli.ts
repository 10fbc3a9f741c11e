/**
 * The CLI for kernel fixtures: either as a process (`node bin/iptlb.cjs …`, as users run it) or in the
 * fixture's own process, through the same bundle (`dist/iptlb.cjs`, loaded as bin/iptlb.cjs loads it)
 * and its `main(argv, io)`, which bin/iptlb.cjs calls and whose exit code it exits with.
 *
 * Why in-process: a CLI process costs about 90 ms of CPU on this machine, most of it Node starting
 * (page faults, V8 deserialising its snapshot), and the kernel tests ran about 1,800 of them, a third of
 * the suite's CPU; a call of `main` in a process that has loaded the bundle costs 3-5 ms. The path
 * from the command line to the kernel is the same: argument parsing, validation, the core, the
 * executor, the addon or the spawned tools, the state file. What only a process shows (bin/iptlb.cjs,
 * the exit, output into pipes, signals, concurrent invocations, a crash) is tested with processes:
 * `parallel-cli` steps, the crash, fairness and watch fixtures, kernel/cli-commits.test.ts, and the
 * first `cli` step of every steps run (fixtures/steps.ts).
 *
 * Calls in one process run one at a time, in order, as the processes they replace did. A call that
 * sets environment variables runs as a process. `IPTLB_TEST_CLI=process` (and `npm run soak`) runs
 * every call as a process.
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { CLI_PATH, PROJECT_ROOT } from './env.js';

/** What one CLI run printed, and its exit code. */
export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

type Main = (argv: string[], io: { out(s: string): void; err(s: string): void }) => Promise<number>;

/** Every call as a process: IPTLB_TEST_CLI=process, or a soak run. */
export const CLI_AS_PROCESS = process.env.IPTLB_TEST_CLI === 'process' || !!process.env.IPTLB_SOAK;

let main: Main | undefined;
let last: Promise<unknown> = Promise.resolve();

function loadMain(): Main {
  if (main) return main;
  const require = createRequire(import.meta.url);
  const { loadBundle } = require(path.join(PROJECT_ROOT, 'bin', 'load-bundle.cjs')) as {
    loadBundle(file: string): { main: Main };
  };
  main = loadBundle(path.join(PROJECT_ROOT, 'dist', 'iptlb.cjs')).main;
  return main;
}

/** Runs `iptlb args…` in this process (see above); calls run one after another. */
export function cliInProcess(args: string[]): Promise<CliResult> {
  const run = async (): Promise<CliResult> => {
    let stdout = '';
    let stderr = '';
    const code = await loadMain()([...args], {
      out: (s) => (stdout += `${s}\n`),
      err: (s) => (stderr += `${s}\n`),
    });
    return { code, stdout, stderr };
  };
  const p = last.then(run, run);
  last = p.catch(() => {});
  return p;
}

/** Runs `argv` as a process, stdin from /dev/null, with `env` added to this process's; never rejects. */
export function runProcess(argv: string[], env?: Record<string, string>): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', (e) => resolve({ code: -1, stdout, stderr: stderr + e.message }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs `node bin/iptlb.cjs args…` as a process ({@link runProcess}). */
export function cliProcess(args: string[], env?: Record<string, string>): Promise<CliResult> {
  return runProcess([process.execPath, CLI_PATH, ...args], env);
}

/**
 * Runs the CLI in this process, or as a process when `asProcess`, when `env` is given, or with
 * IPTLB_TEST_CLI=process.
 */
export function runCli(args: string[], opts: { env?: Record<string, string>; asProcess?: boolean } = {}) {
  return CLI_AS_PROCESS || opts.asProcess || opts.env ? cliProcess(args, opts.env) : cliInProcess(args);
}
