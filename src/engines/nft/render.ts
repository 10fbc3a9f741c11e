/** The `nft -f` text of a transaction: what the spawn executor feeds nft, and what `iptlb plan` prints. */
import {
  NFT_CHAIN_HOOKS,
  NFT_TABLE,
  backendMapName,
  nftAddrType,
  type NftEndpoint,
  type NftTransaction,
} from './ops.js';
import { renderNftRule } from './rules/index.js';

export { renderNftRule } from './rules/index.js';

const ep = (e: NftEndpoint): string => `${e.ip} . ${e.port}`;
/** Elements per `add element` line, so no single netlink message grows past the socket buffer. */
const CHUNK = 512;

function chunked<E>(elements: E[], line: (part: E[]) => string): string[] {
  const out: string[] = [];
  for (let i = 0; i < elements.length; i += CHUNK) out.push(line(elements.slice(i, i + CHUNK)));
  return out;
}

/** The `nft -f` text of a transaction (one batch: nft commits a file as one transaction). */
export function renderNft(tx: NftTransaction): string {
  const f = tx.family;
  const T = `${f} ${NFT_TABLE}`;
  const addr = nftAddrType(f);
  const lines: string[] = [];
  for (const o of tx.ops) {
    switch (o.op) {
      case 'addTable':
        lines.push(`add table ${T}`);
        break;
      case 'deleteTable':
        lines.push(`delete table ${T}`);
        break;
      case 'addBackendMap':
        lines.push(
          `add map ${T} ${backendMapName(o.proto)} { typeof ${f} daddr . ${o.proto} dport . numgen random mod 1 : ${f} daddr . ${o.proto} dport; counter; }`,
        );
        break;
      case 'addDispatchSet':
        lines.push(`add set ${T} ${o.name} { type ${addr} . inet_service; counter; }`);
        break;
      case 'addAffinitySet': {
        const set = (size: number): string =>
          `add set ${T} ${o.name} { type ${addr}; ${size ? `size ${size}; ` : ''}flags dynamic,timeout; timeout ${o.timeout}s; }`;
        const size = o.size ?? 65535;
        if (o.sizeByUpdate && size) lines.push(set(0));
        lines.push(set(size));
        break;
      }
      case 'deleteSet':
        lines.push(`delete set ${T} ${o.name}`);
        break;
      case 'addBaseChain': {
        const h = NFT_CHAIN_HOOKS[o.name];
        lines.push(`add chain ${T} ${o.name} { type nat hook ${h.hook} priority ${h.priority}; policy accept; }`);
        break;
      }
      case 'flushChain':
        lines.push(`flush chain ${T} ${o.name}`);
        break;
      case 'deleteNatRule':
        lines.push(`delete rule ${f} nat ${o.chain} handle ${o.handle}`);
        break;
      case 'deleteNatChain':
        lines.push(`flush chain ${f} nat ${o.name}`, `delete chain ${f} nat ${o.name}`);
        break;
      case 'addRule':
        lines.push(`add rule ${T} ${o.chain} ${renderNftRule(o.rule, f)}`);
        break;
      case 'addDispatchElements':
        if (o.elements.length)
          lines.push(...chunked(o.elements, (p) => `add element ${T} ${o.set} { ${p.map(ep).join(', ')} }`));
        break;
      case 'deleteDispatchElements':
        if (o.elements.length)
          lines.push(...chunked(o.elements, (p) => `delete element ${T} ${o.set} { ${p.map(ep).join(', ')} }`));
        break;
      case 'addBackendElements':
        if (o.elements.length) {
          lines.push(
            ...chunked(
              o.elements,
              (p) =>
                `add element ${T} ${backendMapName(o.proto)} { ${p.map((e) => `${ep(e.vip)} . ${e.index} : ${ep(e.to)}`).join(', ')} }`,
            ),
          );
        }
        break;
      case 'deleteBackendElements':
        if (o.elements.length) {
          lines.push(
            ...chunked(
              o.elements,
              (p) =>
                `delete element ${T} ${backendMapName(o.proto)} { ${p.map((e) => `${ep(e.vip)} . ${e.index}`).join(', ')} }`,
            ),
          );
        }
        break;
    }
  }
  return lines.join('\n') + '\n';
}
