/**
 * The `iptlb` command line. Keeps the original Go iptlb's flags (one or two dashes, `=` or a space)
 * and adds subcommands. Exit codes: 0 done, 1 refused (conflict, kernel, state), 2 usage/bad input.
 */
import { Command, CommanderError, Option } from 'commander';
import { readInputFile } from './limits.js';
import { IptlbError } from './errors.js';
import { Core, FAMILIES, deleteChange, upsertChange, type TransactionResult } from './lb.js';
import { parseExecutorChoice } from './executors/index.js';
import { parseEngineChoice } from './engine.js';
import { DEFAULTS, familyOfProfile, sameProfile, show, splitDestinations, validateName, weightOf } from './profile.js';
import { parseState } from './state.js';
import type { Profile, ProfileInput } from './types.js';
import { doctor } from './doctor.js';
import { packageVersion } from './paths.js';
import { healthFileOf } from './health/effective.js';
import { HEALTH_FLAGS, addHealthFlags, healthInput, type HealthOpts } from './cli/health.js';
import { registerExtras } from './cli/extras.js';
import { registerAgent } from './cli/agent.js';
import { registerFleet } from './cli/fleet.js';

type Out = { out: (s: string) => void; err: (s: string) => void };

/** Flags of the original, with their kind, accepted with one dash and `=value` (Go `flag` style). */
const VALUE_FLAGS = new Set([
  'settle',
  'src-addr',
  'dest-addr',
  'scheduler',
  'affinity',
  'rules-backend',
  'profile',
  'state-file',
  'log-level',
  'protocol',
  'executor',
  'engine',
  'to',
  'file',
  'interval',
  'count',
  ...HEALTH_FLAGS,
  'metrics-address',
]);
const BOOL_FLAGS = new Set([
  'reset',
  'delete',
  'log-custom-chain',
  'run',
  'use-state',
  'masquerade',
  'json',
  'quiet',
  'verbose',
  'all',
  'help',
  'version',
  'keep-conntrack',
]);

/** Rewrites Go-style flags (`-src-addr=x`, `-run=true`) into the `--src-addr=x` form commander parses. */
export function normalizeArgv(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    const m = /^--?([a-z][a-z-]*)(?:=([\s\S]*))?$/.exec(a);
    if (!m || (!VALUE_FLAGS.has(m[1]) && !BOOL_FLAGS.has(m[1]))) {
      out.push(a);
      continue;
    }
    const [, name, value] = m;
    if (BOOL_FLAGS.has(name) && value !== undefined) {
      const v = value.toLowerCase();
      if (v === 'true' || v === '1' || v === 't') out.push(`--${name}`);
      else if (v === 'false' || v === '0' || v === 'f') {
        // Go semantics: the last occurrence wins, so a later -flag=false cancels an earlier -flag.
        for (let k = out.length - 1; k >= 0; k--) if (out[k] === `--${name}`) out.splice(k, 1);
        continue;
      } else
        throw new IptlbError('EUSAGE', `-${name}: ${show(value)} is not a boolean (true or false)`, { field: name });
    } else {
      out.push(value === undefined ? `--${name}` : `--${name}=${value}`);
    }
  }
  return out;
}

interface GlobalOpts {
  keepConntrack?: boolean;
  stateFile?: string;
  executor?: string;
  engine?: string;
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}
interface ProfileOpts extends GlobalOpts, HealthOpts {
  profile: string;
  srcAddr?: string;
  destAddr?: string;
  rulesBackend: string;
  protocol: string;
  logCustomChain?: boolean;
  logLevel: string;
  masquerade?: boolean;
  scheduler?: string;
  affinity?: string;
}
interface LegacyOpts extends ProfileOpts {
  reset?: boolean;
  delete?: boolean;
  run?: boolean;
  useState?: boolean;
}

function addGlobal(cmd: Command): Command {
  return cmd
    .option('--state-file <path>', 'state file (env IPTLB_STATE_FILE; default ./local/state.db)')
    .addOption(new Option('--executor <kind>', 'native, spawn or auto (env IPTLB_EXECUTOR; default auto)'))
    .addOption(
      new Option(
        '--engine <engine>',
        'legacy (x_tables nat tables), nft (tables ip/ip6 iptlb) or auto (env IPTLB_ENGINE; default auto)',
      ),
    )
    .option('--json', 'print the result as JSON on stdout')
    .option('-q, --quiet', 'print no log lines')
    .option(
      '--keep-conntrack',
      'keep conntrack entries of flows to destinations a change removes (default: delete them)',
    )
    .option('--verbose', 'also log every rule written');
}

const GLOBAL_KEYS = ['stateFile', 'executor', 'engine', 'json', 'quiet', 'verbose', 'keepConntrack'] as const;
/** A subcommand's options, with global flags given before the subcommand filled in from the parent. */
function withGlobals<T extends GlobalOpts>(o: T, cmd: Command): T {
  const parent = (cmd.parent?.opts() ?? {}) as GlobalOpts;
  const merged = { ...o } as T & Record<string, unknown>;
  for (const k of GLOBAL_KEYS) if (merged[k] === undefined && parent[k] !== undefined) merged[k] = parent[k] as never;
  // The program has the profile flags too, and commander gives a flag that both know to the program
  // wherever it stands: `iptlb apply --src-addr=…` / `iptlb plan --use-state` set them on the parent.
  // Flags given on the command line take over the subcommand's defaults.
  if (cmd.parent) {
    const own = new Set(cmd.options.map((opt) => opt.attributeName()));
    for (const [k, v] of Object.entries(parent as Record<string, unknown>)) {
      if (own.has(k) && cmd.parent.getOptionValueSource(k) === 'cli' && cmd.getOptionValueSource(k) !== 'cli')
        (merged as Record<string, unknown>)[k] = v;
    }
  }
  return merged;
}

function addProfileFlags(cmd: Command): Command {
  return addHealthFlags(
    cmd
      .option('--profile <name>', 'profile name: 1-63 of A-Z a-z 0-9 _ -, not starting with -', 'default')
      .option(
        '--src-addr <ip:port>',
        'virtual address and port that is balanced: a.b.c.d:port, or [v6]:port for IPv6 (then every destination is IPv6 too)',
      )
      .option(
        '--dest-addr <list>',
        'comma-separated destination ip:port list ([v6]:port for IPv6); ip:port*W gives a destination weight W (0-1000, default 1; 0 drains it)',
      )
      .option('--scheduler <kind>', 'random (weighted random) or round-robin (an exact rotation)', 'random')
      .option(
        '--affinity <seconds>',
        'session affinity: a client address keeps its destination for that many seconds after its last new connection (1-86400; 0: none)',
      )
      .option(
        '--rules-backend <mode>',
        'client (nat OUTPUT), proxy (nat PREROUTING) or server (PREROUTING, local addresses)',
        DEFAULTS.rulesBackend,
      )
      .option('--protocol <proto>', 'tcp, udp or sctp', DEFAULTS.protocol)
      .option('--log-custom-chain', 'log packets that enter the profile (kernel log, see dmesg)')
      .option('--log-level <level>', 'syslog level of those logs: 0-7 or emerg..debug', DEFAULTS.logLevel)
      .option('--masquerade', 'proxy mode: masquerade balanced flows so replies return through this host'),
  );
}

function profileInput(o: ProfileOpts): ProfileInput {
  if (o.srcAddr === undefined)
    throw new IptlbError('EUSAGE', 'source: -src-addr is required (the virtual ip:port)', { field: 'source' });
  if (o.destAddr === undefined)
    throw new IptlbError('EUSAGE', 'destination: -dest-addr is required (comma-separated ip:port list)', {
      field: 'destination',
    });
  const input: ProfileInput = {
    name: o.profile,
    source: o.srcAddr,
    destination: o.destAddr === '' ? [] : splitDestinations(o.destAddr),
    protocol: o.protocol,
    rulesBackend: o.rulesBackend,
    logEnabled: !!o.logCustomChain,
    logLevel: o.logLevel,
  };
  if (o.masquerade) input.masquerade = true;
  if (o.scheduler !== undefined && o.scheduler !== 'random') input.scheduler = o.scheduler;
  if (o.affinity !== undefined) input.affinity = o.affinity;
  const health = healthInput(o);
  if (health) input.health = health;
  return input;
}

/** Every Core of this run: {@link main} waits for their conntrack cleanup before it returns. */
const cores = new Set<Core>();

/** A change, and its conntrack cleanup done before it returns: the CLI exits right after. */
async function transact(core: Core, ...args: Parameters<Core['transact']>): Promise<TransactionResult> {
  const result = await core.transact(...args);
  await core.conntrackIdle();
  return result;
}

function makeCore(o: GlobalOpts, io: Out): Core {
  if (o.stateFile === '')
    throw new IptlbError('EUSAGE', 'state-file: must not be empty (omit the flag for the default ./local/state.db)', {
      field: 'state-file',
    });
  const quiet = o.quiet;
  const core = new Core({
    stateFile: o.stateFile,
    executor: parseExecutorChoice(o.executor ?? process.env.IPTLB_EXECUTOR),
    engine: parseEngineChoice(o.engine ?? process.env.IPTLB_ENGINE),
    keepConntrack: !!o.keepConntrack,
    ...(quiet ? {} : { log: (line: string) => io.err(`iptlb: ${line}`) }),
  });
  cores.add(core);
  // Health is checked by a long-running process (watch, agent); follow what it publishes.
  if (core.statePath !== null) core.health.follow(healthFileOf(core.statePath));
  return core;
}

function report(result: TransactionResult, o: GlobalOpts, io: Out, verbose?: () => void): void {
  if (o.verbose) verbose?.();
  if (o.json) io.out(JSON.stringify(result));
}

/** Prints what the last commit wrote, as its engine describes it (restore rules, or nft lines). */
function verboseRules(core: Core, io: Out): () => void {
  return () => {
    const tx = core.lastTransaction;
    if (!tx) return;
    for (const line of core.selection.provider.describeTransaction(tx)) io.err(`iptlb:   ${line}`);
  };
}

/** The original's behaviour: flags decide create / reset / delete / use-state, `-run` touches the kernel. */
async function legacyAction(o: LegacyOpts, io: Out): Promise<void> {
  if (o.useState && (o.srcAddr !== undefined || o.destAddr !== undefined)) {
    throw new IptlbError('EUSAGE', '-use-state cannot be combined with -src-addr or -dest-addr');
  }
  if (o.delete && o.reset) throw new IptlbError('EUSAGE', '-delete and -reset cannot be used together');
  if (o.delete && !o.run) throw new IptlbError('EUSAGE', '-delete needs -run (it removes rules from the kernel)');
  if (o.useState && !o.run)
    throw new IptlbError('EUSAGE', '-use-state needs -run (it applies the state file to the kernel)');
  const core = makeCore(o, io);
  const result = await transact(
    core,
    (state) => {
      if (o.useState) {
        return o.delete ? { upsert: [], remove: [...state.keys()] } : { upsert: [...state.values()], remove: [] };
      }
      const name = validateName(o.profile, 'name', { existing: true });
      if (o.delete) return deleteChange(state, [name]);
      const existing = state.get(name);
      if (o.srcAddr === undefined && o.destAddr === undefined && existing && o.run && !o.reset) {
        return { upsert: [existing], remove: [] }; // re-apply a profile recorded earlier without -run
      }
      const change = upsertChange(state, [profileInput(o)]);
      const p = change.upsert[0];
      if (existing && !o.reset && !sameProfile(existing, p)) {
        throw new IptlbError(
          'ECONFLICT',
          `name: profile ${show(name)} already exists with other settings; add -reset to replace it`,
          { field: 'name' },
        );
      }
      return change;
    },
    { run: !!o.run },
  );
  if (!o.run && !o.quiet) io.err(`iptlb: state only (no -run): the kernel was not changed`);
  report(result, o, io, verboseRules(core, io));
}

async function applyCommand(o: ProfileOpts & { file?: string }, io: Out): Promise<void> {
  const core = makeCore(o, io);
  let inputs: ProfileInput[];
  if (o.file !== undefined) {
    if (o.srcAddr !== undefined || o.destAddr !== undefined)
      throw new IptlbError('EUSAGE', 'apply: --file cannot be combined with -src-addr/-dest-addr');
    const text = await readInputFile(o.file, 'file');
    inputs = [...(await parseState(text, o.file === '-' ? '<stdin>' : o.file)).values()];
  } else {
    inputs = [profileInput(o)];
  }
  const result = await transact(core, (state) => upsertChange(state, inputs), { run: true });
  report(result, o, io, verboseRules(core, io));
}

async function deleteCommand(names: string[], o: GlobalOpts & { all?: boolean }, io: Out): Promise<void> {
  if (o.all && names.length) throw new IptlbError('EUSAGE', 'delete: give profile names or --all, not both');
  if (!o.all && !names.length) throw new IptlbError('EUSAGE', 'delete: name the profiles to delete (or --all)');
  const core = makeCore(o, io);
  const result = await transact(
    core,
    (state) => (o.all ? { upsert: [], remove: [...state.keys()] } : deleteChange(state, names)),
    { run: true },
  );
  report(result, o, io);
}

/** The destinations as the command line takes them: `ip:port`, with `*W` when the weight is not 1. */
function describeDestinations(p: Profile): string {
  return p.destination.map((d) => (weightOf(p, d) === 1 ? d : `${d}*${weightOf(p, d)}`)).join(',');
}

function describeProfile(p: Profile): string {
  const dests = describeDestinations(p);
  return `${p.name}\t${p.source}/${p.protocol}\t${p.rulesBackend}${p.masquerade ? '+masquerade' : ''}\t${dests}${p.scheduler ? `\tscheduler:${p.scheduler}` : ''}${p.affinity ? `\taffinity:${p.affinity}s` : ''}${p.logEnabled ? `\tlog:${p.logLevel}` : ''}`;
}

async function listCommand(o: GlobalOpts, io: Out): Promise<void> {
  const core = makeCore(o, io);
  const profiles = [...(await core.readState()).values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  if (o.json) return io.out(JSON.stringify(profiles));
  if (!profiles.length) return io.out(`no profiles in ${core.statePath}`);
  io.out('NAME\tSOURCE\tMODE\tDESTINATIONS');
  for (const p of profiles) io.out(describeProfile(p));
}

function jsonSafe(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? Number(x) : x)));
}

async function showCommand(name: string, o: GlobalOpts, io: Out): Promise<void> {
  validateName(name, 'name', { existing: true });
  const core = makeCore(o, io);
  const state = await core.readState();
  const profile = state.get(name);
  const { provider } = await core.select();
  // The profile's family; a name only the kernel knows (an orphan) is looked for in both.
  const shown = await provider.show(name, profile, profile ? [familyOfProfile(profile)] : FAMILIES);
  if (!profile && !shown.found)
    throw new IptlbError('ENOTFOUND', `name: profile ${show(name)} is neither in the state file nor in the kernel`, {
      field: 'name',
    });
  if (o.json) return io.out(JSON.stringify(jsonSafe({ profile: profile ?? null, kernel: shown.json })));
  io.out(profile ? `profile ${describeProfile(profile)}` : `profile ${name}: not in the state file ${core.statePath}`);
  io.out(`kernel (${shown.where}):`);
  for (const line of shown.lines) io.out(`  ${line}`);
}

/** `iptlb plan`: what `apply` would commit, planned by the same code with the same kernel reads; changes nothing. */
async function planCommand(o: LegacyOpts, io: Out): Promise<void> {
  const core = makeCore({ ...o, quiet: true }, io);
  const { provider, change, plans } = await core.plan((state) => {
    if (o.useState)
      return o.delete ? { upsert: [], remove: [...state.keys()] } : { upsert: [...state.values()], remove: [] };
    if (o.delete) return deleteChange(state, [validateName(o.profile, 'name', { existing: true })]);
    return upsertChange(state, [profileInput(o)]);
  });
  // Weights and the scheduler, which the rule text only implies, as comment lines (both dialects take them).
  const header = change.upsert
    .filter((p) => p.weights || p.scheduler || p.affinity)
    .map(
      (p) =>
        `# profile ${p.name}: ${describeDestinations(p)}, scheduler ${p.scheduler ?? 'random'}${p.affinity ? `, affinity ${p.affinity}s` : ''}\n`,
    )
    .join('');
  const steps = plans.flatMap((plan) => plan.steps.map((tx) => ({ family: plan.family, tx })));
  const texts = await Promise.all(steps.map((s) => provider.render(s.tx)));
  if (o.json) {
    io.out(
      JSON.stringify({
        engine: provider.name,
        transactions: steps.map((s, i) => ({
          family: s.family,
          where: provider.where(s.family),
          text: texts[i],
          transaction: s.tx,
        })),
      }),
    );
    return;
  }
  if (!steps.length) return io.out(`${header}# nothing to commit: the kernel already holds this`);
  const label = (i: number): string =>
    steps.length > 1 ? `# ${provider.where(steps[i].family)}, transaction ${i + 1} of ${steps.length}\n` : '';
  io.out(header + texts.map((t, i) => label(i) + t.trimEnd()).join('\n'));
}

/** `\tup`, `\tdown (drained; last check 2026-…: ECONNREFUSED)`: empty for destinations without a health check. */
function healthColumn(d: {
  health?: string;
  effectiveWeight?: number;
  lastCheck?: string;
  lastError?: string;
}): string {
  if (d.health === undefined) return '';
  const notes = [
    d.effectiveWeight !== undefined
      ? d.effectiveWeight === 0
        ? 'drained'
        : `weight ${d.effectiveWeight} in the kernel`
      : '',
    d.lastCheck ? `last check ${d.lastCheck}` : '',
    d.lastError ?? '',
  ].filter(Boolean);
  return `\t${d.health}${notes.length ? ` (${notes.join('; ')})` : ''}`;
}

async function statusCommand(o: GlobalOpts, io: Out): Promise<number> {
  const core = makeCore(o, io);
  const reports = await core.status();
  const drifted = reports.some((r) => r.status !== 'in-sync');
  if (o.json) {
    io.out(JSON.stringify({ inSync: !drifted, profiles: reports }));
  } else if (!reports.length) {
    io.out(`no profiles in ${core.statePath} and no iptlb rules in the kernel`);
  } else {
    const withHealth = reports.some((r) => r.destinations.some((d) => d.health !== undefined));
    io.out(`PROFILE\tSTATUS\tPACKETS\tDESTINATION\tCONNECTIONS\tBYTES${withHealth ? '\tHEALTH' : ''}`);
    for (const r of reports) {
      io.out(
        `${r.name}\t${r.status}${r.detail ? ` (${r.detail})` : ''}\t${r.packets}${r.affinity ? `\taffinity:${r.affinity}s` : ''}`,
      );
      for (const d of r.destinations)
        io.out(
          `\t\t\t${d.destination}${d.weight !== undefined ? `*${d.weight}` : ''}\t${d.packets}\t${d.bytes}${healthColumn(d)}`,
        );
    }
  }
  return drifted ? 3 : 0;
}

/**
 * `iptlb top` / `iptlb status --watch`: per-destination new connections per second, refreshed every
 * interval, as one would watch a rollout. `--count N` stops after N refreshes; `--json` prints one
 * line per refresh.
 */
async function topCommand(o: GlobalOpts & { interval?: string; count?: string }, io: Out): Promise<void> {
  const interval = Number(o.interval ?? 1000);
  if (!Number.isInteger(interval) || interval < 100)
    throw new IptlbError('EUSAGE', `interval: ${show(o.interval)} must be a whole number of ms, at least 100`, {
      field: 'interval',
    });
  const count = o.count === undefined ? Infinity : Number(o.count);
  if (!(count === Infinity || (Number.isInteger(count) && count > 0)))
    throw new IptlbError('EUSAGE', `count: ${show(o.count)} must be a positive whole number`, { field: 'count' });
  const core = makeCore({ ...o, quiet: true }, io);
  const tty = !o.json && process.stdout.isTTY;
  let stop = false;
  const onSignal = (): void => void (stop = true);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const prev = new Map<string, number>();
  let prevAt = 0;
  try {
    for (let i = 0; i < count && !stop; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, interval));
      if (stop) break;
      const reports = await core.status();
      const at = performance.now();
      const secs = prevAt ? (at - prevAt) / 1000 : 0;
      const rate = (key: string, packets: number): number | null => {
        const before = prev.get(key);
        prev.set(key, packets);
        return secs > 0 && before !== undefined ? Math.max(0, (packets - before) / secs) : null;
      };
      const rows = reports.map((r) => ({
        name: r.name,
        status: r.status,
        packets: r.packets,
        rate: rate(r.name, r.packets),
        destinations: r.destinations.map((d) => ({
          destination: d.destination,
          ...(d.weight !== undefined ? { weight: d.weight } : {}),
          ...(d.health !== undefined ? { health: d.health } : {}),
          ...(d.effectiveWeight !== undefined ? { effectiveWeight: d.effectiveWeight } : {}),
          packets: d.packets,
          rate: rate(`${r.name} ${d.destination}`, d.packets),
        })),
      }));
      prevAt = at;
      if (o.json) {
        io.out(JSON.stringify({ at: new Date().toISOString(), intervalMs: interval, profiles: rows }));
        continue;
      }
      const fmt = (x: number | null): string => (x === null ? '-' : x.toFixed(1));
      const lines = [
        `iptlb top  ${new Date().toISOString()}  new connections per second over ${(secs || interval / 1000).toFixed(1)} s (Ctrl-C stops)`,
        'PROFILE\tSTATUS\tDESTINATION\tCONN/S\tTOTAL',
      ];
      for (const r of rows) {
        lines.push(`${r.name}\t${r.status}\t*\t${fmt(r.rate)}\t${r.packets}`);
        for (const d of r.destinations)
          lines.push(
            `\t\t${d.destination}${d.weight !== undefined ? `*${d.weight}` : ''}\t${fmt(d.rate)}\t${d.packets}${d.health !== undefined ? `\t${d.health}${d.effectiveWeight === 0 ? ' (drained)' : ''}` : ''}`,
          );
      }
      if (!rows.length) lines.push('(no profiles and no iptlb rules)');
      io.out((tty ? '\x1b[H\x1b[2J' : i > 0 ? '\n' : '') + lines.join('\n'));
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}

function buildProgram(io: Out, version: string): Command {
  const program = new Command('iptlb');
  program
    .description(
      'Linux NAT load balancer: balances a virtual ip:port over destinations with NAT rules committed atomically, in the x_tables nat tables of iptables and ip6tables (--engine legacy) or the nf_tables tables ip iptlb and ip6 iptlb (--engine nft)',
    )
    .version(version, '--version')
    .helpOption('-h, --help', 'show help')
    .configureOutput({
      writeOut: (s) => io.out(s.trimEnd()),
      writeErr: (s) => io.err(s.startsWith('error:') ? `iptlb: ${s.trimEnd()}` : s.trimEnd()),
    })
    .exitOverride()
    .allowExcessArguments(false)
    .addHelpText(
      'after',
      `
Original flags (one or two dashes, -flag=value or -flag value):
  iptlb -run -profile=web -src-addr=127.100.0.10:8081 -dest-addr=127.0.0.1:9001,127.0.0.1:9002
  iptlb -run -reset -profile=web -src-addr=127.100.0.10:8081 -dest-addr=127.0.0.1:9003
  iptlb -run -profile=web -src-addr=127.100.0.10:8081 -dest-addr=127.0.0.1:9001*3,127.0.0.1:9002*0
                                   weights: 9001 takes every new connection, 9002 is drained
  iptlb -run -profile=web -src-addr=127.100.0.10:8081 -dest-addr=127.0.0.1:9001,127.0.0.1:9002 -scheduler=round-robin
  iptlb -run -delete -profile=web
  iptlb -use-state -run            apply every profile of the state file in one transaction
  iptlb top                        connections per second per destination, refreshed every second
  iptlb migrate --to nft           move every profile to the nft engine, no address ever without rules
Without -run only the state file is written. Engine auto: the one already holding iptlb's rules, else
nft when the host's iptables is the nf_tables flavour or x_tables is missing, else legacy (see doctor).
Exit status: 0 done, 1 refused (conflict, kernel, state, lock), 2 bad input or usage, 3 drift found by status.`,
    );
  addGlobal(addProfileFlags(program))
    .option('--reset', 'replace an existing profile (old and new rules swap in one commit)')
    .option('--delete', 'delete the profile (needs -run)')
    .option('--run', 'apply to the kernel; without it only the state file is written')
    .option('--use-state', 'apply (or with -delete remove) every profile of the state file')
    .action(async (o: LegacyOpts) => legacyAction(o, io));

  addGlobal(
    addProfileFlags(
      program
        .command('apply')
        .description('create or replace a profile (or every profile of --file) and apply it to the kernel'),
    ),
  )
    .option(
      '--file <path>',
      'apply every profile of a YAML file in the state file format (- reads standard input; at most 64 MiB), in one transaction',
    )
    .action(async (o: ProfileOpts & { file?: string }, cmd: Command) => applyCommand(withGlobals(o, cmd), io));
  addGlobal(
    program
      .command('delete')
      .description('delete profiles from the kernel and the state file, in one transaction')
      .argument('[names...]'),
  )
    .option('--all', 'delete every profile of the state file')
    .action(async (names: string[], o: GlobalOpts & { all?: boolean }, cmd: Command) =>
      deleteCommand(names, withGlobals(o, cmd), io),
    );
  addGlobal(program.command('list').description('list the profiles of the state file')).action(
    async (o: GlobalOpts, cmd: Command) => listCommand(withGlobals(o, cmd), io),
  );
  addGlobal(
    program.command('show').description('show a profile and its rules in the kernel, with counters').argument('<name>'),
  ).action(async (name: string, o: GlobalOpts, cmd: Command) => showCommand(name, withGlobals(o, cmd), io));
  addGlobal(
    addProfileFlags(
      program
        .command('plan')
        .description('print the exact iptables-restore text a change would commit; changes nothing'),
    ),
  )
    .option('--delete', 'plan the deletion of -profile')
    .option('--use-state', 'plan applying (or with --delete removing) every profile of the state file')
    .action(async (o: LegacyOpts, cmd: Command) => planCommand(withGlobals(o, cmd), io));
  addGlobal(
    program
      .command('status')
      .description(
        'compare the state file with the kernel: in-sync, missing, modified or orphaned, with counters (exit 3 when anything drifted)',
      ),
  )
    .option('--watch', 'refresh per-destination connection rates every --interval ms (the same as iptlb top)')
    .option('--interval <ms>', 'with --watch: refresh period', '1000')
    .option('--count <n>', 'with --watch: stop after n refreshes')
    .action(async (o: GlobalOpts & { watch?: boolean; interval?: string; count?: string }, cmd: Command) => {
      if (o.watch) return topCommand(withGlobals(o, cmd), io);
      const code = await statusCommand(withGlobals(o, cmd), io);
      if (code !== 0) throw new ExitCode(code);
    });
  addGlobal(
    program
      .command('top')
      .description('per-destination new connections per second, refreshed every second, as you would watch a rollout'),
  )
    .option('--interval <ms>', 'refresh period', '1000')
    .option('--count <n>', 'stop after n refreshes')
    .action(async (o: GlobalOpts & { interval?: string; count?: string }, cmd: Command) =>
      topCommand(withGlobals(o, cmd), io),
    );
  addGlobal(program.command('sync').description('make the kernel match the state file, in one transaction')).action(
    async (o: GlobalOpts, cmd: Command) => {
      const g = withGlobals(o, cmd);
      const r = await makeCore(g, io).sync();
      if (g.json) io.out(JSON.stringify(r));
    },
  );
  addGlobal(
    program
      .command('watch')
      .description(
        'keep the kernel in step with the state file (for a systemd unit); SIGHUP checks at once, SIGTERM stops and leaves the rules',
      ),
  )
    .option('--interval <ms>', 'periodic drift check', '5000')
    .option(
      '--settle <ms>',
      'apply a changed state file only once it has not changed for this long and parses as a whole (writers: write a temporary file and rename it)',
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
        const interval = Number(o.interval);
        if (!Number.isInteger(interval) || interval < 100)
          throw new IptlbError('EUSAGE', `interval: ${show(o.interval)} must be a whole number of ms, at least 100`, {
            field: 'interval',
          });
        const settle = Number(o.settle);
        if (!Number.isInteger(settle) || settle < 0 || settle > 600_000)
          throw new IptlbError('EUSAGE', `settle: ${show(o.settle)} must be a whole number of ms from 0 to 600000`, {
            field: 'settle',
          });
        const core = makeCore(g, io);
        const { startWatch } = await import('./watch.js');
        const { startWatchServices } = await import('./cli/watch-services.js');
        const log = g.quiet ? () => {} : (l: string) => io.err(`iptlb: ${l}`);
        const services = await startWatchServices(core, {
          metricsAddress: o.metricsAddress,
          health: o.healthChecks,
          log,
        });
        const w = startWatch(core, { intervalMs: interval, settleMs: settle, log, onSync: services.onSync });
        io.err(`iptlb: watch: watching ${core.statePath} (check every ${interval} ms)`);
        await services.start();
        w.done.then(() => services.stop()).catch(() => {});
        const stop = (): void => void w.stop().then(() => services.stop());
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
        await w.done;
        await services.stop();
      },
    );
  addGlobal(
    program
      .command('migrate')
      .description(
        'move every profile to the other engine: one transaction to install them there, one to remove them here; no virtual address is ever without rules',
      ),
  )
    .requiredOption('--to <engine>', 'legacy or nft')
    .action(async (o: GlobalOpts & { to: string }, cmd: Command) => {
      const g = withGlobals(o, cmd);
      const to = parseEngineChoice(o.to);
      if (to === 'auto') throw new IptlbError('EUSAGE', 'to: migrate needs --to legacy or --to nft', { field: 'to' });
      const r = await makeCore(g, io).migrate(to);
      if (g.json) io.out(JSON.stringify({ to, ...r }));
    });
  registerAgent(program, io);
  registerFleet(program, io, {
    addProfileFlags,
    profileInput,
    exit: (code) => {
      throw new ExitCode(code);
    },
  });
  addGlobal(
    program
      .command('doctor')
      .description('say which engine and executor would be used and why, what is missing and how to fix it'),
  ).action(async (o: GlobalOpts, cmd: Command) => {
    const code = await doctor(withGlobals(o, cmd), io);
    if (code !== 0) throw new ExitCode(code);
  });
  registerExtras(
    program,
    io,
    () => process.argv[1] ?? 'iptlb',
    (code) => new ExitCode(code),
  );
  return program;
}

class ExitCode extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** Runs the CLI; resolves with the exit code. */
export async function main(
  argv: string[],
  io: Out = { out: (s) => process.stdout.write(s + '\n'), err: (s) => process.stderr.write(s + '\n') },
): Promise<number> {
  try {
    const program = buildProgram(io, packageVersion());
    if (argv.length === 0) return (program.outputHelp(), 0); // a bare `iptlb` shows the help
    await program.parseAsync(normalizeArgv(argv), { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof ExitCode) return e.code;
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.exitCode === 0) return 0;
      return 2; // commander already printed its one-line message
    }
    if (e instanceof IptlbError) {
      io.err(`iptlb: error: ${e.message}`);
      return e.exitCode;
    }
    const err = e as Error;
    io.err(`iptlb: internal error: ${err?.message ?? String(e)}`);
    if (process.env.IPTLB_DEBUG) io.err(String(err?.stack));
    return 1;
  } finally {
    // One-shot: no conntrack cleanup may be cut short by the exit (each change awaits its own already).
    const waiting = [...cores];
    cores.clear();
    await Promise.all(waiting.map((c) => c.conntrackIdle()));
  }
}
