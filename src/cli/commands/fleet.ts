/** `iptlb fleet apply|delete|list|status`: registered on the program by src/cli/main.ts. */
import { Command } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { show } from '../../model/profile.js';
import type { ProfileInput } from '../../model/types.js';
import {
  addProfileFlags,
  profileInput,
  profilesOfFile,
  refuseProfileFlagsWithFile,
  type ProfileOpts,
} from '../flags.js';
import { ExitCode, describeProfile, type Out } from '../context.js';
import { addEtcdFlags, etcdOptions, ownOptions, type EtcdFlags } from '../etcd-flags.js';
import type { FleetStore } from '../../fleet/store.js';

async function withStore<T>(o: EtcdFlags, fn: (store: FleetStore, prefix: string) => Promise<T>): Promise<T> {
  const { etcd, prefix } = etcdOptions(o);
  const { EtcdStore, storeErrorMessage, CREDENTIALS_REFUSED } = await import('../../fleet/store.js');
  // What etcd or its client says (unreachable, a deadline, refused credentials) is one line naming
  // the endpoints, not an internal error; refused credentials or permissions say what to check.
  const who = etcd.user
    ? `etcd user ${JSON.stringify(etcd.user)}`
    : etcd.certFile
      ? "the client certificate's etcd user (its common name)"
      : 'no etcd user (--etcd-user)';
  const hint = (msg: string): string =>
    !CREDENTIALS_REFUSED.test(msg)
      ? ''
      : /permission denied/i.test(msg)
        ? `: the roles of ${who} do not allow this (fleet apply and delete need readwrite on ${prefix}profiles/, list read on it, status read on it and on ${prefix}hosts/)`
        : ': check --etcd-user and its password in IPTLB_ETCD_PASSWORD';
  const storeError = (e: unknown): unknown => {
    if (e instanceof IptlbError) return e;
    const msg = storeErrorMessage(e);
    return new IptlbError('ESTORE', `etcd ${etcd.endpoints.join(',')}: ${msg}${hint(msg)}`, { field: 'etcd' });
  };
  const store = await EtcdStore.connect(etcd).catch((e: unknown) => {
    throw storeError(e);
  });
  try {
    return await fn(store, prefix).catch((e: unknown) => {
      throw storeError(e);
    });
  } finally {
    await store.close().catch(() => {});
  }
}

type ApplyOpts = EtcdFlags & { file?: string; json?: boolean; srcAddr?: string; destAddr?: string };
type StatusOpts = EtcdFlags & { revision?: string; expect?: string; json?: boolean };

/** `fleet apply`: validated as `iptlb apply` validates (the same flags, or a --file read with the same limits). */
async function applyCommand(o: ApplyOpts, io: Out, cmd: Command): Promise<void> {
  let inputs: ProfileInput[];
  if (o.file !== undefined) {
    refuseProfileFlagsWithFile(cmd); // the file gives every field of its profiles: they would be ignored
    inputs = await profilesOfFile(o.file);
  } else inputs = [profileInput(o as unknown as ProfileOpts)];
  const { fleetApply } = await import('../../fleet/fleet.js');
  const r = await withStore(o, (s, prefix) => fleetApply(s, prefix, inputs));
  if (o.json) io.out(JSON.stringify(r));
  else io.err(`iptlb: fleet: wrote ${r.applied.map((p) => p.name).join(', ')} at revision ${r.revision}`);
}

async function deleteCommand(names: string[], o: EtcdFlags & { json?: boolean }, io: Out): Promise<void> {
  const { fleetDelete } = await import('../../fleet/fleet.js');
  const { refusalName } = await import('../../fleet/reconcile.js');
  const r = await withStore(o, (s, prefix) => fleetDelete(s, prefix, names));
  if (o.json) io.out(JSON.stringify(r));
  // A key that is no profile key as it is listed: escaped, one line.
  else io.err(`iptlb: fleet: deleted ${r.deleted.map(refusalName).join(', ')} at revision ${r.revision}`);
}

async function listCommand(o: EtcdFlags & { json?: boolean }, io: Out): Promise<void> {
  const { fleetList } = await import('../../fleet/fleet.js');
  const { refusalName } = await import('../../fleet/reconcile.js');
  const r = await withStore(o, (s, prefix) => fleetList(s, prefix));
  if (o.json) {
    const profiles = r.profiles.map((p) =>
      p.parsed.ok
        ? {
            ...p.parsed.profile,
            modRevision: p.modRevision,
            ...(p.conflict ? { error: { code: p.conflict.code, message: p.conflict.message } } : {}),
          }
        : {
            name: p.name,
            key: p.key,
            modRevision: p.modRevision,
            error: { code: p.parsed.code, message: p.parsed.message },
          },
    );
    return io.out(JSON.stringify({ revision: r.revision, profiles }));
  }
  if (!r.profiles.length) return io.out(`no profiles in the store (revision ${r.revision})`);
  io.out('NAME\tSOURCE\tMODE\tDESTINATIONS');
  for (const p of r.profiles)
    io.out(
      !p.parsed.ok
        ? `${refusalName(p.name)}\tINVALID (${p.parsed.code}): ${p.parsed.message}`
        : p.conflict
          ? `${p.name}\tREFUSED (${p.conflict.code}): ${p.conflict.message}`
          : describeProfile(p.parsed.profile),
    );
}

function parseRevision(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const revision = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(revision))
    throw new IptlbError('EUSAGE', `revision: ${show(text)} must be a whole number`, { field: 'revision' });
  return revision;
}

type FleetStatus = Awaited<ReturnType<typeof import('../../fleet/fleet.js').fleetStatus>>;

/** One line per host: the revision it applied, lagging or current, its watch, engine, profiles and refusals. */
function hostLine(row: FleetStatus['hosts'][number]): string {
  const st = row.status;
  if (!st)
    return `${row.host}\t-\tunknown\t-\t-\t-\t-\t${row.invalid ?? 'no host key (agent down, or lease expired): unknown, not "no rules"'}`;
  const state = row.converged
    ? row.unchangedSince !== undefined
      ? `current (no profile change after ${row.unchangedSince})`
      : 'current'
    : row.emptyStoreHeld
      ? `not applied (keeps its ${st.profiles} profile(s): the store listed no profile key; see ERROR)`
      : row.deletionPending
        ? `lagging (holds ${st.profileKeys} profile key(s), the store fewer: a deletion not applied)`
        : `lagging by ${row.lag}`;
  const more = (st.refusedCount ?? st.refused.length) - st.refused.length;
  const names = st.refused.map((x) => `${x.name}:${x.code}${x.kept === true ? '(previous version kept)' : ''}`);
  if (more > 0) names.push(`… ${more} more`);
  const refused = names.length ? names.join(',') : '-';
  return `${row.host}\t${st.revision}\t${state}\t${st.watch ?? '-'}\t${st.engine ?? '-'}/${st.executor ?? '-'}\t${st.profiles}\t${refused}\t${st.error ?? '-'}`;
}

function convergenceLine(r: FleetStatus): string {
  const lagging = r.hosts.filter((x) => !x.converged).map((x) => x.host);
  const all = r.hosts.length;
  const refused = r.refused.length + r.refusedUnlisted;
  // Each refused profile: where, and whether those hosts serve an older version of it or nothing.
  const names = r.refused.slice(0, 10).map((x) => {
    const every = x.hosts.length === all && !lagging.length;
    const kept = x.kept ?? [];
    const served = !kept.length
      ? 'not served'
      : kept.length === x.hosts.length
        ? every
          ? 'each kept the previous version'
          : 'kept the previous version'
        : `${kept.join(',')} kept the previous version, not served on ${x.hosts.filter((h) => !kept.includes(h)).join(',')}`;
    return `${x.name}:${x.code} on ${every ? 'every host' : x.hosts.join(',')}: ${served}`;
  });
  if (r.refused.length > 10 || r.refusedUnlisted) names.push('…');
  const verdict = lagging.length
    ? `NOT converged (${lagging.join(', ')})`
    : !all
      ? 'no hosts known'
      : refused
        ? `REFUSED: applied on all ${all} host(s), but profiles are refused (${names.join('; ')}); \`iptlb fleet list\` says why`
        : `converged on all ${all} host(s)`;
  return `revision ${r.target} (store at ${r.storeRevision}): ${verdict}`;
}

/** `fleet status`: exit 3 when the target revision has not converged on every host, or a host refused profiles. */
async function statusCommand(o: StatusOpts, io: Out): Promise<void> {
  const revision = parseRevision(o.revision);
  const { validateHost } = await import('../../fleet/reconcile.js');
  const expect = (o.expect ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((h) => validateHost(h, 'expect'));
  const { fleetStatus } = await import('../../fleet/fleet.js');
  const r = await withStore(o, (s, prefix) =>
    fleetStatus(s, prefix, { ...(revision !== undefined ? { revision } : {}), expect }),
  );
  if (o.json) io.out(JSON.stringify(r));
  else {
    io.out('HOST\tAPPLIED\tSTATE\tWATCH\tENGINE\tPROFILES\tREFUSED\tERROR');
    for (const row of r.hosts) io.out(hostLine(row));
    io.out(convergenceLine(r));
  }
  if (!r.converged) throw new ExitCode(3);
}

export function register(program: Command, io: Out): void {
  const fleet = program
    .command('fleet')
    .description("profiles kept in etcd for every host running `iptlb agent`, and the hosts' status");

  addProfileFlags(
    addEtcdFlags(
      fleet
        .command('apply')
        .description(
          'validate a profile (or every profile of --file) as `iptlb apply` does, refuse what every agent would refuse (an address or chain a stored profile holds, an invalid one too), and write it to etcd, in one transaction',
        ),
    ),
  )
    .option(
      '--file <path>',
      'every profile of a YAML file in the state file format (- reads standard input; at most 128 profiles, 64 MiB)',
    )
    .option('--json', 'print the result as JSON')
    .action(async (_o: unknown, cmd: Command) => applyCommand(ownOptions<ApplyOpts>(cmd), io, cmd));

  addEtcdFlags(
    fleet
      .command('delete')
      .description(
        'delete profiles from etcd by name, in one transaction; a key under <prefix>profiles/ that is no profile key (every agent refuses it) by its name as `fleet list` or `fleet status` shows it, its exact last part or its whole key',
      )
      .argument('<names...>'),
  )
    .option('--json', 'print the result as JSON')
    .action(async (names: string[], _o: unknown, cmd: Command) =>
      deleteCommand(names, ownOptions<EtcdFlags & { json?: boolean }>(cmd), io),
    );

  addEtcdFlags(
    fleet
      .command('list')
      .description('list the profiles kept in etcd (invalid ones, and those every agent refuses, with their error)'),
  )
    .option('--json', 'print the result as JSON')
    .action(async (_o: unknown, cmd: Command) => listCommand(ownOptions<EtcdFlags & { json?: boolean }>(cmd), io));

  addEtcdFlags(
    fleet
      .command('status')
      .description(
        'one row per host: the revision it applied against the target, lagging or not, refused profiles; exit 3 when the target has not converged everywhere or a host refused profiles',
      ),
  )
    .option(
      '--revision <n>',
      "the revision that must have converged (default: the newest stored profile's; after a delete, give the revision `fleet delete` printed)",
    )
    .option(
      '--expect <hosts>',
      'comma-separated hosts that must be there (a missing host key is "unknown", never "no rules")',
    )
    .option('--json', 'print the result as JSON')
    .action(async (_o: unknown, cmd: Command) => statusCommand(ownOptions<StatusOpts>(cmd), io));
}
