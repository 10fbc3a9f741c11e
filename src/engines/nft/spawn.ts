/**
 * The nft engine's fallback executor: commits with one `nft -f -` process fed the rendered ops on
 * stdin (nft sends a file as one batch: one transaction), reads with `nft -j list table <ip|ip6> iptlb`.
 */
import { IptlbError } from '../../model/errors.js';
import { type NftFamily, type NftOriginalJump, type NftTransaction, type NftView } from './ops.js';
import { parseOriginalJumpsJson } from './original.js';
import { renderNft } from './render.js';
import { parseNftJson } from './view.js';
import type { CommitResult } from '../../model/types.js';
import type { NftExecutor } from './executor.js';
import { findBinary, run } from '../../platform/spawn.js';

const ERRNO: [RegExp, string, number][] = [
  [/No such file or directory/, 'ENOENT', 2],
  [/File exists/, 'EEXIST', 17],
  [/Device or resource busy/, 'EBUSY', 16],
  [/Operation not permitted|Permission denied/, 'EPERM', 1],
  [/Interrupted system call|Resource temporarily unavailable|generation/i, 'ERESTART', 85],
];

/** Turns nft's error text into a typed error with the kernel's errno and the failing line. */
export function nftError(stderr: string): IptlbError {
  const lines = stderr.trim().split('\n').filter(Boolean);
  const first = lines.find((l) => /Error:/.test(l)) ?? lines[0] ?? 'nft failed';
  const hit = ERRNO.find(([re]) => re.test(stderr));
  if (hit?.[1] === 'EPERM')
    return new IptlbError('EPERM', 'nft: permission denied: changing netfilter rules needs root (CAP_NET_ADMIN)', {
      errno: 1,
    });
  const failing = lines.find((l) => /^(add|delete|flush)\s/.test(l));
  const msg = `nft: ${first.replace(/^.*?Error:\s*/, '')}${failing ? `: ${failing.slice(0, 200)}` : ''}`;
  return new IptlbError(hit?.[1] === 'ERESTART' ? 'ERESTART' : 'EKERNEL', msg, hit ? { errno: hit[2] } : {});
}

export class NftSpawnExecutor implements NftExecutor {
  readonly kind = 'spawn' as const;
  readonly engine = 'nft' as const;
  private readonly nft: string;

  constructor() {
    const nft = findBinary('nft');
    if (!nft) throw new IptlbError('EEXECUTOR', 'nft not found; install it with: apt-get install -y nftables');
    this.nft = nft;
  }

  read(family: NftFamily = 'ip'): Promise<NftView> {
    return this.list(family, false);
  }

  /** `nft -t` (terse): sets and maps without their elements, so one process whatever the table's size. */
  survey(family: NftFamily): Promise<NftView> {
    return this.list(family, true);
  }

  private async list(family: NftFamily, terse: boolean): Promise<NftView> {
    if (family !== 'ip' && family !== 'ip6')
      throw new IptlbError('EUSAGE', `nft read: family must be 'ip' or 'ip6', got ${String(family)}`, {
        field: 'family',
      });
    const r = await run(this.nft, [...(terse ? ['-t'] : []), '-j', 'list', 'table', family, 'iptlb']);
    if (r.code !== 0) {
      if (/No such file or directory/.test(r.stderr)) return parseNftJson('', 0, family);
      throw nftError(r.stderr);
    }
    return parseNftJson(r.stdout, 0, family);
  }

  /**
   * `nft -j list chain <family> nat OUTPUT` and/or `… PREROUTING` (`chains`), side by side (nft 1.0.6 does not list
   * two chains in one run: a script of two `list` commands fails); no other chain of that table is listed, and nft
   * fetches only the chain listed (about 30 ms a process, whatever the size of the table).
   */
  async originalJumps(
    family: NftFamily,
    chains: readonly NftOriginalJump['chain'][] = ['OUTPUT', 'PREROUTING'],
  ): Promise<NftOriginalJump[]> {
    const lists = await Promise.all(chains.map((c) => run(this.nft, ['-j', 'list', 'chain', family, 'nat', c])));
    return lists.flatMap((r, i) => {
      if (r.code !== 0) {
        if (/No such file or directory/.test(r.stderr)) return []; // no such table or chain
        throw nftError(r.stderr);
      }
      return parseOriginalJumpsJson(r.stdout, family, chains[i]!);
    });
  }

  async render(tx: NftTransaction): Promise<string> {
    return renderNft(tx);
  }

  async commit(tx: NftTransaction): Promise<CommitResult> {
    const t0 = performance.now();
    const r = await run(this.nft, ['-f', '-'], renderNft(tx));
    if (r.code !== 0) throw nftError(r.stderr);
    return { durationMs: performance.now() - t0 };
  }
}
