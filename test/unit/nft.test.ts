/** The nft engine's pure layers: planner, rendering, reading back (nft -j) and drift. No root. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planNftChange, planNftRebuild, baseContent, dispatchSetUsage } from '../../src/engines/nft/plan.js';
import { type NftOp, type NftView } from '../../src/engines/nft/ops.js';
import { renderNft, renderNftRule } from '../../src/engines/nft/render.js';
import { compareNft, decodeRuleJson, parseNftJson } from '../../src/engines/nft/view.js';
import { validateProfile } from '../../src/model/profile.js';
import { parseEngineChoice, selectEngine } from '../../src/engines/select.js';
import type { Profile } from '../../src/model/types.js';

const web = validateProfile({
  name: 'web',
  source: '127.100.0.10:8080',
  destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
});
const dns = validateProfile({
  name: 'dns',
  source: '127.100.0.11:53',
  protocol: 'udp',
  rulesBackend: 'server',
  logEnabled: true,
  destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
});
const px = validateProfile({
  name: 'px',
  source: '127.100.0.12:80',
  rulesBackend: 'proxy',
  masquerade: true,
  destination: ['127.0.0.1:9001'],
});
const m = (...ps: Profile[]): Map<string, Profile> => new Map(ps.map((p) => [p.name, p]));
const kinds = (ops: NftOp[]): string[] => ops.map((o) => o.op);

test('first profile: skeleton, its set, backends before the dispatch element, then the dispatch rule', () => {
  const [tx, ...more] = planNftChange(new Map(), m(web), ['web']);
  assert.equal(more.length, 0);
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
  assert.match(text, /add set ip iptlb out_tcp_3 \{ type ipv4_addr \. inet_service; counter; \}/);
  // three destinations use indices 3, 4, 5 (T(3) = 3): each count has its own range
  assert.match(
    text,
    /add element ip iptlb be_tcp \{ 127\.100\.0\.10 \. 8080 \. 3 : 127\.0\.0\.1 \. 9001, .* \. 5 : 127\.0\.0\.1 \. 9003 \}/,
  );
  assert.match(
    text,
    /add rule ip iptlb output ip daddr \. tcp dport @out_tcp_3 dnat to ip daddr \. tcp dport \. numgen random mod 3 offset 3 map @be_tcp/,
  );
});

test('replacing destinations with the same count touches elements only, whatever else exists', () => {
  const others = Array.from({ length: 1000 }, (_, i) =>
    validateProfile({
      name: `p${i}`,
      source: `127.101.${i >> 8}.${i & 255}:80`,
      destination: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'],
    }),
  );
  const moved = { ...web, destination: ['127.0.0.1:9004', '127.0.0.1:9005', '127.0.0.1:9006'] };
  const [tx, ...more] = planNftChange(m(web, ...others), m(moved, ...others), ['web']);
  assert.equal(more.length, 0, 'one transaction');
  assert.deepEqual(kinds(tx.ops), [
    'deleteDispatchElements',
    'deleteBackendElements',
    'addBackendElements',
    'addDispatchElements',
  ]);
  assert.equal(renderNft(tx).split('\n').filter(Boolean).length, 4);
});

test('re-applying a profile unchanged (a reset with the same destinations) plans no element change', () => {
  // Re-applying the same profile (a reset with the same destinations) plans no element change at all.
  const same = planNftChange(m(web, dns), m({ ...web }, dns), ['web']);
  assert.ok(
    same.every((t) => !t.ops.some((o) => /Elements$/.test(o.op))),
    JSON.stringify(same),
  );
});

test('a new destination count moves the profile in two steps: into the new set, then out of the old one', () => {
  const steps = planNftChange(m(web, dns), m({ ...web, destination: ['127.0.0.1:9001'] }, dns), ['web']);
  assert.equal(steps.length, 2);
  const [first, second] = steps.map(renderNft);
  // step 1: the new set and its rule beside the old one; the new backend (index T(1) = 0) beside the old ones (3..5)
  assert.match(first, /add set ip iptlb out_tcp_1 /);
  assert.match(first, /add element ip iptlb be_tcp \{ 127\.100\.0\.10 \. 8080 \. 0 : 127\.0\.0\.1 \. 9001 \}/);
  assert.match(first, /add element ip iptlb out_tcp_1 \{ 127\.100\.0\.10 \. 8080 \}/);
  assert.match(
    first,
    /flush chain ip iptlb output\nadd rule ip iptlb output ip daddr \. tcp dport @out_tcp_1 .*\nadd rule ip iptlb output ip daddr \. tcp dport @out_tcp_3 /,
  );
  assert.doesNotMatch(first, /delete/);
  // step 2: the old elements, rule and set go
  assert.match(
    second,
    /^delete element ip iptlb out_tcp_3 \{ 127\.100\.0\.10 \. 8080 \}\ndelete element ip iptlb be_tcp \{ 127\.100\.0\.10 \. 8080 \. 3, 127\.100\.0\.10 \. 8080 \. 4, 127\.100\.0\.10 \. 8080 \. 5 \}\nflush chain ip iptlb output\nadd rule ip iptlb output ip daddr \. tcp dport @out_tcp_1 [^\n]*\ndelete set ip iptlb out_tcp_3\n$/,
  );
  // a change of mode only (same address, protocol and count) replaces the backends in place in step 1
  const [m1, m2] = planNftChange(m(web, dns), m({ ...web, rulesBackend: 'proxy' }, dns), ['web']).map(renderNft);
  assert.match(m1, /delete element ip iptlb be_tcp /);
  assert.doesNotMatch(m2, /be_tcp/);
});

test('logging and masquerade are rules of their own, with the comment iptlb:<name>', () => {
  const text = renderNft(planNftChange(new Map(), m(dns, px), ['dns', 'px'])[0]);
  assert.match(
    text,
    /add rule ip iptlb prerouting ip daddr 127\.100\.0\.11 udp dport 53 fib daddr type local log prefix "IPTLB:VIP:DNS:" level warn comment "iptlb:dns"/,
  );
  assert.match(text, /log prefix "IPTLB:DNS:" level warn comment "iptlb:dns"/);
  assert.match(
    text,
    /add rule ip iptlb postrouting ct status dnat ct original ip daddr 127\.100\.0\.12 ct original protocol tcp ct original proto-dst 80 masquerade comment "iptlb:px"/,
  );
  assert.match(text, /fib daddr type local ip daddr \. udp dport @loc_udp_2 dnat to/);
  assert.match(text, /add rule ip iptlb prerouting ip daddr \. tcp dport @pre_tcp_1 dnat to/);
  // logging rules come before the dispatch rules of their chain
  const pre = text.split('\n').filter((l) => l.startsWith('add rule ip iptlb prerouting'));
  assert.ok(pre.findIndex((l) => l.includes('log prefix')) < pre.findIndex((l) => l.includes('dnat to')));
});

test('the last profile deleted removes the table; a rebuild replaces it in one transaction', () => {
  assert.deepEqual(kinds(planNftChange(m(web), new Map(), ['web'])[0].ops), ['addTable', 'deleteTable']);
  assert.deepEqual(planNftChange(new Map(), new Map(), []), []);
  const rebuild = planNftRebuild([web, dns], 7);
  assert.deepEqual(kinds(rebuild.ops).slice(0, 3), ['addTable', 'deleteTable', 'addTable']);
  assert.equal(rebuild.expectGenid, 7);
});

test('elements are written 512 to a line, so no netlink message outgrows the socket buffer', () => {
  const many = Array.from({ length: 1200 }, (_, i) =>
    validateProfile({ name: `p${i}`, source: `127.101.${i >> 8}.${i & 255}:80`, destination: ['127.0.0.1:1'] }),
  );
  const lines = renderNft(planNftRebuild(many))
    .split('\n')
    .filter((l) => l.startsWith('add element ip iptlb out_tcp_1'));
  assert.deepEqual(
    lines.map((l) => l.split(' . 80').length - 1),
    [512, 512, 176],
  );
});

test('base content depends on modes, protocols and counts, not on addresses', () => {
  const a = baseContent([web, { ...web, name: 'w2', source: '127.100.0.20:1' }]);
  assert.equal(a.chains.output.length, 1);
  assert.deepEqual(a.sets, ['out_tcp_3']);
});

// What `nft -j list table ip iptlb` prints on this machine (nft 1.0.6) for the three shapes.
const RULES = {
  dispatch: {
    handle: 17,
    expr: [
      { match: { op: '==', left: { fib: { result: 'type', flags: ['daddr'] } }, right: 'local' } },
      {
        match: {
          op: '==',
          left: {
            concat: [{ payload: { protocol: 'ip', field: 'daddr' } }, { payload: { protocol: 'udp', field: 'dport' } }],
          },
          right: '@loc_udp_2',
        },
      },
      {
        dnat: {
          family: 'ip',
          addr: {
            map: {
              key: {
                concat: [
                  { payload: { protocol: 'ip', field: 'daddr' } },
                  { payload: { protocol: 'udp', field: 'dport' } },
                  { numgen: { mode: 'random', mod: 2, offset: 1 } },
                ],
              },
              data: '@be_udp',
            },
          },
        },
      },
    ],
  },
  log: {
    handle: 19,
    comment: 'iptlb:dns',
    expr: [
      { match: { op: '==', left: { payload: { protocol: 'ip', field: 'daddr' } }, right: '127.100.0.11' } },
      { match: { op: '==', left: { payload: { protocol: 'udp', field: 'dport' } }, right: 53 } },
      { match: { op: '==', left: { fib: { result: 'type', flags: ['daddr'] } }, right: 'local' } },
      { log: { prefix: 'IPTLB:VIP:DNS:' } },
    ],
  },
  masq: {
    handle: 18,
    comment: 'iptlb:px',
    expr: [
      { match: { op: 'in', left: { ct: { key: 'status' } }, right: 'dnat' } },
      { match: { op: '==', left: { ct: { key: 'ip daddr', dir: 'original' } }, right: '127.100.0.12' } },
      { match: { op: '==', left: { ct: { key: 'protocol' } }, right: 'tcp' } },
      { match: { op: '==', left: { ct: { key: 'proto-dst', dir: 'original' } }, right: 80 } },
      { masquerade: null },
    ],
  },
};

test('rules read back with nft -j decode to what was planned; anything else is foreign', () => {
  const planned = baseContent([dns, px]).chains;
  assert.equal(
    renderNftRule(decodeRuleJson(RULES.dispatch) as never),
    renderNftRule(planned.prerouting.find((r) => r.kind === 'dispatch' && r.proto === 'udp')!),
  );
  assert.equal(renderNftRule(decodeRuleJson(RULES.log) as never), renderNftRule(planned.prerouting[0]));
  assert.equal(renderNftRule(decodeRuleJson(RULES.masq) as never), renderNftRule(planned.postrouting[0]));
  assert.equal(decodeRuleJson({ handle: 3, expr: [{ accept: null }] }).kind, 'foreign');
  assert.equal(decodeRuleJson({ ...RULES.log, comment: 'someone else' }).kind, 'foreign');
});

function viewOf(profiles: Profile[]): NftView {
  const json = {
    nftables: [
      { table: { family: 'ip', name: 'iptlb' } },
      {
        set: {
          name: 'out_tcp_3',
          elem: [{ elem: { val: { concat: ['127.100.0.10', 8080] }, counter: { packets: 30, bytes: 1800 } } }],
        },
      },
      {
        map: {
          name: 'be_tcp',
          elem: profiles[0].destination.map((d, i) => [
            { elem: { val: { concat: ['127.100.0.10', 8080, 3 + i] }, counter: { packets: 10 + i, bytes: 600 } } },
            { concat: [d.split(':')[0], Number(d.split(':')[1])] },
          ]),
        },
      },
      { chain: { name: 'output' } },
      {
        rule: {
          chain: 'output',
          expr: [
            {
              match: {
                op: '==',
                left: {
                  concat: [
                    { payload: { protocol: 'ip', field: 'daddr' } },
                    { payload: { protocol: 'tcp', field: 'dport' } },
                  ],
                },
                right: '@out_tcp_3',
              },
            },
            {
              dnat: {
                family: 'ip',
                addr: {
                  map: {
                    key: {
                      concat: [
                        { payload: { protocol: 'ip', field: 'daddr' } },
                        { payload: { protocol: 'tcp', field: 'dport' } },
                        { numgen: { mode: 'random', mod: 3, offset: 3 } },
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
      { chain: { name: 'zombie' } },
    ],
  };
  return parseNftJson(JSON.stringify(json));
}

test('drift: in-sync with counters, modified, missing, and what nobody owns', () => {
  const view = viewOf([web]);
  assert.equal(view.exists, true);
  const reports = compareNft(m(web), view);
  // Another tool's chain is neither drift nor an orphan: every change and sync keeps it.
  assert.deepEqual(view.foreign, ['zombie']);
  assert.equal(reports.length, 1);
  const [r] = reports;
  assert.equal(r.status, 'in-sync');
  assert.equal(r.packets, 30);
  assert.deepEqual(
    r.destinations.map((d) => d.packets),
    [10, 11, 12],
  );
  const moved = compareNft(m({ ...web, destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9009'] }), view)[0];
  assert.equal(moved.status, 'modified');
  assert.match(moved.detail!, /2 of its 3 destinations/);
  assert.equal(compareNft(m(dns), view)[0].status, 'missing');
  assert.equal(compareNft(m(web), parseNftJson(''))[0].detail, 'table ip iptlb does not exist');
});

test('engine choice: legacy, nft or auto, anything else names the field', async () => {
  assert.equal(parseEngineChoice(undefined), 'auto');
  assert.equal(parseEngineChoice('NFT'), 'nft');
  assert.throws(
    () => parseEngineChoice('iptables'),
    /^IptlbError: engine: "iptables" is not one of legacy, nft, auto$/,
  );
  const never = { legacyHasRules: async () => assert.fail('probed'), nftHasRules: async () => assert.fail('probed') };
  // The engine `iptlb migrate` recorded: asked for, or taken by auto, without asking the kernel.
  const recorded = { engine: 'legacy', file: '/s/state.db.engine' } as const;
  assert.deepEqual(await selectEngine('legacy', never, recorded), {
    engine: 'legacy',
    reason: 'legacy engine requested',
  });
  assert.equal((await selectEngine('auto', never, recorded)).engine, 'legacy');
  assert.equal(
    (await selectEngine('nft', never, recorded)).refusal,
    "engine: nft was asked for (--engine, IPTLB_ENGINE or the engine option), but `iptlb migrate` moved this state file's profiles to the legacy engine (/s/state.db.engine): run `iptlb migrate --to nft` to move them, or leave the engine auto",
  );
  // Without a record, an explicit engine asks only the other one, and refuses changes while it holds iptlb's rules.
  const nft = (has: boolean) => ({ ...never, natExists: () => true, nftHasRules: async () => has });
  assert.deepEqual(await selectEngine('legacy', nft(false)), { engine: 'legacy', reason: 'legacy engine requested' });
  assert.match(
    (await selectEngine('legacy', nft(true))).refusal ?? '',
    /^engine: legacy was asked for \(--engine, IPTLB_ENGINE or the engine option\), but iptlb's rules are in the nft engine: run `iptlb migrate --to legacy`/,
  );
});

test('with the usage counts of the profiles, a change that leaves the base chains alone is planned in O(change)', () => {
  const others = Array.from({ length: 20000 }, (_, i) =>
    validateProfile({
      name: `p${i}`,
      source: `127.101.${i >> 8}.${i & 255}:80`,
      destination: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'],
    }),
  );
  const prev = m(web, ...others);
  const next = m({ ...web, destination: ['127.0.0.1:9004', '127.0.0.1:9005', '127.0.0.1:9006'] }, ...others);
  const usage = dispatchSetUsage(prev.values());
  assert.deepEqual(kinds(planNftChange(prev, next, ['web'], usage)[0].ops), [
    'deleteDispatchElements',
    'deleteBackendElements',
    'addBackendElements',
    'addDispatchElements',
  ]);
  // the same plan as without the counts
  assert.deepEqual(planNftChange(prev, next, ['web'], usage), planNftChange(prev, next, ['web']));
  // a set that stops being used, or logging, takes the full path: same result as without counts
  const alone = m(web, dns);
  const moved = m({ ...web, destination: ['127.0.0.1:9001'] }, dns);
  assert.deepEqual(
    planNftChange(alone, moved, ['web'], dispatchSetUsage(alone.values())),
    planNftChange(alone, moved, ['web']),
  );
  const logged = m({ ...web, logEnabled: true }, dns);
  assert.deepEqual(
    planNftChange(alone, logged, ['web'], dispatchSetUsage(alone.values())),
    planNftChange(alone, logged, ['web']),
  );
});

test('a dispatch set the kernel still fills keeps its rule (left by a process killed before it wrote the state)', () => {
  const prev = m(web, dns);
  const next = m({ ...web, destination: ['127.0.0.1:9001'] }, dns);
  const kernel = new Map([
    ['out_tcp_3', 1],
    ['loc_udp_2', 1],
    ['out_tcp_5', 2],
  ]);
  const [first, second] = planNftChange(prev, next, ['web'], dispatchSetUsage(prev.values()), kernel).map(renderNft);
  assert.match(first, /@out_tcp_5 dnat/, 'the unknown but filled set keeps its rule');
  assert.match(
    second,
    /add rule ip iptlb output ip daddr \. tcp dport @out_tcp_1 [^\n]*\nadd rule ip iptlb output ip daddr \. tcp dport @out_tcp_5 /,
  );
  assert.match(second, /delete set ip iptlb out_tcp_3\n/);
  assert.doesNotMatch(first + second, /delete set ip iptlb out_tcp_5/);
});

test("a foreign rule's orphan name does not change as packets pass (its counters' values are not part of it)", async () => {
  const { emptyNftView } = await import('../../src/engines/nft/view.js');
  const names = [
    '[ counter pkts 0 bytes 0 ]',
    '[ counter pkts 17 bytes 1020 ]',
    '{"counter":{"packets":3,"bytes":180}}',
  ].map((text) => {
    const view = emptyNftView();
    view.exists = true;
    view.chains.push({ name: 'output', rules: [{ kind: 'foreign', text }] });
    return compareNft(new Map(), view).map((r) => r.name);
  });
  assert.deepEqual(names[0], names[1]);
  assert.deepEqual(names[0], ['foreign:output:[ counter pkts N bytes N ]']);
  assert.deepEqual(names[2], ['foreign:output:{"counter":{"packets":N,"bytes":N}}']);
});
