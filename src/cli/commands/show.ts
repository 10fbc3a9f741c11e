/** `iptlb show NAME`: a profile and its rules in the kernel, with counters. */
import type { Command } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { FAMILIES } from '../../core/core.js';
import { familyOfProfile, show, validateName } from '../../model/profile.js';
import { addGlobal, withGlobals, type GlobalOpts } from '../flags.js';
import { describeProfile, makeCore, type Out } from '../context.js';

function jsonSafe(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? Number(x) : x)));
}

async function showCommand(name: string, o: GlobalOpts, io: Out): Promise<void> {
  validateName(name, 'name', { existing: true });
  const core = makeCore(o, io);
  const profile = await core.stateProfile(name);
  const { provider } = await core.select();
  // The profile's family; a name only the kernel knows (an orphan) is looked for in both.
  const shown = await provider.show(name, profile, profile ? [familyOfProfile(profile)] : FAMILIES);
  if (!profile && !shown.found)
    throw new IptlbError('ENOTFOUND', `name: profile ${show(name)} is neither in the state file nor in the kernel`, {
      field: 'name',
    });
  if (o.json) return io.out(JSON.stringify(jsonSafe({ profile: profile ?? null, kernel: shown.json })));
  io.out(profile ? `profile ${describeProfile(profile)}` : `profile ${name}: not in the state file ${core.statePath}`);
  io.out(`kernel (${shown.where}):`);
  for (const line of shown.lines) io.out(`  ${line}`);
}

export function register(program: Command, io: Out): void {
  addGlobal(
    program
      .command('show')
      .description('show a profile and its rules in the kernel, with counters')
      .argument('<name>', 'the profile name'),
    { changes: false },
  ).action(async (name: string, o: GlobalOpts, cmd: Command) => showCommand(name, withGlobals(o, cmd), io));
}
