/** Weights and round-robin (issue 8, parts 1 and 3): model, validation, state file, both planners, drift. No root. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { slotCount, slotsOf, sameProfile, validateProfile } from '../../src/model/profile.js';
import { parseState, serializeState } from '../../src/core/state.js';
import { assertCanonicalRoundTrip, assertStateRefused } from './state-checks.js';
import { planProfile } from '../../src/engines/legacy/plan.js';
import { parseRule, renderRule } from '../../src/engines/legacy/restore.js';
import { compare } from '../../src/engines/legacy/drift.js';
import { baseContent, planNftChange, planNftProfile, planNftRebuild } from '../../src/engines/nft/plan.js';
import { type NftView } from '../../src/engines/nft/ops.js';
import { renderNft, renderNftRule } from '../../src/engines/nft/render.js';
import { compareNft, decodeRuleJson, strayRoundRobin } from '../../src/engines/nft/view.js';
import { IptlbError } from '../../src/model/errors.js';
import type { KernelView, Profile } from '../../src/model/types.js';

const D = ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'];
const base = { name: 'web', source: '127.100.0.10:8081' };
const m = (...ps: Profile[]): Map<string, Profile> => new Map(ps.map((p) => [p.name, p]));

function refused(input: unknown, field: string, re: RegExp): void {
  assert.throws(
    () => validateProfile(input),
    (e: unknown) => {
      assert.ok(e instanceof IptlbError, String(e));
      assert.equal(e.code, 'EINVAL_PROFILE');
      assert.equal(e.field, field, e.message);
      assert.match(e.message, re);
      assert.ok(!e.message.includes('\n'), 'one line');
      return true;
    },
  );
}

test('weights: ip:port*W items and the weights map normalise to the same profile; weight 1 entries are not stored', () => {
  const a = validateProfile({ ...base, destination: ['127.0.0.1:9001', '127.0.0.1:9002*2', '127.0.0.1:9003*1'] });
  const b = validateProfile({ ...base, destination: D, weights: { '127.0.0.1:9002': 2, '127.0.0.1:9003': 1 } });
  const c = validateProfile({ ...base, destination: '127.0.0.1:9001*1,127.0.0.1:9002*2,127.0.0.1:9003' });
  for (const p of [a, b, c]) {
    assert.deepEqual(p.destination, D);
    assert.deepEqual(p.weights, { '127.0.0.1:9002': 2 });
    assert.equal(p.scheduler, undefined);
  }
  assert.ok(sameProfile(a, b));
  const plain = validateProfile({ ...base, destination: ['127.0.0.1:9001*1', '127.0.0.1:9002'] });
  assert.equal('weights' in plain, false, 'all weights 1: no weights key');
  assert.ok(!sameProfile(a, validateProfile({ ...base, destination: D })));
  const rr = validateProfile({ ...base, destination: D, scheduler: 'round-robin' });
  assert.equal(rr.scheduler, 'round-robin');
  assert.equal('scheduler' in validateProfile({ ...base, destination: D, scheduler: 'random' }), false);
  assert.ok(!sameProfile(rr, validateProfile({ ...base, destination: D })));
});

test('weights: bad values are one-line errors naming the field', () => {
  refused(
    { ...base, destination: D, weights: { '127.0.0.1:9999': 2 } },
    'weights',
    /"127\.0\.0\.1:9999" is not one of the destinations/,
  );
  refused({ ...base, destination: ['127.0.0.1:9001*x'] }, 'weights', /must be an integer from 0 to 1000/);
  refused({ ...base, destination: ['127.0.0.1:9001*1.5'] }, 'weights', /integer/);
  refused({ ...base, destination: ['127.0.0.1:9001*01'] }, 'weights', /weight "01" has a leading zero$/);
  refused({ ...base, destination: ['127.0.0.1:9001*00'] }, 'weights', /weight "00" has a leading zero$/);
  assert.deepEqual(validateProfile({ ...base, destination: ['127.0.0.1:9001*0', '127.0.0.1:9002*10'] }).weights, {
    '127.0.0.1:9001': 0,
    '127.0.0.1:9002': 10,
  });
  refused({ ...base, destination: ['127.0.0.1:9001*1001'] }, 'weights', /0 to 1000/);
  refused({ ...base, destination: ['127.0.0.1:9001*-1'] }, 'weights', /0 to 1000/);
  refused({ ...base, destination: D, weights: { '127.0.0.1:9001': 2.5 } }, 'weights', /integer/);
  refused({ ...base, destination: D, weights: [] }, 'weights', /must be a map/);
  refused(
    { ...base, destination: ['127.0.0.1:9001*0', '127.0.0.1:9002*0'] },
    'weights',
    /every destination has weight 0/,
  );
  refused(
    { ...base, destination: ['127.0.0.1:9001*2'], weights: { '127.0.0.1:9001': 3 } },
    'weights',
    /weight 2 in destination and 3 in weights/,
  );
  // Two spellings of one IPv6 destination in `weights`: said as such (neither weight came from destination).
  refused(
    {
      ...base,
      source: '[2001:db8::1]:80',
      destination: ['[2001:db8::2]:80', '[2001:db8::3]:80'],
      weights: { '[2001:db8::2]:80': 2, '[2001:DB8:0::2]:80': 3 },
    },
    'weights',
    /^weights: "\[2001:db8::2\]:80" and "\[2001:DB8:0::2\]:80" are one destination, with weights 2 and 3$/,
  );
  refused(
    { ...base, destination: ['127.0.0.1:9001*1000', '127.0.0.1:9002*999'] },
    'weights',
    /1999 slots .* at most 1024/,
  );
  refused({ ...base, destination: ['127.0.0.1:9001*x:1'] }, 'weights', /integer/);
  refused(
    { ...base, destination: D, scheduler: 'least-conn' },
    'scheduler',
    /"least-conn" is not one of random, round-robin/,
  );
  refused({ ...base, destination: ['bogus*2'] }, 'destination[0]', /bogus/);
});

test('slots: weights divided by their gcd, drained destinations left out; without weights one slot each', () => {
  const p = validateProfile({ ...base, destination: ['127.0.0.1:9001*20', '127.0.0.1:9002*0', '127.0.0.1:9003*40'] });
  assert.deepEqual(slotsOf(p), [
    { destination: '127.0.0.1:9001', slots: 1 },
    { destination: '127.0.0.1:9003', slots: 2 },
  ]);
  assert.equal(slotCount(p), 3);
  const q = validateProfile({ ...base, destination: D });
  assert.equal(slotCount(q), 3);
  assert.deepEqual(
    slotsOf(q).map((s) => s.slots),
    [1, 1, 1],
  );
  // 1000 and 24 reduce by 8: 125 + 3 slots
  assert.equal(slotCount(validateProfile({ ...base, destination: ['127.0.0.1:1*1000', '127.0.0.1:2*24'] })), 128);
});

test('state file: weights and scheduler round-trip in the documented YAML; the fast parser agrees with the YAML parser', async () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001*3', '127.0.0.1:9002', '127.0.0.1:9003*0'],
    scheduler: 'round-robin',
  });
  const text = serializeState([p]);
  assert.equal(
    text,
    `web:
  destination:
  - 127.0.0.1:9001
  - 127.0.0.1:9002
  - 127.0.0.1:9003
  logEnabled: false
  logLevel: "4"
  protocol: tcp
  rulesBackend: client
  scheduler: round-robin
  source: 127.100.0.10:8081
  weights:
    127.0.0.1:9001: 3
    127.0.0.1:9003: 0
`,
  );
  await assertCanonicalRoundTrip(text, p);
});

test('state file: files without the new keys (the original format) load and serialise byte for byte', async () => {
  const original = `test:
  destination:
  - 10.0.1.4:8080
  - 10.0.1.5:8080
  logEnabled: true
  logLevel: "4"
  protocol: tcp
  rulesBackend: client
  source: 10.100.0.10:8081
`;
  const s = await parseState(original);
  const p = s.get('test')!;
  assert.equal('weights' in p, false);
  assert.equal('scheduler' in p, false);
  assert.equal(serializeState(s.values()), original);
  // a profile with weights all 1 and the random scheduler writes the original's format
  const q = validateProfile({
    name: 'test',
    source: '10.100.0.10:8081',
    destination: ['10.0.1.4:8080*1', '10.0.1.5:8080'],
    logEnabled: true,
    scheduler: 'random',
  });
  assert.equal(serializeState([q]), original);
});

test('state file: wrong types of the new keys are refused naming the field', async () => {
  const head = `web:\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n`;
  const bad = (tail: string, field: string, re: RegExp): Promise<void> => assertStateRefused(head + tail, field, re);
  await bad(
    'scheduler: 3\nsource: 127.100.0.10:8081\n'.replace(/^/gm, '  '),
    'scheduler',
    /scheduler must be a string/,
  );
  await bad(
    'scheduler: fastest\n  source: 127.100.0.10:8081\n'.replace(/^/, '  '),
    'scheduler',
    /"fastest" is not one of/,
  );
  await bad(
    '  source: 127.100.0.10:8081\n  weights:\n    127.0.0.1:9001: "2"\n',
    'weights',
    /weights must be a mapping of "ipv4:port" to integer weights/,
  );
  await bad(
    '  source: 127.100.0.10:8081\n  weights:\n    127.0.0.1:9009: 2\n',
    'weights',
    /is not one of the destinations/,
  );
  await bad('  source: 127.100.0.10:8081\n  weights:\n', 'weights', /weights must be a mapping/);
  await bad(
    '  source: 127.100.0.10:8081\n  weights:\n    127.0.0.1:9001: 0\n',
    'weights',
    /every destination has weight 0/,
  );
});

test('legacy planner: weighted cascade, drained destinations get no rule; equal weights plan exactly as before', () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001', '127.0.0.1:9002*2', '127.0.0.1:9004*0', '127.0.0.1:9003*3'],
  });
  const rules = planProfile(p).chain.rules.map(renderRule);
  assert.deepEqual(rules, [
    '-d 127.100.0.10/32 -p tcp -m statistic --mode random --probability 0.1666666667 -j DNAT --to-destination 127.0.0.1:9001',
    '-d 127.100.0.10/32 -p tcp -m statistic --mode random --probability 0.4000000000 -j DNAT --to-destination 127.0.0.1:9002',
    '-d 127.100.0.10/32 -p tcp -j DNAT --to-destination 127.0.0.1:9003',
  ]);
  const plain = validateProfile({ ...base, destination: D });
  assert.deepEqual(
    planProfile(validateProfile({ ...base, destination: D.map((d) => `${d}*7`) })),
    planProfile(plain),
    'equal weights reduce to 1',
  );
  assert.match(renderRule(planProfile(plain).chain.rules[0]), /--probability 0\.3333333333 /);
});

test('legacy planner: round-robin is an nth cascade over the slots, in list order; the restore text parses back', () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001', '127.0.0.1:9002*2', '127.0.0.1:9003*0'],
    scheduler: 'round-robin',
  });
  const rules = planProfile(p).chain.rules;
  assert.deepEqual(rules.map(renderRule), [
    '-d 127.100.0.10/32 -p tcp -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 127.0.0.1:9001',
    '-d 127.100.0.10/32 -p tcp -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 127.0.0.1:9002',
    '-d 127.100.0.10/32 -p tcp -j DNAT --to-destination 127.0.0.1:9002',
  ]);
  for (const r of rules) assert.deepEqual(parseRule(renderRule(r).split(' ')), r);
  // iptables-save leaves out --packet 0
  assert.deepEqual(parseRule('-m statistic --mode nth --every 3 -j RETURN'.split(' '))?.matches, [
    { name: 'statistic', mode: 'nth', every: 3, packet: 0 },
  ]);
  assert.equal(parseRule('-m statistic --mode nth --every 3 --packet 3 -j RETURN'.split(' ')), null);
});

test('legacy status: slots of one destination add up, drained destinations show weight 0, in-sync', () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001', '127.0.0.1:9002*2', '127.0.0.1:9003*0'],
    scheduler: 'round-robin',
  });
  const plan = planProfile(p);
  const view: KernelView = {
    chains: [
      {
        name: plan.chain.name,
        rules: plan.chain.rules.map((rule, i) => ({ rule, packets: BigInt(10 + i), bytes: BigInt(100 * (i + 1)) })),
      },
    ],
    hookRules: plan.hookRules.map((h, i) => ({
      chain: h.chain,
      owner: h.owner,
      position: i + 1,
      rule: h.rule,
      packets: 33n,
      bytes: 600n,
    })),
    gate: { gates: ['OUTPUT', 'PREROUTING'], dispatch: ['OUTPUT', 'PREROUTING'] },
  };
  const [r] = compare(m(p), view);
  assert.equal(r.status, 'in-sync', r.detail);
  assert.deepEqual(r.destinations, [
    { destination: '127.0.0.1:9001', packets: 10, bytes: 100 },
    { destination: '127.0.0.1:9002', packets: 23, bytes: 500, weight: 2 },
    { destination: '127.0.0.1:9003', packets: 0, bytes: 0, weight: 0 },
  ]);
});

test('nft planner: weights expand into consecutive backend indexes; the dispatch set is chosen by the slot count', () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001', '127.0.0.1:9002*2', '127.0.0.1:9004*0', '127.0.0.1:9003*3'],
  });
  const plan = planNftProfile(p);
  assert.equal(plan.set, 'out_tcp_6');
  assert.deepEqual(
    plan.backends.map((b) => [b.index, b.to.port]),
    [
      [15, 9001],
      [16, 9002],
      [17, 9002],
      [18, 9003],
      [19, 9003],
      [20, 9003],
    ],
  );
  const text = renderNft(planNftChange(new Map(), m(p), ['web'])[0]);
  assert.match(text, /numgen random mod 6 offset 15 map @be_tcp/);
  // without weights nothing changes
  const plain = validateProfile({ ...base, destination: D });
  assert.equal(planNftProfile(plain).set, 'out_tcp_3');
  assert.deepEqual(
    planNftProfile(plain).backends.map((b) => b.index),
    [3, 4, 5],
  );
});

test('nft planner: a round-robin profile has its own rule (numgen inc) and no dispatch element', () => {
  const a = validateProfile({
    ...base,
    name: 'a',
    destination: ['127.0.0.1:9001', '127.0.0.1:9002*2'],
    scheduler: 'round-robin',
  });
  const b = validateProfile({
    name: 'b',
    source: '127.100.0.11:53',
    protocol: 'udp',
    rulesBackend: 'server',
    destination: D,
    scheduler: 'round-robin',
  });
  const plain = validateProfile({ name: 'c', source: '127.100.0.12:80', destination: D });
  const [tx, ...more] = planNftChange(new Map(), m(a, b, plain), ['a', 'b', 'c']);
  assert.equal(more.length, 0);
  const text = renderNft(tx);
  assert.match(
    text,
    /add rule ip iptlb output ip daddr 127\.100\.0\.10 tcp dport 8081 dnat to ip daddr \. tcp dport \. numgen inc mod 3 offset 1000003 map @be_tcp comment "iptlb:a"/,
  );
  assert.match(
    text,
    /add rule ip iptlb prerouting ip daddr 127\.100\.0\.11 udp dport 53 fib daddr type local dnat to ip daddr \. udp dport \. numgen inc mod 3 offset 1000003 map @be_udp comment "iptlb:b"/,
  );
  // round-robin slots live in an index range of their own
  assert.match(
    text,
    /127\.100\.0\.10 \. 8081 \. 1000003 : 127\.0\.0\.1 \. 9001, 127\.100\.0\.10 \. 8081 \. 1000004 : 127\.0\.0\.1 \. 9002, 127\.100\.0\.10 \. 8081 \. 1000005 : 127\.0\.0\.1 \. 9002/,
  );
  assert.doesNotMatch(text, /add element ip iptlb out_tcp_3 \{ 127\.100\.0\.10/);
  assert.doesNotMatch(text, /loc_udp_3/);
  assert.match(text, /add element ip iptlb out_tcp_3 \{ 127\.100\.0\.12 \. 80 \}/);
  // round-robin rules come after the dispatch rules of their chain
  const out = baseContent([a, b, plain]).chains.output;
  assert.deepEqual(
    out.map((r) => r.kind),
    ['dispatch', 'rr'],
  );
  // the rebuild holds the same
  assert.match(
    renderNft(planNftRebuild([a, b, plain])),
    /numgen inc mod 3 offset 1000003 map @be_tcp comment "iptlb:a"/,
  );
});

test('nft planner: changing the destinations of a round-robin profile with the same slot count is element changes only', () => {
  const a = validateProfile({ ...base, destination: D, scheduler: 'round-robin' });
  const a2 = validateProfile({
    ...base,
    destination: ['127.0.0.1:9005', '127.0.0.1:9006', '127.0.0.1:9007'],
    scheduler: 'round-robin',
  });
  const steps = planNftChange(m(a), m(a2), ['web']);
  assert.equal(steps.length, 1);
  assert.deepEqual(
    steps[0].ops.map((o) => o.op),
    ['deleteBackendElements', 'addBackendElements'],
  );
});

test('nft planner: a slot count change or a scheduler switch is a two-step move that keeps a rule matching in between', () => {
  const rr3 = validateProfile({ ...base, destination: D, scheduler: 'round-robin' });
  const rr4 = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001*2', '127.0.0.1:9002', '127.0.0.1:9003'],
    scheduler: 'round-robin',
  });
  const rnd = validateProfile({ ...base, destination: D });
  // rr 3 -> rr 4: the new rule and backends first, beside the old rule; then the old ones go
  const steps = planNftChange(m(rr3), m(rr4), ['web']);
  assert.equal(steps.length, 2);
  let [one, two] = steps;
  let t1 = renderNft(one);
  assert.match(
    t1,
    /numgen inc mod 4 offset 1000006 map @be_tcp comment "iptlb:web"\n.*numgen inc mod 3 offset 1000003 map @be_tcp comment "iptlb:web"/,
  );
  assert.doesNotMatch(t1, /delete element/);
  let t2 = renderNft(two);
  assert.match(
    t2,
    /delete element ip iptlb be_tcp \{ 127\.100\.0\.10 \. 8081 \. 1000003, 127\.100\.0\.10 \. 8081 \. 1000004, 127\.100\.0\.10 \. 8081 \. 1000005 \}/,
  );
  assert.doesNotMatch(t2, /mod 3 offset 1000003/);
  assert.match(t2, /numgen inc mod 4 offset 1000006/);
  // random -> rr with the same slots: the round-robin backends (their own range) and rule now, the
  // dispatch element and the random backends in step two
  [one, two] = planNftChange(m(rnd), m(rr3), ['web']);
  t1 = renderNft(one);
  assert.match(t1, /numgen inc mod 3 offset 1000003 map @be_tcp comment "iptlb:web"/);
  assert.match(t1, /@out_tcp_3 dnat/);
  assert.doesNotMatch(t1, /delete element/);
  t2 = renderNft(two);
  assert.match(t2, /delete element ip iptlb out_tcp_3 \{ 127\.100\.0\.10 \. 8081 \}/);
  assert.match(t2, /delete element ip iptlb be_tcp \{ 127\.100\.0\.10 \. 8081 \. 3, /);
  assert.match(t2, /delete set ip iptlb out_tcp_3/);
  // rr -> random
  [one, two] = planNftChange(m(rr3), m(rnd), ['web']);
  assert.match(renderNft(one), /add element ip iptlb out_tcp_3 \{ 127\.100\.0\.10 \. 8081 \}/);
  assert.doesNotMatch(renderNft(two), /numgen inc/);
});

test('nft view: the round-robin rule decodes from nft -j and compares in-sync; per-destination counters add slots', () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001', '127.0.0.1:9002*2', '127.0.0.1:9003*0'],
    scheduler: 'round-robin',
  });
  const plan = planNftProfile(p);
  const rr = plan.rules[0].rule;
  const json = {
    family: 'ip',
    table: 'iptlb',
    chain: 'output',
    handle: 7,
    comment: 'iptlb:web',
    expr: [
      { match: { op: '==', left: { payload: { protocol: 'ip', field: 'daddr' } }, right: '127.100.0.10' } },
      { match: { op: '==', left: { payload: { protocol: 'tcp', field: 'dport' } }, right: 8081 } },
      {
        dnat: {
          family: 'ip',
          addr: {
            map: {
              key: {
                concat: [
                  { payload: { protocol: 'ip', field: 'daddr' } },
                  { payload: { protocol: 'tcp', field: 'dport' } },
                  { numgen: { mode: 'inc', mod: 3, offset: 1000003 } },
                ],
              },
              data: '@be_tcp',
            },
          },
        },
      },
    ],
  };
  assert.deepEqual(decodeRuleJson(json), rr);
  assert.equal(
    renderNftRule(rr),
    'ip daddr 127.100.0.10 tcp dport 8081 dnat to ip daddr . tcp dport . numgen inc mod 3 offset 1000003 map @be_tcp comment "iptlb:web"',
  );
  const view: NftView = {
    genid: 1,
    exists: true,
    dispatchSets: [],
    backendMaps: [
      { proto: 'tcp', elements: plan.backends.map((b, i) => ({ ...b, packets: BigInt(5 + i), bytes: BigInt(50) })) },
    ],
    chains: [
      { name: 'output', rules: [rr] },
      { name: 'prerouting', rules: [] },
      { name: 'postrouting', rules: [] },
    ],
    foreign: [],
  };
  const [r, ...orphans] = compareNft(m(p), view);
  assert.equal(orphans.length, 0);
  assert.equal(r.status, 'in-sync', r.detail);
  assert.deepEqual(r.destinations, [
    { destination: '127.0.0.1:9001', packets: 5, bytes: 50 },
    { destination: '127.0.0.1:9002', packets: 13, bytes: 100, weight: 2 },
    { destination: '127.0.0.1:9003', packets: 0, bytes: 0, weight: 0 },
  ]);
  assert.equal(r.packets, 18);
  // without its rule it is modified; the rule alone, with no profile, is an orphan
  assert.equal(compareNft(m(p), { ...view, chains: [{ name: 'output', rules: [] }] })[0].status, 'modified');
  assert.ok(compareNft(new Map(), view).some((x) => x.status === 'orphaned' && x.name === 'rule:web'));
  // a random profile whose old round-robin rule is still there has drifted
  const rnd = validateProfile({ ...base, destination: ['127.0.0.1:9001', '127.0.0.1:9002*2'] });
  const rp = planNftProfile(rnd);
  const rview: NftView = {
    ...view,
    dispatchSets: [{ name: rp.set!, elements: [{ key: rp.vip, packets: 0n, bytes: 0n }] }],
    backendMaps: [{ proto: 'tcp', elements: rp.backends.map((b) => ({ ...b, packets: 0n, bytes: 0n })) }],
    chains: [{ name: 'output', rules: [rr, { kind: 'dispatch', hook: 'out', proto: 'tcp', n: 3 }] }],
  };
  const [rs] = compareNft(m(rnd), rview);
  assert.equal(rs.status, 'modified');
  assert.match(rs.detail!, /1 rules in the base chains are its own, 0 planned/);
  assert.equal(
    compareNft(m(rnd), {
      ...rview,
      chains: [{ name: 'output', rules: [{ kind: 'dispatch', hook: 'out', proto: 'tcp', n: 3 }] }],
    })[0].status,
    'in-sync',
  );
});

test('nft: objects of round-robin profiles the state does not explain are found (the table is then replaced whole)', () => {
  const a = validateProfile({ ...base, name: 'a', destination: D, scheduler: 'round-robin' });
  const b = validateProfile({ name: 'b', source: '127.100.0.11:80', destination: D });
  const ra = planNftProfile(a).rules[0].rule;
  const view: NftView = {
    genid: 1,
    exists: true,
    dispatchSets: [
      { name: 'out_tcp_3', elements: [{ key: { ip: '127.100.0.11', port: 80 }, packets: 0n, bytes: 0n }] },
    ],
    backendMaps: [],
    chains: [{ name: 'output', rules: [{ kind: 'dispatch', hook: 'out', proto: 'tcp', n: 3 }, ra] }],
    foreign: [],
  };
  assert.deepEqual(strayRoundRobin(m(a, b), view), []);
  // the state says a is random, the kernel holds its round-robin rule
  const aRandom = validateProfile({ ...base, name: 'a', destination: D });
  assert.deepEqual(strayRoundRobin(m(aRandom, b), view), ['a round-robin rule of a in output']);
  // the state says a is round-robin, the kernel lost its rule, or holds a dispatch element of its address
  assert.deepEqual(strayRoundRobin(m(a, b), { ...view, chains: [{ name: 'output', rules: [] }] }), [
    'no round-robin rule of a',
  ]);
  const withElement = {
    ...view,
    dispatchSets: [
      { name: 'out_tcp_3', elements: [{ key: { ip: '127.100.0.10', port: 8081 }, packets: 0n, bytes: 0n }] },
    ],
  };
  assert.deepEqual(strayRoundRobin(m(a, b), withElement), ['element 127.100.0.10:8081 of set out_tcp_3']);
});
