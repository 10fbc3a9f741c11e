/** `iptlb doctor`: which engine and executor would be used and why, what is missing, how to fix it. */
import type { Command } from 'commander';
import { doctor } from '../../core/doctor.js';
import { addGlobal, withGlobals, type GlobalOpts } from '../flags.js';
import { ExitCode, type Out } from '../context.js';

export function register(program: Command, io: Out): void {
  addGlobal(
    program
      .command('doctor')
      .description('say which engine and executor would be used and why, what is missing and how to fix it'),
    { changes: false },
  ).action(async (o: GlobalOpts, cmd: Command) => {
    const code = await doctor(withGlobals(o, cmd), io);
    if (code !== 0) throw new ExitCode(code);
  });
}
