/**
 * Engine selection. `auto`: the engine that already holds iptlb's rules wins (profiles are never
 * split across engines); otherwise nft when the host's iptables is the nf_tables flavour or x_tables
 * is unavailable, else legacy. Each step is reported by `iptlb doctor`.
 */
import { existsSync, readFileSync, realpathSync, readdirSync } from 'node:fs';
import { IptlbError } from '../model/errors.js';
import { findBinary, run } from '../platform/spawn.js';
import type { EngineChoice, EngineName } from '../model/types.js';
import { nodeOs } from '../platform/builtins.js';

export function parseEngineChoice(value: string | undefined, field = 'engine'): EngineChoice {
  const v = (value ?? 'auto').toLowerCase();
  if (v === 'auto' || v === 'legacy' || v === 'nft') return v;
  throw new IptlbError('EUSAGE', `${field}: ${JSON.stringify(value)} is not one of legacy, nft, auto`, { field });
}

/** The engine asked for: `given` (an option or flag) when set, else `IPTLB_ENGINE`, named as such when bad. */
export function engineChoiceOf(given: string | undefined): EngineChoice {
  return given !== undefined ? parseEngineChoice(given) : parseEngineChoice(process.env.IPTLB_ENGINE, 'IPTLB_ENGINE');
}

/** Tables x_tables has instantiated in this network namespace; null when x_tables is not loaded. */
export function xtablesTables(): string[] | null {
  try {
    return readFileSync('/proc/net/ip_tables_names', 'utf8').split('\n').filter(Boolean);
  } catch {
    return null;
  }
}

/**
 * Tables x_tables has instantiated for IPv6 (ip6tables) in this network namespace; null when ip6_tables is not loaded.
 */
export function ip6tablesTables(): string[] | null {
  try {
    return readFileSync('/proc/net/ip6_tables_names', 'utf8').split('\n').filter(Boolean);
  } catch {
    return null;
  }
}

/** Whether this kernel can do x_tables: loaded, or its module is installed. */
export function xtablesAvailable(): boolean {
  if (xtablesTables() !== null || existsSync('/sys/module/ip_tables')) return true;
  const dir = `/lib/modules/${nodeOs().release()}/kernel/net/ipv4/netfilter`;
  try {
    return readdirSync(dir).some((f) => f.startsWith('ip_tables.ko'));
  } catch {
    return false;
  }
}

/** The flavour of the host's `iptables` command: what the distribution manages rules with. */
export function iptablesFlavour(): 'nft' | 'legacy' | 'none' {
  const bin = findBinary('iptables');
  if (!bin) return 'none';
  try {
    return /nft/.test(realpathSync(bin)) ? 'nft' : 'legacy';
  } catch {
    return 'legacy';
  }
}

/** Whether table ip iptlb or ip6 iptlb exists, asked of `nft` (only tables are listed: cheap at any size). */
export async function nftTableExistsViaCli(): Promise<boolean> {
  const nft = findBinary('nft');
  if (!nft) return false;
  const r = await run(nft, ['list', 'tables']);
  return r.code === 0 && /^table ip6? iptlb$/m.test(r.stdout);
}

export interface EngineProbe {
  /** Whether the x_tables nat table holds iptlb chains or rules (read only when nat exists). */
  legacyHasRules(): Promise<boolean>;
  /** Whether table ip iptlb or ip6 iptlb exists. */
  nftHasTable(): Promise<boolean>;
  /** Whether the x_tables nat table exists, so that legacy may be asked (default: /proc; fakes say true). */
  natExists?(): boolean;
}

export interface EngineSelection {
  engine: EngineName;
  /** Why, in one line. */
  reason: string;
  /** Set when both engines hold iptlb objects: the fix is `iptlb migrate`. */
  warning?: string;
  /**
   * Set when a change through this engine would put iptlb's profiles in both engines (an explicit engine while
   * the other holds them or the record names it; both holding them already, without a record): one line with the
   * fix. Writers refuse with it; reads (status, show) go on.
   */
  refusal?: string;
}

/** What `iptlb migrate` recorded beside the state file (see src/core/engine-record.ts). */
export interface EngineRecord {
  engine: EngineName;
  /** The record's path, for the messages. */
  file: string;
}

/** Whether the x_tables nat table exists (IPv4 or IPv6): legacy is asked only then, which creates nothing. */
function natTableExists(): boolean {
  return (xtablesTables()?.includes('nat') ?? false) || (ip6tablesTables()?.includes('nat') ?? false);
}

/** The engines holding iptlb's objects, asked of both (`iptlb status`: profiles in both engines is drift). */
export async function enginesHolding(probe: EngineProbe): Promise<EngineName[]> {
  const held: EngineName[] = [];
  if ((probe.natExists ?? natTableExists)() && (await probe.legacyHasRules())) held.push('legacy');
  if (await probe.nftHasTable()) held.push('nft');
  return held;
}

/** The line `status` exits 3 with when both engines hold iptlb's objects; `to` is the engine to keep. */
export function splitLine(to: EngineName): string {
  return `iptlb's rules are in both engines (the x_tables nat table and table ip/ip6 iptlb), and traffic may use either copy: run \`iptlb migrate --to ${to}\` (or --to ${to === 'nft' ? 'legacy' : 'nft'}) to keep them in one`;
}

/**
 * `recorded`: the engine `iptlb migrate` moved the state file's profiles to. `auto` takes it without asking the
 * kernel; an explicit engine that is not the recorded one (or, without a record, while the other engine holds
 * iptlb's objects) gets a {@link EngineSelection.refusal}.
 */
export async function selectEngine(
  choice: EngineChoice,
  probe: EngineProbe,
  recorded?: EngineRecord,
): Promise<EngineSelection> {
  if (choice !== 'auto') {
    const requested = { engine: choice, reason: `${choice} engine requested` };
    const other: EngineName = choice === 'nft' ? 'legacy' : 'nft';
    const asked = `engine: ${choice} was asked for (--engine or IPTLB_ENGINE)`;
    const fix = `run \`iptlb migrate --to ${choice}\` to move them, or leave the engine auto`;
    if (recorded)
      return recorded.engine === choice
        ? requested
        : {
            ...requested,
            refusal: `${asked}, but \`iptlb migrate\` moved this state file's profiles to the ${other} engine (${recorded.file}): ${fix}`,
          };
    const held =
      other === 'legacy'
        ? (probe.natExists ?? natTableExists)() && (await probe.legacyHasRules())
        : await probe.nftHasTable();
    return held
      ? { ...requested, refusal: `${asked}, but iptlb's rules are in the ${other} engine: ${fix}` }
      : requested;
  }
  if (recorded)
    return {
      engine: recorded.engine,
      reason: `\`iptlb migrate\` moved this state file's profiles to it (${recorded.file})`,
    };
  const legacy = (probe.natExists ?? natTableExists)() ? await probe.legacyHasRules() : false;
  const flavour = iptablesFlavour();
  const xt = xtablesAvailable();
  if (legacy) {
    const nft = await probe.nftHasTable();
    return {
      engine: 'legacy',
      reason: 'the x_tables nat table already holds iptlb rules',
      ...(nft
        ? {
            warning:
              'table ip (or ip6) iptlb also exists: profiles are split across engines; run `iptlb migrate --to legacy` (or --to nft)',
            refusal: splitLine('legacy'),
          }
        : {}),
    };
  }
  if (!xt) return { engine: 'nft', reason: 'x_tables is not available in this kernel' };
  if (await probe.nftHasTable()) return { engine: 'nft', reason: 'table ip (or ip6) iptlb already holds iptlb rules' };
  if (flavour === 'nft')
    return { engine: 'nft', reason: "no iptlb rules yet, and this host's iptables is the nf_tables flavour" };
  return {
    engine: 'legacy',
    reason: `no iptlb rules yet, and this host's iptables is ${flavour === 'none' ? 'not installed' : 'the legacy flavour'}`,
  };
}
