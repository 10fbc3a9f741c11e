/**
 * `iptlb completion bash`: a bash completion script made from the commander program itself, so it
 * completes exactly what the command line takes (as the man page lists it, scripts/man.js): every
 * command and subcommand (`fleet apply`), every flag in its two-dash form, and in its one-dash form
 * too where the command line takes one (the original's Go-style flags, see {@link takesOneDash}). A
 * command is found after flags given before it (`iptlb --engine nft apply --…`), flag values skipped.
 * It also completes the values of the flags that take a few ({@link FLAG_VALUES}), and profile names
 * (after `show` and `delete`, and as `-profile`'s value) from the state file the command line names.
 */
import type { Command, Option } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { takesOneDash } from '../flags.js';
import type { Out } from '../context.js';

/**
 * The values a flag takes, by its long name, as its checks accept them (cli-extras.test.ts holds them
 * to that); `@names`: the profile names of the state file the command line names (`iptlb list --names`).
 */
export const FLAG_VALUES: Readonly<Record<string, string>> = {
  engine: 'legacy nft auto',
  to: 'legacy nft',
  executor: 'native spawn auto',
  scheduler: 'random round-robin',
  'rules-backend': 'client proxy server',
  protocol: 'tcp udp sctp',
  'log-level': '0 1 2 3 4 5 6 7 emerg alert crit err warning notice info debug',
  health: 'tcp http none',
  'health-all-down': 'keep drain',
  profile: '@names',
};

/** The commands whose arguments are profile names of the state file. */
const NAME_ARGUMENTS = new Set(['show', 'delete']);

/** What is completed at one level: after `iptlb`, or after `iptlb <command> [<subcommand>]`. */
export interface CompletionLevel {
  /** The command words that lead here: '' for the program, `apply`, `fleet list`. */
  path: string;
  /** The flags taken here, every form the command line takes (`--state-file`, `-state-file`, `-q`). */
  flags: string[];
  /** Those of them that take a value (the next word, or after `=`). */
  valued: string[];
  /** Those whose value is a file. */
  files: string[];
  /** The commands that may follow (`help` too where it is taken). */
  commands: string[];
  /** Whether the words after it are profile names of the state file (`show`, `delete`). */
  names?: boolean;
}

/** Every option of `cmd`, its help option too (commander makes that one on demand). */
function optionsOf(cmd: Command): Option[] {
  const visible = cmd.createHelp().visibleOptions(cmd);
  return [...cmd.options, ...visible.filter((o) => !cmd.options.includes(o))];
}

/** Every form of an option the command line takes: `--long`, `-s`, and `-long` for the original's flags. */
function formsOf(o: Option): string[] {
  const forms: string[] = [];
  if (o.long) {
    forms.push(o.long);
    if (takesOneDash(o.long.slice(2))) forms.push(o.long.slice(1));
  }
  if (o.short) forms.push(o.short);
  return forms;
}

/** The levels of the program: the program itself, each command, each subcommand, in --help order. */
export function completionLevels(program: Command): CompletionLevel[] {
  const levels: CompletionLevel[] = [];
  const walk = (cmd: Command, path: string): void => {
    const subs = cmd.createHelp().visibleCommands(cmd);
    const commands = subs.map((c) => c.name());
    // `iptlb help [command]` is taken by main() itself (the program has an action, so commander lists no help command).
    if (path === '' && !commands.includes('help')) commands.push('help');
    const options = optionsOf(cmd);
    const forms = (filter: (o: Option) => boolean): string[] => options.filter(filter).flatMap(formsOf);
    levels.push({
      path,
      flags: forms(() => true),
      valued: forms((o) => o.required || o.optional),
      files: forms((o) => /<(path|file)>/.test(o.flags)),
      commands,
      ...(NAME_ARGUMENTS.has(path) ? { names: true } : {}),
    });
    for (const c of subs) if (c.name() !== 'help') walk(c, path ? `${path} ${c.name()}` : c.name());
  };
  walk(program, '');
  // After `help`, a command's name.
  levels.push({ path: 'help', flags: [], valued: [], files: [], commands: program.commands.map((c) => c.name()) });
  return levels;
}

const quoted = (words: string[]): string => JSON.stringify(words.join(' '));

/** A bash completion script for `program`. */
export function bashCompletion(program: Command): string {
  const cases = completionLevels(program)
    .map(
      (l) =>
        `    ${JSON.stringify(l.path)}) flags=${quoted(l.flags)} valued=${quoted(l.valued)} files=${quoted(l.files)} commands=${quoted(l.commands)} names=${l.names ? 1 : '""'} ;;`,
    )
    .join('\n');
  const values = Object.entries(FLAG_VALUES)
    .map(
      ([flag, v]) => `    ${JSON.stringify(flag)}) ${v === '@names' ? '_iptlb_names' : `echo ${JSON.stringify(v)}`} ;;`,
    )
    .join('\n');
  return `# bash completion for iptlb (made by \`iptlb completion bash\` from the command line's own definitions). Load it with
#   source <(iptlb completion bash)
# or install it: iptlb completion bash > /etc/bash_completion.d/iptlb
_iptlb_level() {
  case $1 in
${cases}
    *) flags="" valued="" files="" commands="" names="" ;;
  esac
}
# The profile names of the state file given on the command line (or IPTLB_STATE_FILE, or the default).
_iptlb_names() {
  iptlb list --names \${_iptlb_state:+--state-file="$_iptlb_state"} 2>/dev/null
}
# The values a flag takes (by its long name), if they are few.
_iptlb_values() {
  local f=\${1#-}
  case \${f#-} in
${values}
  esac
}
_iptlb() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev="" path="" i=1 w flags valued files commands names _iptlb_state=""
  _iptlb_level ""
  # The command words before the cursor, past flags and their values (-flag value, -flag=value:
  # bash splits the = into a word of its own). The state file's path is noted on the way.
  while ((i < COMP_CWORD)); do
    w=\${COMP_WORDS[i]}
    if [[ $w == "=" ]]; then
      ((i += 2))
    elif [[ $w == -* ]]; then
      if [[ $w == --state-file || $w == -state-file ]]; then
        if [[ \${COMP_WORDS[i + 1]} == "=" ]]; then _iptlb_state=\${COMP_WORDS[i + 2]}; else _iptlb_state=\${COMP_WORDS[i + 1]}; fi
      fi
      if [[ " $valued " == *" $w "* && \${COMP_WORDS[i + 1]} != "=" ]]; then ((i += 2)); else ((i += 1)); fi
    elif [[ " $commands " == *" $w "* ]]; then
      path=\${path:+$path }$w
      _iptlb_level "$path"
      ((i += 1))
    else
      break
    fi
  done
  # The value of a flag: a file name where it is one, else nothing to offer.
  if [[ $cur == "=" ]]; then
    prev=\${COMP_WORDS[COMP_CWORD - 1]}
    cur=""
  elif ((COMP_CWORD > 1)) && [[ \${COMP_WORDS[COMP_CWORD - 1]} == "=" ]]; then
    prev=\${COMP_WORDS[COMP_CWORD - 2]}
  elif ((COMP_CWORD > 1)); then
    prev=\${COMP_WORDS[COMP_CWORD - 1]}
    [[ " $valued " == *" $prev "* ]] || prev=""
  fi
  if [[ -n $prev && " $valued " == *" $prev "* ]]; then
    if [[ " $files " == *" $prev "* ]]; then
      COMPREPLY=($(compgen -f -- "$cur"))
    else
      COMPREPLY=($(compgen -W "$(_iptlb_values "$prev")" -- "$cur"))
    fi
    return
  fi
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$flags" -- "$cur"))
  elif [[ -n $names ]]; then
    COMPREPLY=($(compgen -W "$(_iptlb_names)" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$commands" -- "$cur"))
  fi
}
complete -F _iptlb iptlb
`;
}

export function register(program: Command, io: Out): void {
  program
    .command('completion')
    .description('print a shell completion script: source <(iptlb completion bash)')
    .argument('<shell>', 'the shell (bash)')
    .action((shell: string) => {
      if (shell !== 'bash')
        throw new IptlbError('EUSAGE', `shell: ${JSON.stringify(shell)} is not supported (bash is)`, {
          field: 'shell',
        });
      io.out(bashCompletion(program).trimEnd());
    });
}
