/** `iptlb top` (and `status --watch`): new connections per second per destination. */
import type { Command } from 'commander';
import { IptlbError } from '../../model/errors.js';
import { show } from '../../model/profile.js';
import { addGlobal, wholeMs, withGlobals, type GlobalOpts } from '../flags.js';
import { makeCore, onClosed, type Out } from '../context.js';
import type { ProfileReport } from '../../model/report.js';

/**
 * `iptlb top` / `iptlb status --watch`: per-destination new connections per second, refreshed every
 * interval, as one would watch a rollout. `--count N` stops after N refreshes; `--json` prints one
 * line per refresh. SIGINT, SIGTERM and a reader gone away (`iptlb top | head`) stop it: exit 0.
 */
export async function topCommand(o: GlobalOpts & { interval?: string; count?: string }, io: Out): Promise<void> {
  const interval = wholeMs(o.interval ?? '1000', 'interval', 100, 86_400_000);
  // Digits only: Number() also takes 1e99, 0x10 and 2.0 (1e99 ran on for ever, as without --count).
  const count = o.count === undefined ? Infinity : /^[1-9][0-9]*$/.test(o.count) ? Number(o.count) : NaN;
  if (!(count === Infinity || Number.isSafeInteger(count)))
    throw new IptlbError('EUSAGE', `count: ${show(o.count)} must be a positive whole number`, { field: 'count' });
  const core = makeCore({ ...o, quiet: true }, io);
  // isatty, not process.stdout.isTTY: that would create the stream, and make a pipe non-blocking.
  const tty = !o.json && (await import('node:tty')).isatty(1);
  let stop = false;
  let wake = (): void => {};
  const onSignal = (): void => {
    stop = true;
    wake();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const unsubscribe = onClosed(io, onSignal);
  const prev = new Map<string, number>();
  let prevAt = 0;
  try {
    for (let i = 0; i < count && !stop; i++) {
      if (i > 0)
        await new Promise<void>((r) => {
          const t = setTimeout(r, interval);
          wake = () => (clearTimeout(t), r());
        });
      if (stop) break;
      const reports = await core.status();
      const at = performance.now();
      const secs = prevAt ? (at - prevAt) / 1000 : 0;
      const rows = topRows(reports, prev, secs);
      prevAt = at;
      if (o.json) {
        io.out(JSON.stringify({ at: new Date().toISOString(), intervalMs: interval, profiles: rows }));
        continue;
      }
      const lines = topLines(rows, secs || interval / 1000);
      io.out((tty ? '\x1b[H\x1b[2J' : i > 0 ? '\n' : '') + lines.join('\n'));
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    unsubscribe();
  }
}

/** One row of `iptlb top`: a profile (or orphan), its rate and its destinations'. */
export interface TopRow {
  name: string;
  status: string;
  packets: number;
  rate: number | null;
  destinations: {
    destination: string;
    weight?: number;
    health?: string;
    effectiveWeight?: number;
    packets: number;
    rate: number | null;
  }[];
}

/**
 * The rows of one refresh: new connections per second since the last (`prev`: the counters then, by
 * profile and by destination, updated here; `secs` since then, 0 on the first refresh: no rate). A
 * counter lower than before was reset (a health commit or a sync rewrote the rules: docs/metrics.md):
 * its rate is what it counted since, over the interval (the reset was within it: a lower bound), not 0.
 */
export function topRows(reports: readonly ProfileReport[], prev: Map<string, number>, secs: number): TopRow[] {
  const rate = (key: string, packets: number): number | null => {
    const before = prev.get(key);
    prev.set(key, packets);
    if (!(secs > 0) || before === undefined) return null;
    return (packets >= before ? packets - before : packets) / secs;
  };
  return reports.map((r) => ({
    name: r.name,
    status: r.status,
    packets: r.packets,
    rate: rate(r.name, r.packets),
    destinations: r.destinations.map((d) => ({
      destination: d.destination,
      ...(d.weight !== undefined ? { weight: d.weight } : {}),
      ...(d.health !== undefined ? { health: d.health } : {}),
      ...(d.effectiveWeight !== undefined ? { effectiveWeight: d.effectiveWeight } : {}),
      packets: d.packets,
      rate: rate(`${r.name} ${d.destination}`, d.packets),
    })),
  }));
}

/** The text of one refresh (tab-separated; a HEALTH column when some destination is checked). */
export function topLines(rows: readonly TopRow[], secs: number, now = new Date()): string[] {
  const fmt = (x: number | null): string => (x === null ? '-' : x.toFixed(1));
  const checked = rows.some((r) => r.destinations.some((d) => d.health !== undefined));
  const lines = [
    `iptlb top  ${now.toISOString()}  new connections per second over ${secs.toFixed(1)} s (Ctrl-C stops)`,
    `PROFILE\tSTATUS\tDESTINATION\tCONN/S\tTOTAL${checked ? '\tHEALTH' : ''}`,
  ];
  for (const r of rows) {
    lines.push(`${r.name}\t${r.status}\t*\t${fmt(r.rate)}\t${r.packets}`);
    for (const d of r.destinations)
      lines.push(
        `\t\t${d.destination}${d.weight !== undefined ? `*${d.weight}` : ''}\t${fmt(d.rate)}\t${d.packets}${d.health !== undefined ? `\t${d.health}${d.effectiveWeight === 0 ? ' (drained)' : ''}` : ''}`,
      );
  }
  if (!rows.length) lines.push('(no profiles and no iptlb rules)');
  return lines;
}

export function register(program: Command, io: Out): void {
  addGlobal(
    program
      .command('top')
      .description('per-destination new connections per second, refreshed every second, as you would watch a rollout'),
    { changes: false },
  )
    .option('--interval <ms>', 'refresh period (100-86400000)', '1000')
    .option('--count <n>', 'stop after n refreshes')
    .action(async (o: GlobalOpts & { interval?: string; count?: string }, cmd: Command) =>
      topCommand(withGlobals(o, cmd), io),
    );
}
