/**
 * What the command line says a commit did, without root (the fake kernels of test/harness): the
 * `--verbose` lines of every command that commits (apply, delete, sync, migrate: the CLI's one printer,
 * verboseRules), the chain the legacy engine's rules are really in (IPTLB_OUTPUT / IPTLB_PREROUTING
 * behind the gate, not OUTPUT / PREROUTING), and a migration to the engine that already holds the
 * rules, which changes nothing. test/kernel/cli-commits.test.ts runs the same through the CLI in namespaces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LegacyEngine } from '../../src/engines/legacy/index.js';
import { planTransaction } from '../../src/engines/legacy/plan.js';
import { validateProfile } from '../../src/model/profile.js';
import { FakeLegacyKernel } from '../harness/fake-kernel.js';
import type { Family, KernelView, ProfileInput } from '../../src/model/types.js';

const web = (n: number, more: Partial<ProfileInput> = {}): ProfileInput => ({
  name: `web${n}`,
  source: `127.100.0.${10 + n}:80`,
  destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
  ...more,
});

test('legacy: --verbose, the apply log line and show name the chain a rule is in: IPTLB_OUTPUT / IPTLB_PREROUTING behind the gate, POSTROUTING, and OUTPUT only for an older jump sitting in OUTPUT itself', async () => {
  const client = validateProfile(web(1));
  const proxy = validateProfile(web(2, { rulesBackend: 'proxy', masquerade: true }));
  const v6 = validateProfile({ name: 'six', source: '[::1]:80', destination: ['[::1]:9001'] });
  const engine = new LegacyEngine(new FakeLegacyKernel());
  const described = [
    ...engine.describeTransaction(planTransaction([client, proxy], [])),
    ...engine.describeTransaction(planTransaction([v6], [], 'ipv6')),
  ];
  const chains = described.map((l) => /^\[\w+\] ([^:]+):/.exec(l)![1]);
  assert.deepEqual(chains, [
    'nat/IPTLB_NAT_WEB1',
    'nat/IPTLB_NAT_WEB1',
    'nat/IPTLB_NAT_WEB2',
    'nat/IPTLB_NAT_WEB2',
    'nat/IPTLB_OUTPUT',
    'nat/IPTLB_PREROUTING',
    'nat/POSTROUTING',
    'ip6tables nat/IPTLB_NAT_SIX',
    'ip6tables nat/IPTLB_OUTPUT',
  ]);
  assert.match(
    engine.describeProfile(client),
    /^client: jump in nat IPTLB_OUTPUT \(behind the gate in OUTPUT\), chain IPTLB_NAT_WEB1 /,
  );
  assert.match(
    engine.describeProfile(proxy),
    /^proxy: jump in nat IPTLB_PREROUTING \(behind the gate in PREROUTING\), .*masquerade in POSTROUTING$/,
  );

  const kernel = new FakeLegacyKernel();
  await kernel.commit(planTransaction([client, proxy], []));
  const shown = new LegacyEngine(kernel);
  const first = (lines: string[]) => lines.map((l) => l.split('\t')[0]);
  assert.deepEqual(first((await shown.show('web1', client, ['ipv4'])).lines), [
    'IPTLB_OUTPUT #1',
    'IPTLB_NAT_WEB1',
    'IPTLB_NAT_WEB1',
  ]);
  assert.deepEqual(first((await shown.show('web2', proxy, ['ipv4'])).lines), [
    'IPTLB_PREROUTING #1',
    'POSTROUTING #1',
    'IPTLB_NAT_WEB2',
    'IPTLB_NAT_WEB2',
  ]);
  // The layout of iptlb before the gate: the jump in nat OUTPUT itself (status: modified until the next commit).
  class Direct extends FakeLegacyKernel {
    override async read(family: Family = 'ipv4'): Promise<KernelView> {
      const view = await super.read(family);
      return { ...view, hookRules: view.hookRules.map((h) => ({ ...h, direct: true })), gate: undefined };
    }
  }
  const direct = new Direct();
  await direct.commit(planTransaction([client], []));
  assert.deepEqual(first((await new LegacyEngine(direct).show('web1', client, ['ipv4'])).lines), [
    'OUTPUT #1',
    'IPTLB_NAT_WEB1',
    'IPTLB_NAT_WEB1',
  ]);
});
