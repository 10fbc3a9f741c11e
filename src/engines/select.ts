/**
 * Engine selection. `auto`: the engine that already holds iptlb's rules wins (profiles are never
 * split across engines); otherwise nft when the host's iptables is the nf_tables flavour or x_tables
 * is unavailable, else legacy. Each step is reported by `iptlb doctor`.
 */
import { existsSync, readFileSync, realpathSync, readdirSync } from 'node:fs';
import { IptlbError } from '../model/errors.js';
import { findBinary, run } from '../platform/spawn.js';
import { loadAddon } from '../platform/addon.js';
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

/**
 * The tables listed in /proc/net/`file`: null when it does not exist (that x_tables module is not
 * loaded), 'unreadable' when it exists but this process may not read it (mode 0440: not root).
 */
function tableNames(file: string): string[] | null | 'unreadable' {
  try {
    return readFileSync(`/proc/net/${file}`, 'utf8').split('\n').filter(Boolean);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'EACCES' || code === 'EPERM' ? 'unreadable' : null;
  }
}

/**
 * Tables x_tables has instantiated in this network namespace; null when x_tables is not loaded,
 * 'unreadable' when this process may not tell (not root).
 */
export function xtablesTables(): string[] | null | 'unreadable' {
  return tableNames('ip_tables_names');
}

/**
 * Tables x_tables has instantiated for IPv6 (ip6tables) in this network namespace; null when ip6_tables is not
 * loaded, 'unreadable' when this process may not tell (not root).
 */
export function ip6tablesTables(): string[] | null | 'unreadable' {
  return tableNames('ip6_tables_names');
}

/** Whether this kernel can do x_tables: loaded (its table list exists, readable or not), or its module is installed. */
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

/** `nft list <what>`'s output; a failure is an error (a denied read is not an empty kernel). */
async function nftList(nft: string, what: string[]): Promise<string> {
  const r = await run(nft, ['list', ...what]);
  if (r.code === 0) return r.stdout;
  const first = r.stderr.trim().split('\n')[0] ?? `exit status ${r.code}`;
  if (/Operation not permitted|Permission denied/.test(r.stderr))
    throw new IptlbError(
      'EPERM',
      `nft list ${what.join(' ')}: permission denied: reading netfilter rules needs CAP_NET_ADMIN (run iptlb as root)`,
    );
  throw new IptlbError('EKERNEL', `nft list ${what.join(' ')}: ${first.replace(/^.*?Error:\s*/, '')}`);
}

/** Which of tables ip iptlb and ip6 iptlb exist, asked of `nft` (only tables are listed: cheap at any size). */
export async function nftTablesViaCli(): Promise<('ip' | 'ip6')[]> {
  const nft = findBinary('nft');
  if (!nft) return [];
  const listed = await nftList(nft, ['tables']);
  return (['ip', 'ip6'] as const).filter((f) => new RegExp(`^table ${f} iptlb$`, 'm').test(listed));
}

/**
 * Chains named as the original iptlb's (`IPTLB_NAT_…`) in iptables-nft's `table ip nat` and `table ip6 nat`:
 * the original's rules on a host whose iptables is the nf_tables flavour, which iptlb changes only to take them over
 * (a change that makes a profile new at an address their jumps match is refused: src/engines/nft/original.ts). Asked
 * natively (the addon's nftChains) or of `nft` (chain names only, read-only); undefined when it cannot tell (no
 * addon nor `nft`, no privileges).
 */
export async function originalNftChains(
  opts: { spawn?: boolean } = {},
): Promise<{ table: string; chain: string }[] | undefined> {
  // Natively when the addon's nft part loads: two netlink dumps instead of an nft process (about 35 ms).
  const a = loadAddon('nft');
  if (a.ok && typeof a.addon.nftChains === 'function') {
    try {
      const found: { table: string; chain: string }[] = [];
      for (const family of ['ip', 'ip6'] as const)
        for (const chain of await a.addon.nftChains(family, 'nat'))
          if (chain.startsWith('IPTLB_NAT_')) found.push({ table: `${family} nat`, chain });
      return found;
    } catch {
      // Then as without the addon.
    }
  }
  // `spawn: false` (status): an `nft` process costs about 40 ms; doctor asks it.
  if (opts.spawn === false) return undefined;
  const nft = findBinary('nft');
  if (!nft) return undefined;
  let text: string;
  try {
    text = await nftList(nft, ['chains']);
  } catch {
    return undefined;
  }
  return parseOriginalNftChains(text);
}

/** What {@link originalNftChains} found, in one line: where, and that iptlb leaves them be. */
export function describeOriginalChains(found: readonly { table: string; chain: string }[]): string {
  return `${found.map((o) => `table ${o.table}: chain ${o.chain}`).join(', ')}: the original iptlb's rules (iptables-nft), which iptlb takes over only when a change applies or deletes their profile through its state file; the addresses they match still go where they say, and a new profile at one of them is refused`;
}

/** The `IPTLB_NAT_…` chains of `table ip nat` / `table ip6 nat` in the text of `nft list chains`. */
export function parseOriginalNftChains(text: string): { table: string; chain: string }[] {
  const found: { table: string; chain: string }[] = [];
  let table = '';
  for (const line of text.split('\n')) {
    const t = /^table (\S+ \S+) \{/.exec(line);
    if (t) table = t[1]!;
    const c = /^\s+chain (IPTLB_NAT_\S+) \{/.exec(line);
    if (c && (table === 'ip nat' || table === 'ip6 nat')) found.push({ table, chain: c[1]! });
  }
  return found;
}

export interface EngineProbe {
  /**
   * Whether the x_tables nat table holds iptlb chains or rules (read only when nat exists); rejects when it
   * cannot tell.
   */
  legacyHasRules(): Promise<boolean>;
  /**
   * Whether table ip iptlb or ip6 iptlb holds iptlb's rules or sets (not merely exists: another tool's objects may
   * keep it); rejects when it cannot tell.
   */
  nftHasRules(): Promise<boolean>;
  /** Whether the x_tables nat table exists, so that legacy may be asked (default: /proc; fakes say true). */
  natExists?(): boolean;
  /** Why engine `name` cannot run here (its executor cannot be made: tools or addon missing); undefined when it can. */
  cannotRun?(name: EngineName): string | undefined;
  /** The host's facts (tests); read from /proc and the file system by default. */
  host?: HostFacts;
}

/** What selection reads of the host. */
export interface HostFacts {
  xtables: string[] | null | 'unreadable';
  ip6tables: string[] | null | 'unreadable';
  flavour: 'nft' | 'legacy' | 'none';
  xtablesAvailable: boolean;
}

function hostFacts(): HostFacts {
  return {
    xtables: xtablesTables(),
    ip6tables: ip6tablesTables(),
    flavour: iptablesFlavour(),
    xtablesAvailable: xtablesAvailable(),
  };
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

/**
 * Whether the x_tables nat table exists (IPv4 or IPv6): legacy is asked only then, which creates
 * nothing. Throws when a non-root caller cannot read the table lists.
 */
function natExistsOf(probe: EngineProbe, host: HostFacts): boolean {
  if (probe.natExists) return probe.natExists();
  if (host.xtables === 'unreadable' || host.ip6tables === 'unreadable')
    throw new IptlbError(
      'EPERM',
      `engine: cannot tell without root whether the x_tables nat table holds iptlb rules (/proc/net/${host.xtables === 'unreadable' ? 'ip' : 'ip6'}_tables_names is not readable): run iptlb as root, or choose the engine with --engine legacy or --engine nft`,
      { field: 'engine' },
    );
  return (host.xtables?.includes('nat') ?? false) || (host.ip6tables?.includes('nat') ?? false);
}

/** The engines holding iptlb's objects, asked of both (`iptlb status`: profiles in both engines is drift). */
export async function enginesHolding(probe: EngineProbe): Promise<EngineName[]> {
  const held: EngineName[] = [];
  if (natExistsOf(probe, probe.host ?? hostFacts()) && (await probe.legacyHasRules())) held.push('legacy');
  if (await probe.nftHasRules()) held.push('nft');
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
    const asked = `engine: ${choice} was asked for (--engine, IPTLB_ENGINE or the engine option)`;
    const fix = `run \`iptlb migrate --to ${choice}\` to move them, or leave the engine auto`;
    if (recorded)
      return recorded.engine === choice
        ? requested
        : {
            ...requested,
            refusal: `${asked}, but \`iptlb migrate\` moved this state file's profiles to the ${other} engine (${recorded.file}): ${fix}`,
          };
    // The engine asked for is used whatever the other can tell: one that cannot be read here (no
    // root, no CAP_NET_RAW for legacy) holds nothing this caller could have put there.
    let held = false;
    try {
      held =
        other === 'legacy'
          ? natExistsOf(probe, probe.host ?? hostFacts()) && (await probe.legacyHasRules())
          : await probe.nftHasRules();
    } catch {
      held = false;
    }
    return held
      ? { ...requested, refusal: `${asked}, but iptlb's rules are in the ${other} engine: ${fix}` }
      : requested;
  }
  if (recorded)
    return {
      engine: recorded.engine,
      reason: `\`iptlb migrate\` moved this state file's profiles to it (${recorded.file})`,
    };
  const host = probe.host ?? hostFacts();
  const legacy = natExistsOf(probe, host) ? await probe.legacyHasRules() : false;
  if (legacy) {
    const nft = await probe.nftHasRules();
    return {
      engine: 'legacy',
      reason: 'the x_tables nat table already holds iptlb rules',
      ...(nft
        ? {
            warning:
              'table ip (or ip6) iptlb also holds iptlb rules: profiles are split across engines; run `iptlb migrate --to legacy` (or --to nft)',
            refusal: splitLine('legacy'),
          }
        : {}),
    };
  }
  if (!host.xtablesAvailable) return { engine: 'nft', reason: 'x_tables is not available in this kernel' };
  if (await probe.nftHasRules()) return { engine: 'nft', reason: 'table ip (or ip6) iptlb already holds iptlb rules' };
  const rule: EngineSelection =
    host.flavour === 'nft'
      ? { engine: 'nft', reason: "no iptlb rules yet, and this host's iptables is the nf_tables flavour" }
      : {
          engine: 'legacy',
          reason: `no iptlb rules yet, and this host's iptables is ${host.flavour === 'none' ? 'not installed' : 'the legacy flavour'}`,
        };
  // Nothing of iptlb in the kernel: an engine that cannot run here gives way to one that can.
  const other: EngineName = rule.engine === 'nft' ? 'legacy' : 'nft';
  const why = probe.cannotRun?.(rule.engine);
  if (why !== undefined && probe.cannotRun?.(other) === undefined)
    return {
      engine: other,
      reason: `${rule.reason}, but the ${rule.engine} engine cannot run here (${why}): the ${other} engine can`,
    };
  return rule;
}
