/**
 * `iptlb completion bash`: a bash completion script made from the commander program itself, so it lists
 * exactly what --help lists (as the man page does, scripts/man.js).
 */
import type { Command, Option } from 'commander';
import { IptlbError } from '../../model/errors.js';
import type { Out } from '../context.js';

/** The flags of a command as its --help lists them (long and short forms). */
function flagsOf(cmd: Command): string[] {
  const opts = (cmd as unknown as { options: Option[] }).options;
  return [...opts.flatMap((o) => [o.long, o.short].filter((f): f is string => !!f)), '--help'];
}

/** A bash completion script: subcommands first, then each command's flags. */
export function bashCompletion(program: Command): string {
  const cmds = program.commands.map((c) => c.name());
  const cases = program.commands
    .map((c) => `    ${c.name()}) opts=${JSON.stringify(flagsOf(c).join(' '))} ;;`)
    .join('\n');
  return `# bash completion for iptlb (made by \`iptlb completion bash\`). Load it with
#   source <(iptlb completion bash)
# or install it: iptlb completion bash > /etc/bash_completion.d/iptlb
_iptlb() {
  local cur=\${COMP_WORDS[COMP_CWORD]} cmd="" i opts
  for ((i = 1; i < COMP_CWORD; i++)); do
    case \${COMP_WORDS[i]} in -*) ;; *) cmd=\${COMP_WORDS[i]}; break ;; esac
  done
  case $cmd in
${cases}
    *) opts=${JSON.stringify([...flagsOf(program), '--version'].join(' '))}
       if [[ $cur != -* ]]; then COMPREPLY=($(compgen -W ${JSON.stringify(cmds.join(' '))} -- "$cur")); return; fi ;;
  esac
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
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
