/**
 * The commands that make iptlb usable straight from npm: `iptlb demo` (src/cli/demo.ts),
 * `iptlb completion bash`, and help for a bare `iptlb`. The completion script and the man page
 * (scripts/man.js) are both made from the commander program itself, so they list exactly what
 * --help lists.
 */
import type { Command, Option } from 'commander';
import { IptlbError } from '../errors.js';

type Out = { out: (s: string) => void; err: (s: string) => void };

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

/** Adds `demo` and `completion` to the program. `cli` is the file that runs the CLI (argv[1]). */
export function registerExtras(program: Command, io: Out, cli: () => string, exit: (code: number) => Error): void {
  program
    .command('demo')
    .description(
      'quick start: in a throwaway network namespace, 3 real backends, a real profile, real connections, the split printed (needs root)',
    )
    .option('--connections <n>', 'connections to open through the virtual address', '600')
    .action(async (o: { connections: string }) => {
      const { demo } = await import('./demo.js');
      const n = Number(o.connections);
      if (!/^\d+$/.test(o.connections) || n < 1 || n > 100_000) {
        throw new IptlbError(
          'EUSAGE',
          `connections: ${JSON.stringify(o.connections)} must be a whole number from 1 to 100000`,
          { field: 'connections' },
        );
      }
      const code = await demo({ connections: n, cli: cli() }, io);
      if (code !== 0) throw exit(code);
    });
  program
    .command('completion')
    .description('print a shell completion script: source <(iptlb completion bash)')
    .argument('<shell>', 'bash')
    .action((shell: string) => {
      if (shell !== 'bash')
        throw new IptlbError('EUSAGE', `shell: ${JSON.stringify(shell)} is not supported (bash is)`, {
          field: 'shell',
        });
      io.out(bashCompletion(program).trimEnd());
    });
}
