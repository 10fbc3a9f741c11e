/** `iptlb apply`: create or replace a profile (or every profile of --file), in one transaction. */
import type { Command } from 'commander';
import { upsertChange } from '../../core/core.js';
import type { ProfileInput } from '../../model/types.js';
import { validateProfile } from '../../model/profile.js';
import {
  addGlobal,
  addProfileFlags,
  profileInput,
  profilesOfFile,
  refuseProfileFlagsWithFile,
  withGlobals,
  type ProfileOpts,
} from '../flags.js';
import { makeCore, report, transact, verboseRules, type Out } from '../context.js';

async function applyCommand(o: ProfileOpts & { file?: string }, cmd: Command, io: Out): Promise<void> {
  const core = makeCore(o, io);
  let inputs: ProfileInput[];
  if (o.file !== undefined) {
    refuseProfileFlagsWithFile(cmd); // they would be ignored
    inputs = await profilesOfFile(o.file);
  } else {
    // Checked before the lock is taken: bad input leaves nothing behind, not even the lock's files.
    inputs = [validateProfile(profileInput(o))];
  }
  const result = await transact(core, (state) => upsertChange(state, inputs), { run: true });
  report(result, o, io, verboseRules(core, io));
}

export function register(program: Command, io: Out): void {
  addGlobal(
    addProfileFlags(
      program
        .command('apply')
        .description('create or replace a profile (or every profile of --file) and apply it to the kernel'),
    ),
  )
    .option(
      '--file <path>',
      'apply every profile of a YAML file in the state file format (- reads standard input; at most 64 MiB), in one transaction',
    )
    .action(async (o: ProfileOpts & { file?: string }, cmd: Command) => applyCommand(withGlobals(o, cmd), cmd, io));
}
