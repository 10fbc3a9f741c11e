/**
 * Fixtures receive the engine × executor pair as one argument (`nft/native`, or a bare executor name
 * for the legacy engine) and read both engines' rules the same way.
 */
import { execFileSync } from 'node:child_process';
import { runCli } from './cli.js';
import { normalizeNft, normalizeSave } from './iptables.js';
import { parseNftJson } from '../../src/engines/nft/view.js';
import { backendOffset, parseDispatchSetName, rrOffset } from '../../src/engines/nft/ops.js';

export interface PairArg {
  engine: 'legacy' | 'nft';
  executor: 'native' | 'spawn';
  /** CLI flags selecting the pair. */
  flags: string[];
}

export function pairOf(arg: string | undefined): PairArg {
  const [a, b] = (arg ?? 'native').split('/');
  const engine = (b === undefined ? 'legacy' : a) as PairArg['engine'];
  const executor = (b === undefined ? a : b) as PairArg['executor'];
  return { engine, executor, flags: [`--engine=${engine}`, `--executor=${executor}`] };
}

/** What one CLI run printed, and its exit code (never throws). */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the CLI on `pair` with the state file `state`: in this process, one call after another, as
 * test/harness/cli.ts says (a code of null, a process killed by a signal, reads as -1).
 */
export function pairCli(pair: PairArg, state: string): (...args: string[]) => Promise<CliRun> {
  return async (...args) => {
    const r = await runCli([...pair.flags, `-state-file=${state}`, ...args]);
    return { code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr };
  };
}

/** The x_tables nat table and the whole nf_tables ruleset, counters zeroed: equal snapshots mean nothing changed. */
export function snapshot(): string {
  const legacy = normalizeSave(execFileSync('iptables-legacy-save', ['-t', 'nat']).toString());
  const nft = normalizeNft(execFileSync('nft', ['list', 'ruleset']).toString());
  return `${legacy}\n# nft ruleset\n${nft}`;
}

/** Table ip iptlb as the nft executors read it (nft -j), or an empty view. */
export function nftView(): ReturnType<typeof parseNftJson> {
  try {
    return parseNftJson(
      execFileSync('nft', ['-j', 'list', 'table', 'ip', 'iptlb'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString(),
    );
  } catch {
    return parseNftJson('');
  }
}

/**
 * Structural problems of table ip iptlb: a dispatch element or round-robin rule without all its backends, backends
 * without a dispatch element or round-robin rule, a set in use without its rule.
 */
export function nftHalfProfiles(): string[] {
  const v = nftView();
  const problems: string[] = [];
  const backends = new Map<string, number[]>();
  for (const m of v.backendMaps)
    for (const e of m.elements)
      backends.set(`${m.proto} ${e.vip.ip}:${e.vip.port}`, [
        ...(backends.get(`${m.proto} ${e.vip.ip}:${e.vip.port}`) ?? []),
        e.index,
      ]);
  const claimed = new Set<string>();
  const rules = new Set(
    v.chains.flatMap((c) => c.rules.filter((r) => r.kind === 'dispatch').map((r) => `${r.hook}_${r.proto}_${r.n}`)),
  );
  for (const s of v.dispatchSets) {
    const set = parseDispatchSetName(s.name)!;
    if (s.elements.length && !rules.has(s.name)) problems.push(`set ${s.name} has elements but no dispatch rule`);
    for (const e of s.elements) {
      const k = `${set.proto} ${e.key.ip}:${e.key.port}`;
      claimed.add(k);
      const want = Array.from({ length: set.n }, (_, i) => backendOffset(set.n) + i);
      const have = new Set(backends.get(k) ?? []);
      if (!want.every((i) => have.has(i)))
        problems.push(
          `${k} in ${s.name} lacks some of backends ${want.join(',')} (has ${[...have].join(',') || 'none'})`,
        );
    }
  }
  // A round-robin profile's backends belong to its own rule instead.
  for (const c of v.chains) {
    for (const r of c.rules) {
      if (r.kind !== 'rr') continue;
      const k = `${r.proto} ${r.vip.ip}:${r.vip.port}`;
      claimed.add(k);
      const have = new Set(backends.get(k) ?? []);
      const want = Array.from({ length: r.n }, (_, i) => rrOffset(r.n) + i);
      if (!want.every((i) => have.has(i)))
        problems.push(
          `${k} (round-robin rule of ${r.owner}) lacks some of backends ${want.join(',')} (has ${[...have].join(',') || 'none'})`,
        );
    }
  }
  for (const k of backends.keys()) if (!claimed.has(k)) problems.push(`backends of ${k} without a dispatch element`);
  return problems;
}
