import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planProfile, planTransaction, cascadeProbability } from '../../src/plan.js';
import { renderRestore, renderRule, parseSave, parseRule, splitWords, canonicalProbability } from '../../src/restore.js';
import { validateProfile } from '../../src/profile.js';
import type { KernelView } from '../../src/types.js';

const web = validateProfile({ name: 'web', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'] });
const empty: KernelView = { chains: [], hookRules: [] };

test('probabilities: 1/(n-i) with 10 decimals, distinct even for hundreds of destinations', () => {
  assert.equal(cascadeProbability(0, 3), '0.3333333333');
  assert.equal(cascadeProbability(1, 3), '0.5000000000');
  const n = 1000;
  const ps = Array.from({ length: n - 1 }, (_, i) => cascadeProbability(i, n));
  assert.equal(new Set(ps).size, n - 1);
  assert.equal(new Set(ps.map(canonicalProbability)).size, n - 1);
});

test('client profile: chain with DNAT cascade and RETURN; jump at the top of OUTPUT, comment-owned', () => {
  const text = renderRestore(planTransaction([web], []), empty);
  assert.equal(
    text,
    [
      '*nat',
      ':IPTLB_NAT_WEB - [0:0]',
      '-A IPTLB_NAT_WEB -d 127.100.0.10/32 -p tcp -m tcp --dport 8081 -m statistic --mode random --probability 0.3333333333 -j DNAT --to-destination 127.0.0.1:9001',
      '-A IPTLB_NAT_WEB -d 127.100.0.10/32 -p tcp -m tcp --dport 8081 -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 127.0.0.1:9002',
      '-A IPTLB_NAT_WEB -d 127.100.0.10/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 127.0.0.1:9003',
      '-A IPTLB_NAT_WEB -j RETURN',
      '-I OUTPUT 1 -d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB',
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
  assert.equal(renderRule(plan.hookRules[0].rule), '-d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j LOG --log-prefix "IPTLB:VIP:WEB:" --log-level 6');
  assert.equal(plan.hookRules[1].rule.target.name, 'jump');
  const text = renderRestore(planTransaction([p], []), empty);
  assert.match(text, /-I OUTPUT 1 .* -j LOG .*\n-I OUTPUT 2 .* -j IPTLB_NAT_WEB/);
  // every log prefix fits the kernel's 29 characters, even for 18-character names
  const long = planProfile(validateProfile({ ...p, name: 'a'.repeat(18) }));
  for (const r of [long.chain.rules[0], long.hookRules[0].rule]) if (r.target.name === 'LOG') assert.ok(r.target.prefix.length <= 29);
});

test('modes: proxy → PREROUTING; server → PREROUTING with addrtype LOCAL (never INPUT); masquerade in POSTROUTING', () => {
  const proxy = planProfile(validateProfile({ ...web, rulesBackend: 'proxy', masquerade: true }));
  assert.deepEqual(proxy.hookRules.map((h) => h.chain), ['PREROUTING', 'POSTROUTING']);
  assert.equal(renderRule(proxy.hookRules[1].rule), '-p tcp -m comment --comment "iptlb:web" -m conntrack --ctstate DNAT --ctorigdst 127.100.0.10/32 --ctorigdstport 8081 -j MASQUERADE');
  const server = planProfile(validateProfile({ ...web, rulesBackend: 'server' }));
  assert.equal(server.hookRules[0].chain, 'PREROUTING');
  assert.match(renderRule(server.hookRules[0].rule), /-m addrtype --dst-type LOCAL/);
});

test('udp and sctp profiles match their own protocol everywhere (the original made udp jump into tcp rules)', () => {
  for (const proto of ['udp', 'sctp'] as const) {
    const plan = planProfile(validateProfile({ ...web, protocol: proto }));
    for (const r of [...plan.chain.rules, ...plan.hookRules.map((h) => h.rule)]) {
      if (r.target.name === 'RETURN') continue;
      assert.equal(r.proto, proto);
      assert.ok(r.matches.some((m) => m.name === proto));
      assert.ok(!r.matches.some((m) => m.name === 'tcp'));
    }
  }
});

test('reset: old hook rules deleted by their exact text, chain re-declared (flushed) in the same commit', () => {
  const old = planProfile(web);
  const view: KernelView = {
    chains: [{ name: 'IPTLB_NAT_WEB', rules: [] }, { name: 'IPTLB_NAT_OTHER', rules: [] }],
    hookRules: [
      { chain: 'OUTPUT', owner: 'web', position: 1, rule: old.hookRules[0].rule, packets: 0n, bytes: 0n },
      { chain: 'OUTPUT', owner: 'other', position: 2, rule: old.hookRules[0].rule, packets: 0n, bytes: 0n, raw: 'RAW' },
    ],
  };
  const next = validateProfile({ ...web, destination: ['127.0.0.1:9004'] });
  const text = renderRestore(planTransaction([next], []), view);
  const lines = text.split('\n');
  assert.equal(lines[1], ':IPTLB_NAT_WEB - [0:0]');
  assert.equal(lines[2], '-D OUTPUT -d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB');
  assert.ok(!text.includes('RAW'), "another profile's rule is not touched");
  assert.ok(!text.includes('-X'), 'a replaced chain is not deleted');
});

test('delete: hook rules removed, chain flushed and deleted; absent chains are skipped', () => {
  const view: KernelView = {
    chains: [{ name: 'IPTLB_NAT_WEB', rules: [] }],
    hookRules: [{ chain: 'OUTPUT', owner: 'web', position: 1, rule: planProfile(web).hookRules[0].rule, packets: 0n, bytes: 0n, raw: '-d 127.100.0.10/32 -j X' }],
  };
  const text = renderRestore(planTransaction([], ['web', 'gone']), view);
  assert.equal(text, ['*nat', ':IPTLB_NAT_WEB - [0:0]', '-D OUTPUT -d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB', '-X IPTLB_NAT_WEB', 'COMMIT', ''].join('\n'));
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
  assert.deepEqual(view.chains.map((c) => c.name), ['IPTLB_NAT_WEB']);
  assert.equal(view.hookRules.length, 3);
  assert.deepEqual(view.hookRules.map((h) => [h.chain, h.position, h.packets]), [['PREROUTING', 2, 2n], ['PREROUTING', 3, 3n], ['POSTROUTING', 1, 0n]]);
  assert.deepEqual(view.hookRules[0].rule, plan.hookRules[0].rule);
  assert.deepEqual(view.hookRules[1].rule, plan.hookRules[1].rule);
  assert.deepEqual(view.hookRules[2].rule, plan.hookRules[2].rule);
  assert.equal(view.chains[0].rules[1].packets, 7n);
  assert.equal(view.chains[0].rules[1].rule.matches[1].name, 'statistic');
});

test('splitWords honours quotes and escapes; parseRule refuses what iptlb does not write', () => {
  assert.deepEqual(splitWords('-m comment --comment "a \\"b\\" c" -j X'), ['-m', 'comment', '--comment', 'a "b" c', '-j', 'X']);
  assert.equal(parseRule(splitWords('-s 1.2.3.4/32 -j RETURN')), null);
  assert.equal(parseRule(splitWords('-j ACCEPT')), null);
});
