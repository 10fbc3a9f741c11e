/**
 * The nft engine's rule codec: one file per rule kind iptlb writes in table `<family> iptlb`, each holding both
 * directions (the `nft -f` text it writes, and the `nft -j list` JSON it reads back). The native executor's C++
 * encodes and decodes the same kinds (native/nftables/).
 */
import type { NftFamily, NftRule } from '../ops.js';
import * as aff from './aff.js';
import * as dispatch from './dispatch.js';
import * as log from './log.js';
import * as masq from './masq.js';
import * as rr from './rr.js';
import type { J, ReadRule } from './json.js';

type Codec<K extends NftRule['kind']> = {
  render(r: Extract<NftRule, { kind: K }>, f: NftFamily): string;
  decode(r: ReadRule): Extract<NftRule, { kind: K }> | null;
};
const CODECS: { [K in NftRule['kind']]: Codec<K> } = { dispatch, log, rr, aff, masq };
/** The order rules are recognised in (the first that reads a rule wholly wins). */
const DECODE_ORDER: readonly NftRule['kind'][] = ['dispatch', 'rr', 'aff', 'log', 'masq'];

/**
 * nft's input text for a rule of table `<family> iptlb`. (`nft list` prints it back slightly differently: `dnat ip
 * to` / `dnat ip6 to`, and `ct protocol` without `original`.) Owners and prefixes need no quoting: profile names are
 * `[A-Za-z0-9_-]`.
 */
export function renderNftRule(r: NftRule, family: NftFamily = 'ip'): string {
  return (CODECS[r.kind] as Codec<typeof r.kind>).render(r as never, family);
}

/** Recognises the rule shapes iptlb writes in table `<family> iptlb`; anything else is foreign. */
export function decodeRuleJson(rule: J, family: NftFamily = 'ip'): NftRule | { kind: 'foreign'; text: string } {
  const comment = typeof rule.comment === 'string' ? rule.comment : undefined;
  const read: ReadRule = {
    family,
    expr: Array.isArray(rule.expr) ? rule.expr : [],
    comment,
    owner: comment?.startsWith('iptlb:') ? comment.slice(6) : undefined,
  };
  for (const kind of DECODE_ORDER) {
    const r = CODECS[kind].decode(read);
    if (r) return r;
  }
  return { kind: 'foreign', text: `handle ${String(rule.handle)}: ${JSON.stringify(rule.expr).slice(0, 160)}` };
}
