/** `iptlb watch`: keep the kernel in step with the state file, with health checks and metrics. */
import type { Command } from 'commander';
import { addGlobal, wholeMs, withGlobals, type GlobalOpts } from '../flags.js';
import { makeCore, type Out } from '../context.js';
import { lstatSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { IptlbError } from '../../model/errors.js';

export function register(program: Command, io: Out): void {
  addGlobal(
    program
      .command('watch')
      .description(
        'keep the kernel in step with the state file (for a systemd unit); SIGHUP checks at once, SIGTERM stops and leaves the rules (health-drained destinations get their weights back)',
      ),
    { result: false },
  )
    .option('--interval <ms>', 'periodic drift check (100-86400000)', '5000')
    .option(
      '--settle <ms>',
      'apply a changed state file only once it has not changed for this long and parses as a whole (writers: write a temporary file and rename it; 0-600000)',
      '1000',
    )
    .option(
      '--metrics-address <host:port>',
      'serve /metrics (Prometheus) and /healthz there, e.g. 127.0.0.1:9469 (default: off)',
    )
    .option('--no-health-checks', 'do not run the health checks of the profiles (they run by default in watch)')
    .action(
      async (
        o: GlobalOpts & { interval: string; settle: string; metricsAddress?: string; healthChecks: boolean },
        cmd: Command,
      ) => {
        const g = withGlobals(o, cmd);
        // At most a day, as the library's driftCheckMs.
        const interval = wholeMs(o.interval, 'interval', 100, 86_400_000);
        const settle = wholeMs(o.settle, 'settle', 0, 600_000);
        const core = makeCore(g, io);
        if (core.statePath !== null) refuseSymlink(core.statePath);
        const { startWatch } = await import('../../core/watch.js');
        const { startWatchServices } = await import('../watch-services.js');
        const log = g.quiet ? () => {} : (l: string) => io.err(`iptlb: ${l}`);
        // The health checks follow the version of the file the watch applied, not the file itself:
        // a version that has not settled (or does not parse) is not the kernel's, and a health commit
        // must not carry it there ahead of the watch.
        const started: { watch?: ReturnType<typeof startWatch> } = {};
        const services = await startWatchServices(core, {
          metricsAddress: o.metricsAddress,
          health: o.healthChecks,
          log,
          held: () => started.watch?.applied(),
          stateMissing: () => started.watch?.missing(),
          settling: () => started.watch?.unsettled() ?? Promise.resolve(undefined),
        });
        // The services first: a metrics address that cannot be listened on fails before the watch
        // starts (one line, nothing left behind).
        await runWatch(process, services, () => {
          const w = startWatch(core, { intervalMs: interval, settleMs: settle, log, onSync: services.onSync });
          started.watch = w;
          log(`watch: watching ${core.statePath} (check every ${interval} ms)`);
          return w;
        });
      },
    );
}

/**
 * A state file that is a symbolic link is never read (O_NOFOLLOW): a watch started on one would run on,
 * applying nothing, with /healthz 503, until someone read its log (a Kubernetes ConfigMap or Secret volume,
 * whose `state.db` is a link to `..data/state.db`). Refused at start instead, exit 1, naming the file to
 * give; a file that becomes a link later is not applied, as one that does not parse.
 */
function refuseSymlink(file: string): void {
  let target: string;
  try {
    if (!lstatSync(file).isSymbolicLink()) return;
    target = readlinkSync(file);
  } catch {
    return; // absent (waited for) or unreadable: the watch says so
  }
  const hint = /^\.\.data\//.test(target)
    ? ` (a Kubernetes ConfigMap or Secret volume: -state-file=${path.join(path.dirname(file), target)}, which follows its updates)`
    : '';
  throw new IptlbError(
    'ESTATE',
    `state file ${file} is a symbolic link (to ${target}), which iptlb never follows: name the file itself with -state-file${hint}`,
  );
}

/**
 * The watch's life: its services (health checks, metrics) started, then the watcher, until SIGTERM or
 * SIGINT; then both stopped. The three signals are taken from the start to the end: a SIGHUP (`systemctl
 * reload`) while the services start (a second or so with health checks) or while they stop (the checker
 * giving drained destinations their weights back) killed the process with exit 129, which systemd's
 * `Restart=on-failure` takes for a clean stop and does not restart; a SIGHUP before the watcher runs needs
 * nothing (its first check reads the file), and once it runs the watcher's own listener checks. SIGTERM or
 * SIGINT while the services start stops them once started, and the watcher is not started. The reader of
 * its output gone (a log pipe that broke): it goes on, its lines dropped. It keeps the kernel in step;
 * under `Restart=on-failure` a watch that ended with 0 would not come back.
 */
export async function runWatch(
  proc: Pick<NodeJS.Process, 'on' | 'removeListener'>,
  services: { start(): Promise<void>; stop(): Promise<void> },
  start: () => { stop(): Promise<void>; done: Promise<void> },
): Promise<void> {
  let w: { stop(): Promise<void>; done: Promise<void> } | undefined;
  let stopping = false;
  const hup = (): void => {};
  const stop = (): void => {
    stopping = true;
    void w?.stop();
  };
  proc.on('SIGHUP', hup);
  proc.on('SIGTERM', stop);
  proc.on('SIGINT', stop);
  try {
    await services.start();
    try {
      if (stopping) return;
      w = start();
      await w.done;
    } finally {
      await services.stop();
    }
  } finally {
    proc.removeListener('SIGHUP', hup);
    proc.removeListener('SIGTERM', stop);
    proc.removeListener('SIGINT', stop);
  }
}
