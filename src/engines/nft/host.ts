/** What the nft engine needs of the host, as `iptlb doctor` reports it. */
import type { HostCheck } from '../engine.js';
import { findBinary } from '../../platform/spawn.js';
import { kernelUpdatesSetSize } from './ops.js';

export function nftHostChecks(): HostCheck[] {
  const nft = findBinary('nft');
  return [
    {
      name: 'nft',
      ok: !!nft,
      detail: nft ?? 'not found (spawn executor of the nft engine)',
      ...(nft ? {} : { fix: 'apt-get install -y nftables' }),
    },
    {
      // Not a failure either way: what a session-affinity profile costs in kernel memory (docs/balancing.md).
      name: 'nft affinity sets',
      ok: true,
      detail: kernelUpdatesSetSize()
        ? 'made without a size, then given their limit (Linux 6.6 or later): memory grows with the clients'
        : "made without a size (Linux before 6.6): the kernel's limit for them, 65,535 clients, and memory grows with the clients",
    },
  ];
}
