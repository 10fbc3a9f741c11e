/** `iptlb list`: the profiles of the state file. */
import type { Command } from 'commander';
import { addGlobal, withGlobals, type GlobalOpts } from '../flags.js';
import { describeProfile, makeCore, type Out } from '../context.js';

async function listCommand(o: GlobalOpts & { names?: boolean }, io: Out): Promise<void> {
  const core = makeCore(o, io);
  const profiles = [...(await core.readState()).values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  if (o.json) return io.out(JSON.stringify(profiles));
  // One name a line, nothing else (shell completion, scripts); none for an absent state file.
  if (o.names) {
    if (profiles.length) io.out(profiles.map((p) => p.name).join('\n'));
    return;
  }
  if (!profiles.length)
    return io.out(
      (await core.stateFileExists())
        ? `no profiles in ${core.statePath}`
        : `no profiles: the state file ${core.statePath} does not exist`,
    );
  io.out('NAME\tSOURCE\tMODE\tDESTINATIONS');
  for (const p of profiles) io.out(describeProfile(p));
}

export function register(program: Command, io: Out): void {
  addGlobal(program.command('list').description('list the profiles of the state file'), { changes: false })
    .option('--names', 'print only the profile names, one a line (for scripts and shell completion)')
    .action(async (o: GlobalOpts & { names?: boolean }, cmd: Command) => listCommand(withGlobals(o, cmd), io));
}
