/** Session affinity (issue 8, part 4): model, validation, state file, both planners, restore text, drift. No root. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sameProfile, validateProfile } from '../../src/model/profile.js';
import { parseState, serializeState } from '../../src/core/state.js';
import { assertCanonicalRoundTrip, assertStateRefused } from './state-checks.js';
import { planProfile, recentName } from '../../src/engines/legacy/plan.js';
import { parseRule, renderRule, splitWords } from '../../src/engines/legacy/restore.js';
import { compare } from '../../src/engines/legacy/drift.js';
import { IptlbError } from '../../src/model/errors.js';
import type { KernelView, Profile } from '../../src/model/types.js';

const D = ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'];
const base = { name: 'web', source: '127.100.0.10:8081' };

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

test('affinity: integer seconds 1..86400 (number or decimal text); 0 and absent mean none and are not stored', () => {
  assert.equal(validateProfile({ ...base, destination: D, affinity: 2 }).affinity, 2);
  assert.equal(validateProfile({ ...base, destination: D, affinity: '10800' }).affinity, 10800);
  assert.equal(validateProfile({ ...base, destination: D, affinity: 86400 }).affinity, 86400);
  assert.equal('affinity' in validateProfile({ ...base, destination: D, affinity: 0 }), false);
  assert.equal('affinity' in validateProfile({ ...base, destination: D, affinity: '0' }), false);
  assert.equal('affinity' in validateProfile({ ...base, destination: D }), false);
  const a = validateProfile({ ...base, destination: D, affinity: 2 });
  assert.ok(sameProfile(a, validateProfile({ ...base, destination: D, affinity: '2' })));
  assert.ok(!sameProfile(a, validateProfile({ ...base, destination: D, affinity: 3 })));
  assert.ok(!sameProfile(a, validateProfile({ ...base, destination: D })));
});

test('affinity: bad values are one-line errors naming the field', () => {
  for (const bad of [-1, 86401, 1.5, 'x', '2s', '', true, [], {}, Number.NaN, '1e3']) {
    refused({ ...base, destination: D, affinity: bad }, 'affinity', /whole number of seconds from 1 to 86400/);
  }
});

test('state file: affinity round-trips as an integer key (sorted first); fast parser and YAML parser agree', async () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001*2', '127.0.0.1:9002'],
    scheduler: 'round-robin',
    affinity: 10800,
  });
  const text = serializeState([p]);
  assert.equal(
    text,
    `web:
  affinity: 10800
  destination:
  - 127.0.0.1:9001
  - 127.0.0.1:9002
  logEnabled: false
  logLevel: "4"
  protocol: tcp
  rulesBackend: client
  scheduler: round-robin
  source: 127.100.0.10:8081
  weights:
    127.0.0.1:9001: 2
`,
  );
  await assertCanonicalRoundTrip(text, p);
});

test('state file: the original format (no new keys) loads and is written back byte for byte; affinity 0 writes it too', async () => {
  const original = `test:
  destination:
  - 10.0.1.4:8080
  - 10.0.1.5:8080
  logEnabled: true
  logLevel: "4"
  protocol: tcp
  rulesBackend: client
  source: 10.100.0.10:8081
test2:
  destination:
  - 10.0.1.6:8080
  logEnabled: false
  logLevel: "7"
  protocol: udp
  rulesBackend: proxy
  source: 10.100.0.11:53
`;
  const s = await parseState(original);
  assert.equal('affinity' in s.get('test')!, false);
  assert.equal(serializeState(s.values()), original);
  const q = validateProfile({
    name: 'test',
    source: '10.100.0.10:8081',
    destination: ['10.0.1.4:8080', '10.0.1.5:8080'],
    logEnabled: true,
    affinity: 0,
  });
  assert.equal(serializeState([q, s.get('test2')!]), original);
});

test('state file: a wrong type or range of affinity is refused naming the field', async () => {
  const body = (v: string): string =>
    `web:\n  affinity: ${v}\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: 127.100.0.10:8081\n`;
  for (const [v, re] of [
    ['"2"', /affinity must be a whole number/],
    ['2.5', /affinity must be a whole number/],
    ['true', /affinity must be a whole number/],
    ['86401', /from 1 to 86400/],
    ['-3', /from 1 to 86400/],
  ] as const) {
    await assertStateRefused(body(v), 'affinity', re);
  }
});

test('legacy planner: per live destination a recent --update rule first, then the balancing rules record the choice', () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001', '127.0.0.1:9002*0', '127.0.0.1:9003*2'],
    affinity: 2,
  });
  const text = planProfile(p).chain.rules.map(renderRule);
  const n1 = recentName('web', '127.0.0.1:9001');
  const n3 = recentName('web', '127.0.0.1:9003');
  assert.equal(n1, 'IPTLB_WEB_127_0_0_1_9001');
  const v = '-d 127.100.0.10/32 -p tcp';
  assert.deepEqual(text, [
    `${v} -m recent --update --seconds 2 --reap --name ${n1} --mask 255.255.255.255 --rsource -j DNAT --to-destination 127.0.0.1:9001`,
    `${v} -m recent --update --seconds 2 --reap --name ${n3} --mask 255.255.255.255 --rsource -j DNAT --to-destination 127.0.0.1:9003`,
    `${v} -m statistic --mode random --probability 0.3333333333 -m recent --set --name ${n1} --mask 255.255.255.255 --rsource -j DNAT --to-destination 127.0.0.1:9001`,
    `${v} -m recent --set --name ${n3} --mask 255.255.255.255 --rsource -j DNAT --to-destination 127.0.0.1:9003`,
  ]);
  // drained 9002 has neither an affinity rule nor a balancing rule: its clients are not honoured
  assert.ok(!text.some((t) => t.includes('9002')));
  // names are per profile and destination, stable, and short enough for xt_recent (< 200)
  assert.notEqual(recentName('web', '127.0.0.1:9001'), recentName('web2', '127.0.0.1:9001'));
  assert.ok(recentName('a-very-long-name-x', '255.255.255.255:65535').length < 200);
  // without affinity the plan is exactly as before
  const plain = planProfile(validateProfile({ ...base, destination: D })).chain.rules.map(renderRule);
  assert.ok(!plain.some((t) => t.includes('recent')));
});

test('legacy planner: round-robin with affinity records the choice on each nth rule; the restore text parses back', () => {
  const p = validateProfile({ ...base, destination: D, scheduler: 'round-robin', affinity: 30 });
  const rules = planProfile(p).chain.rules;
  assert.equal(rules.length, 3 + 3);
  assert.match(
    renderRule(rules[3]),
    /-m statistic --mode nth --every 3 --packet 0 -m recent --set --name IPTLB_WEB_127_0_0_1_9001 /,
  );
  for (const r of rules) assert.deepEqual(parseRule(splitWords(renderRule(r))), r);
  // iptables-save's own spelling parses to the same rule
  const saved =
    '-d 127.100.0.10/32 -p tcp -m recent --update --seconds 30 --reap --name IPTLB_WEB_127_0_0_1_9001 --mask 255.255.255.255 --rsource -j DNAT --to-destination 127.0.0.1:9001';
  assert.deepEqual(parseRule(splitWords(saved)), rules[0]);
  // shapes iptlb never writes are not taken for its own
  for (const other of [
    '-m recent --rcheck --seconds 30 --name X --mask 255.255.255.255 --rsource -j RETURN',
    '-m recent --update --seconds 30 --name X --mask 255.255.255.255 --rsource -j RETURN',
    '-m recent --set --name X --mask 255.255.255.0 --rsource -j RETURN',
    '-m recent --set --name X --mask 255.255.255.255 --rdest -j RETURN',
  ]) {
    assert.equal(parseRule(splitWords(other)), null, other);
  }
});

test('legacy status: an affinity profile read back as planned is in-sync and counts each destination once per rule', () => {
  const p: Profile = validateProfile({ ...base, destination: D, affinity: 2 });
  const plan = planProfile(p);
  const view: KernelView = {
    chains: [
      {
        name: plan.chain.name,
        rules: plan.chain.rules.map((rule, i) => ({ rule, packets: BigInt(i), bytes: BigInt(10 * i) })),
      },
    ],
    hookRules: plan.hookRules.map((h, i) => ({
      chain: h.chain,
      owner: h.owner,
      position: i + 1,
      rule: h.rule,
      packets: 1n,
      bytes: 1n,
    })),
    gate: { gates: ['OUTPUT', 'PREROUTING'], dispatch: ['OUTPUT', 'PREROUTING'] },
  };
  const [r] = compare(new Map([[p.name, p]]), view);
  assert.equal(r.status, 'in-sync', JSON.stringify(r));
  assert.equal(r.affinity, 2, 'the report shows the affinity');
  // affinity hits (rules 0-2) and balancing (rules 3-5) add up per destination
  assert.deepEqual(
    r.destinations?.map((d) => d.packets),
    [0 + 3, 1 + 4, 2 + 5],
  );
  // a changed timeout is drift
  const other = validateProfile({ ...base, destination: D, affinity: 3 });
  assert.equal(compare(new Map([[p.name, other]]), view)[0].status, 'modified');
});

// ---------------------------------------------------------------------------------------------
// nft engine

import { planNftChange, planNftProfile, planNftRebuild } from '../../src/engines/nft/plan.js';
import { kernelUpdatesSetSize, type NftRule, type NftView } from '../../src/engines/nft/ops.js';
import { renderNft, renderNftRule } from '../../src/engines/nft/render.js';
import { compareNft, decodeRuleJson, parseNftJson } from '../../src/engines/nft/view.js';

const pm = (...ps: Profile[]): Map<string, Profile> => new Map(ps.map((p) => [p.name, p]));

test('nft planner: an affinity profile has per-destination sets, a client set and its own rules (hits first, then a cascade recording the client and the choice, then the cascade again recording nothing), no dispatch element, no backends', () => {
  const p = validateProfile({
    ...base,
    destination: ['127.0.0.1:9001', '127.0.0.1:9002*0', '127.0.0.1:9003*2'],
    affinity: 2,
  });
  const plan = planNftProfile(p);
  assert.equal(plan.set, null);
  assert.deepEqual(plan.backends, []);
  assert.deepEqual(plan.affinitySets, [
    { name: 'aff_WEB_127_0_0_1_9001_2', timeout: 2 },
    { name: 'aff_WEB_127_0_0_1_9003_2', timeout: 2 },
    { name: 'aff_WEB_C_2', timeout: 2 },
  ]);
  const v = 'ip daddr 127.100.0.10 tcp dport 8081';
  const c = 'update @aff_WEB_C_2 { ip saddr }';
  assert.deepEqual(
    plan.rules.map((r) => `${r.chain} ${renderNftRule(r.rule)}`),
    [
      `output ${v} ip saddr @aff_WEB_127_0_0_1_9001_2 ${c} update @aff_WEB_127_0_0_1_9001_2 { ip saddr } counter dnat to 127.0.0.1:9001 comment "iptlb:web"`,
      `output ${v} ip saddr @aff_WEB_127_0_0_1_9003_2 ${c} update @aff_WEB_127_0_0_1_9003_2 { ip saddr } counter dnat to 127.0.0.1:9003 comment "iptlb:web"`,
      `output ${v} ${c} numgen random mod 3 < 1 update @aff_WEB_127_0_0_1_9001_2 { ip saddr } counter dnat to 127.0.0.1:9001 comment "iptlb:web"`,
      `output ${v} ${c} update @aff_WEB_127_0_0_1_9003_2 { ip saddr } counter dnat to 127.0.0.1:9003 comment "iptlb:web"`,
      `output ${v} numgen random mod 3 < 1 counter dnat to 127.0.0.1:9001 comment "iptlb:web"`,
      `output ${v} counter dnat to 127.0.0.1:9003 comment "iptlb:web"`,
    ],
  );
  const rr = planNftProfile(
    validateProfile({ ...base, destination: D, scheduler: 'round-robin', affinity: 5, rulesBackend: 'server' }),
  );
  assert.deepEqual(
    rr.rules.slice(3).map((r) => renderNftRule(r.rule).replace(/ counter.*/, '')),
    [
      `${v} fib daddr type local ${c} numgen inc mod 3 0 update @aff_WEB_127_0_0_1_9001_5 { ip saddr }`,
      `${v} fib daddr type local ${c} numgen inc mod 2 0 update @aff_WEB_127_0_0_1_9002_5 { ip saddr }`,
      `${v} fib daddr type local ${c} update @aff_WEB_127_0_0_1_9003_5 { ip saddr }`,
      `${v} fib daddr type local numgen inc mod 3 0`,
      `${v} fib daddr type local numgen inc mod 2 0`,
      `${v} fib daddr type local`,
    ].map((x) => x.replace(/aff_WEB_C_2/, 'aff_WEB_C_5')),
  );
});

test('nft planner: sets are added before the rules that use them and deleted after; a timeout change renames them; the original profiles plan as before', (t) => {
  process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE = '1';
  t.after(() => delete process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE);
  const plain = validateProfile({ name: 'old', source: '127.100.0.11:80', destination: D });
  const a = validateProfile({ ...base, destination: D, affinity: 2 });
  const steps = planNftChange(pm(plain), pm(plain, a), ['web']);
  assert.equal(steps.length, 1);
  const text = renderNft(steps[0]);
  const firstRule = text.indexOf('add rule');
  for (const d of [9001, 9002, 9003]) {
    const at = text.indexOf(
      `add set ip iptlb aff_WEB_127_0_0_1_${d}_2 { type ipv4_addr; size 131070; flags dynamic,timeout; timeout 2s; }`,
    );
    assert.ok(at >= 0 && at < firstRule, text);
  }
  const clients = text.indexOf(
    'add set ip iptlb aff_WEB_C_2 { type ipv4_addr; size 65535; flags dynamic,timeout; timeout 2s; }',
  );
  assert.ok(clients >= 0 && clients < firstRule, text);
  assert.ok(
    !/add element ip iptlb (be_tcp|out_tcp_3) \{ 127\.100\.0\.10/.test(text),
    'no dispatch element, no backends',
  );
  // timeout 2 -> 3: new sets, the old ones deleted after the rewrite
  const b = validateProfile({ ...base, destination: D, affinity: 3 });
  const t2 = renderNft(planNftChange(pm(plain, a), pm(plain, b), ['web'])[0]);
  assert.ok(t2.indexOf('add set ip iptlb aff_WEB_127_0_0_1_9001_3') < t2.indexOf('flush chain ip iptlb output'));
  assert.ok(t2.indexOf('delete set ip iptlb aff_WEB_127_0_0_1_9001_2') > t2.lastIndexOf('add rule'), t2);
  // deleting it: the rules go, then the sets
  const t3 = renderNft(planNftChange(pm(plain, b), pm(plain), ['web'])[0]);
  assert.ok(t3.indexOf('delete set ip iptlb aff_WEB_127_0_0_1_9003_3') > t3.indexOf('flush chain ip iptlb output'), t3);
  // a rebuild makes the sets too
  assert.match(renderNft(planNftRebuild([plain, b])), /add set ip iptlb aff_WEB_127_0_0_1_9002_3 /);
  // a profile without affinity plans exactly as before (dispatch element and backends)
  assert.equal(planNftProfile(plain).set, 'out_tcp_3');
  assert.deepEqual(planNftProfile(plain).affinitySets, []);
});

test('nft planner: round-robin to affinity is a two-step move (the round-robin rule keeps its backends until the second step)', () => {
  const rr = validateProfile({ ...base, destination: D, scheduler: 'round-robin' });
  const aff = validateProfile({ ...base, destination: D, scheduler: 'round-robin', affinity: 2 });
  const steps = planNftChange(pm(rr), pm(aff), ['web']);
  assert.equal(steps.length, 2);
  const [one, two] = steps.map(renderNft);
  assert.match(one, /numgen inc mod 3 offset 1000003 map @be_tcp/, 'the round-robin rule stays in step 1');
  assert.match(one, /update @aff_WEB_127_0_0_1_9001_2/);
  assert.ok(!/delete element ip iptlb be_tcp/.test(one), one);
  assert.match(two, /delete element ip iptlb be_tcp/);
  assert.ok(!/offset 1000003/.test(two.slice(two.indexOf('flush chain'))), two);
});

/** One rule as `nft -j list` prints it (nft 1.0.6), with a counter. */
function jsonRule(r: NftRule, packets: number): Record<string, unknown> {
  const a = r as Extract<NftRule, { kind: 'aff' }>;
  const m = (left: unknown, right: unknown, op = '=='): unknown => ({ match: { op, left, right } });
  const expr: unknown[] = [
    m({ payload: { protocol: 'ip', field: 'daddr' } }, a.vip.ip),
    m({ payload: { protocol: a.proto, field: 'dport' } }, a.vip.port),
  ];
  if (a.local) expr.push(m({ fib: { result: 'type', flags: ['daddr'] } }, 'local'));
  const update = (set: string): unknown => ({
    set: { op: 'update', elem: { payload: { protocol: 'ip', field: 'saddr' } }, set: `@${set}` },
  });
  if (a.pick.mode === 'hit') expr.push(m({ payload: { protocol: 'ip', field: 'saddr' } }, `@${a.set}`));
  if (a.gate) expr.push(update(a.gate));
  if (a.pick.mode === 'random')
    expr.push(m({ numgen: { mode: 'random', mod: a.pick.mod, offset: 0 } }, a.pick.lt, '<'));
  if (a.pick.mode === 'inc') expr.push(m({ numgen: { mode: 'inc', mod: a.pick.mod, offset: 0 } }, 0));
  if (a.set) expr.push(update(a.set));
  expr.push({ counter: { packets, bytes: packets * 60 } }, { dnat: { addr: a.to.ip, port: a.to.port } });
  return { family: 'ip', table: 'iptlb', chain: 'output', handle: 9, comment: `iptlb:${a.owner}`, expr };
}

test('nft view: affinity rules and sets decode from nft -j (elements the kernel added are not drift); status is in-sync and counts per destination', () => {
  const p = validateProfile({ ...base, destination: D, affinity: 2, scheduler: 'round-robin', rulesBackend: 'server' });
  const plan = planNftProfile(p);
  for (const r of plan.rules) {
    const back = decodeRuleJson(jsonRule(r.rule, 7));
    assert.equal(back.kind, 'aff');
    assert.equal(renderNftRule(back as NftRule), renderNftRule(r.rule));
  }
  const doc = {
    nftables: [
      { metainfo: { version: '1.0.6' } },
      { table: { family: 'ip', name: 'iptlb', handle: 1 } },
      ...plan.affinitySets.map((s) => ({
        set: {
          family: 'ip',
          name: s.name,
          table: 'iptlb',
          type: 'ipv4_addr',
          size: 65535,
          flags: ['timeout'],
          timeout: s.timeout,
          elem: [{ elem: { val: '127.0.0.2', timeout: 2, expires: 1 } }],
        },
      })),
      {
        chain: {
          family: 'ip',
          table: 'iptlb',
          name: 'prerouting',
          type: 'nat',
          hook: 'prerouting',
          prio: -100,
          policy: 'accept',
        },
      },
      ...plan.rules.map((r, i) => ({ rule: { ...jsonRule(r.rule, i + 1), chain: 'prerouting' } })),
    ],
  };
  const view: NftView = parseNftJson(JSON.stringify(doc));
  assert.deepEqual(view.foreign, []);
  assert.equal(view.affinitySets?.length, 4);
  const [r, ...rest] = compareNft(pm(p), view);
  assert.equal(r.status, 'in-sync', JSON.stringify(r));
  assert.deepEqual(rest, []);
  // hits are rules 1-3, choices 4-6, fallback choices 7-9: per destination i, (i + 1) + (i + 4) + (i + 7)
  assert.deepEqual(
    r.destinations.map((d) => d.packets),
    [1 + 4 + 7, 2 + 5 + 8, 3 + 6 + 9],
  );
  assert.equal(r.packets, 45);
  assert.equal(r.affinity, 2);
  // a missing set, or another timeout, is drift; a set no profile uses is an orphan
  const noSet = { ...view, affinitySets: view.affinitySets!.slice(1) };
  assert.match(compareNft(pm(p), noSet)[0].detail ?? '', /affinity set aff_WEB_127_0_0_1_9001_2 is missing/);
  assert.equal(
    compareNft(
      pm(validateProfile({ ...base, destination: D, affinity: 3, scheduler: 'round-robin', rulesBackend: 'server' })),
      view,
    )[0].status,
    'modified',
  );
  const extra = { ...view, affinitySets: [...view.affinitySets!, { name: 'aff_OLD_127_0_0_1_1_9', timeout: 9 }] };
  assert.ok(compareNft(pm(p), extra).some((x) => x.status === 'orphaned' && /aff_OLD/.test(x.detail ?? '')));
});

test("nft affinity sets take no memory before clients come: made without a size, then given their limit (Linux 6.6 and later), or given the kernel's own limit for a set rules update (older kernels)", (t) => {
  t.after(() => delete process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE);
  const plain = validateProfile({ name: 'old', source: '127.100.0.11:80', destination: D });
  const a = validateProfile({ ...base, destination: D.slice(0, 2), affinity: 2 });
  const sets = (): string[] =>
    renderNft(planNftChange(pm(plain), pm(plain, a), ['web'])[0])
      .split('\n')
      .filter((l) => l.startsWith('add set ip iptlb aff_'));
  const line = (name: string, size: number): string =>
    `add set ip iptlb ${name} { type ipv4_addr; ${size ? `size ${size}; ` : ''}flags dynamic,timeout; timeout 2s; }`;
  const C = 'aff_WEB_C_2';
  const [d1, d2] = ['aff_WEB_127_0_0_1_9001_2', 'aff_WEB_127_0_0_1_9002_2'];
  // the kernel sizes a set's hash table by the size it is made with (2 MB for 65,535, empty); a second `add set`
  // with a size only sets the limit of the set the first one made
  process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE = '1';
  assert.deepEqual(
    sets().sort(),
    [C, C, d1, d1, d2, d2].map((n, i) => line(n, i % 2 ? (n === C ? 65535 : 131070) : 0)).sort(),
  );
  const ops = planNftRebuild([a]).ops.filter((o) => o.op === 'addAffinitySet');
  assert.deepEqual(
    ops.find((o) => o.name === C),
    { op: 'addAffinitySet', name: C, timeout: 2, size: 65535, sizeByUpdate: true },
  );
  // in that order: the set first, its size after
  const text = renderNft(planNftRebuild([a]));
  assert.ok(text.indexOf(line(C, 0)) < text.indexOf(line(C, 65535)), text);
  // an older kernel: no size; the kernel gives a set that rules update 65,535, the client limit; a client set of
  // another limit is made with it
  process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE = '0';
  assert.deepEqual(sets().sort(), [line(C, 0), line(d1, 0), line(d2, 0)].sort());
  process.env.IPTLB_TEST_AFFINITY_CLIENTS = '6';
  t.after(() => delete process.env.IPTLB_TEST_AFFINITY_CLIENTS);
  assert.deepEqual(sets().sort(), [line(C, 6), line(d1, 0), line(d2, 0)].sort());
  delete process.env.IPTLB_TEST_AFFINITY_CLIENTS;
  // the kernel's release decides without the override: 6.5 took the size of an existing set (checked from 6.6)
  delete process.env.IPTLB_TEST_NFT_SET_SIZE_UPDATE;
  for (const [release, yes] of [
    ['6.1.0-28-amd64', false],
    ['5.14.0-427.el9.x86_64', false],
    ['6.5.0-1', false],
    ['6.6.0', true],
    ['6.18.44-fc-v1272', true],
    ['7.0.1', true],
    ['', false],
    ['x', false],
  ] as const)
    assert.equal(kernelUpdatesSetSize(release), yes, release);
});
