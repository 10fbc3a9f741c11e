/**
 * The original iptlb's rules on a host whose iptables is the nf_tables one: its jumps (`-p P -d VIP --dport PORT -j
 * IPTLB_NAT_<X>`, no comment) in iptables-nft's `table ip nat` / `table ip6 nat`, chains OUTPUT and PREROUTING. Its
 * own table's nat chains have their priority (-100): a profile of iptlb's at an address one of them matches would be
 * served by two tables' rules, the first the kernel registered winning. A state-file instance's change that gives a
 * profile such an address (a new one, or one moved to another address, protocol or hook) is refused, as the legacy
 * engine refuses it (src/engines/legacy/restore.ts originalTaken). The jumps to the chain the original used for a
 * profile of the state file the change applies or deletes, and that chain, are taken over instead: deleted in the
 * same batch as iptlb's change (takeoverOps), as the legacy engine takes them over (restore.ts bareJumpsOf).
 */
import { IptlbError } from '../../model/errors.js';
import { canonicalIpv6 } from '../../model/address.js';
import type { Profile } from '../../model/types.js';
import type { NftFamily, NftOp, NftOriginalJump, NftTransaction } from './ops.js';
import { nftHookOf, profileEndpoint } from './plan.js';

const PROTOCOLS: Record<number, string> = { 6: 'tcp', 17: 'udp', 132: 'sctp' };

/** A protocol number as the rule's text names it: tcp, udp, sctp, else the number. */
export function protoName(n: number): string {
  return PROTOCOLS[n] ?? String(n);
}

/** The chain of iptables-nft's nat table whose packets profile `p`'s rules see: OUTPUT (client) or PREROUTING. */
export function originalChainOf(p: Profile): NftOriginalJump['chain'] {
  return nftHookOf(p) === 'out' ? 'OUTPUT' : 'PREROUTING';
}

/**
 * The first of `jumps` that serves profile `p`'s address (its chain, destination address, protocol and port), and
 * whether surely: a jump whose match iptlb does not read whole (`unknown`) serves it unless a part it reads excludes
 * it.
 */
export function originalServing(
  jumps: readonly NftOriginalJump[],
  p: Profile,
): { jump: NftOriginalJump; sure: boolean } | undefined {
  const e = profileEndpoint(p);
  const chain = originalChainOf(p);
  for (const j of jumps) {
    if (j.chain !== chain) continue;
    // An IPv6 address as iptlb writes it (inet_ntop and nft may write an IPv4-mapped one otherwise).
    if (j.ip !== undefined && (j.ip.includes(':') ? (canonicalIpv6(j.ip) ?? j.ip) : j.ip) !== e.ip) continue;
    if (j.proto !== undefined && j.proto !== p.protocol) continue;
    if (j.port !== undefined && j.port !== e.port) continue;
    return { jump: j, sure: j.unknown === undefined };
  }
  return undefined;
}

/** What the refusal of a profile at the address of the original iptlb's jump says (as legacy's ORIGINAL_AT). */
export const ORIGINAL_AT = " is served by the original iptlb's rule in ";

/** The iptables-nft words of a jump read whole: `-p P -d IP --dport N -j CHAIN`, the parts it has. */
function ruleWords(j: NftOriginalJump): string {
  return [
    ...(j.proto !== undefined ? ['-p', j.proto] : []),
    ...(j.ip !== undefined ? ['-d', j.ip] : []),
    ...(j.port !== undefined ? ['--dport', String(j.port)] : []),
    '-j',
    j.target,
  ].join(' ');
}

/**
 * The refusal of profile `p` (of table `<nf> iptlb`), whose address the original iptlb's jump `jump` serves
 * (`sure`), or may serve (a match iptlb does not read whole): one line naming that rule, what iptlb leaves, and the
 * command that deletes the rule (iptables-nft's `-D` for a rule read whole, else `nft delete rule … handle N`).
 */
export function originalTakenError(nf: NftFamily, p: Profile, jump: NftOriginalJump, sure: boolean): IptlbError {
  const table = `table ${nf} nat`;
  const where = `${table} chain ${jump.chain}`;
  const byHandle = `nft delete rule ${nf} nat ${jump.chain} handle ${jump.handle}`;
  const message = sure
    ? `source: profile ${p.name}: its address${ORIGINAL_AT}${where} (${ruleWords(jump)}, no comment), which iptlb does not change and this change would leave in place (two tables' nat rules for one address: the chain the kernel registered first wins): delete the original's rule, then apply again: ${nf === 'ip6' ? 'ip6tables-nft' : 'iptables-nft'} -t nat -D ${jump.chain} ${ruleWords(jump)}`
    : `source: profile ${p.name}: its address may be served by the original iptlb's rule in ${where} (handle ${jump.handle}: ${jump.ip !== undefined ? `-d ${jump.ip} ` : ''}-j ${jump.target}, no comment, with a match iptlb does not read: ${jump.unknown}), which iptlb does not change and this change would leave in place (two tables' nat rules for one address: the chain the kernel registered first wins): see it with \`nft -a list chain ${nf} nat ${jump.chain}\`; if it matches ${p.source}/${p.protocol}, delete it, then apply again: ${byHandle}`;
  return new IptlbError('ECONFLICT', message, { field: 'source' });
}

/**
 * The original iptlb's jumps in the text of `nft -j list chain <family> nat <chain>` (nft 1.0.6's JSON: a rule's
 * `expr` list). A compat `xt` expression carries no info in JSON (nft prints its name only): a match iptlb does not
 * read, but for `comment`, which makes the rule not the original's (it wrote none), as a `comment` on the rule does.
 */
export function parseOriginalJumpsJson(
  text: string,
  family: NftFamily,
  chain: NftOriginalJump['chain'],
): NftOriginalJump[] {
  const start = text.indexOf('{');
  if (start < 0) return [];
  const doc = JSON.parse(text.slice(start)) as { nftables?: Record<string, unknown>[] };
  const out: NftOriginalJump[] = [];
  for (const item of doc.nftables ?? []) {
    const rule = item.rule as { chain?: string; handle?: number; comment?: string; expr?: unknown[] } | undefined;
    if (!rule || rule.chain !== chain || rule.comment !== undefined || !Array.isArray(rule.expr)) continue;
    const exprs = rule.expr as Record<string, any>[];
    const last = exprs[exprs.length - 1] ?? {};
    const verdict = (last.jump ?? last.goto) as { target?: string } | undefined;
    if (!verdict || typeof verdict.target !== 'string' || !verdict.target.startsWith('IPTLB_NAT_')) continue;
    const j: NftOriginalJump = { chain, handle: rule.handle ?? 0, target: verdict.target };
    const unknown: string[] = [];
    const note = (what: string): void => {
      if (!unknown.includes(what)) unknown.push(what);
    };
    if (last.goto) note('goto');
    let commented = false;
    for (const x of exprs.slice(0, -1)) {
      if ('counter' in x) continue;
      if (x.xt) {
        if (x.xt.name === 'comment') commented = true;
        else note(`xt ${x.xt.type ?? 'match'} ${x.xt.name}`);
        continue;
      }
      const m = x.match as { op?: string; left?: any; right?: unknown } | undefined;
      if (!m || m.op !== '==' || !m.left) {
        note(Object.keys(x)[0] ?? 'expression');
        continue;
      }
      const { left, right } = m;
      const payload = left.payload as { protocol?: string; field?: string } | undefined;
      if (left.meta?.key === 'l4proto' && (typeof right === 'string' || typeof right === 'number'))
        j.proto = typeof right === 'number' ? protoName(right) : right;
      else if (
        payload &&
        ((payload.protocol === 'ip' && payload.field === 'protocol') ||
          (payload.protocol === 'ip6' && payload.field === 'nexthdr')) &&
        (typeof right === 'string' || typeof right === 'number')
      )
        j.proto = typeof right === 'number' ? protoName(right) : right;
      else if (payload?.field === 'daddr' && payload.protocol === family && typeof right === 'string') j.ip = right;
      else if (
        payload?.field === 'dport' &&
        (payload.protocol === 'tcp' || payload.protocol === 'udp' || payload.protocol === 'sctp') &&
        typeof right === 'number'
      ) {
        j.port = right;
        j.proto ??= payload.protocol;
      } else if (left['&'] || left['|'] || left['^']) note('bitwise');
      else note(payload ? `${payload.protocol} ${payload.field}` : 'match');
    }
    if (commented) continue;
    if (unknown.length) j.unknown = unknown.join(', ');
    out.push(j);
  }
  return out;
}

/**
 * The takeover of the original iptlb's rules: for each chain of `targets` (`IPTLB_NAT_…`, the chain the original used
 * for a profile of the state file this change applies or deletes) one of `jumps` goes to, those jumps (by handle) and
 * then that chain (flushed and deleted), in iptables-nft's `table <family> nat`; nothing else of that table. Ops of
 * the same batch as iptlb's own change: a handle gone by commit time (ENOENT), or another rule still jumping to the
 * chain (EBUSY), fails it whole.
 */
export function takeoverOps(jumps: readonly NftOriginalJump[], targets: ReadonlySet<string>): NftOp[] {
  const ops: NftOp[] = [];
  const chains = new Set<string>();
  for (const j of jumps) {
    if (!targets.has(j.target)) continue;
    ops.push({ op: 'deleteNatRule', chain: j.chain, handle: j.handle, target: j.target });
    chains.add(j.target);
  }
  for (const name of chains) ops.push({ op: 'deleteNatChain', name });
  return ops;
}

/** Whether `tx` takes over the original iptlb's rules (see {@link takeoverOps}). */
export function takesOver(tx: NftTransaction): boolean {
  return tx.ops.some((o) => o.op === 'deleteNatRule' || o.op === 'deleteNatChain');
}

/**
 * A takeover whose batch failed with EBUSY (a rule other than the original's jumps still jumps to one of its chains):
 * the refusal, naming the chains and how to find that rule.
 */
export function takeoverBusyError(nf: NftFamily, p: string, chains: readonly string[]): IptlbError {
  return new IptlbError(
    'ECONFLICT',
    `name: profile ${p}: the original iptlb's chain ${chains.join(', ')} in table ${nf} nat, whose jumps (no comment) this change deletes to take it over, is jumped to by another rule (another tool's, or one with a comment), which iptlb does not delete: nothing changed; remove that jump (\`nft -a list table ${nf} nat | grep -- '${chains[0]}'\` finds it), then apply again`,
    { field: 'name' },
  );
}
