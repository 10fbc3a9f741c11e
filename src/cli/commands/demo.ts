/**
 * `iptlb demo`: the quick start (src/cli/demo.ts): in a throwaway network namespace, real backends, a real
 * profile, real connections, the split printed.
 */
import type { Command } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { ExitCode, type Out } from '../context.js';

/** `cli` is the file that runs the CLI (argv[1]), which the demo runs inside its namespace. */
export function register(program: Command, io: Out): void {
  const cli = (): string => process.argv[1] ?? 'iptlb';
  program
    .command('demo')
    .description(
      'quick start: in a throwaway network namespace, 3 real backends, a real profile, real connections, the split printed (needs root)',
    )
    .option('--connections <n>', 'connections to open through the virtual address', '600')
    .action(async (o: { connections: string }) => {
      const { demo } = await import('../demo.js');
      const n = Number(o.connections);
      if (!/^\d+$/.test(o.connections) || n < 1 || n > 100_000) {
        throw new IptlbError(
          'EUSAGE',
          `connections: ${JSON.stringify(o.connections)} must be a whole number from 1 to 100000`,
          { field: 'connections' },
        );
      }
      const code = await demo({ connections: n, cli: cli() }, io);
      if (code !== 0) throw new ExitCode(code);
    });
}
