/** `iptlb agent`: registered on the program by src/cli/main.ts. */
import { Option, type Command } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { engineChoiceOf } from '../../engines/select.js';
import { executorChoiceOf } from '../../engines/executors.js';
import { addEtcdFlags, etcdOptions, ownOptions, type EtcdFlags } from '../etcd-flags.js';
import {
  DEFAULT_AGENT_STATE_FILE,
  MAX_AGENT_MS,
  MAX_LEASE_TTL_SEC,
  MAX_PAGE_SIZE,
  MIN_LEASE_TTL_SEC,
} from '../../fleet/agent.js';

interface Out {
  out(s: string): void;
  err(s: string): void;
  closed?: AbortSignal;
}
interface AgentFlags extends EtcdFlags {
  host?: string;
  stateFile?: string;
  engine?: string;
  executor?: string;
  minSyncMs: string;
  leaseTtl: string;
  checkMs: string;
  syncMs: string;
  pageSize: string;
  backoffMaxMs: string;
  quiet?: boolean;
  keepConntrack?: boolean;
  metricsAddress?: string;
  healthChecks?: boolean;
  allowEmptyStore?: boolean;
}

function whole(v: string, field: string, min: number, max = Number.MAX_SAFE_INTEGER, unit = ''): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max)
    throw new IptlbError(
      'EUSAGE',
      `${field}: ${JSON.stringify(v)} must be a whole number${unit}${max === Number.MAX_SAFE_INTEGER ? `, at least ${min}` : ` from ${min} to ${max}`}`,
      { field },
    );
  return n;
}

export function register(program: Command, io: Out): void {
  addEtcdFlags(
    program
      .command('agent')
      .description(
        'follow the profiles kept in etcd: list <prefix>profiles/ at one revision, apply them as one change, then watch; SIGHUP checks now (drift, a re-read of the store); SIGTERM stops and leaves the rules',
      ),
  )
    .option('--host <name>', 'this host in <prefix>hosts/<host> (default: the host name)')
    .option(
      '--state-file <path>',
      `the agent's own state file: the profiles it owns; one agent per state file (default ${DEFAULT_AGENT_STATE_FILE})`,
    )
    .addOption(new Option('--engine <engine>', 'legacy, nft or auto (env IPTLB_ENGINE; default auto)'))
    .addOption(new Option('--executor <kind>', 'native, spawn or auto (env IPTLB_EXECUTOR; default auto)'))
    .option('--min-sync-ms <ms>', 'at least this long between two commits of watch batches (0-3600000)', '100')
    .option('--lease-ttl <s>', 'TTL of the host status key, seconds (2-86400)', '10')
    .option('--check-ms <ms>', 'linearizable read every this long: a silent watch is not trusted (10-3600000)', '2000')
    .option('--sync-ms <ms>', 'drift check and repair every this long, without re-listing (0: off; 0-3600000)', '10000')
    .option('--backoff-max-ms <ms>', 'cap of the jittered backoff after a store failure (1-3600000)', '10000')
    .option(
      '--page-size <n>',
      `keys per page when listing (1-${MAX_PAGE_SIZE}: a page is one gRPC message of at most 4 MiB)`,
      '1000',
    )
    .option(
      '--allow-empty-store',
      'a list with no key under <prefix>profiles/ removes every profile the agent owns (default: kept, and said: a wrong --prefix or an empty etcd?)',
    )
    .option('--keep-conntrack', 'keep conntrack entries of flows to destinations a change removes')
    .option(
      '--metrics-address <host:port>',
      'serve /metrics (Prometheus) and /healthz there, e.g. 127.0.0.1:9469 (default: off)',
    )
    .option('--no-health-checks', 'do not run the health checks of the profiles (they run by default in the agent)')
    .option('-q, --quiet', 'print no log lines')
    .action(async (_o: unknown, cmd: Command) => {
      const o = ownOptions<AgentFlags>(cmd);
      const { etcd, prefix } = etcdOptions(o);
      const { parseListenAddress } = await import('../../metrics/server.js');
      if (o.metricsAddress !== undefined) parseListenAddress(o.metricsAddress); // bad input: before any connection
      const { Agent } = await import('../../fleet/agent.js');
      const agent = new Agent({
        etcd,
        prefix,
        ...(o.host !== undefined ? { host: o.host } : {}),
        ...(o.stateFile !== undefined ? { stateFile: o.stateFile } : {}),
        engine: engineChoiceOf(o.engine),
        executor: executorChoiceOf(o.executor),
        minSyncMs: whole(o.minSyncMs, 'min-sync-ms', 0, MAX_AGENT_MS, ' of ms'),
        leaseTtlSec: whole(o.leaseTtl, 'lease-ttl', MIN_LEASE_TTL_SEC, MAX_LEASE_TTL_SEC, ' of seconds'),
        checkMs: whole(o.checkMs, 'check-ms', 10, MAX_AGENT_MS, ' of ms'),
        syncMs: whole(o.syncMs, 'sync-ms', 0, MAX_AGENT_MS, ' of ms'),
        pageSize: whole(o.pageSize, 'page-size', 1, MAX_PAGE_SIZE, ' of keys'),
        backoffMaxMs: whole(o.backoffMaxMs, 'backoff-max-ms', 1, MAX_AGENT_MS, ' of ms'),
        keepConntrack: !!o.keepConntrack,
        allowEmptyStore: !!o.allowEmptyStore,
        log: o.quiet ? () => {} : (l) => io.err(`iptlb: ${l}`),
      });
      // Health checks of the owned profiles and /metrics, as in `iptlb watch`, on the agent's core; the
      // agent's own state (applied revision, watch state, refusals) joins the metrics.
      const { startWatchServices } = await import('../watch-services.js');
      const services = await startWatchServices(agent.core, {
        metricsAddress: o.metricsAddress,
        health: o.healthChecks !== false,
        log: o.quiet ? () => {} : (l) => io.err(`iptlb: ${l}`),
        who: 'agent',
        extra: () => agentMetrics(agent.status()),
      });
      agent.attachments.close = () => services.stop();
      wireAgentSyncs(agent, services.onSync);
      await runAgentCommand(process, services, agent);
    });
}

/**
 * The agent's life: its services (health checks, metrics) started, then the agent, until SIGTERM or SIGINT.
 * The agent lock first (another agent on the state file: the agent's own line, not the health checker's), then the
 * services, before the agent connects or lists: a metrics address that cannot be listened on, or
 * another process checking this state file's destinations, fails with one line before anything reaches the
 * kernel or the state file (as in `iptlb watch`); /healthz then answers while etcd is unreachable too. The
 * three signals are taken from the start to the end (a SIGHUP, `systemctl reload`, found no listener while
 * they started and killed the agent with exit 129, which `Restart=on-failure` does not restart): a SIGHUP
 * before the agent runs needs nothing (its first list reads the store); a SIGTERM or SIGINT then stops what
 * started once it has, and the agent is not started.
 */
export async function runAgentCommand(
  proc: Pick<NodeJS.Process, 'on' | 'removeListener'>,
  services: { start(): Promise<void>; stop(): Promise<void> },
  agent: {
    start(): Promise<void>;
    stop(why?: string): Promise<void>;
    checkNow(why?: string): Promise<void>;
    lock?(): Promise<void>;
    unlock?(): void;
  },
): Promise<void> {
  let early: string | undefined;
  const hup = (): void => {};
  const term = (): void => void (early ??= 'SIGTERM');
  const int = (): void => void (early ??= 'SIGINT');
  proc.on('SIGHUP', hup);
  proc.on('SIGTERM', term);
  proc.on('SIGINT', int);
  let started = false;
  try {
    await agent.lock?.();
    try {
      await services.start();
    } catch (e) {
      agent.unlock?.();
      throw e;
    }
    if (early === undefined) {
      try {
        await agent.start();
        started = true;
      } catch (e) {
        await services.stop();
        throw e;
      }
    }
  } finally {
    proc.removeListener('SIGHUP', hup);
    proc.removeListener('SIGTERM', term);
    proc.removeListener('SIGINT', int);
  }
  // (No await between the listeners above going and agentSignals' coming: no signal finds none.)
  if (early === undefined) return agentSignals(agent, proc);
  if (started) await agent.stop(early);
  else {
    await services.stop();
    agent.unlock?.();
  }
}

/**
 * SIGTERM and SIGINT stop the agent (logged; the rules stay); SIGHUP checks now, as in `iptlb watch`:
 * a drift check and a re-read of the store (it killed the agent silently, exit 129). The reader of its
 * output gone (`closed` aborted: a log pipe that broke) does not stop it: a daemon that keeps the
 * kernel in step goes on without its log (its lines are dropped), since a supervisor that restarts it
 * only on failure would not restart an agent that ended with 0. Resolves once stopped.
 */
export function agentSignals(
  agent: { stop(why?: string): Promise<void>; checkNow(why?: string): Promise<void> },
  proc: Pick<NodeJS.Process, 'on' | 'removeListener'>,
): Promise<void> {
  return new Promise<void>((resolve) => {
    // The listeners stay until the agent has stopped (its checker gives drained destinations their
    // weights back meanwhile): a SIGHUP then is ignored, not the end of the process (exit 129).
    let stopping = false;
    const hup = (): void => {
      if (!stopping) void agent.checkNow('SIGHUP');
    };
    const stop = (sig: string) => (): void => {
      if (stopping) return;
      stopping = true;
      void agent
        .stop(sig)
        .catch(() => {})
        .then(() => {
          proc.removeListener('SIGHUP', hup);
          proc.removeListener('SIGTERM', term);
          proc.removeListener('SIGINT', int);
          resolve();
        });
    };
    const term = stop('SIGTERM');
    const int = stop('SIGINT');
    proc.on('SIGHUP', hup);
    proc.on('SIGTERM', term);
    proc.on('SIGINT', int);
  });
}

/**
 * Each committed batch is the agent's sync: the sync gauges and counters follow it (they said "never
 * synced" on an agent that had committed), and a kernel refusal is a failed one.
 */
export function wireAgentSyncs(
  agent: Pick<import('node:events').EventEmitter, 'on'>,
  onSync: (r: { drifted: number; committed: boolean; commitMs: number } | Error) => void,
): void {
  agent.on('applied', (e: { upserted: number; removed: number; commitMs: number }) =>
    onSync({ drifted: 0, committed: e.upserted + e.removed > 0, commitMs: e.commitMs }),
  );
  let lastError: string | undefined;
  agent.on('status', (st: { error?: string }) => {
    if (st.error?.startsWith('kernel:') && st.error !== lastError) onSync(new Error(st.error));
    lastError = st.error;
  });
}

/** The agent's own metric families, in the Prometheus text format. */
export function agentMetrics(st: {
  revision: number;
  profiles: number;
  refused: unknown[];
  refusedCount?: number;
  watch: string;
}): string {
  const watchStates = ['listing', 'watching', 'unreachable', 'stopped'];
  return [
    '# HELP iptlb_agent_applied_revision The etcd revision whose profiles the kernel holds.',
    '# TYPE iptlb_agent_applied_revision gauge',
    `iptlb_agent_applied_revision ${st.revision}`,
    '# HELP iptlb_agent_profiles Profiles this agent owns (applied).',
    '# TYPE iptlb_agent_profiles gauge',
    `iptlb_agent_profiles ${st.profiles}`,
    '# HELP iptlb_agent_refused_profiles Profiles of the store this host refused.',
    '# TYPE iptlb_agent_refused_profiles gauge',
    `iptlb_agent_refused_profiles ${st.refusedCount ?? st.refused.length}`,
    '# HELP iptlb_agent_watch_state The agent watch state (1 for the current one).',
    '# TYPE iptlb_agent_watch_state gauge',
    ...watchStates.map((w) => `iptlb_agent_watch_state{state="${w}"} ${st.watch === w ? 1 : 0}`),
    '',
  ].join('\n');
}
