/** `iptlb delete`: delete profiles from the kernel and the state file, in one transaction. */
import type { Command } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { deleteChange } from '../../core/core.js';
import { addGlobal, withGlobals, type GlobalOpts } from '../flags.js';
import { makeCore, report, transact, verboseRules, type Out } from '../context.js';

async function deleteCommand(names: string[], o: GlobalOpts & { all?: boolean }, io: Out): Promise<void> {
  if (o.all && names.length)
    throw new IptlbError('EUSAGE', 'delete: give profile names or --all, not both', { field: 'all' });
  if (!o.all && !names.length)
    throw new IptlbError('EUSAGE', 'delete: name the profiles to delete (or --all)', { field: 'names' });
  const core = makeCore(o, io);
  const result = await transact(
    core,
    (state) => (o.all ? { upsert: [], remove: [...state.keys()] } : deleteChange(state, names)),
    // --all decides from the state file: one that does not exist is refused (a wrong path), as sync does.
    { run: true, ...(o.all ? { requireFile: true } : {}) },
  );
  if (o.all && result.deleted.length === 0 && !o.quiet)
    io.err(`iptlb: delete --all: ${core.statePath} holds no profiles; nothing was changed`);
  report(result, o, io, verboseRules(core, io));
}

export function register(program: Command, io: Out): void {
  addGlobal(
    program
      .command('delete')
      .description('delete profiles from the kernel and the state file, in one transaction')
      .argument('[names...]'),
  )
    .option('--all', 'delete every profile of the state file (which must exist)')
    .action(async (names: string[], o: GlobalOpts & { all?: boolean }, cmd: Command) =>
      deleteCommand(names, withGlobals(o, cmd), io),
    );
}
