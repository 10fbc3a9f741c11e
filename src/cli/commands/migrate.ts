/** `iptlb migrate --to ENGINE`: move every profile to the other engine. */
import type { Command } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { addGlobal, withGlobals, type GlobalOpts } from '../flags.js';
import { makeCore, report, verboseRules, type Out } from '../context.js';

export function register(program: Command, io: Out): void {
  addGlobal(
    program
      .command('migrate')
      .description(
        "move every profile to the other engine: one transaction to install them there, one to remove them here; no virtual address is ever without rules. Refused when the state file does not exist, or when either engine holds profiles it does not hold (another state file's). The engine is recorded beside the state file (<state file>.engine): every later command, watch, the agent and open library handles follow it, after a reboot too. When the rules are in that engine already (in step, the other engine holding none), it says so and changes nothing",
      ),
    { changes: false },
  )
    .requiredOption('--to <engine>', 'legacy or nft')
    .action(async (o: GlobalOpts & { to: string }, cmd: Command) => {
      const g = withGlobals(o, cmd);
      // Named as the flag it came from (it said `engine: "bogus" …`).
      const to = o.to.toLowerCase();
      if (to !== 'legacy' && to !== 'nft')
        throw new IptlbError(
          'EUSAGE',
          `to: ${JSON.stringify(o.to)} must be legacy or nft (migrate needs --to legacy or --to nft)`,
          {
            field: 'to',
          },
        );
      const core = makeCore(g, io);
      const r = await core.migrate(to, { requireFile: true });
      report({ to, ...r }, g, io, verboseRules(core, io));
    });
}
