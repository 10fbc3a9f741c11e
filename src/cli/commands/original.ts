/** The original Go iptlb's form: `iptlb -run [-reset|-delete|-use-state] -profile=… -src-addr=… -dest-addr=…`. */
import type { Command } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { deleteChange, upsertChange } from '../../core/core.js';
import { sameProfile, show, validateName, validateProfile } from '../../model/profile.js';
import { addGlobal, addProfileFlags, profileFlagsGiven, profileInput, type LegacyOpts } from '../flags.js';
import { makeCore, report, transact, verboseRules, type Out } from '../context.js';

/** The original's behaviour: flags decide create / reset / delete / use-state, `-run` touches the kernel. */
async function legacyAction(o: LegacyOpts, io: Out, profileGiven = false, given: string[] = []): Promise<void> {
  if (o.useState && (o.srcAddr !== undefined || o.destAddr !== undefined)) {
    throw new IptlbError('EUSAGE', '-use-state cannot be combined with -src-addr or -dest-addr', {
      field: 'use-state',
    });
  }
  if (o.delete && o.reset)
    throw new IptlbError('EUSAGE', '-delete and -reset cannot be used together', { field: 'delete' });
  if (o.delete && !o.run)
    throw new IptlbError('EUSAGE', '-delete needs -run (it removes rules from the kernel)', { field: 'delete' });
  if (o.useState && !o.run)
    throw new IptlbError('EUSAGE', '-use-state needs -run (it applies the state file to the kernel)', {
      field: 'use-state',
    });
  // -use-state -delete removes every profile of the state file: a -profile beside it was ignored, so a
  // teardown of one profile with a -use-state left in the line removed them all.
  if (o.useState && o.delete && profileGiven) throw useStateDeleteProfile(o.profile);
  // -run without addresses re-applies the profile as the state file holds it: another profile flag beside it
  // (-log-custom-chain, -protocol…) was ignored, and the profile applied without it, exit 0.
  const ignored = given.filter((f) => f !== 'profile');
  if (o.run && !o.useState && !o.delete && o.srcAddr === undefined && o.destAddr === undefined && ignored.length)
    throw new IptlbError(
      'EUSAGE',
      `${ignored[0]}: -${ignored[0]} needs -src-addr and -dest-addr (without them, -run re-applies profile ${show(o.profile)} as the state file holds it, and -${ignored[0]} would be ignored): to change the profile, give all its flags with -reset`,
      { field: ignored[0]! },
    );
  // A profile given by flags is checked before the lock is taken: bad input leaves nothing behind,
  // not even the lock's files. (Without -src-addr and -dest-addr, what to do depends on the state.)
  if (!o.useState && !o.delete && (o.srcAddr !== undefined || o.destAddr !== undefined)) {
    validateName(o.profile, 'name', { existing: true }); // first, as below
    validateProfile(profileInput(o));
  }
  const core = makeCore(o, io);
  const result = await transact(
    core,
    (state) => {
      if (o.useState) {
        return o.delete ? { upsert: [], remove: [...state.keys()] } : { upsert: [...state.values()], remove: [] };
      }
      const name = validateName(o.profile, 'name', { existing: true });
      if (o.delete) return deleteChange(state, [name]);
      const existing = state.get(name);
      if (o.srcAddr === undefined && o.destAddr === undefined && existing && o.run && !o.reset) {
        return { upsert: [existing], remove: [] }; // re-apply a profile recorded earlier without -run
      }
      const change = upsertChange(state, [profileInput(o)]);
      const p = change.upsert[0];
      if (existing && !o.reset && !sameProfile(existing, p)) {
        throw new IptlbError(
          'ECONFLICT',
          `name: profile ${show(name)} already exists with other settings; add -reset to replace it`,
          { field: 'name' },
        );
      }
      return change;
    },
    // -use-state decides from the state file: one that does not exist is refused, not read as no profiles.
    { run: !!o.run, requireFile: !!o.useState },
  );
  if (!o.run && !o.quiet) io.err(`iptlb: state only (no -run): the kernel was not changed`);
  report(result, o, io, verboseRules(core, io));
}

/**
 * `-use-state -delete` (or `plan --use-state --delete`) with a `-profile`: the profile would be ignored
 * and every profile of the state file deleted. Refused as usage, exit 2.
 */
export function useStateDeleteProfile(name: string): IptlbError {
  return new IptlbError(
    'EUSAGE',
    `-use-state with -delete removes every profile of the state file, not only -profile ${JSON.stringify(name)}: leave out -use-state to delete that profile, or -profile to delete them all`,
    { field: 'profile' },
  );
}

/** Whether `-profile` was given on the command line (not its default), to `cmd` or a command above it. */
export function profileGiven(cmd: Command): boolean {
  for (let c: Command | null = cmd; c; c = c.parent) if (c.getOptionValueSource('profile') === 'cli') return true;
  return false;
}

/** The original's flags on the program itself (no subcommand). */
export function register(program: Command, io: Out): void {
  addGlobal(addProfileFlags(program))
    .option('--reset', 'replace an existing profile (old and new rules swap in one commit)')
    .option('--delete', 'delete the profile (needs -run)')
    .option('--run', 'apply to the kernel; without it only the state file is written')
    .option(
      '--use-state',
      'apply (or with -delete remove) every profile of the state file (refused when it does not exist)',
    )
    .action(async (o: LegacyOpts, cmd: Command) => legacyAction(o, io, profileGiven(cmd), profileFlagsGiven(cmd)));
}
