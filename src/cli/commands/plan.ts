/** `iptlb plan`: the exact text a change would commit; changes nothing. */
import type { Command } from 'commander';
import { deleteChange, upsertChange } from '../../core/core.js';
import { validateName } from '../../model/profile.js';
import { addGlobal, addProfileFlags, profileInput, withGlobals, type LegacyOpts } from '../flags.js';
import { describeDestinations, makeCore, type Out } from '../context.js';
import { profileGiven, useStateDeleteProfile } from './original.js';

/**
 * The `#` line of `iptlb plan` for an nft move marker found (see Core.plan): what the next change does with it. A
 * marker that names no profile to look for (no line of it parses, or each version's address is another state
 * file's profile's now) has the change read nothing for it: the change only removes it.
 */
export function moveMarkerNote(marker: { file: string; profiles: readonly string[] }, commits: boolean): string {
  const kernel = commits ? '' : '; it leaves the kernel as it is';
  if (!marker.profiles.length)
    return `the nft move marker ${marker.file} is there but names no profile to look for (no line of it parses, or each version's address is another state file's profile's now): the next change reads nothing for it and removes the marker${kernel}`;
  return `the nft move marker ${marker.file} is there (a change of this state file was interrupted between the two steps of a move, of profile(s) ${marker.profiles.join(', ')}): the next change reads the table for what it left and removes the marker${kernel}`;
}

/** `iptlb plan`: what `apply` would commit, planned by the same code with the same kernel reads; changes nothing. */
async function planCommand(o: LegacyOpts, io: Out, profileGiven = false): Promise<void> {
  if (o.useState && o.delete && profileGiven) throw useStateDeleteProfile(o.profile);
  const core = makeCore({ ...o, quiet: true }, io);
  const { provider, change, plans, marker } = await core.plan(
    (state) => {
      if (o.useState)
        return o.delete ? { upsert: [], remove: [...state.keys()] } : { upsert: [...state.values()], remove: [] };
      if (o.delete) return deleteChange(state, [validateName(o.profile, 'name', { existing: true })]);
      return upsertChange(state, [profileInput(o)]);
    },
    { requireFile: !!o.useState },
  );
  // Weights and the scheduler, which the rule text only implies, as comment lines (both dialects take them).
  const header = change.upsert
    .filter((p) => p.weights || p.scheduler || p.affinity)
    .map(
      (p) =>
        `# profile ${p.name}: ${describeDestinations(p)}, scheduler ${p.scheduler ?? 'random'}${p.affinity ? `, affinity ${p.affinity}s` : ''}\n`,
    )
    .join('');
  // What the next change will really do beside the change asked: the nft move marker of an interrupted move (that
  // change reads the table for the versions it names and removes it), and what the engine says of a plan (the table
  // replaced whole, another state file's profiles kept), as the change itself says it.
  const notes: string[] = [];
  if (marker)
    notes.push(
      moveMarkerNote(
        marker,
        plans.some((p) => p.steps.length > 0),
      ),
    );
  for (const p of plans) if (p.note) notes.push(p.note);
  const noteLines = notes.map((n) => `# ${n}\n`).join('');
  const steps = plans.flatMap((plan) => plan.steps.map((tx) => ({ family: plan.family, tx })));
  const texts = await Promise.all(steps.map((s) => provider.render(s.tx)));
  if (o.json) {
    io.out(
      JSON.stringify({
        engine: provider.name,
        ...(notes.length ? { notes } : {}),
        ...(marker ? { moveMarker: marker } : {}),
        transactions: steps.map((s, i) => ({
          family: s.family,
          where: provider.where(s.family),
          text: texts[i],
          transaction: s.tx,
        })),
      }),
    );
    return;
  }
  if (!steps.length) return io.out(`${header}${noteLines}# nothing to commit: the kernel already holds this`);
  const label = (i: number): string =>
    steps.length > 1 ? `# ${provider.where(steps[i].family)}, transaction ${i + 1} of ${steps.length}\n` : '';
  io.out(header + noteLines + texts.map((t, i) => label(i) + t.trimEnd()).join('\n'));
}

export function register(program: Command, io: Out): void {
  addGlobal(
    addProfileFlags(
      program
        .command('plan')
        .description(
          'print the exact text a change would commit (iptables-restore for legacy, nft -f for nft), with # lines for what it does beyond the change asked (an interrupted nft move found: the table replaced); changes nothing',
        ),
    ),
    { changes: false },
  )
    .option('--delete', 'plan the deletion of -profile')
    .option('--use-state', 'plan applying (or with --delete removing) every profile of the state file')
    .action(async (o: LegacyOpts, cmd: Command) => planCommand(withGlobals(o, cmd), io, profileGiven(cmd)));
}
