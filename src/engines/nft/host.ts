/** What the nft engine needs of the host, as `iptlb doctor` reports it. */
import type { HostCheck } from '../engine.js';
import { findBinary } from '../../platform/spawn.js';

export function nftHostChecks(): HostCheck[] {
  const nft = findBinary('nft');
  return [
    {
      name: 'nft',
      ok: !!nft,
      detail: nft ?? 'not found (spawn executor of the nft engine)',
      ...(nft ? {} : { fix: 'apt-get install -y nftables' }),
    },
  ];
}
