/**
 * What every command shares: its output, the {@link Core} it drives (made from the global flags), the
 * exit status it ends with, and the lines that describe a profile.
 */
import { IptlbError } from '../model/errors.js';
import { Core, type TransactionResult } from '../core/core.js';
import { executorChoiceOf } from '../engines/executors.js';
import { engineChoiceOf } from '../engines/select.js';
import { weightOf } from '../model/profile.js';
import type { Profile } from '../model/types.js';
import { healthFileOf } from '../health/effective.js';
import type { GlobalOpts } from './flags.js';

/**
 * Where a command's lines go. `closed` (the process's own output, src/cli/stdio.ts) is aborted once the
 * reader of stdout or stderr has gone away: `top` and `status --watch` then stop as on SIGTERM (the
 * daemons, watch and agent, go on without their log).
 */
export type Out = {
  out: (s: string) => void;
  err: (s: string) => void;
  closed?: AbortSignal;
  /** The code of a write to stdout that failed for another reason than its reader going away (ENOSPC…). */
  failed?: () => string | undefined;
};

/** Calls `stop` once the output of `io` is gone (at once when it already is); returns the unsubscribe. */
export function onClosed(io: Out, stop: () => void): () => void {
  const signal = io.closed;
  if (!signal) return () => {};
  if (signal.aborted) {
    queueMicrotask(stop);
    return () => {};
  }
  signal.addEventListener('abort', stop, { once: true });
  return () => signal.removeEventListener('abort', stop);
}

/** Ends the run with this exit status (no message: the command printed what it had to say). */
export class ExitCode extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** Every Core of this run: {@link main} waits for their conntrack cleanup before it returns. */
const cores = new Set<Core>();

/** A change, and its conntrack cleanup done before it returns: the CLI exits right after. */
export async function transact(core: Core, ...args: Parameters<Core['transact']>): Promise<TransactionResult> {
  // The CLI's changes are decided by pure functions: bad input is refused before the lock's files are made.
  // And profiles applied again as the state has them clean up the flows of what the kernel held for them.
  const result = await core.transact(args[0], { ...args[1], decideFirst: true, cleanAgain: true });
  await core.conntrackIdle();
  return result;
}

export function makeCore(o: GlobalOpts, io: Out): Core {
  if (o.stateFile === '')
    throw new IptlbError('EUSAGE', 'state-file: must not be empty (omit the flag for the default ./local/state.db)', {
      field: 'state-file',
    });
  const quiet = o.quiet;
  const core = new Core({
    stateFile: o.stateFile,
    executor: executorChoiceOf(o.executor),
    engine: engineChoiceOf(o.engine),
    keepConntrack: !!o.keepConntrack,
    ...(quiet ? {} : { log: (line: string) => io.err(`iptlb: ${line}`) }),
  });
  // One change of a one-shot process: the state file is indexed, not read into a profile per block.
  core.indexedReads = true;
  cores.add(core);
  // Health is checked by a long-running process (watch, agent); follow what it publishes.
  if (core.statePath !== null) core.health.follow(healthFileOf(core.statePath));
  return core;
}

/** A command's result: with --verbose what it committed ({@link verboseRules}), with --json the result on stdout. */
export function report(result: object, o: GlobalOpts, io: Out, verbose?: () => void): void {
  if (o.verbose) verbose?.();
  if (o.json) io.out(JSON.stringify(result));
  // A change committed while iptlb's rules are in both engines (after a killed migrate): said, exit 3, as
  // status and sync do; --quiet does not hide it.
  const split = (result as { split?: unknown }).split;
  if (typeof split === 'string') {
    io.err(`iptlb: ${split}`);
    throw new ExitCode(3);
  }
}

/**
 * Prints what the last change, sync or migration of `core` committed, each transaction as the engine
 * that committed it describes it (restore rules, or nft lines): `--verbose` of every command that
 * commits.
 */
export function verboseRules(core: Core, io: Out): () => void {
  return () => {
    for (const { engine, tx } of core.commits)
      for (const line of engine.describeTransaction(tx)) io.err(`iptlb:   ${line}`);
  };
}

/** The destinations as the command line takes them: `ip:port`, with `*W` when the weight is not 1. */
export function describeDestinations(p: Profile): string {
  return p.destination.map((d) => (weightOf(p, d) === 1 ? d : `${d}*${weightOf(p, d)}`)).join(',');
}

export function describeProfile(p: Profile): string {
  const dests = describeDestinations(p);
  return `${p.name}\t${p.source}/${p.protocol}\t${p.rulesBackend}${p.masquerade ? '+masquerade' : ''}\t${dests}${p.scheduler ? `\tscheduler:${p.scheduler}` : ''}${p.affinity ? `\taffinity:${p.affinity}s` : ''}${p.logEnabled ? `\tlog:${p.logLevel}` : ''}`;
}

/** Waits for the conntrack cleanup of every Core of this run (one-shot: the exit must not cut it short). */
export async function coresIdle(): Promise<void> {
  const waiting = [...cores];
  cores.clear();
  await Promise.all(waiting.map((c) => c.conntrackIdle()));
}
