/** `iptlb status`: the state file compared with the kernel, with counters and health (exit 3 on drift). */
import type { Command } from 'commander';
import type { HealthFileStatus, OtherStateFile } from '../../model/report.js';
import { IptlbError } from '../../model/errors.js';
import { addGlobal, withGlobals, type GlobalOpts } from '../flags.js';
import { ExitCode, makeCore, type Out } from '../context.js';
import { topCommand } from './top.js';
import { describeOriginalChains } from '../../engines/select.js';

/** `\tup`, `\tdown (drained; last check 2026-…: ECONNREFUSED)`: empty for destinations without a health check. */
function healthColumn(d: {
  health?: string;
  effectiveWeight?: number;
  lastCheck?: string;
  lastError?: string;
}): string {
  if (d.health === undefined) return '';
  const notes = [
    d.effectiveWeight !== undefined
      ? d.effectiveWeight === 0
        ? 'drained'
        : `weight ${d.effectiveWeight} in the kernel`
      : '',
    d.lastCheck ? `last check ${d.lastCheck}` : '',
    d.lastError ?? '',
  ].filter(Boolean);
  return `\t${d.health}${notes.length ? ` (${notes.join('; ')})` : ''}`;
}

/** `not listed here, other state files' profiles: /a.db (web, api); /b.db (x, y, z and 9 more)`. */
export function othersLine(others: readonly OtherStateFile[]): string {
  const names = (n: readonly string[]): string =>
    n.length <= 4 ? n.join(', ') : `${n.slice(0, 3).join(', ')} and ${n.length - 3} more`;
  return `not listed here, other state files' profiles: ${others.map((f) => `${f.stateFile} (${names(f.profiles)})`).join('; ')}`;
}

/**
 * `health: not following FILE: process 42 has not written it for 12.3 s (…); the configured weights hold; its drains
 * no longer count: web 127.0.0.1:9002`: a health file that does not drive the weights; undefined when it does.
 */
export function healthFileLine(h: HealthFileStatus | undefined): string | undefined {
  if (!h || h.state === 'followed') return undefined;
  const s = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
  const why =
    h.state === 'not-running'
      ? `process ${h.pid}, which wrote it, does not run (its checks ended without removing it)`
      : h.ageMs !== undefined && h.ageMs < 0
        ? `process ${h.pid} wrote it ${s(-h.ageMs)} ahead of this clock (a clock set back) and not again within ${s(h.staleAfterMs ?? 0)}`
        : `process ${h.pid} runs but has not written it for ${s(h.ageMs ?? 0)} (it writes it within ${s(h.staleAfterMs ?? 0)} while it checks: stopped, frozen or hung)`;
  const drained = Object.entries(h.drained ?? {}).flatMap(([p, ds]) => ds.map((d) => `${p} ${d}`));
  const list =
    drained.length <= 5 ? drained.join(', ') : `${drained.slice(0, 5).join(', ')} and ${drained.length - 5} more`;
  return `health: not following ${h.file}: ${why}; nobody checks the destinations, the configured weights hold${drained.length ? `; its drains no longer count: ${list}` : ''}`;
}

async function statusCommand(o: GlobalOpts, io: Out): Promise<number> {
  const core = makeCore(o, io);
  // iptlb's rules in both engines is drift too (split): traffic may use the copy no change reaches.
  const report = await core.statusReport();
  const { profiles: reports, split, otherStateFiles: others } = report;
  if (split) io.err(`iptlb: ${split}`);
  if (report.otherEngine && !o.json) io.err(`iptlb: ${report.otherEngine}`);
  // The original's rules in iptables-nft's nat tables still balance the addresses they match, whatever iptlb
  // does (a profile taken into iptlb's table and deleted there keeps them). Not drift: they are not iptlb's to
  // change, so the exit status stays.
  if (report.originalRules && !o.quiet && !o.json)
    io.err(`iptlb: ${describeOriginalChains(report.originalRules)} (iptlb doctor says how to delete them)`);
  // A wrong path (or working directory) reads as no profiles: every iptlb rule is an orphan then.
  const absent = !(await core.stateFileExists());
  if (absent && reports.length && !o.quiet && !o.json)
    io.err(`iptlb: the state file ${core.statePath} does not exist: the kernel's iptlb rules are reported orphaned`);
  // The other state files' profiles are neither listed nor orphans here: say whose they are.
  if (others && !o.quiet && !o.json) io.err(`iptlb: ${othersLine(others)}`);
  // Another tool's chains, sets and maps in iptlb's nft table: kept by every change and sync, so not drift.
  for (const f of report.foreignObjects ?? [])
    if (!o.quiet && !o.json)
      io.err(
        `iptlb: ${f.where} also holds objects of another tool (${f.objects.slice(0, 5).join(', ')}${f.objects.length > 5 ? `, … (${f.objects.length} in all)` : ''}): iptlb leaves them as they are (not drift)`,
      );
  if (o.json) {
    io.out(JSON.stringify(report));
  } else if (!reports.length) {
    // The kernel may hold other state files' profiles (named on stderr above): not "no iptlb rules".
    const kernel = others
      ? "no iptlb rules in the kernel but other state files' profiles"
      : 'no iptlb rules in the kernel';
    io.out(
      absent
        ? `no profiles (the state file ${core.statePath} does not exist) and ${kernel}`
        : `no profiles in ${core.statePath} and ${kernel}`,
    );
  } else {
    const withHealth = reports.some((r) => r.destinations.some((d) => d.health !== undefined));
    io.out(`PROFILE\tSTATUS\tPACKETS\tDESTINATION\tCONNECTIONS\tBYTES${withHealth ? '\tHEALTH' : ''}`);
    for (const r of reports) {
      io.out(
        `${r.name}\t${r.status}${r.detail ? ` (${r.detail})` : ''}\t${r.packets}${r.affinity ? `\taffinity:${r.affinity}s` : ''}`,
      );
      for (const d of r.destinations)
        io.out(
          `\t\t\t${d.destination}${d.weight !== undefined ? `*${d.weight}` : ''}\t${d.packets}\t${d.bytes}${healthColumn(d)}`,
        );
    }
  }
  // A health file not followed is no drift (the configured weights are what the kernel should have): said, not an
  // exit status. On stdout with the table (stderr has had the follower's warning, unless --quiet).
  const hf = o.json ? undefined : healthFileLine(report.healthFile);
  if (hf) io.out(hf);
  return report.inSync ? 0 : 3;
}

export function register(program: Command, io: Out): void {
  addGlobal(
    program
      .command('status')
      .description(
        "compare the state file with the kernel: in-sync, missing, modified or orphaned, with counters (exit 3 when anything drifted, or iptlb's rules are in both engines)",
      ),
    { changes: false },
  )
    .option('--watch', 'refresh per-destination connection rates every --interval ms (the same as iptlb top)')
    .option('--interval <ms>', 'with --watch: refresh period (100-86400000)', '1000')
    .option('--count <n>', 'with --watch: stop after n refreshes')
    .action(async (o: GlobalOpts & { watch?: boolean; interval?: string; count?: string }, cmd: Command) => {
      if (o.watch) return topCommand(withGlobals(o, cmd), io);
      for (const f of ['interval', 'count'] as const)
        if (cmd.getOptionValueSource(f) === 'cli')
          throw new IptlbError('EUSAGE', `${f}: needs --watch (a one-shot status takes no ${f})`, { field: f });
      const code = await statusCommand(withGlobals(o, cmd), io);
      if (code !== 0) throw new ExitCode(code);
    });
}
