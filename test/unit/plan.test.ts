import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  addressElement,
  earlierChainRules,
  planGeneral,
  planPlain,
  planProfile,
  planTransaction,
  cascadeProbability,
} from '../../src/engines/legacy/plan.js';
import { hostCidr, parseEndpoint } from '../../src/model/address.js';
import { elementOf, planGate } from '../../src/engines/legacy/gate.js';
import {
  renderRestore,
  renderRule,
  parseSave,
  parseRule,
  splitWords,
  canonicalProbability,
} from '../../src/engines/legacy/restore.js';
import { validateProfile } from '../../src/model/profile.js';
import { NativeExecutor } from '../../src/engines/legacy/native.js';
import type { NativeAddon } from '../../src/platform/addon.js';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { KernelView, Profile } from '../../src/model/types.js';
import type { IptlbError } from '../../src/model/errors.js';

const web = validateProfile({
  name: 'web',
  source: '127.100.0.10:8081',
  destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
});
const empty: KernelView = { chains: [], hookRules: [] };

test('probabilities: 1/(n-i) with 10 decimals, distinct even for hundreds of destinations', () => {
  assert.equal(cascadeProbability(0, 3), '0.3333333333');
  assert.equal(cascadeProbability(1, 3), '0.5000000000');
  const n = 1000;
  const ps = Array.from({ length: n - 1 }, (_, i) => cascadeProbability(i, n));
  assert.equal(new Set(ps).size, n - 1);
  assert.equal(new Set(ps.map(canonicalProbability)).size, n - 1);
});

test('client profile: chain with the DNAT cascade (its end returns); jump in IPTLB_OUTPUT, comment-owned, behind a new gate in OUTPUT', () => {
  const text = renderRestore(planTransaction([web], []), empty);
  assert.equal(
    text,
    [
      '*nat',
      ':IPTLB_OUTPUT - [0:0]',
      ':IPTLB_NAT_WEB - [0:0]',
      '-A IPTLB_NAT_WEB -d 127.100.0.10/32 -p tcp -m statistic --mode random --probability 0.3333333333 -j DNAT --to-destination 127.0.0.1:9001',
      '-A IPTLB_NAT_WEB -d 127.100.0.10/32 -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 127.0.0.1:9002',
      '-A IPTLB_NAT_WEB -d 127.100.0.10/32 -p tcp -j DNAT --to-destination 127.0.0.1:9003',
      '-I IPTLB_OUTPUT 1 -d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB',
      '-I OUTPUT 1 -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT',
      'COMMIT',
      '',
    ].join('\n'),
  );
});

test('logging: LOG first in the chain, and a LOG with ip, protocol AND port above the jump', () => {
  const p = validateProfile({ ...web, logEnabled: true, logLevel: '6' });
  const plan = planProfile(p);
  assert.equal(renderRule(plan.chain.rules[0]), '-j LOG --log-prefix "IPTLB:WEB:" --log-level 6');
  assert.equal(plan.hookRules.length, 2);
  assert.equal(
    renderRule(plan.hookRules[0].rule),
    '-d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j LOG --log-prefix "IPTLB:VIP:WEB:" --log-level 6',
  );
  assert.equal(plan.hookRules[1].rule.target.name, 'jump');
  const text = renderRestore(planTransaction([p], []), empty);
  assert.match(text, /-I IPTLB_OUTPUT 1 .* -j LOG .*\n-I IPTLB_OUTPUT 2 .* -j IPTLB_NAT_WEB/);
  // every log prefix fits the kernel's 29 characters, even for 18-character names
  const long = planProfile(validateProfile({ ...p, name: 'a'.repeat(18) }));
  for (const r of [long.chain.rules[0], long.hookRules[0].rule])
    if (r.target.name === 'LOG') assert.ok(r.target.prefix.length <= 29);
});

test('modes: proxy → PREROUTING; server → PREROUTING with addrtype LOCAL (never INPUT); masquerade in POSTROUTING', () => {
  const proxy = planProfile(validateProfile({ ...web, rulesBackend: 'proxy', masquerade: true }));
  assert.deepEqual(
    proxy.hookRules.map((h) => h.chain),
    ['PREROUTING', 'POSTROUTING'],
  );
  assert.equal(
    renderRule(proxy.hookRules[1].rule),
    '-p tcp -m comment --comment "iptlb:web" -m conntrack --ctstate DNAT --ctorigdst 127.100.0.10/32 --ctorigdstport 8081 -j MASQUERADE',
  );
  const server = planProfile(validateProfile({ ...web, rulesBackend: 'server' }));
  assert.equal(server.hookRules[0].chain, 'PREROUTING');
  assert.match(renderRule(server.hookRules[0].rule), /-m addrtype --dst-type LOCAL/);
});

test('udp and sctp profiles match their own protocol everywhere (the original made udp jump into tcp rules)', () => {
  for (const proto of ['udp', 'sctp'] as const) {
    const plan = planProfile(validateProfile({ ...web, protocol: proto }));
    // the chain's rules check the protocol (its port was checked by the jump, the only way in)
    for (const r of plan.chain.rules) {
      assert.equal(r.proto, proto);
      assert.ok(!r.matches.some((m) => m.name === 'tcp'));
    }
    for (const { rule: r } of plan.hookRules) {
      assert.equal(r.proto, proto);
      assert.ok(r.matches.some((m) => m.name === proto && m.dport === 8081));
      assert.ok(!r.matches.some((m) => m.name === 'tcp'));
    }
  }
});

test('reset: old hook rules deleted by their exact text, chain re-declared (flushed) in the same commit; an old-layout jump moves behind the gate', () => {
  const old = planProfile(web);
  const view: KernelView = {
    chains: [
      { name: 'IPTLB_NAT_WEB', rules: [] },
      { name: 'IPTLB_NAT_OTHER', rules: [] },
    ],
    hookRules: [
      { chain: 'OUTPUT', owner: 'web', position: 1, rule: old.hookRules[0].rule, packets: 0n, bytes: 0n, direct: true },
      { chain: 'OUTPUT', owner: 'other', position: 1, rule: old.hookRules[0].rule, packets: 0n, bytes: 0n, raw: 'RAW' },
    ],
    gate: { gates: ['OUTPUT'], dispatch: ['OUTPUT'] },
  };
  const next = validateProfile({ ...web, destination: ['127.0.0.1:9004'] });
  const text = renderRestore(planTransaction([next], []), view);
  const lines = text.split('\n');
  assert.equal(lines[1], ':IPTLB_NAT_WEB - [0:0]');
  assert.equal(
    lines[2],
    '-D OUTPUT -d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB',
  );
  assert.equal(
    lines[4],
    '-I IPTLB_OUTPUT 1 -d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB',
  );
  assert.ok(!text.includes('RAW'), "another profile's rule is not touched");
  assert.ok(!text.includes('-X'), 'a replaced chain is not deleted');
  assert.ok(
    !text.includes(':IPTLB_OUTPUT') && !text.includes('match-set'),
    'an existing gate and dispatch chain are kept as they are',
  );
});

test('delete: hook rules removed, chain flushed and deleted; absent chains are skipped; the last rule behind a gate takes the gate along', () => {
  const view: KernelView = {
    chains: [{ name: 'IPTLB_NAT_WEB', rules: [] }],
    hookRules: [
      {
        chain: 'OUTPUT',
        owner: 'web',
        position: 1,
        rule: planProfile(web).hookRules[0].rule,
        packets: 0n,
        bytes: 0n,
        raw: '-d 127.100.0.10/32 -j X',
      },
    ],
    gate: { gates: ['OUTPUT'], dispatch: ['OUTPUT'] },
  };
  const text = renderRestore(planTransaction([], ['web', 'gone']), view);
  assert.equal(
    text,
    [
      '*nat',
      ':IPTLB_NAT_WEB - [0:0]',
      '-D IPTLB_OUTPUT -d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB',
      '-D OUTPUT -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT',
      '-X IPTLB_OUTPUT',
      '-X IPTLB_NAT_WEB',
      'COMMIT',
      '',
    ].join('\n'),
  );
});

test('iptables-save output parses back into the rules that were planned', () => {
  const p = validateProfile({ ...web, rulesBackend: 'proxy', masquerade: true, logEnabled: true });
  const plan = planProfile(p);
  const save = [
    '# Generated by iptables-save v1.8.9',
    '*filter',
    ':INPUT ACCEPT [0:0]',
    '-A INPUT -m comment --comment "iptlb:web" -j ACCEPT',
    'COMMIT',
    '*nat',
    ':PREROUTING ACCEPT [0:0]',
    ':IPTLB_NAT_WEB - [0:0]',
    ':FOREIGN - [0:0]',
    '[1:60] -A PREROUTING -d 10.0.0.1/32 -j FOREIGN',
    `[2:120] -A PREROUTING ${renderRule(plan.hookRules[0].rule).replace(' --log-level 4', '')}`,
    `[3:180] -A PREROUTING ${renderRule(plan.hookRules[1].rule)}`,
    '[0:0] -A POSTROUTING -p tcp -m comment --comment "iptlb:web" -m conntrack --ctstate DNAT --ctorigdst 127.100.0.10 --ctorigdstport 8081 -j MASQUERADE',
    '[0:0] -A IPTLB_NAT_WEB -j LOG --log-prefix "IPTLB:WEB:"',
    '[7:420] -A IPTLB_NAT_WEB -d 127.100.0.10/32 -p tcp -m tcp --dport 8081 -m statistic --mode random --probability 0.33333333349 -j DNAT --to-destination 127.0.0.1:9001',
    'COMMIT',
  ].join('\n');
  const view = parseSave(save);
  assert.deepEqual(
    view.chains.map((c) => c.name),
    ['IPTLB_NAT_WEB'],
  );
  assert.equal(view.hookRules.length, 3);
  assert.deepEqual(
    view.hookRules.map((h) => [h.chain, h.position, h.packets]),
    [
      ['PREROUTING', 2, 2n],
      ['PREROUTING', 3, 3n],
      ['POSTROUTING', 1, 0n],
    ],
  );
  assert.deepEqual(view.hookRules[0].rule, plan.hookRules[0].rule);
  assert.deepEqual(view.hookRules[1].rule, plan.hookRules[1].rule);
  assert.deepEqual(view.hookRules[2].rule, plan.hookRules[2].rule);
  assert.equal(view.chains[0].rules[1].packets, 7n);
  assert.equal(view.chains[0].rules[1].rule.matches[1].name, 'statistic');
});

test('splitWords honours quotes and escapes; parseRule refuses what iptlb does not write', () => {
  assert.deepEqual(splitWords('-m comment --comment "a \\"b\\" c" -j X'), [
    '-m',
    'comment',
    '--comment',
    'a "b" c',
    '-j',
    'X',
  ]);
  assert.equal(parseRule(splitWords('-s 1.2.3.4/32 -j RETURN')), null);
  assert.equal(parseRule(splitWords('-j ACCEPT')), null);
});

test('gate: set elements are added for planned jumps and deleted only when no remaining rule needs them; old-layout rules are direct and drift says so', async () => {
  const { elementOf } = await import('../../src/engines/legacy/gate.js');
  const { compare } = await import('../../src/engines/legacy/drift.js');
  const a = validateProfile({ name: 'a', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001'] });
  const b = validateProfile({
    name: 'b',
    source: '127.100.0.10:8081',
    destination: ['127.0.0.1:9002'],
    rulesBackend: 'proxy',
    protocol: 'udp',
  });
  assert.equal(elementOf(planProfile(a).hookRules[0].rule), '127.100.0.10,tcp:8081');
  assert.equal(elementOf(planProfile(b).hookRules[0].rule), '127.100.0.10,udp:8081');
  const both = parseSave(renderRestore(planTransaction([a, b], []), empty).replace(/-I (\S+) \d+/g, '-A $1'));
  assert.deepEqual(both.gate, { gates: ['OUTPUT', 'PREROUTING'], dispatch: ['OUTPUT', 'PREROUTING'] });
  assert.deepEqual(
    both.hookRules.map((h) => [h.chain, h.owner, h.direct]),
    [
      ['OUTPUT', 'a', undefined],
      ['PREROUTING', 'b', undefined],
    ],
  );
  const gone = planGate(planTransaction([], ['a']), both);
  assert.deepEqual(
    [gone.add, gone.del, gone.remaining, gone.needSet],
    [[], ['127.100.0.10,tcp:8081'], { OUTPUT: 0, PREROUTING: 1 }, true],
  );
  // The same VIP:port kept by a new profile: not deleted.
  const moved = planGate(planTransaction([{ ...a, name: 'c' }], ['a']), both);
  assert.deepEqual([moved.add, moved.del], [['127.100.0.10,tcp:8081'], []]);
  const none = planGate(planTransaction([], ['a', 'b']), both);
  assert.equal(none.needSet, false);
  // An older iptlb's jump in OUTPUT itself: modified until re-committed.
  const oldLayout = parseSave(
    `*nat\n:IPTLB_NAT_A - [0:0]\n${planTransaction([a], [])
      .chains[0].rules.map((r) => `-A IPTLB_NAT_A ${renderRule(r)}`)
      .join('\n')}\n-A OUTPUT ${renderRule(planProfile(a).hookRules[0].rule)}\nCOMMIT\n`,
  );
  assert.equal(oldLayout.hookRules[0].direct, true);
  const [r] = compare(new Map([['a', a]]), oldLayout);
  assert.equal(r.status, 'modified');
  assert.match(r.detail ?? '', /behind the gate/);
  const fixed = renderRestore(planTransaction([a], []), oldLayout);
  assert.match(fixed, /-D OUTPUT -d 127\.100\.0\.10\/32 .* -j IPTLB_NAT_A\n/);
  assert.match(fixed, /-I IPTLB_OUTPUT 1 .*\n-I OUTPUT 1 -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT\n/);
});

test('gate: a profile whose rules sit behind a missing gate is modified, and sync re-inserts the gate', async () => {
  const { compare, syncTransaction } = await import('../../src/engines/legacy/drift.js');
  const a = validateProfile({ name: 'a', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001'] });
  const installed = renderRestore(planTransaction([a], []), empty).replace(/-I (\S+) \d+/g, '-A $1');
  const gateless = parseSave(installed.replace(/^-A OUTPUT -m set .*\n/m, ''));
  assert.deepEqual(gateless.gate, { gates: [], dispatch: ['OUTPUT'] });
  const [r] = compare(new Map([['a', a]]), gateless);
  assert.equal(r.status, 'modified');
  assert.match(r.detail ?? '', /gate in nat OUTPUT .* missing/);
  const fix = renderRestore(syncTransaction(new Map([['a', a]]), gateless), gateless);
  assert.match(fix, /\n-I OUTPUT 1 -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT\n/);
  assert.ok(!fix.includes(':IPTLB_OUTPUT'), 'the existing dispatch chain is not re-declared (that would flush it)');
  assert.equal(compare(new Map([['a', a]]), parseSave(installed))[0].status, 'in-sync');
});

test("gate: a profile whose address is missing from the gate's set (ipset del by hand) is modified, and sync re-adds it", async () => {
  const { compare, syncTransaction } = await import('../../src/engines/legacy/drift.js');
  const a = validateProfile({ name: 'a', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001'] });
  const b = validateProfile({ name: 'b', source: '127.100.0.11:8081', destination: ['127.0.0.1:9002'] });
  const v6 = validateProfile({ name: 'c', source: '[::102:304]:80', destination: ['[::1]:9003'] });
  const installed = parseSave(renderRestore(planTransaction([a, b], []), empty).replace(/-I (\S+) \d+/g, '-A $1'));
  const withMembers = (members: string[]): KernelView => ({ ...installed, gate: { ...installed.gate!, members } });
  const state = new Map([
    ['a', a],
    ['b', b],
  ]);
  // Every element there, or the set not read: in sync.
  assert.deepEqual(
    compare(state, withMembers(['127.100.0.10,tcp:8081', '127.100.0.11,tcp:8081'])).map((r) => r.status),
    ['in-sync', 'in-sync'],
  );
  assert.deepEqual(
    compare(state, installed).map((r) => r.status),
    ['in-sync', 'in-sync'],
  );
  // a's element deleted by hand: its connections never reach IPTLB_OUTPUT, so it is not in sync.
  const [ra, rb] = compare(state, withMembers(['127.100.0.11,tcp:8081']));
  assert.equal(ra.status, 'modified');
  assert.match(ra.detail ?? '', /127\.100\.0\.10,tcp:8081 is missing from the gate's set iptlb-vip-inet/);
  assert.equal(rb.status, 'in-sync');
  // sync's transaction installs a again, and the commit adds the element of every rule it installs.
  const tx = syncTransaction(state, withMembers(['127.100.0.11,tcp:8081']));
  assert.ok(planGate(tx, withMembers([])).add.includes('127.100.0.10,tcp:8081'));
  // IPv6: ipset prints an IPv4-compatible address with a dotted tail; the same element.
  const six = parseSave(renderRestore(planTransaction([v6], [], 'ipv6'), empty).replace(/-I (\S+) \d+/g, '-A $1'));
  const elem = elementOf(six.hookRules[0].rule)!;
  assert.equal(compare(new Map([['c', v6]]), { ...six, gate: { ...six.gate!, members: [elem] } })[0].status, 'in-sync');
  assert.equal(
    compare(new Map([['c', v6]]), { ...six, gate: { ...six.gate!, members: ['::1.2.3.4,tcp:80'] } })[0].status,
    'in-sync',
  );
  const [r6] = compare(new Map([['c', v6]]), { ...six, gate: { ...six.gate!, members: [] } });
  assert.match(r6.detail ?? '', /missing from the gate's set iptlb-vip-inet6/);
});

test("gate: the gate's set with no dispatch chain (no rule of iptlb's uses it) is orphaned unless a profile of its family is in the state or another tool's rule uses it; the engine's read names it", async () => {
  const { compare, syncTransaction } = await import('../../src/engines/legacy/drift.js');
  const { LegacyEngine } = await import('../../src/engines/legacy/index.js');
  const a = validateProfile({ name: 'a', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001'] });
  const six = validateProfile({ name: 'c', source: '[2001:db8::c]:80', destination: ['[::1]:9003'] });
  const left = (set: string, references: number): KernelView => ({
    chains: [],
    hookRules: [],
    leftSet: { set, members: ['127.100.0.10,tcp:8081'], references },
  });
  const names = (r: { name: string; status: string }[]) => r.map((x) => `${x.name}:${x.status}`);
  assert.deepEqual(names(compare(new Map(), left('iptlb-vip-inet', 0))), ['gate:iptlb-vip-inet:orphaned']);
  assert.match(
    compare(new Map(), left('iptlb-vip-inet', 0))[0]!.detail ?? '',
    /^the gate's set iptlb-vip-inet is there \(1 element\(s\)\) but no rule of iptlb's is in the nat table/,
  );
  // Another tool's rule uses it: not iptlb's leftover (and ipset would not destroy it).
  assert.deepEqual(names(compare(new Map(), left('iptlb-vip-inet', 1))), []);
  // A profile of its family in the state: missing, and the sync installing it uses the set again.
  assert.deepEqual(names(compare(new Map([['a', a]]), left('iptlb-vip-inet', 0))), ['a:missing']);
  // A profile of the other family does not explain it.
  assert.deepEqual(names(compare(new Map([['c', six]]), left('iptlb-vip-inet6', 0), 'ipv6')), ['c:missing']);
  assert.deepEqual(names(compare(new Map([['a', a]]), left('iptlb-vip-inet6', 0), 'ipv6')), [
    'gate:iptlb-vip-inet6:orphaned',
  ]);
  // sync commits a transaction of nothing for it: the commit destroys a set no gate refers to (both executors).
  const tx = syncTransaction(new Map(), left('iptlb-vip-inet', 0));
  assert.equal(planGate(tx, left('iptlb-vip-inet', 0)).needSet, false);
  // The engine asks a spawn executor for the set only while no dispatch chain exists, and names it.
  const asked: string[] = [];
  const executor = {
    kind: 'spawn',
    read: async () => ({ chains: [], hookRules: [] }),
    leftGateSet: async (f: string) => {
      asked.push(f);
      return f === 'ipv6' ? undefined : { members: [], references: 0 };
    },
  };
  const engine = new LegacyEngine(executor as never);
  assert.deepEqual((await engine.read('ipv4')).leftSet, { set: 'iptlb-vip-inet', members: [], references: 0 });
  assert.equal((await engine.read('ipv6')).leftSet, undefined);
  assert.deepEqual(asked, ['ipv4', 'ipv6']);
});

test("gate: the removal of every iptlb object of a family (migrate's second half) takes the gate's set left with no dispatch chain, not one another tool's rule uses", async () => {
  const { LegacyEngine } = await import('../../src/engines/legacy/index.js');
  // A read of each family: no rule of iptlb's; the set left in ipv4, one another tool's rule uses in ipv6.
  const sets: Record<string, { members: string[]; references: number } | undefined> = {
    ipv4: { members: ['127.100.0.10,tcp:8081'], references: 0 },
    ipv6: { members: [], references: 1 },
  };
  const executor = {
    kind: 'spawn',
    read: async () => ({ chains: [], hookRules: [] }),
    leftGateSet: async (f: string) => sets[f],
  };
  const engine = new LegacyEngine(executor as never);
  const tx = await engine.planRemoveAll('ipv4');
  assert.ok(tx, 'the set left is removed with the rest (a migrate to nft left it before)');
  // A transaction of nothing: its commit destroys the set (no gate needs it), as the last profile's delete does.
  assert.equal(planGate(tx, await engine.read('ipv4')).needSet, false);
  assert.deepEqual([tx.chains, tx.hookRules, tx.deleteChains], [[], [], []]);
  assert.equal(await engine.planRemoveAll('ipv6'), undefined, "a set another tool's rule uses is that tool's");
  sets.ipv4 = undefined;
  assert.equal(await engine.planRemoveAll('ipv4'), undefined, "nothing of iptlb's: no transaction");
});

test("gate: an element of the gate's set no rule of iptlb's is at (ipset add by another tool) is orphaned in status, and sync deletes it", async () => {
  const { compare, syncTransaction } = await import('../../src/engines/legacy/drift.js');
  const a = validateProfile({ name: 'a', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001'] });
  const b = validateProfile({ name: 'b', source: '127.100.0.11:8081', destination: ['127.0.0.1:9002'] });
  const installed = parseSave(renderRestore(planTransaction([a, b], []), empty).replace(/-I (\S+) \d+/g, '-A $1'));
  const withMembers = (members: string[], v: KernelView = installed): KernelView => ({
    ...v,
    gate: { ...v.gate!, members },
  });
  const state = new Map([['a', a]]); // b: a leftover (or another state file's profile) with its rules in the table
  const mine = ['127.100.0.10,tcp:8081', '127.100.0.11,tcp:8081'];
  const foreign = '127.100.0.99,tcp:443';
  // Every element is some iptlb rule's (b's too: its rules explain it): no element is reported.
  assert.deepEqual(
    compare(state, withMembers(mine)).map((r) => r.name),
    ['a', 'b'],
  );
  // Another tool's element: orphaned, named, and status is not in sync (exit 3).
  const reports = compare(state, withMembers([...mine, foreign]));
  const stray = reports.find((r) => r.name === `gate:${foreign}`);
  assert.ok(stray, JSON.stringify(reports));
  assert.equal(stray.status, 'orphaned');
  assert.match(stray.detail ?? '', /element 127\.100\.0\.99,tcp:443 is in the gate's set iptlb-vip-inet/);
  // sync deletes it after its commit; an element a rule selects is never among those deleted.
  const tx = syncTransaction(state, withMembers([...mine, foreign]));
  assert.deepEqual(tx.strays, [foreign]);
  const gate = planGate(tx, withMembers([...mine, foreign]));
  assert.ok(gate.del.includes(foreign), JSON.stringify(gate));
  assert.ok(!gate.del.includes('127.100.0.10,tcp:8081'));
  assert.ok(!planGate({ ...tx, strays: ['127.100.0.10,tcp:8081'] }, installed).del.includes('127.100.0.10,tcp:8081'));
  // A state-file profile whose rules are gone: reported missing; its element is its own, not a stray.
  const d = validateProfile({ name: 'd', source: '127.100.0.12:8081', destination: ['127.0.0.1:9003'] });
  const withD = new Map([...state, ['d', d]]);
  assert.deepEqual(
    compare(withD, withMembers([...mine, '127.100.0.12,tcp:8081'])).map((r) => [r.name, r.status]),
    [
      ['a', 'in-sync'],
      ['d', 'missing'],
      ['b', 'orphaned'],
    ],
  );
  assert.equal(syncTransaction(withD, withMembers([...mine, '127.100.0.12,tcp:8081'])).strays, undefined);
  // An in-memory handle (keepUnknown) leaves what is not its profiles' alone.
  assert.equal(
    syncTransaction(state, withMembers([...mine, foreign]), 'ipv4', { keepUnknown: true }).strays,
    undefined,
  );
  // Not read: nothing to compare. Another tool's rule in a dispatch chain: its element may be that tool's.
  assert.equal(syncTransaction(state, installed).strays, undefined);
  const shared = withMembers([...mine, foreign], { ...installed, gate: { ...installed.gate!, foreign: ['OUTPUT'] } });
  assert.ok(!compare(state, shared).some((r) => r.name.startsWith('gate:')));
  assert.equal(syncTransaction(state, shared).strays, undefined);
  // IPv6: named in RFC 5952 text; ipset's `::1.2.3.4` for a profile's address is that profile's.
  const v6 = validateProfile({ name: 'c', source: '[::102:304]:80', destination: ['[::1]:9003'] });
  const six = parseSave(renderRestore(planTransaction([v6], [], 'ipv6'), empty).replace(/-I (\S+) \d+/g, '-A $1'));
  const six6 = withMembers(['::1.2.3.4,tcp:80', '2001:db8::0:1,udp:53'], six);
  const r6 = compare(new Map([['c', v6]]), six6);
  assert.deepEqual(
    r6.map((r) => [r.name, r.status]),
    [
      ['c', 'in-sync'],
      ['gate:2001:db8::1,udp:53', 'orphaned'],
    ],
  );
  assert.match(r6[1].detail ?? '', /gate's set iptlb-vip-inet6/);
  assert.deepEqual(syncTransaction(new Map([['c', v6]]), six6, 'ipv6').strays, ['2001:db8::1,udp:53']);
});

test("a chain in an older iptlb's layout (the port checked in every rule, -j RETURN last) is in sync; anything else in it is not", async () => {
  const { compare, syncTransaction } = await import('../../src/engines/legacy/drift.js');
  for (const p of [
    validateProfile({ name: 'a', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] }),
    validateProfile({
      name: 'a',
      source: '127.100.0.10:8081',
      destination: ['127.0.0.1:9001', '127.0.0.1:9002*2'],
      protocol: 'udp',
      affinity: 30,
      logEnabled: true,
      scheduler: 'round-robin',
    }),
  ]) {
    const installed = renderRestore(planTransaction([p], []), empty).replace(/-I (\S+) \d+/g, '-A $1');
    const proto = p.protocol;
    // what iptlb wrote before 2026-12-05, as iptables-save prints it
    const older = installed
      .replace(/^(-A IPTLB_NAT_A -d 127\.100\.0\.10\/32 -p \w+)/gm, `$1 -m ${proto} --dport 8081`)
      .replace(/^(-A IPTLB_OUTPUT .*\n)/m, '-A IPTLB_NAT_A -j RETURN\n$1');
    assert.notEqual(older, installed);
    const chainRules = installed.match(/^-A IPTLB_NAT_A -d /gm)!.length;
    assert.ok(chainRules >= 2);
    assert.equal(older.match(/--dport 8081/g)!.length, installed.match(/--dport 8081/g)!.length + chainRules);
    const state = new Map([['a', p]]);
    assert.equal(compare(state, parseSave(older))[0].status, 'in-sync');
    assert.equal(compare(state, parseSave(installed))[0].status, 'in-sync');
    // the older layout with another port, or without its RETURN, or with a RETURN in the new one: modified
    for (const changed of [
      older.replace(/(-A IPTLB_NAT_A .*)--dport 8081/, '$1--dport 8082'),
      older.replace(/^-A IPTLB_NAT_A -j RETURN\n/m, ''),
      installed.replace(/^(-A IPTLB_OUTPUT .*\n)/m, '-A IPTLB_NAT_A -j RETURN\n$1'),
    ]) {
      assert.notEqual(changed, older);
      const [r] = compare(state, parseSave(changed));
      assert.equal(r.status, 'modified', changed);
      assert.match(r.detail ?? '', /chain IPTLB_NAT_A differs from the plan \(\d+ rules? found, \d+ planned\)/);
      // sync re-declares (flushes) the chain and writes it in today's layout
      const fix = renderRestore(syncTransaction(state, parseSave(changed)), parseSave(changed));
      assert.match(fix, /^:IPTLB_NAT_A - \[0:0\]$/m);
      assert.ok(!fix.includes('-j RETURN'));
    }
  }
});

/**
 * Profiles of every kind the legacy planner knows (IPv4 on 127/8): protocols, modes, logging,
 * masquerade, weights, round-robin, affinity.
 */
const anyProfile = ((): fc.Arbitrary<{ p: Profile; input: Record<string, unknown> }> => {
  const ep = (a: number, b: number, port: number): string => `127.${a}.${b}.1:${port}`;
  return fc
    .tuple(
      fc.stringMatching(/^[a-z][a-z0-9-]{0,24}$/),
      fc.uniqueArray(fc.tuple(fc.nat(255), fc.nat(255), fc.integer({ min: 1, max: 65535 })), {
        minLength: 2,
        maxLength: 17,
        selector: ([a, b, port]) => ep(a, b, port),
      }),
      fc.record(
        {
          protocol: fc.constantFrom('tcp', 'udp', 'sctp'),
          rulesBackend: fc.constantFrom('client', 'proxy', 'server'),
          logEnabled: fc.boolean(),
          logLevel: fc.constantFrom('0', '4', '7'),
          masquerade: fc.boolean(),
          scheduler: fc.constantFrom('random', 'round-robin'),
          affinity: fc.constantFrom(0, 30),
          weighted: fc.boolean(),
        },
        { requiredKeys: [] },
      ),
    )
    .map(([name, eps, extra]) => {
      const [src, ...dests] = eps.map(([a, b, port]) => ep(a, b, port));
      const input: Record<string, unknown> = { name, source: src, destination: dests };
      for (const k of ['protocol', 'rulesBackend', 'logEnabled', 'logLevel', 'scheduler', 'affinity'] as const)
        if (extra[k] !== undefined) input[k] = extra[k];
      if (extra.masquerade && extra.rulesBackend === 'proxy') input.masquerade = true;
      if (extra.weighted) input.weights = { [dests[0]!]: 3 };
      return { p: validateProfile(input), input };
    });
})();

test("the planner's path for plain profiles plans exactly what its general path plans", () => {
  let plain = 0;
  let general = 0;
  fc.assert(
    fc.property(anyProfile, ({ p, input }) => {
      const want = JSON.stringify(planGeneral(p));
      assert.equal(JSON.stringify(planProfile(p)), want, JSON.stringify(input));
      const isPlain =
        !p.logEnabled && !p.weights && !p.scheduler && !p.affinity && !p.masquerade && p.rulesBackend !== 'server';
      if (isPlain) {
        // The plain path itself, not only planProfile (which takes it for these).
        const vip = parseEndpoint(p.source);
        assert.ok(typeof vip !== 'string');
        assert.equal(JSON.stringify(planPlain(p, vip.port, hostCidr(vip))), want, JSON.stringify(input));
        plain++;
      } else general++;
    }),
    { numRuns: 1500 },
  );
  assert.ok(plain > 20 && general > 20, `both kinds of profile: ${plain} plain, ${general} others`);
});

test("every kind of profile: its chain in an older iptlb's layout reads back in sync, and with the port or the RETURN changed it does not", async () => {
  const { compare } = await import('../../src/engines/legacy/drift.js');
  let withLog = 0;
  fc.assert(
    fc.property(anyProfile, ({ p, input }) => {
      const plan = planProfile(p);
      const c = plan.chain.name;
      // As iptables-save prints a table that an older iptlb wrote: its chain, then today's hook rules and gate.
      const save = (rules: string[]): KernelView =>
        parseSave(
          renderRestore(planTransaction([p], []), empty)
            .replace(/-I (\S+) \d+/g, '-A $1')
            .split('\n')
            .filter((l) => !l.startsWith(`-A ${c} `))
            .map((l) => (l === 'COMMIT' ? [...rules.map((r) => `-A ${c} ${r}`), l].join('\n') : l))
            .join('\n'),
        );
      const older = earlierChainRules(p, plan.chain.rules).map(renderRule);
      const state = new Map([[p.name, p]]);
      const status = (rules: string[]): string => compare(state, save(rules))[0].status;
      assert.equal(status(plan.chain.rules.map(renderRule)), 'in-sync', JSON.stringify(input));
      assert.equal(status(older), 'in-sync', JSON.stringify(input));
      const vip = parseEndpoint(p.source);
      assert.ok(typeof vip !== 'string');
      const port = String(vip.port);
      const other = String((Number(port) % 65535) + 1);
      const i = older.findIndex((r) => r.includes(`--dport ${port} `));
      assert.ok(i >= 0);
      for (const changed of [
        older.slice(0, -1), // no RETURN
        older.map((r, k) => (k === i ? r.replace(`--dport ${port} `, `--dport ${other} `) : r)), // another port
        [...plan.chain.rules.map(renderRule), '-j RETURN'], // today's layout with a RETURN
      ])
        assert.equal(status(changed), 'modified', `${JSON.stringify(input)}\n${changed.join('\n')}`);
      if (p.logEnabled) withLog++;
    }),
    { numRuns: 400 },
  );
  assert.ok(withLog > 20, `profiles with a LOG rule in their chain: ${withLog}`);
});

test('a bad port says what is wrong with it: not a number, a leading zero, none, or out of range', () => {
  const cases: [string, string][] = [
    ['127.1.1.1:8a', 'has a port "8a" that is not a number (1-65535)'],
    ['127.1.1.1:8 0', 'has a port "8 0" that is not a number (1-65535)'],
    ['127.1.1.1:80 ', 'has white space before or after the address'],
    ['[::1]:x', 'has a port "x" that is not a number (1-65535)'],
    ['127.1.1.1:080', 'has a port "080" with a leading zero'],
    ['127.1.1.1:', 'has no port after the colon'],
    ['127.1.1.1:0', 'has a port outside 1-65535'],
    ['[2001:db8::1]:65536', 'has a port outside 1-65535'],
  ];
  for (const [text, why] of cases) assert.equal(parseEndpoint(text), why, text);
  assert.deepEqual(parseEndpoint('127.1.1.1:65535'), { ip: '127.1.1.1', port: 65535, family: 'ipv4' });
});

test("spawn: another tool's rule in a dispatch chain keeps the chain, its gate and the set, as the native executor does", () => {
  const save = [
    '*nat',
    ':OUTPUT ACCEPT [0:0]',
    ':IPTLB_NAT_WEB - [0:0]',
    ':IPTLB_OUTPUT - [0:0]',
    '-A OUTPUT -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT',
    '-A IPTLB_NAT_WEB -d 127.100.0.1/32 -p tcp -j DNAT --to-destination 127.0.0.1:9001',
    '-A IPTLB_OUTPUT -d 127.100.0.1/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 80 -j IPTLB_NAT_WEB',
    '-A IPTLB_OUTPUT -m comment --comment admin -j RETURN',
    'COMMIT',
    '',
  ].join('\n');
  const view = parseSave(save);
  assert.deepEqual(view.gate, { gates: ['OUTPUT'], dispatch: ['OUTPUT'], foreign: ['OUTPUT'] });
  const tx = planTransaction([], ['web']);
  const text = renderRestore(tx, view);
  assert.match(text, /^-D IPTLB_OUTPUT .*iptlb:web/m);
  assert.doesNotMatch(text, /^-X IPTLB_OUTPUT$/m);
  assert.doesNotMatch(text, /^-D OUTPUT /m);
  assert.equal(planGate(tx, view).needSet, true);
  // Without the foreign rule the chain and its gate go with iptlb's last rule.
  const alone = parseSave(save.replace('-A IPTLB_OUTPUT -m comment --comment admin -j RETURN\n', ''));
  assert.equal(alone.gate?.foreign, undefined);
  assert.match(renderRestore(tx, alone), /^-X IPTLB_OUTPUT$/m);
});

test("spawn: the original iptlb's jumps (no comment) to iptlb's chains are read, and deleted with the chain they jump to", () => {
  const save = [
    '*nat',
    ':OUTPUT ACCEPT [0:0]',
    ':IPTLB_NAT_TEST - [0:0]',
    ':IPTLB_NAT_WEB - [0:0]',
    ':OTHER - [0:0]',
    '[1:60] -A OUTPUT -d 127.100.0.10/32 -p tcp -m tcp --dport 8081 -j IPTLB_NAT_TEST',
    '[0:0] -A OUTPUT -d 127.100.0.10/32 -p tcp -m tcp --dport 8082 -j IPTLB_NAT_WEB',
    '[0:0] -A OUTPUT -d 127.100.0.11/32 -j OTHER',
    // Another tool's jump into it (its own comment): that tool's, kept.
    '[0:0] -A PREROUTING -m comment --comment foreign-ref -j IPTLB_NAT_TEST',
    '[0:0] -A IPTLB_NAT_TEST -p tcp -d 127.100.0.10/32 --dport 8081 -j DNAT --to-destination 127.0.0.1:9001',
    'COMMIT',
  ].join('\n');
  const view = parseSave(save);
  assert.deepEqual(
    view.bareJumps?.map((b) => [b.chain, b.target]),
    [
      ['OUTPUT', 'IPTLB_NAT_TEST'],
      ['OUTPUT', 'IPTLB_NAT_WEB'],
    ],
  );
  const text = renderRestore(
    { family: 'ipv4', table: 'nat', owners: ['test'], deleteChains: ['IPTLB_NAT_TEST'], chains: [], hookRules: [] },
    view,
  );
  assert.match(text, /^-D OUTPUT -d 127\.100\.0\.10\/32 -p tcp -m tcp --dport 8081 -j IPTLB_NAT_TEST$/m);
  assert.doesNotMatch(text, /IPTLB_NAT_WEB|OTHER|foreign-ref/, 'only the bare jump to the chain this change deletes');
  assert.ok(text.indexOf('-D OUTPUT') < text.indexOf('-X IPTLB_NAT_TEST'), 'the jump goes before its chain');
});

test("native: plan reads the original iptlb's jumps' text (iptables-legacy-save, a process) only when the change touches a chain one jumps to", async () => {
  // A stand-in iptables-legacy-save first on PATH: it counts its calls and prints the original's jump.
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-plan-save-'));
  const calls = path.join(dir, 'calls');
  writeFileSync(
    path.join(dir, 'iptables-legacy-save'),
    `#!/bin/sh\necho "$@" >> ${calls}\nprintf '%s\\n' '*nat' ':OUTPUT ACCEPT [0:0]' ':IPTLB_NAT_WEB - [0:0]' ` +
      `'[0:0] -A OUTPUT -d 127.100.0.10/32 -p tcp -m tcp --dport 8081 -j IPTLB_NAT_WEB' COMMIT\n`,
    { mode: 0o755 },
  );
  const savedPath = process.env.PATH;
  process.env.PATH = `${dir}:${savedPath ?? ''}`;
  try {
    const called = (): number => (existsSync(calls) ? readFileSync(calls, 'utf8').split('\n').length - 1 : 0);
    const table = (bare: boolean): KernelView => ({
      chains: [{ name: 'IPTLB_NAT_WEB', rules: [] }],
      hookRules: [],
      ...(bare ? { bareJumps: [{ chain: 'OUTPUT', target: 'IPTLB_NAT_WEB' }] } : {}),
    });
    let view = table(false);
    const ex = new NativeExecutor({ read: async () => view } as unknown as NativeAddon);
    const reset = planTransaction([web], ['web'], 'ipv4');
    const other = planTransaction([{ ...web, name: 'api', source: '127.100.0.11:8081' }], ['api'], 'ipv4');
    // No jump of the original's in the table: no process.
    assert.doesNotMatch(await ex.render(reset), /-D OUTPUT/);
    assert.equal(called(), 0);
    view = table(true);
    // One, to a chain this change does not touch: still none.
    assert.doesNotMatch(await ex.render(other), /IPTLB_NAT_WEB/);
    assert.equal(called(), 0);
    // One to the chain the reset refills: its text, read once, in a -D before the chain is filled.
    const text = await ex.render(reset);
    assert.equal(called(), 1);
    assert.match(text, /^-D OUTPUT -d 127\.100\.0\.10\/32 -p tcp -m tcp --dport 8081 -j IPTLB_NAT_WEB$/m);
    assert.ok(text.indexOf('-D OUTPUT') < text.indexOf('-A IPTLB_NAT_WEB'));
    // The tool failing: a comment names the jump and says its text was not read.
    writeFileSync(path.join(dir, 'iptables-legacy-save'), '#!/bin/sh\nexit 3\n', { mode: 0o755 });
    const failed = await ex.render(reset);
    assert.match(
      failed,
      /^# the original iptlb's jumps \(no comment\) below: their text not read \(iptables-legacy-save failed\)$/m,
    );
    assert.match(failed, /^# and the original iptlb's jump in OUTPUT to IPTLB_NAT_WEB$/m);
    assert.doesNotMatch(failed, /^-D OUTPUT/m);
  } finally {
    process.env.PATH = savedPath;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an exclusive transaction refuses a profile it creates whose chain or name the table holds, unless held exactly as planned (the spawn executor, as the native one)', () => {
  const heldAs = (p: Profile): KernelView => {
    const plan = planProfile(p);
    return {
      chains: [{ name: plan.chain.name, rules: plan.chain.rules.map((rule) => ({ rule, packets: 0n, bytes: 0n })) }],
      hookRules: plan.hookRules.map((h, i) => ({
        chain: h.chain,
        owner: h.owner,
        position: i + 1,
        rule: h.rule,
        packets: 0n,
        bytes: 0n,
      })),
      gate: { gates: ['OUTPUT'], dispatch: ['OUTPUT'] },
    };
  };
  const creating = (p: Profile) => ({
    ...planTransaction([p], [], p.source.startsWith('[') ? 'ipv6' : 'ipv4'),
    exclusive: true,
    created: [{ name: p.name, chain: planProfile(p).chain.name }],
  });
  const theirs = validateProfile({ ...web, source: '127.100.0.20:80', destination: ['127.0.0.1:9009'] });
  const refused = (re: RegExp) => (e: IptlbError) =>
    e.code === 'ECONFLICT' && e.field === 'name' && re.test(e.message) && !e.message.includes('\n');
  assert.throws(
    () => renderRestore(creating(web), heldAs(theirs)),
    refused(
      /^name: profile web: the nat table already holds a profile of that name \(chain IPTLB_NAT_WEB, rule iptlb:web in IPTLB_OUTPUT\), which this state file does not hold: delete it through the state file that holds it, or, if an interrupted change left it, `iptlb status` shows it orphaned and `iptlb sync` removes it$/,
    ),
  );
  // The chain alone (a profile whose jumps are gone), or the rules alone.
  const chainOnly = { ...heldAs(theirs), hookRules: [] };
  assert.throws(() => renderRestore(creating(web), chainOnly), refused(/\(chain IPTLB_NAT_WEB\)/));
  const rulesOnly = { ...heldAs(theirs), chains: [] };
  assert.throws(() => renderRestore(creating(web), rulesOnly), refused(/\(rule iptlb:web in IPTLB_OUTPUT\)/));
  // Exactly as planned (an interrupted create): rendered, as a replacement of itself.
  assert.match(
    renderRestore(creating(web), heldAs(web)),
    /-D IPTLB_OUTPUT .*iptlb:web[\s\S]*-I IPTLB_OUTPUT 1 .*iptlb:web/,
  );
  // As planned but its jump in OUTPUT itself (the layout before the gate): not as planned.
  const direct = heldAs(web);
  direct.hookRules = direct.hookRules.map((h) => ({ ...h, direct: true }));
  assert.throws(() => renderRestore(creating(web), direct), refused(/rule iptlb:web in OUTPUT\)/));
  // Not exclusive (an in-memory instance): no question asked.
  assert.match(renderRestore(planTransaction([web], []), heldAs(theirs)), /iptlb:web/);
  // Not created (the state file holds it): its name's rules at an address neither planned nor the
  // state file's (a rule of it in `was`) are another profile's.
  assert.throws(
    () => renderRestore({ ...planTransaction([web], []), exclusive: true }, heldAs(theirs)),
    refused(
      /^name: profile web: the nat table holds a profile of that name at another address than this state file's \(rule iptlb:web in IPTLB_OUTPUT\): another state file's profile/,
    ),
  );
  const was = [addressElement(theirs)];
  assert.deepEqual(was, [elementOf(planProfile(theirs).hookRules[0]!.rule)], 'the element of its dispatch rule');
  assert.match(renderRestore({ ...planTransaction([web], []), exclusive: true, was }, heldAs(theirs)), /iptlb:web/);
  assert.match(
    renderRestore({ ...planTransaction([], ['web']), exclusive: true, was }, heldAs(theirs)),
    /-D .*iptlb:web/,
  );
  assert.throws(
    () => renderRestore({ ...planTransaction([], ['web']), exclusive: true }, heldAs(theirs)),
    refused(/at another address than this state file's/),
  );
  // A chain this state keeps through the change (a rename onto a name that shares it): only the name's rules count.
  const renamed = validateProfile({ ...web, name: 'WEB' });
  const rename = { ...planTransaction([renamed], ['web']), exclusive: true, created: [{ name: 'WEB' }] };
  assert.match(renderRestore(rename, heldAs(web)), /-I IPTLB_OUTPUT 1 .*iptlb:WEB/);
  // IPv6: the ip6tables table is named.
  const six = validateProfile({ name: 'six', source: '[2001:db8::1]:80', destination: ['[2001:db8::a]:9001'] });
  const sixTheirs = validateProfile({ ...six, destination: ['[2001:db8::a]:9009'] });
  assert.throws(
    () => renderRestore(creating(six), heldAs(sixTheirs)),
    refused(/^name: profile six: the ip6tables nat table already holds a profile of that name \(chain IPTLB_NAT_SIX, /),
  );
});

test('an exclusive transaction (a state-file change) refuses an address a dispatch rule of another profile selects; the owners may', () => {
  const other = planProfile(validateProfile({ ...web, name: 'other' }));
  const view: KernelView = {
    chains: [{ name: 'IPTLB_NAT_OTHER', rules: [] }],
    hookRules: [
      { chain: 'OUTPUT', owner: 'other', position: 1, rule: other.hookRules[0].rule, packets: 0n, bytes: 0n },
    ],
    gate: { gates: ['OUTPUT'], dispatch: ['OUTPUT'] },
  };
  const tx = { ...planTransaction([web], []), exclusive: true };
  assert.throws(
    () => renderRestore(tx, view),
    (e: IptlbError) =>
      e.code === 'ECONFLICT' &&
      e.field === 'source' &&
      /^source: profile web: its address is taken in the kernel by profile other \(rule iptlb:other in IPTLB_OUTPUT\), which is not part of this change/.test(
        e.message,
      ),
  );
  // Not exclusive (an in-memory instance), or the other profile among the owners (a move in one change): rendered.
  assert.match(renderRestore(planTransaction([web], []), view), /-I IPTLB_OUTPUT 1 .*iptlb:web/);
  assert.match(
    renderRestore({ ...planTransaction([web], ['other']), exclusive: true }, view),
    /-D IPTLB_OUTPUT .*iptlb:other[\s\S]*-I IPTLB_OUTPUT 1 .*iptlb:web/,
  );
  // Another address: no conflict.
  const elsewhere = validateProfile({ ...web, source: '127.100.0.11:8081' });
  assert.match(renderRestore({ ...planTransaction([elsewhere], []), exclusive: true }, view), /iptlb:web/);
});

test("addressElement: the gate element of a profile's address, as elementOf gives it for its dispatch rule (IPv4 cut from the text, IPv6 canonical)", () => {
  for (const [source, protocol] of [
    ['127.100.0.1:80', 'tcp'],
    ['10.0.0.255:65535', 'udp'],
    ['[2001:db8::1]:443', 'tcp'],
    ['[2001:DB8:0:0:0:0:0:a]:53', 'udp'],
    ['[::1]:8080', 'sctp'],
  ] as const) {
    const p = validateProfile({
      name: 'x',
      source,
      protocol,
      destination: [source.startsWith('[') ? '[::1]:9' : '127.0.0.1:9'],
    });
    assert.equal(addressElement(p), elementOf(planProfile(p).hookRules[0]!.rule), source);
  }
});
