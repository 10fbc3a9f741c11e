/** `iptlb sync`: make the kernel match the state file, in one transaction. */
import type { Command } from 'commander';
import { addGlobal, withGlobals, type GlobalOpts } from '../flags.js';
import { ExitCode, makeCore, report, verboseRules, type Out } from '../context.js';

export function register(program: Command, io: Out): void {
  addGlobal(
    program
      .command('sync')
      .description(
        'make the kernel match the state file, in one transaction (refused when it does not exist; {} holds no profiles)',
      ),
  ).action(async (o: GlobalOpts, cmd: Command) => {
    const g = withGlobals(o, cmd);
    const core = makeCore(g, io);
    const r = await core.sync({ requireFile: true });
    report(r, g, io, verboseRules(core, io));
    // The kernel matches the state file in the engine the profiles are in; a copy in the other engine
    // (a migrate killed between its install and its removal) may still take the traffic: said, exit 3,
    // as status does. A file without profiles has no copy anywhere: not asked.
    const split = (r.state?.size ?? 0) > 0 ? await core.engineSplit(true) : undefined;
    if (split) {
      io.err(`iptlb: ${split}`);
      throw new ExitCode(3);
    }
  });
}
