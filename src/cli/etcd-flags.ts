/** The etcd flags shared by `iptlb agent` and `iptlb fleet` (with their environment variables). */
import { Option, type Command } from 'commander';
import { IptlbError } from '../model/errors.js';
import { checkEtcdOptions, MAX_CALL_TIMEOUT_MS, parseEndpoints, type EtcdOptions } from '../fleet/store.js';
import { DEFAULT_PREFIX, validatePrefix } from '../fleet/reconcile.js';

export interface EtcdFlags {
  etcd?: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  etcdUser?: string;
  prefix?: string;
  etcdTimeoutMs?: string;
}

export function addEtcdFlags(cmd: Command): Command {
  return cmd
    .addOption(
      new Option(
        '--etcd <urls>',
        'etcd endpoints, comma-separated: http(s)://host:port or unix:///path (env IPTLB_ETCD_ENDPOINTS)',
      ),
    )
    .addOption(
      new Option(
        '--etcd-ca <file>',
        'CA certificate (PEM) to verify etcd over TLS; TLS needs https:// (or host:port) endpoints (env IPTLB_ETCD_CA)',
      ),
    )
    .addOption(new Option('--etcd-cert <file>', 'client certificate (PEM) for etcd (env IPTLB_ETCD_CERT)'))
    .addOption(new Option('--etcd-key <file>', 'key of the client certificate (env IPTLB_ETCD_KEY)'))
    .addOption(
      new Option(
        '--etcd-user <name>',
        'etcd user (env IPTLB_ETCD_USER); its password must be in env IPTLB_ETCD_PASSWORD (never a flag)',
      ),
    )
    .addOption(
      new Option(
        '--etcd-timeout-ms <ms>',
        'deadline of each etcd call (a linearizable read blocks while quorum is lost; 10-3600000)',
      ).default('5000'),
    )
    .addOption(new Option('--prefix <prefix>', `key prefix (env IPTLB_ETCD_PREFIX; default ${DEFAULT_PREFIX})`));
}

/**
 * Node warns (DEP0123) when a TLS client names an IP address as the server name, which grpc-js does for
 * every https://<address> endpoint: two lines of a deprecation meant for grpc-js's authors in front of
 * each command's output. The CLI drops that one warning; every other is printed as before.
 */
let ipServernameQuiet = false;
function quietIpServernameWarning(): void {
  if (ipServernameQuiet) return;
  ipServernameQuiet = true;
  const emit = process.emitWarning;
  process.emitWarning = function (this: unknown, warning: string | Error, ...rest: unknown[]): void {
    const a = rest[0];
    const code = typeof a === 'object' && a !== null ? (a as { code?: string }).code : rest[1];
    if (code === 'DEP0123') return;
    return (emit as (...args: unknown[]) => void).call(process, warning, ...rest);
  } as typeof process.emitWarning;
}

export function etcdOptions(o: EtcdFlags): { etcd: EtcdOptions; prefix: string } {
  quietIpServernameWarning();
  const env = process.env;
  const endpoints = parseEndpoints(o.etcd ?? env.IPTLB_ETCD_ENDPOINTS);
  const pick = (flag: string | undefined, name: string): string | undefined => flag ?? (env[name] || undefined);
  const ca = pick(o.etcdCa, 'IPTLB_ETCD_CA');
  const cert = pick(o.etcdCert, 'IPTLB_ETCD_CERT');
  const key = pick(o.etcdKey, 'IPTLB_ETCD_KEY');
  const user = pick(o.etcdUser, 'IPTLB_ETCD_USER');
  const timeout = Number(o.etcdTimeoutMs ?? '5000');
  if (!/^\d+$/.test(o.etcdTimeoutMs ?? '5000') || timeout < 10 || timeout > MAX_CALL_TIMEOUT_MS)
    throw new IptlbError(
      'EUSAGE',
      `etcd-timeout-ms: ${JSON.stringify(o.etcdTimeoutMs)} must be a whole number of ms from 10 to ${MAX_CALL_TIMEOUT_MS}`,
      { field: 'etcd-timeout-ms' },
    );
  const etcd: EtcdOptions = {
    endpoints,
    callTimeoutMs: timeout,
    ...(ca ? { caFile: ca } : {}),
    ...(cert ? { certFile: cert } : {}),
    ...(key ? { keyFile: key } : {}),
    ...(user ? { user, ...(env.IPTLB_ETCD_PASSWORD !== undefined ? { password: env.IPTLB_ETCD_PASSWORD } : {}) } : {}),
  };
  checkEtcdOptions(etcd); // before any connection (and, for the agent, before the engine is chosen)
  return { etcd, prefix: validatePrefix(pick(o.prefix, 'IPTLB_ETCD_PREFIX') ?? DEFAULT_PREFIX) };
}

/**
 * A subcommand's options with the flags the program knows too filled in: commander gives such a flag
 * (`--profile`, `--json`, `--state-file`, …) to the program wherever it stands on the command line.
 */
export function ownOptions<T extends object>(cmd: Command): T {
  const merged = { ...cmd.opts() } as Record<string, unknown>;
  let root: Command = cmd;
  while (root.parent) root = root.parent;
  if (root !== cmd) {
    const rootOpts = root.opts() as Record<string, unknown>;
    for (const opt of cmd.options) {
      const k = opt.attributeName();
      if (root.getOptionValueSource(k) === 'cli' && cmd.getOptionValueSource(k) !== 'cli') merged[k] = rootOpts[k];
    }
  }
  return merged as T;
}
