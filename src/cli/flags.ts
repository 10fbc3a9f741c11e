/**
 * The command line's flags: the original Go iptlb's (one or two dashes, `=` or a space), the global ones
 * every command takes, and the profile flags of apply, plan and the original's form.
 */
import { Command, Option } from 'commander';
import { IptlbError } from '../model/errors.js';
import { DEFAULTS, show, splitDestinations } from '../model/profile.js';
import type { Profile, ProfileInput } from '../model/types.js';
import { readInputFile } from '../model/limits.js';
import { parseState } from '../core/state.js';
import { HEALTH_FLAGS, addHealthFlags, healthInput, type HealthOpts } from './health.js';

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

/** The one-letter forms of boolean flags. */
const SHORT_BOOLS: Record<string, string> = { q: 'quiet', h: 'help' };

/** Whether the command line takes flag `--name` with one dash too (`-name`, `-name=value`): the original's flags. */
export function takesOneDash(name: string): boolean {
  return VALUE_FLAGS.has(name) || BOOL_FLAGS.has(name);
}

/**
 * Rewrites Go-style flags (`-src-addr=x`, `-run=true`) into the `--src-addr=x` form commander parses. A boolean set
 * false (`-run=false`, `--reset=0`) is dropped, as the flag absent means the same: `falses`, when given, gets the
 * booleans whose last occurrence set them false, for a command that would ignore such a flag to refuse it.
 */
export function normalizeArgv(argv: string[], falses?: Set<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    const m = /^--?([a-z][a-z-]*)(?:=([\s\S]*))?$/.exec(a);
    // `-q=false`, `-h=true`: a short flag with a value, as Go's flag package takes one (commander read
    // `-q=false` as -q then `-=false`, and said "unknown option '-=false'").
    if (m && m[2] !== undefined && a[1] !== '-' && m[1] in SHORT_BOOLS) m[1] = SHORT_BOOLS[m[1]]!;
    if (!m || (!VALUE_FLAGS.has(m[1]) && !BOOL_FLAGS.has(m[1]))) {
      out.push(a);
      continue;
    }
    const [, name, value] = m;
    if (BOOL_FLAGS.has(name) && value !== undefined) {
      const v = value.toLowerCase();
      if (v === 'true' || v === '1' || v === 't') {
        out.push(`--${name}`);
        falses?.delete(name);
      } else if (v === 'false' || v === '0' || v === 'f') {
        falses?.add(name);
        // Go semantics: the last occurrence wins, so a later -flag=false cancels an earlier -flag.
        // (`-q` too, which commander takes for --quiet.)
        const short = Object.keys(SHORT_BOOLS).find((c) => SHORT_BOOLS[c] === name);
        for (let k = out.length - 1; k >= 0; k--)
          if (out[k] === `--${name}` || (short !== undefined && out[k] === `-${short}`)) out.splice(k, 1);
        continue;
      } else
        throw new IptlbError('EUSAGE', `-${name}: ${show(value)} is not a boolean (true or false)`, { field: name });
    } else {
      // A flag that takes a value, followed by another flag: its value was left out (taken as given,
      // the next flag would be the value and what follows an extra argument).
      const next = value === undefined && VALUE_FLAGS.has(name) ? argv[i + 1] : undefined;
      const nm = next === undefined ? null : /^--?([a-z][a-z-]*)(?:=|$)/.exec(next);
      if (nm && (VALUE_FLAGS.has(nm[1]!) || BOOL_FLAGS.has(nm[1]!)))
        throw new IptlbError('EUSAGE', `${name}: the value is missing (the next argument, ${show(next!)}, is a flag)`, {
          field: name,
        });
      if (BOOL_FLAGS.has(name)) falses?.delete(name);
      out.push(value === undefined ? `--${name}` : `--${name}=${value}`);
    }
  }
  return out;
}

export interface GlobalOpts {
  keepConntrack?: boolean;
  stateFile?: string;
  executor?: string;
  engine?: string;
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

export interface ProfileOpts extends GlobalOpts, HealthOpts {
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

export interface LegacyOpts extends ProfileOpts {
  reset?: boolean;
  delete?: boolean;
  run?: boolean;
  useState?: boolean;
}

/**
 * The flags every command takes. `changes: false` (a command that removes no destination: list, show,
 * status, top, doctor, plan, migrate) still accepts --keep-conntrack, as scripts pass global flags
 * everywhere, but leaves it out of its --help, where it would do nothing. `result: false` (watch: it
 * runs until stopped and prints no result) does the same with --json.
 */
export function addGlobal(
  cmd: Command,
  { changes = true, result = true }: { changes?: boolean; result?: boolean } = {},
): Command {
  return cmd
    .option(
      '--state-file <path>',
      'state file (env IPTLB_STATE_FILE; default ./local/state.db, relative to the working directory)',
    )
    .addOption(new Option('--executor <kind>', 'native, spawn or auto (env IPTLB_EXECUTOR; default auto)'))
    .addOption(
      new Option(
        '--engine <engine>',
        'legacy (x_tables nat tables), nft (tables ip/ip6 iptlb) or auto: the engine iptlb migrate recorded, else the one holding the rules (env IPTLB_ENGINE; default auto); a change through the engine the rules are not in is refused',
      ),
    )
    .addOption(new Option('--json', 'print the result as JSON on stdout').hideHelp(!result))
    .option('-q, --quiet', 'print no log lines')
    .addOption(
      new Option(
        '--keep-conntrack',
        'keep conntrack entries of flows to destinations a change removes (default: delete them)',
      ).hideHelp(!changes),
    )
    .option(
      '--verbose',
      'also log the rules each commit wrote or removed (apply, delete, sync, migrate, -run), each in the chain it is in',
    );
}

export const GLOBAL_KEYS = ['stateFile', 'executor', 'engine', 'json', 'quiet', 'verbose', 'keepConntrack'] as const;
/** A subcommand's options, with global flags given before the subcommand filled in from the parent. */
export function withGlobals<T extends GlobalOpts>(o: T, cmd: Command): T {
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

export function addProfileFlags(cmd: Command): Command {
  return addHealthFlags(
    cmd
      .option(
        '--profile <name>',
        'profile name: 1-63 of A-Z a-z 0-9 _ -, not starting with - (a profile of an older state file, 1-18 of them, may: -run -delete and -run without addresses take it); names are one namespace per host: creating a profile whose name the kernel holds for another state file is refused',
        'default',
      )
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
      .option('--log-level <level>', 'syslog level of those logs: 0-7 or emerg (panic)..debug', DEFAULTS.logLevel)
      .option('--masquerade', 'proxy mode: masquerade balanced flows so replies return through this host'),
  );
}

/**
 * The profile flags given on the command line (`protocol`, `health-fall`…), for a command that takes
 * its profiles elsewhere (`--file`). Commander gives a flag the program knows too to the program,
 * wherever it stands on the line: the root command is asked as well.
 */
export function profileFlagsGiven(cmd: Command): string[] {
  const own = new Set(cmd.options.map((x) => x.attributeName()));
  let root: Command = cmd;
  while (root.parent) root = root.parent;
  return addProfileFlags(new Command())
    .options.filter((x) => {
      const k = x.attributeName();
      return (
        cmd.getOptionValueSource(k) === 'cli' || (own.has(k) && root !== cmd && root.getOptionValueSource(k) === 'cli')
      );
    })
    .map((x) => (x.long ?? x.flags).replace(/^--/, ''));
}

/** Refuses profile flags given beside `--file` (they would be ignored): one line naming them, the first the field. */
export function refuseProfileFlagsWithFile(cmd: Command): void {
  const given = profileFlagsGiven(cmd);
  if (!given.length) return;
  const more = given.length > 1 ? `; also given: ${given.slice(1).join(', ')}` : '';
  throw new IptlbError(
    'EUSAGE',
    `${given[0]}: cannot be combined with --file (the file gives every field of its profiles${more})`,
    { field: given[0]! },
  );
}

export function profileInput(o: ProfileOpts): ProfileInput {
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

/**
 * The profiles of `--file` (`apply`, `fleet apply`): a YAML file in the state-file format (`-`:
 * standard input), read with the input limits. Its content is input as flags are: what is wrong in
 * it is a usage error naming the file (exit 2), and so is a file that holds no profile.
 */
export async function profilesOfFile(file: string): Promise<ProfileInput[]> {
  const label = file === '-' ? 'standard input' : JSON.stringify(file);
  const name = file === '-' ? '<stdin>' : file;
  const text = await readInputFile(file, 'file');
  let profiles: Map<string, Profile>;
  try {
    profiles = await parseState(text, name);
  } catch (e) {
    if (!(e instanceof IptlbError) || e.code !== 'ESTATE') throw e;
    const prefix = `state file ${name}: `;
    const what = e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message;
    throw new IptlbError('EUSAGE', `file: ${label}: ${what}`, { field: 'file' });
  }
  if (profiles.size === 0) throw new IptlbError('EUSAGE', `file: ${label} holds no profiles`, { field: 'file' });
  return [...profiles.values()];
}

/**
 * A flag's whole number of milliseconds from `min` to `max` (Node's timers take at most 2^31 - 1 ms, and
 * turn more into 1 ms), or a one-line EUSAGE naming it.
 */
export function wholeMs(value: string | undefined, field: string, min: number, max: number): number {
  const n = Number(value);
  if (value === undefined || value.trim() === '' || !Number.isInteger(n) || n < min || n > max)
    throw new IptlbError('EUSAGE', `${field}: ${show(value)} must be a whole number of ms from ${min} to ${max}`, {
      field,
    });
  return n;
}
