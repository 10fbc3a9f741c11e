/** `iptlb agent`: registered on the program by src/cli.ts. */
import { Option, type Command } from 'commander';
import { IptlbError } from '../errors.js';
import { parseEngineChoice } from '../engine.js';
import { parseExecutorChoice } from '../executors/index.js';
import { addEtcdFlags, etcdOptions, ownOptions, type EtcdFlags } from './etcd-flags.js';
import { DEFAULT_AGENT_STATE_FILE } from '../fleet/agent.js';

interface Out {
  out(s: string): void;
  err(s: string): void;
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
}

function whole(v: string, field: string, min: number): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min) throw new IptlbError('EUSAGE', `${field}: ${JSON.stringify(v)} must be a whole number, at least ${min}`, { field });
  return n;
}

export function registerAgent(program: Command, io: Out): void {
  addEtcdFlags(program.command('agent').description("follow the profiles kept in etcd: list <prefix>profiles/ at one revision, apply them in one transaction, then watch; SIGTERM stops and leaves the rules"))
    .option('--host <name>', 'this host in <prefix>hosts/<host> (default: the host name)')
    .option('--state-file <path>', `the agent's own state file: the profiles it owns (default ${DEFAULT_AGENT_STATE_FILE})`)
    .addOption(new Option('--engine <engine>', 'legacy, nft or auto (env IPTLB_ENGINE; default auto)'))
    .addOption(new Option('--executor <kind>', 'native, spawn or auto (env IPTLB_EXECUTOR; default auto)'))
    .option('--min-sync-ms <ms>', 'at least this long between two commits of watch batches', '100')
    .option('--lease-ttl <s>', 'TTL of the host status key, seconds', '10')
    .option('--check-ms <ms>', 'linearizable read every this long: a silent watch is not trusted', '2000')
    .option('--sync-ms <ms>', 'drift check and repair every this long, without re-listing (0: off)', '10000')
    .option('--backoff-max-ms <ms>', 'cap of the jittered backoff after a store failure', '10000')
    .option('--page-size <n>', 'keys per page when listing', '1000')
    .option('--keep-conntrack', 'keep conntrack entries of flows to destinations a change removes')
    .option('-q, --quiet', 'print no log lines')
    .action(async (_o: unknown, cmd: Command) => {
      const o = ownOptions<AgentFlags>(cmd);
      const { etcd, prefix } = etcdOptions(o);
      const { runAgent } = await import('../fleet/agent.js');
      const agent = await runAgent({
        etcd,
        prefix,
        ...(o.host !== undefined ? { host: o.host } : {}),
        ...(o.stateFile !== undefined ? { stateFile: o.stateFile } : {}),
        engine: parseEngineChoice(o.engine ?? process.env.IPTLB_ENGINE),
        executor: parseExecutorChoice(o.executor ?? process.env.IPTLB_EXECUTOR),
        minSyncMs: whole(o.minSyncMs, 'min-sync-ms', 0),
        leaseTtlSec: whole(o.leaseTtl, 'lease-ttl', 2),
        checkMs: whole(o.checkMs, 'check-ms', 10),
        syncMs: whole(o.syncMs, 'sync-ms', 0),
        pageSize: whole(o.pageSize, 'page-size', 1),
        backoffMaxMs: whole(o.backoffMaxMs, 'backoff-max-ms', 1),
        keepConntrack: !!o.keepConntrack,
        log: o.quiet ? () => {} : (l) => io.err(`iptlb: ${l}`),
      });
      await new Promise<void>((resolve) => {
        const stop = (): void => void agent.stop().then(resolve, resolve);
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
    });
}
