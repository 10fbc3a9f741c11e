/**
 * What `iptlb watch` runs beside its sync loop: the health checks of the profiles (a
 * {@link HealthChecker} on the watch's core) and, with `--metrics-address`, the /metrics and
 * /healthz server.
 */
import type { Core } from '../core/core.js';
import { HealthChecker, coreHost, heldHost } from '../health/checker.js';
import type { Profile } from '../model/types.js';
import { ProcessStats, parseListenAddress, startMetricsServer, type MetricsServer } from '../metrics/server.js';

export interface WatchServices {
  onSync: (r: { drifted: number; committed: boolean; commitMs: number } | Error, drifted?: number) => void;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * @param o.extra more exposition text for /metrics (the fleet agent: applied revision, watch state).
 * @param o.who the name in log lines (`watch`, `agent`).
 */
export async function startWatchServices(
  core: Core,
  o: {
    metricsAddress?: string;
    health: boolean;
    log: (l: string) => void;
    extra?: () => string;
    who?: string;
    /** Watch mode: the profiles the kernel was last brought in step with; the health checks follow them (heldHost). */
    held?: () => ReadonlyMap<string, Profile> | undefined;
    /** Watch mode: why the state file is not applied while it does not exist (/healthz answers 503 with it). */
    stateMissing?: () => string | undefined;
    /** Watch mode: the version applied while the file has not settled (/healthz compares the kernel with it then). */
    settling?: () => Promise<ReadonlyMap<string, Profile> | undefined>;
  },
): Promise<WatchServices> {
  if (o.metricsAddress !== undefined) parseListenAddress(o.metricsAddress); // bad input: fail before anything starts
  const stats = new ProcessStats();
  const host = o.held ? heldHost(core, o.held) : coreHost(core);
  const commit = host.commit;
  host.commit = async () => {
    const r = await commit();
    if (r.committed) stats.observeCommit(r.commitMs);
    return r;
  };
  const checker = o.health ? new HealthChecker(host, { log: o.log }) : undefined;
  let server: MetricsServer | undefined;
  let stopped: Promise<void> | undefined;
  return {
    onSync: (r, drifted) => stats.observeSync(r, drifted),
    async start() {
      // The address first: one that cannot be listened on (in use, not local) fails before the
      // checks start, so no health file is left behind.
      if (o.metricsAddress !== undefined) {
        server = await startMetricsServer({
          address: o.metricsAddress,
          core,
          stats,
          ...(checker ? { checker } : {}),
          ...(o.extra ? { extra: o.extra } : {}),
          ...(o.stateMissing ? { stateMissing: o.stateMissing } : {}),
          ...(o.settling ? { settling: o.settling } : {}),
        });
      }
      try {
        if (checker) await checker.start();
      } catch (e) {
        await server?.close();
        throw e;
      }
      if (server)
        o.log(
          `${o.who ?? 'watch'}: serving /metrics and /healthz on ${server.host.includes(':') ? `[${server.host}]` : server.host}:${server.port}`,
        );
    },
    stop() {
      stopped ??= (async () => {
        await server?.close();
        await checker?.stop();
      })();
      return stopped;
    },
  };
}
