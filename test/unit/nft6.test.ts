/** The nft engine's pure layers for table ip6 iptlb: planner, rendering, reading back (nft -j) and drift. No root. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  planNftChange,
  planNftRebuild,
  planNftRemoveAll,
  planNftProfile,
  dispatchSetUsage,
  nftFamilyOf,
} from '../../src/engines/nft/plan.js';
import {
  AFFINITY_SET_PATTERN,
  affinitySetName,
  affinitySetTimeout,
  type NftOp,
  type NftTransaction,
} from '../../src/engines/nft/ops.js';
import { renderNft, renderNftRule } from '../../src/engines/nft/render.js';
import type { NftRule } from '../../src/engines/nft/ops.js';
import { compareNft, decodeRuleJson, parseNftJson, strayRoundRobin } from '../../src/engines/nft/view.js';
import { validateProfile } from '../../src/model/profile.js';
import type { Profile, ProfileInput } from '../../src/model/types.js';

const m = (...ps: Profile[]): Map<string, Profile> => new Map(ps.map((p) => [p.name, p]));
const kinds = (ops: NftOp[]): string[] => ops.map((o) => o.op);

const web6 = validateProfile({
  name: 'web6',
  source: '[2001:db8::10]:80',
  destination: ['[2001:db8::1]:9001', '[2001:db8::2]:9002'],
});
const dns6 = validateProfile({
  name: 'dns6',
  source: '[2001:db8::11]:53',
  protocol: 'udp',
  rulesBackend: 'server',
  logEnabled: true,
  destination: ['[2001:db8::1]:53', '[2001:db8::2]:53'],
});
const px6 = validateProfile({
  name: 'px6',
  source: '[2001:db8::12]:80',
  rulesBackend: 'proxy',
  masquerade: true,
  destination: ['[2001:db8::1]:9001'],
});
const rr6 = validateProfile({
  name: 'rr6',
  source: '[2001:db8::13]:80',
  scheduler: 'round-robin',
  destination: ['[2001:db8::1]:9001', '[2001:db8::2]:9002'],
});
const aff6 = validateProfile({
  name: 'aff6',
  source: '[2001:db8::14]:80',
  affinity: 30,
  destination: ['[2001:db8::1]:9001', '[2001:db8::2]:9002'],
});
const web4 = validateProfile({
  name: 'web4',
  source: '127.100.0.10:8080',
  destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
});

test('ip6: a profile plans into table ip6 iptlb with the layout of table ip iptlb (sets, maps, chains, offsets)', () => {
  const [tx, ...more] = planNftChange(new Map(), m(web6), ['web6']);
  assert.equal(more.length, 0);
  assert.equal(tx.family, 'ip6');
  assert.deepEqual(kinds(tx.ops), [
    'addTable',
    'addBackendMap',
    'addBackendMap',
    'addBackendMap',
    'addBaseChain',
    'addBaseChain',
    'addBaseChain',
    'addDispatchSet',
    'addBackendElements',
    'addDispatchElements',
    'flushChain',
    'addRule',
  ]);
  const text = renderNft(tx);
  assert.equal(
    text,
    [
      'add table ip6 iptlb',
      'add map ip6 iptlb be_tcp { typeof ip6 daddr . tcp dport . numgen random mod 1 : ip6 daddr . tcp dport; counter; }',
      'add map ip6 iptlb be_udp { typeof ip6 daddr . udp dport . numgen random mod 1 : ip6 daddr . udp dport; counter; }',
      'add map ip6 iptlb be_sctp { typeof ip6 daddr . sctp dport . numgen random mod 1 : ip6 daddr . sctp dport; counter; }',
      'add chain ip6 iptlb output { type nat hook output priority -100; policy accept; }',
      'add chain ip6 iptlb prerouting { type nat hook prerouting priority -100; policy accept; }',
      'add chain ip6 iptlb postrouting { type nat hook postrouting priority 100; policy accept; }',
      'add set ip6 iptlb out_tcp_2 { type ipv6_addr . inet_service; counter; }',
      // two destinations use indices 1, 2 (T(2) = 1), as in table ip iptlb
      'add element ip6 iptlb be_tcp { 2001:db8::10 . 80 . 1 : 2001:db8::1 . 9001, 2001:db8::10 . 80 . 2 : 2001:db8::2 . 9002 }',
      'add element ip6 iptlb out_tcp_2 { 2001:db8::10 . 80 }',
      'flush chain ip6 iptlb output',
      'add rule ip6 iptlb output ip6 daddr . tcp dport @out_tcp_2 dnat to ip6 daddr . tcp dport . numgen random mod 2 offset 1 map @be_tcp',
      '',
    ].join('\n'),
  );
});

/** The IPv4 twin of an IPv6 profile: 2001:db8::x becomes 127.0.0.x (same ports, options and names). */
function twin(p: Profile): Profile {
  const v4 = (e: string): string =>
    e.replace(/^\[2001:db8::([0-9a-f]+)\]/, (_m, x: string) => `127.0.0.${parseInt(x, 16)}`);
  const input: ProfileInput = { ...p, source: v4(p.source), destination: p.destination.map(v4) } as ProfileInput;
  if (p.weights)
    (input as { weights?: Record<string, number> }).weights = Object.fromEntries(
      Object.entries(p.weights).map(([k, w]) => [v4(k), w]),
    );
  return validateProfile(input);
}
/** An ip6 transaction with its addresses written as the twin's, and the rendered family words swapped back. */
function asIp(tx: NftTransaction): NftTransaction {
  const json = JSON.stringify(tx).replace(/2001:db8::([0-9a-f]+)/g, (_m, x: string) => `127.0.0.${parseInt(x, 16)}`);
  // the affinity set names carry the destination's eight groups
  const named = json.replace(/_2001_DB8_0_0_0_0_0_([0-9A-F]+)_/g, (_m, x: string) => `_127_0_0_${parseInt(x, 16)}_`);
  return { ...(JSON.parse(named) as NftTransaction), family: 'ip' };
}

test('ip6: every planner gives the ops of the IPv4 twin profiles, with IPv6 addresses (rebuild, change, move, removal)', () => {
  const six = [web6, dns6, px6, rr6, aff6];
  const four = six.map(twin);
  const same = (a: NftTransaction[], b: NftTransaction[]): void => assert.deepEqual(a.map(asIp), b);
  same([planNftRebuild(six, 7)], [planNftRebuild(four, 7)]);
  same(
    planNftChange(
      new Map(),
      m(...six),
      six.map((p) => p.name),
    ),
    planNftChange(
      new Map(),
      m(...four),
      four.map((p) => p.name),
    ),
  );
  for (let i = 0; i < six.length; i++) {
    // a move to another destination count (two steps), and a deletion, with the usage counts
    const moved6 = { ...six[i], destination: [six[i].destination[0]] };
    const moved4 = { ...four[i], destination: [four[i].destination[0]] };
    same(
      planNftChange(m(...six), m(...six.filter((_, j) => j !== i), moved6), [six[i].name]),
      planNftChange(m(...four), m(...four.filter((_, j) => j !== i), moved4), [four[i].name]),
    );
    same(
      planNftChange(m(...six), m(...six.filter((_, j) => j !== i)), [six[i].name], dispatchSetUsage(six)),
      planNftChange(m(...four), m(...four.filter((_, j) => j !== i)), [four[i].name], dispatchSetUsage(four)),
    );
  }
  // the last IPv6 profile gone: table ip6 iptlb goes, not table ip iptlb
  const [gone] = planNftChange(m(web6), new Map(), ['web6']);
  assert.deepEqual(gone, planNftRemoveAll('ip6'));
  assert.equal(renderNft(gone), 'add table ip6 iptlb\ndelete table ip6 iptlb\n');
  assert.equal(renderNft(planNftRemoveAll()), 'add table ip iptlb\ndelete table ip iptlb\n');
});

test('ip6: a planner with no profiles takes the family it is given; mixing families is an error', () => {
  assert.equal(planNftRebuild([], undefined, 'ip6').family, 'ip6');
  assert.equal(planNftRebuild([]).family, 'ip');
  assert.equal(nftFamilyOf(web6), 'ip6');
  assert.equal(nftFamilyOf(web4), 'ip');
  assert.throws(() => planNftRebuild([web6, web4]), /profile web4 is IPv4, not of table ip6 iptlb/);
  assert.throws(() => planNftRebuild([web6], undefined, 'ip'), /profile web6 is IPv6, not of table ip iptlb/);
  assert.throws(() => planNftChange(m(web6), m(web6, web4), ['web4']), /profile web4 is IPv4/);
  assert.equal(planNftChange(new Map(), m(web6), ['web6'], undefined, undefined, 'ip6')[0].family, 'ip6');
  assert.throws(() => planNftChange(new Map(), m(web6), ['web6'], undefined, undefined, 'ip'), /not of table ip iptlb/);
});

test('ip6: rules of their own render with ip6 daddr/saddr, ct original ip6 daddr and dnat to [v6]:port', (t) => {
  process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE = '1';
  t.after(() => delete process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE);
  const all = [dns6, px6, rr6, aff6];
  const text = renderNft(
    planNftChange(
      new Map(),
      m(...all),
      all.map((p) => p.name),
    )[0],
  );
  assert.match(
    text,
    /add rule ip6 iptlb prerouting ip6 daddr 2001:db8::11 udp dport 53 fib daddr type local log prefix "IPTLB:VIP:DNS6:" level warn comment "iptlb:dns6"/,
  );
  assert.match(
    text,
    /add rule ip6 iptlb prerouting fib daddr type local ip6 daddr \. udp dport @loc_udp_2 dnat to ip6 daddr \. udp dport \. numgen random mod 2 offset 1 map @be_udp/,
  );
  assert.match(
    text,
    /add rule ip6 iptlb postrouting ct status dnat ct original ip6 daddr 2001:db8::12 ct original protocol tcp ct original proto-dst 80 masquerade comment "iptlb:px6"/,
  );
  assert.match(
    text,
    /add rule ip6 iptlb output ip6 daddr 2001:db8::13 tcp dport 80 dnat to ip6 daddr \. tcp dport \. numgen inc mod 2 offset 1000001 map @be_tcp comment "iptlb:rr6"/,
  );
  const set1 = 'aff_AFF6_2001_DB8_0_0_0_0_0_1_9001_30';
  assert.match(
    text,
    new RegExp(`add set ip6 iptlb ${set1} \\{ type ipv6_addr; size 131070; flags dynamic,timeout; timeout 30s; \\}`),
  );
  assert.match(
    text,
    /add set ip6 iptlb aff_AFF6_C_30 \{ type ipv6_addr; size 65535; flags dynamic,timeout; timeout 30s; \}/,
  );
  assert.match(
    text,
    new RegExp(
      `ip6 daddr 2001:db8::14 tcp dport 80 ip6 saddr @${set1} update @aff_AFF6_C_30 \\{ ip6 saddr \\} update @${set1} \\{ ip6 saddr \\} counter dnat to \\[2001:db8::1\\]:9001 comment "iptlb:aff6"`,
    ),
  );
  assert.match(
    text,
    /update @aff_AFF6_C_30 \{ ip6 saddr \} numgen random mod 2 < 1 update @aff_AFF6_2001_DB8_0_0_0_0_0_1_9001_30 \{ ip6 saddr \} counter dnat to \[2001:db8::1\]:9001/,
  );
  assert.match(text, /tcp dport 80 numgen random mod 2 < 1 counter dnat to \[2001:db8::1\]:9001 comment "iptlb:aff6"/);
  assert.doesNotMatch(text, /\bip daddr|\bip saddr|ipv4_addr/);
});

test('ip6: affinity set names spell all eight groups (unambiguous, upper case), and parse back', () => {
  const a = affinitySetName('X', { ip: '2001:db8::1', port: 80 }, 60);
  assert.equal(a, 'aff_X_2001_DB8_0_0_0_0_0_1_80_60');
  assert.match(a, AFFINITY_SET_PATTERN);
  assert.equal(affinitySetTimeout(a), 60);
  // `::` would make these two one name; the groups keep them apart
  assert.notEqual(
    affinitySetName('X', { ip: '2001:db8::1:0', port: 80 }, 60),
    affinitySetName('X', { ip: '2001:db8:0:1::', port: 80 }, 60),
  );
  assert.equal(affinitySetName('X', { ip: '127.0.0.1', port: 80 }, 60), 'aff_X_127_0_0_1_80_60');
  assert.deepEqual(
    planNftProfile(aff6).affinitySets.map((s) => s.name),
    ['aff_AFF6_2001_DB8_0_0_0_0_0_1_9001_30', 'aff_AFF6_2001_DB8_0_0_0_0_0_2_9002_30', 'aff_AFF6_C_30'],
  );
});

// What `nft -j list table ip6 iptlb` prints (nft 1.0.6) for web6 and rr6, plus a foreign chain.
const P = (protocol: string, field: string) => ({ payload: { protocol, field } });
const ip6Json = (extra: unknown[] = []) =>
  JSON.stringify({
    nftables: [
      { metainfo: { version: '1.0.6' } },
      { table: { family: 'ip6', name: 'iptlb' } },
      {
        map: {
          family: 'ip6',
          name: 'be_tcp',
          table: 'iptlb',
          type: ['ipv6_addr', 'inet_service', 'integer'],
          map: 'ipv6_addr . inet_service',
          elem: [
            [
              { elem: { val: { concat: ['2001:db8::10', 80, 1] }, counter: { packets: 4, bytes: 240 } } },
              { concat: ['2001:db8::1', 9001] },
            ],
            [
              { elem: { val: { concat: ['2001:db8::10', 80, 2] }, counter: { packets: 6, bytes: 360 } } },
              { concat: ['2001:db8::2', 9002] },
            ],
            [
              { elem: { val: { concat: ['2001:db8::13', 80, 1000001] }, counter: { packets: 1, bytes: 60 } } },
              { concat: ['2001:db8::1', 9001] },
            ],
            [
              { elem: { val: { concat: ['2001:db8::13', 80, 1000002] }, counter: { packets: 1, bytes: 60 } } },
              { concat: ['2001:db8::2', 9002] },
            ],
          ],
        },
      },
      // nft prints addresses as inet_ntop does; the read gives them in iptlb's RFC 5952 text
      {
        set: {
          family: 'ip6',
          name: 'out_tcp_2',
          table: 'iptlb',
          type: ['ipv6_addr', 'inet_service'],
          elem: [{ elem: { val: { concat: ['2001:DB8:0:0::10', 80] }, counter: { packets: 10, bytes: 600 } } }],
        },
      },
      { chain: { family: 'ip6', table: 'iptlb', name: 'output' } },
      {
        rule: {
          family: 'ip6',
          table: 'iptlb',
          chain: 'output',
          handle: 7,
          expr: [
            { match: { op: '==', left: { concat: [P('ip6', 'daddr'), P('tcp', 'dport')] }, right: '@out_tcp_2' } },
            {
              dnat: {
                family: 'ip6',
                addr: {
                  map: {
                    key: {
                      concat: [P('ip6', 'daddr'), P('tcp', 'dport'), { numgen: { mode: 'random', mod: 2, offset: 1 } }],
                    },
                    data: '@be_tcp',
                  },
                },
              },
            },
          ],
        },
      },
      {
        rule: {
          family: 'ip6',
          table: 'iptlb',
          chain: 'output',
          handle: 8,
          comment: 'iptlb:rr6',
          expr: [
            { match: { op: '==', left: P('ip6', 'daddr'), right: '2001:db8::13' } },
            { match: { op: '==', left: P('tcp', 'dport'), right: 80 } },
            {
              dnat: {
                family: 'ip6',
                addr: {
                  map: {
                    key: {
                      concat: [
                        P('ip6', 'daddr'),
                        P('tcp', 'dport'),
                        { numgen: { mode: 'inc', mod: 2, offset: 1000001 } },
                      ],
                    },
                    data: '@be_tcp',
                  },
                },
              },
            },
          ],
        },
      },
      ...extra,
    ],
  });

test('ip6: nft -j of table ip6 iptlb reads back as planned (family ip6, canonical addresses); in sync; nothing stray', () => {
  const view = parseNftJson(ip6Json(), 3, 'ip6');
  assert.equal(view.family, 'ip6');
  assert.equal(view.exists, true);
  assert.deepEqual(view.dispatchSets[0].elements[0].key, { ip: '2001:db8::10', port: 80 });
  const planned = planNftRebuild([web6, rr6]);
  const output = planned.ops.flatMap((o) => (o.op === 'addRule' && o.chain === 'output' ? [o.rule] : []));
  assert.deepEqual(view.chains[0].rules, output);
  const reports = compareNft(m(web6, rr6), view);
  assert.deepEqual(
    reports.map((r) => [r.name, r.status]),
    [
      ['rr6', 'in-sync'],
      ['web6', 'in-sync'],
    ],
  );
  assert.deepEqual(
    reports[1].destinations.map((d) => [d.destination, d.packets]),
    [
      ['[2001:db8::1]:9001', 4],
      ['[2001:db8::2]:9002', 6],
    ],
  );
  assert.equal(reports[1].packets, 10);
  assert.deepEqual(strayRoundRobin(m(web6, rr6), view), []);
  // drift names the table of the family
  assert.equal(compareNft(m(web6), parseNftJson('', 0, 'ip6'))[0].detail, 'table ip6 iptlb does not exist');
  assert.deepEqual(parseNftJson('', 0, 'ip6'), {
    genid: 0,
    family: 'ip6',
    exists: false,
    dispatchSets: [],
    backendMaps: [],
    chains: [],
    foreign: [],
  });
  // Another tool's chain in table ip6 iptlb: read as such, and neither drift nor an orphan (iptlb keeps it).
  const withZombie = parseNftJson(ip6Json([{ chain: { family: 'ip6', table: 'iptlb', name: 'zombie' } }]), 0, 'ip6');
  assert.deepEqual(withZombie.foreign, ['zombie']);
  assert.deepEqual(
    compareNft(m(web6, rr6), withZombie).map((r) => [r.name, r.status]),
    [
      ['rr6', 'in-sync'],
      ['web6', 'in-sync'],
    ],
  );
});

test('ip6: a rule of the other family decodes as foreign; rules render back to what nft was given', () => {
  const dispatch = JSON.parse(ip6Json()).nftables[5].rule;
  assert.equal(decodeRuleJson(dispatch, 'ip6').kind, 'dispatch');
  assert.equal(decodeRuleJson(dispatch).kind, 'foreign', 'an ip6 rule is not one of table ip iptlb');
  const masq = {
    handle: 13,
    comment: 'iptlb:px6',
    expr: [
      { match: { op: 'in', left: { ct: { key: 'status' } }, right: 'dnat' } },
      { match: { op: '==', left: { ct: { key: 'ip6 daddr', dir: 'original' } }, right: '2001:db8::12' } },
      { match: { op: '==', left: { ct: { key: 'protocol' } }, right: 'tcp' } },
      { match: { op: '==', left: { ct: { key: 'proto-dst', dir: 'original' } }, right: 80 } },
      { masquerade: null },
    ],
  };
  const planned = planNftProfile(px6).rules[0].rule;
  assert.equal(renderNftRule(decodeRuleJson(masq, 'ip6') as never, 'ip6'), renderNftRule(planned, 'ip6'));
  assert.equal(decodeRuleJson(masq, 'ip').kind, 'foreign');
  const aff = {
    handle: 11,
    comment: 'iptlb:aff6',
    expr: [
      { match: { op: '==', left: P('ip6', 'daddr'), right: '2001:db8::14' } },
      { match: { op: '==', left: P('tcp', 'dport'), right: 80 } },
      { match: { op: '==', left: P('ip6', 'saddr'), right: '@aff_AFF6_2001_DB8_0_0_0_0_0_1_9001_30' } },
      { set: { op: 'update', elem: P('ip6', 'saddr'), set: '@aff_AFF6_C_30' } },
      { set: { op: 'update', elem: P('ip6', 'saddr'), set: '@aff_AFF6_2001_DB8_0_0_0_0_0_1_9001_30' } },
      { counter: { packets: 2, bytes: 120 } },
      { dnat: { addr: '2001:db8::1', port: 9001 } },
    ],
  };
  const hit = planNftProfile(aff6).rules[0].rule;
  assert.deepEqual(decodeRuleJson(aff, 'ip6'), { ...hit, packets: 2n, bytes: 120n });
  // a rule written before the client set reads back without it (so status says modified, and sync rewrites it)
  const old = { ...aff, expr: aff.expr.filter((_, i) => i !== 3) };
  const { gate: _gate, ...withoutGate } = hit as Extract<NftRule, { kind: 'aff' }>;
  assert.deepEqual(decodeRuleJson(old, 'ip6'), { ...withoutGate, packets: 2n, bytes: 120n });
  // a fallback rule: no update
  const fallback = planNftProfile(aff6).rules.at(-2)!.rule;
  const ng = { match: { op: '<', left: { numgen: { mode: 'random', mod: 2, offset: 0 } }, right: 1 } };
  const fb = { ...aff, expr: [...aff.expr.slice(0, 2), ng, ...aff.expr.slice(5)] };
  assert.deepEqual(decodeRuleJson(fb, 'ip6'), { ...fallback, packets: 2n, bytes: 120n });
});
