/**
 * IPv6 in the legacy (x_tables) engine, without a kernel: plans of IPv6 profiles, their
 * ip6tables-restore text, parsing ip6tables-save output back, and drift against an IPv6 view.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planProfile, planTransaction, recentName } from '../../src/engines/legacy/plan.js';
import { familyOfRule, parseSave, renderRestore, renderRule } from '../../src/engines/legacy/restore.js';
import { compare, syncTransaction } from '../../src/engines/legacy/drift.js';
import { validateProfile } from '../../src/model/profile.js';
import type { KernelView, Profile, Transaction } from '../../src/model/types.js';

const empty: KernelView = { chains: [], hookRules: [] };
const MASK6 = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';

const web6 = validateProfile({
  name: 'web6',
  source: '[2001:DB8:0::10]:8081',
  destination: ['[2001:db8::1:0:0:1]:9001', '[2001:db8:0:0:1::2]:9002'],
});
const proxy6 = validateProfile({
  name: 'px',
  source: '[2001:db8:ffff::1]:443',
  destination: ['[2001:db8::a]:8443', '[2001:db8::b]:8443'],
  protocol: 'udp',
  rulesBackend: 'proxy',
  masquerade: true,
  logEnabled: true,
  affinity: 30,
});
const server6 = validateProfile({
  name: 'srv',
  source: '[2001:db8::20]:80',
  destination: ['[2001:db8::2]:8080'],
  protocol: 'sctp',
  rulesBackend: 'server',
  scheduler: 'round-robin',
});
const web4 = validateProfile({ name: 'web4', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001'] });

test('an IPv6 client profile: the ipv4 plan with v6/128, [v6]:port and ip6tables restore text', () => {
  const tx = planTransaction([web6], [], 'ipv6');
  assert.equal(tx.family, 'ipv6');
  assert.equal(
    renderRestore(tx, empty),
    [
      '*nat',
      ':IPTLB_OUTPUT - [0:0]',
      ':IPTLB_NAT_WEB6 - [0:0]',
      '-A IPTLB_NAT_WEB6 -d 2001:db8::10/128 -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination [2001:db8::1:0:0:1]:9001',
      '-A IPTLB_NAT_WEB6 -d 2001:db8::10/128 -p tcp -j DNAT --to-destination [2001:db8::1:0:0:2]:9002',
      '-I IPTLB_OUTPUT 1 -d 2001:db8::10/128 -p tcp -m comment --comment "iptlb:web6" -m tcp --dport 8081 -j IPTLB_NAT_WEB6',
      '-I OUTPUT 1 -m set --match-set iptlb-vip-inet6 dst,dst -j IPTLB_OUTPUT',
      'COMMIT',
      '',
    ].join('\n'),
  );
});

test('proxy with masquerade, logging and affinity: conntrack on v6/128, recent with the 128-bit mask', () => {
  const plan = planProfile(proxy6);
  const text = plan.chain.rules.map(renderRule).concat(plan.hookRules.map((h) => `${h.chain} ${renderRule(h.rule)}`));
  assert.deepEqual(text, [
    '-j LOG --log-prefix "IPTLB:PX:" --log-level 4',
    `-d 2001:db8:ffff::1/128 -p udp -m recent --update --seconds 30 --reap --name IPTLB_PX_2001_db8__a_8443 --mask ${MASK6} --rsource -j DNAT --to-destination [2001:db8::a]:8443`,
    `-d 2001:db8:ffff::1/128 -p udp -m recent --update --seconds 30 --reap --name IPTLB_PX_2001_db8__b_8443 --mask ${MASK6} --rsource -j DNAT --to-destination [2001:db8::b]:8443`,
    `-d 2001:db8:ffff::1/128 -p udp -m statistic --mode random --probability 0.5000000000 -m recent --set --name IPTLB_PX_2001_db8__a_8443 --mask ${MASK6} --rsource -j DNAT --to-destination [2001:db8::a]:8443`,
    `-d 2001:db8:ffff::1/128 -p udp -m recent --set --name IPTLB_PX_2001_db8__b_8443 --mask ${MASK6} --rsource -j DNAT --to-destination [2001:db8::b]:8443`,
    'PREROUTING -d 2001:db8:ffff::1/128 -p udp -m comment --comment "iptlb:px" -m udp --dport 443 -j LOG --log-prefix "IPTLB:VIP:PX:" --log-level 4',
    'PREROUTING -d 2001:db8:ffff::1/128 -p udp -m comment --comment "iptlb:px" -m udp --dport 443 -j IPTLB_NAT_PX',
    'POSTROUTING -p udp -m comment --comment "iptlb:px" -m conntrack --ctstate DNAT --ctorigdst 2001:db8:ffff::1/128 --ctorigdstport 443 -j MASQUERADE',
  ]);
  // A rule without addresses (LOG, RETURN) renders the same in both families.
  assert.equal(familyOfRule(plan.chain.rules[0]), 'ipv4');
  assert.equal(familyOfRule(plan.chain.rules[1]), 'ipv6');
});

test('recent list names of IPv6 destinations: no brackets or colons, one per destination, within xt_recent limits', () => {
  const names = new Set<string>();
  const dests = [
    '[2001:db8::1]:80',
    '[2001:db8::1:80]:443',
    '[2001:db8::1]:8',
    '[2001:db8:0:1::]:80',
    '[2001:db8:1::]:80',
    '[::1]:80',
    '[1::]:80',
    '[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535',
  ];
  for (const d of dests) {
    const n = recentName('abcdefghijklmnopqr', d);
    assert.match(n, /^IPTLB_ABCDEFGHIJKLMNOPQR_[0-9a-f_]+$/, n);
    assert.ok(n.length <= 199 && n.length <= 70, `${n} is ${n.length} characters`);
    names.add(n);
  }
  assert.equal(names.size, dests.length, 'every destination has its own list');
  // IPv4 names are as before.
  assert.equal(recentName('web', '127.0.0.1:9001'), 'IPTLB_WEB_127_0_0_1_9001');
});

test("planTransaction: the family is the table's; a profile of the other family is a planner error", () => {
  assert.equal(planTransaction([web4], []).family, 'ipv4');
  assert.equal(planTransaction([], ['gone'], 'ipv6').family, 'ipv6');
  assert.throws(() => planTransaction([web6], []), /web6 is ipv6, not ipv4/);
  assert.throws(() => planTransaction([web4], [], 'ipv6'), /web4 is ipv4, not ipv6/);
});

/**
 * What ip6tables-legacy-save prints for `tx` on an empty table (as 1.8.9 does: masks, probabilities, glibc's address
 * text; OUTPUT/PREROUTING rules behind the gate).
 */
function saveText(tx: Transaction): string {
  const out = [
    '*nat',
    ':PREROUTING ACCEPT [0:0]',
    ':INPUT ACCEPT [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    ':POSTROUTING ACCEPT [0:0]',
    ':IPTLB_OUTPUT - [0:0]',
    ':IPTLB_PREROUTING - [0:0]',
  ];
  for (const c of tx.chains) out.push(`:${c.name} - [0:0]`);
  out.push(
    '[9:540] -A OUTPUT -m set --match-set iptlb-vip-inet6 dst,dst -j IPTLB_OUTPUT',
    '[9:540] -A PREROUTING -m set --match-set iptlb-vip-inet6 dst,dst -j IPTLB_PREROUTING',
  );
  const asSaved = (r: string): string =>
    r
      .replace(/--probability (\S+)/g, (_m, p: string) => `--probability ${Number(p).toFixed(11)}`)
      .replace(/ --log-level 4/g, '')
      .replace(/--ctorigdst (\S+)\/128/g, '--ctorigdst $1');
  for (const h of tx.hookRules)
    out.push(`[3:180] -A ${h.chain === 'POSTROUTING' ? h.chain : `IPTLB_${h.chain}`} ${asSaved(renderRule(h.rule))}`);
  for (const c of tx.chains) for (const r of c.rules) out.push(`[1:60] -A ${c.name} ${asSaved(renderRule(r))}`);
  out.push('COMMIT', '');
  return out.join('\n');
}

test('parseSave of ip6tables-save output: the planned rules back, canonical addresses; drift in sync; counters kept', () => {
  const profiles = [web6, proxy6, server6];
  const tx = planTransaction(profiles, [], 'ipv6');
  const view = parseSave(saveText(tx));
  assert.deepEqual(
    view.chains.map((c) => c.name),
    tx.chains.map((c) => c.name),
  );
  assert.equal(view.hookRules.length, tx.hookRules.length);
  for (const h of view.hookRules) assert.notEqual(h.rule.target.name, 'unknown', h.raw);
  const state = new Map<string, Profile>(profiles.map((p) => [p.name, p]));
  const reports = compare(state, view, 'ipv6');
  assert.deepEqual(
    reports.map((r) => [r.name, r.status]),
    [
      ['px', 'in-sync'],
      ['srv', 'in-sync'],
      ['web6', 'in-sync'],
    ],
  );
  assert.deepEqual(
    reports.find((r) => r.name === 'px')!.destinations.map((d) => [d.destination, d.packets]),
    [
      ['[2001:db8::a]:8443', 2],
      ['[2001:db8::b]:8443', 2],
    ],
  );
  // glibc prints some addresses with a dotted tail, and upper-case text may come from elsewhere: canonical either way.
  const odd = parseSave(
    '*nat\n:IPTLB_NAT_X - [0:0]\n-A IPTLB_NAT_X -d 2001:DB8::1/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination [::1.2.3.4]:80\nCOMMIT\n',
  );
  assert.deepEqual(odd.chains[0].rules[0].rule, {
    dst: '2001:db8::1/128',
    proto: 'tcp',
    matches: [{ name: 'tcp', dport: 80 }],
    target: { name: 'DNAT', toDestination: '[::102:304]:80' },
  });
});

test("drift on an IPv6 view: a changed rule is modified; the other family's profiles are left out, their rules here are orphans", () => {
  const tx = planTransaction([web6], [], 'ipv6');
  const state = new Map<string, Profile>([
    [web6.name, web6],
    [web4.name, web4],
  ]);
  const view = parseSave(
    saveText(tx).replace('--to-destination [2001:db8::1:0:0:2]:9002', '--to-destination [2001:db8::1:0:0:3]:9002'),
  );
  assert.deepEqual(
    compare(state, view, 'ipv6').map((r) => [r.name, r.status]),
    [['web6', 'modified']],
  );
  // web4's rules in the ip6tables table (it was IPv6 once): an orphan there.
  const stale = parseSave(
    saveText(
      planTransaction(
        [validateProfile({ name: 'web4', source: '[2001:db8::4]:80', destination: ['[2001:db8::5]:80'] })],
        [],
        'ipv6',
      ),
    ),
  );
  assert.deepEqual(
    compare(state, stale, 'ipv6').map((r) => [r.name, r.status]),
    [
      ['web6', 'missing'],
      ['web4', 'orphaned'],
    ],
  );
  const sync = syncTransaction(state, stale, 'ipv6');
  assert.equal(sync.family, 'ipv6');
  assert.deepEqual(sync.owners.sort(), ['web4', 'web6']);
  assert.deepEqual(
    sync.chains.map((c) => c.name),
    ['IPTLB_NAT_WEB6'],
  );
  assert.deepEqual(sync.deleteChains, ['IPTLB_NAT_WEB4']);
  // The IPv4 sync of the same state plans web4 only, in the iptables table.
  const sync4 = syncTransaction(state, empty);
  assert.equal(sync4.family, 'ipv4');
  assert.deepEqual(
    sync4.chains.map((c) => c.name),
    ['IPTLB_NAT_WEB4'],
  );
  // Without a family, compare takes the state as given (already one family's).
  assert.deepEqual(
    compare(new Map([[web6.name, web6]]), parseSave(saveText(tx))).map((r) => r.status),
    ['in-sync'],
  );
});

test("renderRestore of an IPv6 update deletes the owner's hook rules by their IPv6 text", () => {
  const view = parseSave(saveText(planTransaction([proxy6], [], 'ipv6')));
  const text = renderRestore(planTransaction([], ['px'], 'ipv6'), view);
  assert.equal(
    text,
    [
      '*nat',
      ':IPTLB_NAT_PX - [0:0]',
      '-D IPTLB_PREROUTING -d 2001:db8:ffff::1/128 -p udp -m comment --comment "iptlb:px" -m udp --dport 443 -j LOG --log-prefix "IPTLB:VIP:PX:" --log-level 4',
      '-D IPTLB_PREROUTING -d 2001:db8:ffff::1/128 -p udp -m comment --comment "iptlb:px" -m udp --dport 443 -j IPTLB_NAT_PX',
      '-D POSTROUTING -p udp -m comment --comment "iptlb:px" -m conntrack --ctstate DNAT --ctorigdst 2001:db8:ffff::1/128 --ctorigdstport 443 -j MASQUERADE',
      '-D OUTPUT -m set --match-set iptlb-vip-inet6 dst,dst -j IPTLB_OUTPUT',
      '-X IPTLB_OUTPUT',
      '-D PREROUTING -m set --match-set iptlb-vip-inet6 dst,dst -j IPTLB_PREROUTING',
      '-X IPTLB_PREROUTING',
      '-X IPTLB_NAT_PX',
      'COMMIT',
      '',
    ].join('\n'),
  );
});
