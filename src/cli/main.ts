/**
 * The `iptlb` command line. Keeps the original Go iptlb's flags (one or two dashes, `=` or a space)
 * and adds subcommands, one file each under src/cli/commands/. Exit codes: 0 done, 1 refused (conflict,
 * kernel, state), 2 usage/bad input, 3 drift found by status.
 */
import { Command, CommanderError, type HelpContext } from 'commander';
import { IptlbError } from '../model/errors.js';
import { show } from '../model/profile.js';
import { packageVersion } from '../platform/paths.js';
import { normalizeArgv } from './flags.js';
import { ExitCode, coresIdle, type Out } from './context.js';
import { processOut } from './stdio.js';
import { syncFs, useSyncFs } from '../platform/fsp.js';
import * as original from './commands/original.js';
import * as apply from './commands/apply.js';
import * as del from './commands/delete.js';
import * as list from './commands/list.js';
import * as showCmd from './commands/show.js';
import * as plan from './commands/plan.js';
import * as status from './commands/status.js';
import * as top from './commands/top.js';
import * as sync from './commands/sync.js';
import * as watch from './commands/watch.js';
import * as migrate from './commands/migrate.js';
import * as agent from './commands/agent.js';
import * as fleet from './commands/fleet.js';
import * as doctor from './commands/doctor.js';
import * as demo from './commands/demo.js';
import * as completion from './commands/completion.js';

export { normalizeArgv } from './flags.js';

/** The commands, in the order --help lists them, by name (`original` is the program itself: always there). */
const COMMANDS: [string | null, { register(program: Command, io: Out): void }][] = [
  [null, original],
  ['apply', apply],
  ['delete', del],
  ['list', list],
  ['show', showCmd],
  ['plan', plan],
  ['status', status],
  ['top', top],
  ['sync', sync],
  ['watch', watch],
  ['migrate', migrate],
  ['agent', agent],
  ['fleet', fleet],
  ['doctor', doctor],
  ['demo', demo],
  ['completion', completion],
];

/**
 * Which commands a run needs: commander dispatches to the command named by an argument, so a command
 * whose name is none of the arguments can be left out (registering all 16 with their options costs
 * about 3 % of a Node start). Help (which lists them all), `completion` (which reads them all) and a
 * bare `iptlb` get every one.
 */
export function commandsFor(argv: readonly string[]): (string | null)[] {
  return commandsOf(argv).map(([name]) => name);
}

function commandsOf(argv: readonly string[]): typeof COMMANDS {
  const all = argv.length === 0 || argv.some((a) => a === 'help' || a === 'completion' || a === '-h' || a === '--help');
  return all ? COMMANDS : COMMANDS.filter(([name]) => name === null || argv.includes(name));
}

/**
 * A command whose usage errors name it (`iptlb: error: show: missing required argument 'name'`), as
 * iptlb's own errors name their field: commander's messages (unknown option, missing argument, bad
 * option value…) name neither. Its subcommands are of the same kind.
 */
class NamedCommand extends Command {
  override createCommand(name?: string): Command {
    return new NamedCommand(name);
  }

  /** A command group given no command (`iptlb fleet`): one line naming it and its commands, not the whole help. */
  override help(context?: HelpContext): never;
  override help(cb?: (str: string) => string): never;
  override help(context?: HelpContext | ((str: string) => string)): never {
    if (typeof context === 'object' && context.error && this.parent && this.commands.length)
      this.error(
        `error: missing command (one of: ${this.commands.map((c) => c.name()).join(', ')}; iptlb ${commandPath(this)} --help says more)`,
        { code: 'commander.missingCommand', exitCode: 2 },
      );
    return super.help(context as HelpContext);
  }

  override error(message: string, errorOptions?: { code?: string; exitCode?: number }): never {
    // The program's own options are parsed wherever they stand: an error in one after a command
    // (`iptlb apply --profile`) names that command.
    const name = commandPath(this) ?? this.commandIn(this.userArgs);
    const named =
      name !== null && message.startsWith('error: ') && !message.startsWith(`error: ${name}: `)
        ? `error: ${name}: ${message.slice('error: '.length)}`
        : message;
    return super.error(named, errorOptions);
  }

  /** The command line this program parses (set by main). */
  userArgs?: readonly string[];

  /** The boolean flags the command line set to false (set by main: normalizeArgv drops them). */
  falseFlags?: ReadonlySet<string>;

  /** The first of `args` that names a command of this one. */
  private commandIn(args: readonly string[] | undefined): string | null {
    const names = new Set(this.commands.map((c) => c.name()));
    return args?.find((a) => names.has(a)) ?? null;
  }
}

function buildProgram(io: Out, version: string, commands: typeof COMMANDS = COMMANDS): NamedCommand {
  const program = new NamedCommand('iptlb');
  program
    .description(
      'Linux NAT load balancer: balances a virtual ip:port over destinations with NAT rules committed atomically, in the x_tables nat tables of iptables and ip6tables (--engine legacy) or the nf_tables tables ip iptlb and ip6 iptlb (--engine nft)',
    )
    .version(version, '--version')
    .helpOption('-h, --help', 'show help')
    .configureOutput({
      writeOut: (s) => io.out(s.trimEnd()),
      // An error is one line: commander's suggestion ("(Did you mean --profile?)") joins it.
      writeErr: (s) => io.err(s.startsWith('error:') ? `iptlb: ${s.trim().replace(/\s*\n\s*/g, ' ')}` : s.trimEnd()),
    })
    .exitOverride()
    // Extra arguments are refused by refuseExcessArguments (commander's own message names no command).
    .allowExcessArguments(true)
    .hook('preAction', (_program, cmd) => {
      refuseExcessArguments(cmd);
      refuseOptionsOfTheProgram(cmd);
      refuseFalseChangeFlags(cmd);
    })
    .addHelpText(
      'after',
      `
Original flags (one or two dashes, -flag=value or -flag value):
  iptlb -run -profile=web -src-addr=127.100.0.10:8081 -dest-addr=127.0.0.1:9001,127.0.0.1:9002
  iptlb -run -reset -profile=web -src-addr=127.100.0.10:8081 -dest-addr=127.0.0.1:9003
  iptlb -run -reset -profile=web -src-addr=127.100.0.10:8081 -dest-addr=127.0.0.1:9001*3,127.0.0.1:9002*0
                                   weights: 9001 takes every new connection, 9002 is drained
  iptlb -run -reset -profile=web -src-addr=127.100.0.10:8081 -dest-addr=127.0.0.1:9001,127.0.0.1:9002 -scheduler=round-robin
  iptlb -run -delete -profile=web
  iptlb -use-state -run            apply every profile of the state file (it must exist) in one transaction
  iptlb top                        connections per second per destination, refreshed every second
  iptlb migrate --to nft           move every profile to the nft engine, no address ever without rules
Without -run only the state file is written. A state file that does not exist is not "no profiles":
-use-state, sync, migrate and plan --use-state refuse it (exit 1); an empty one ({}) holds none.
Engine auto: the one \`iptlb migrate\` recorded beside the state file (also after a reboot), else the
one already holding iptlb's rules, else nft when the host's iptables is the nf_tables flavour or
x_tables is missing, else legacy (see doctor).
Exit status: 0 done, 1 refused (conflict, kernel, state, lock; doctor: not ready), 2 bad input or usage,
3 drift found by status or fleet status (also sync, apply, delete and -run after committing while
iptlb's rules are in both engines).`,
    );
  for (const [, command] of commands) command.register(program, io);
  return program;
}

/** A command as the command line names it (`list`, `fleet list`); null for the program itself. */
function commandPath(cmd: Command): string | null {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.length ? names.join(' ') : null;
}

/**
 * More arguments than `cmd` takes: one line naming the command, how many it got (and which) and what
 * it takes, exit 2. (A variadic argument takes any number.)
 */
function refuseExcessArguments(cmd: Command): void {
  const declared = cmd.registeredArguments;
  if (declared.at(-1)?.variadic || cmd.args.length <= declared.length) return;
  const shown = cmd.args.slice(0, 5).map((a) => show(a));
  const got = `too many arguments (${cmd.args.length}: ${shown.join(' ')}${cmd.args.length > 5 ? ' …' : ''})`;
  const name = commandPath(cmd);
  if (name === null)
    throw new IptlbError(
      'EUSAGE',
      `${got}; the original's form takes flags only (-run -profile=… -src-addr=… -dest-addr=…), and a command goes first: iptlb COMMAND [flags]`,
      { field: 'arguments' },
    );
  const takes = declared.length
    ? `it takes ${declared.length === 1 ? 'one' : declared.length}: ${declared.map((a) => a.description || a.name()).join(', ')}`
    : 'it takes none';
  throw new IptlbError('EUSAGE', `${name}: ${got}; ${takes}`, { field: 'arguments' });
}

/**
 * A flag of the program itself (the original's form: `--profile`, `--run`, `--delete`, `--json`, …) given
 * to a command that does not take it: commander gives a flag the program knows to the program wherever
 * it stands on the line, so the command never saw it and it did nothing (`iptlb apply --delete --profile
 * web …` created web; `iptlb top --profile web` showed every profile). Refused, one line naming the flag
 * and the command, exit 2, before anything is read or changed.
 */
/**
 * The original's change flags that a command's change implies, taken as they are: `apply` creates or replaces
 * and commits, and `plan` prints what that change would commit, so an original command line with `-run` and
 * `-reset` kept in it (`iptlb plan -run -reset -profile=web …`) means the same change.
 */
const ORIGINAL_CHANGE_FLAGS: Record<string, string[]> = { apply: ['reset', 'run'], plan: ['reset', 'run'] };

function refuseOptionsOfTheProgram(cmd: Command): void {
  const name = commandPath(cmd);
  if (name === null) return; // the original's form: every flag of the program is its own
  let root: Command = cmd;
  while (root.parent) root = root.parent;
  const own = new Set([...cmd.options.map((o) => o.attributeName()), ...(ORIGINAL_CHANGE_FLAGS[name] ?? [])]);
  const foreign = root.options.find(
    (o) => root.getOptionValueSource(o.attributeName()) === 'cli' && !own.has(o.attributeName()),
  );
  if (foreign === undefined) return;
  const flag = foreign.long ?? foreign.flags;
  throw new IptlbError(
    'EUSAGE',
    `${name}: ${flag} is not an option of ${name} (\`iptlb ${name} --help\` lists the options it takes)`,
    { field: flag.replace(/^-+/, '') },
  );
}

/**
 * The original's change flags set to false that a command would ignore: `apply` commits and replaces whatever
 * they say, so `iptlb apply -run=false …` (an original command line with apply put in front, say) changed the
 * kernel where the original's form writes the state file only, and `-reset=false` replaced a profile that the
 * original's form refuses to change. Refused, one line naming the flag and the command, exit 2.
 */
const IGNORED_WHEN_FALSE: Record<string, Record<string, string>> = {
  apply: {
    run: 'apply always commits to the kernel (the original form, without apply, writes only the state file without -run)',
    reset:
      'apply replaces a profile that exists (the original form, without apply, refuses to change one without -reset)',
  },
};

function refuseFalseChangeFlags(cmd: Command): void {
  const name = commandPath(cmd);
  const ignored = name === null ? undefined : IGNORED_WHEN_FALSE[name];
  if (ignored === undefined) return;
  let root: Command = cmd;
  while (root.parent) root = root.parent;
  const given = (root as NamedCommand).falseFlags;
  for (const [flag, why] of Object.entries(ignored))
    if (given?.has(flag))
      throw new IptlbError('EUSAGE', `${name}: -${flag}=false would be ignored: ${why}`, { field: flag });
}

/**
 * Commands that keep running (they serve, watch or refresh): their file calls stay asynchronous, so an
 * fsync never stalls them. Every other command does one thing and exits: its file calls run on the
 * main thread (see platform/fsp.ts).
 */
const LONG_RUNNING = new Set<string | null>(['top', 'watch', 'agent', 'fleet', 'demo']);

/**
 * Runs the CLI; resolves with the exit code. Output lost to a failed write to stdout (a full disk) is
 * one line on stderr and exit 1 where the command ended with 0: a script must not take a truncated
 * `status --json > f` as the status.
 */
export async function main(argv: string[], io: Out = processOut()): Promise<number> {
  const code = await run(argv, io);
  const failed = io.failed?.();
  if (failed === undefined) return code;
  io.err(`iptlb: error: stdout: a write failed (${failed}); the output is incomplete`);
  return code === 0 ? 1 : code;
}

async function run(argv: string[], io: Out): Promise<number> {
  const wasSync = syncFs();
  try {
    if (argv.length === 0) return (buildProgram(io, packageVersion()).outputHelp(), 0); // a bare `iptlb` shows the help
    const falses = new Set<string>();
    let args = normalizeArgv(argv, falses);
    // `iptlb help [command]`: the help of the program or of that command (`help fleet apply`: of fleet's
    // apply, not of fleet). `help help` is the program's help, as `help` alone.
    if (args[0] === 'help') {
      while (args[0] === 'help') args = args.slice(1);
      args = [...args, '--help'];
    }
    // A word first is a command: the original's flags take no arguments of their own.
    const first = args[0];
    if (first !== undefined && !first.startsWith('-') && !COMMANDS.some(([n]) => n === first))
      throw new IptlbError(
        'EUSAGE',
        `unknown command ${JSON.stringify(first)} (commands: ${COMMANDS.flatMap(([n]) => (n ? [n] : [])).join(', ')})`,
        { field: 'command' },
      );
    const commands = commandsOf(args);
    useSyncFs(!commands.some(([name]) => LONG_RUNNING.has(name)));
    const program = buildProgram(io, packageVersion(), commands);
    program.userArgs = args;
    program.falseFlags = falses;
    await program.parseAsync(args, { from: 'user' });
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
    await coresIdle();
    useSyncFs(wasSync);
  }
}
