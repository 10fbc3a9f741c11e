/** What the legacy engine needs of the host, as `iptlb doctor` reports it. */
import type { HostCheck } from '../engine.js';
import { findBinary } from '../../platform/spawn.js';
import { iptablesFlavour, xtablesAvailable } from '../select.js';

const tool = (name: string, what: string): HostCheck => {
  const p = findBinary(name);
  return {
    name,
    ok: !!p,
    detail: p ?? `not found (${what})`,
    ...(p ? {} : { fix: `apt-get install -y ${name === 'ipset' ? 'ipset' : 'iptables'}` }),
  };
};

export function legacyHostChecks(): HostCheck[] {
  const xt = xtablesAvailable();
  const flavour = iptablesFlavour();
  return [
    {
      name: 'x_tables',
      ok: true,
      detail: xt
        ? 'available in this kernel (legacy engine possible)'
        : 'not available in this kernel (legacy engine impossible)',
    },
    {
      name: 'host iptables',
      ok: true,
      detail: flavour === 'none' ? 'not installed' : `the ${flavour === 'nft' ? 'nf_tables' : 'legacy'} flavour`,
    },
    tool('iptables-legacy-restore', 'spawn executor of the legacy engine'),
    tool('ip6tables-legacy-restore', 'spawn executor of the legacy engine, IPv6 profiles'),
    tool('ipset', "spawn executor of the legacy engine: the gate's set of virtual addresses"),
  ];
}
