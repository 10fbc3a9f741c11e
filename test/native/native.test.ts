/**
 * The native addon: argument checking (no root), and in throwaway namespaces: equivalence with
 * iptables-legacy-restore on random plans, coexistence with another writer, error mapping, memory.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { loadAddon } from '../../src/native/addon.js';
import { selectExecutor } from '../../src/executors/index.js';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { KERNEL_SKIP, runSteps, cli } from '../kernel/common.js';

const loaded = loadAddon();
const NO_ADDON = loaded.ok ? false : `native addon unavailable: ${loaded.reason}: ${loaded.detail}`;
const SOAK = !!process.env.IPTLB_SOAK;
const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;

describe('native addon: input checking (no root needed)', { skip: NO_ADDON }, () => {
  const addon = loaded.ok ? loaded.addon : (null as never);
  const tx = { family: 'ipv4', table: 'nat', owners: [], deleteChains: [], chains: [], hookRules: [] };
  const rule = { matches: [], target: { name: 'RETURN' } };
  const cases: [string, unknown, RegExp][] = [
    ['not an object', 42, /transaction: must be an object/],
    ['wrong table', { ...tx, table: 'filter' }, /table/],
    ['owners not an array', { ...tx, owners: 'x' }, /owners: must be an array/],
    ['chain name too long', { ...tx, chains: [{ name: 'X'.repeat(29), rules: [] }] }, /chains\[0\]\.name: is longer than 28/],
    ['empty chain name', { ...tx, deleteChains: [''] }, /deleteChains\[0\]: must not be empty/],
    ['rules not an array', { ...tx, chains: [{ name: 'C', rules: {} }] }, /rules: must be an array/],
    ['unknown target', { ...tx, chains: [{ name: 'C', rules: [{ ...rule, target: { name: 'ACCEPT' } }] }] }, /unknown target/],
    ['unknown match', { ...tx, chains: [{ name: 'C', rules: [{ ...rule, matches: [{ name: 'mark' }] }] }] }, /unknown match/],
    ['port out of range', { ...tx, chains: [{ name: 'C', rules: [{ proto: 'tcp', matches: [{ name: 'tcp', dport: 70000 }], target: { name: 'RETURN' } }] }] }, /dport/],
    ['port without its protocol', { ...tx, chains: [{ name: 'C', rules: [{ matches: [{ name: 'tcp', dport: 80 }], target: { name: 'RETURN' } }] }] }, /proto/],
    ['bad DNAT address', { ...tx, chains: [{ name: 'C', rules: [{ ...rule, target: { name: 'DNAT', toDestination: '1.2.3:4' } }] }] }, /toDestination/],
    ['LOG prefix too long', { ...tx, chains: [{ name: 'C', rules: [{ ...rule, target: { name: 'LOG', prefix: 'x'.repeat(30), level: 4 } }] }] }, /prefix/],
    ['LOG level out of range', { ...tx, chains: [{ name: 'C', rules: [{ ...rule, target: { name: 'LOG', prefix: 'x', level: 9 } }] }] }, /level/],
    ['comment too long', { ...tx, hookRules: [{ chain: 'OUTPUT', owner: 'o', rule: { ...rule, matches: [{ name: 'comment', comment: 'c'.repeat(300) }] } }] }, /comment/],
    ['hook chain INPUT', { ...tx, hookRules: [{ chain: 'INPUT', owner: 'o', rule }] }, /chain: must be OUTPUT, PREROUTING or POSTROUTING/],
    ['probability not a number', { ...tx, chains: [{ name: 'C', rules: [{ ...rule, matches: [{ name: 'statistic', mode: 'random', probability: 'half' }] }] }] }, /probability/],
    ['dst garbage', { ...tx, chains: [{ name: 'C', rules: [{ ...rule, dst: '300.1.1.1/32' }] }] }, /dst/],
  ];
  for (const [label, value, re] of cases) {
    test(`TypeError: ${label}`, () => {
      assert.throws(() => addon.commit(value as never), (e: Error) => e instanceof TypeError && re.test(e.message));
    });
  }
  test('flock() and commit() options are checked', () => {
    assert.throws(() => addon.flock(1 as never, 10), TypeError);
    assert.throws(() => addon.flock('/tmp/x', -1), TypeError);
    assert.throws(() => addon.commit(tx as never, { lockWaitMs: 'soon' } as never), TypeError);
  });
  test('auto selects the native executor when the addon loads', () => {
    assert.equal(selectExecutor('auto').executor.kind, 'native');
  });
});

describe('native addon in the kernel', { skip: NO_ADDON || KERNEL_SKIP }, () => {
  test('200 random profile sets: iptables-legacy-save identical to iptables-legacy-restore of the same plan; read() decodes them', async () => {
    const r = (await runJsonInFreshNetns(fixture('equivalence.js'), ['200'], { timeoutMs: 300_000 })) as { sets: number; rules: number; mismatches: string[]; mismatchCount: number };
    assert.equal(r.sets, 200);
    assert.ok(r.rules > 2000, `only ${r.rules} rules compared`);
    assert.equal(r.mismatchCount, 0, r.mismatches.join('\n'));
  });

  test('while another process rewrites the table, 2,000 commits lose no foreign rule and none of their own', async () => {
    const r = (await runJsonInFreshNetns(fixture('contention.js'), [SOAK ? '10000' : '2000'], { timeoutMs: 300_000 })) as {
      foreignFixed: number;
      foreignJump: boolean;
      wrong: string[];
    };
    assert.equal(r.foreignFixed, 20, 'all 20 foreign rules survive');
    assert.ok(r.foreignJump, 'the foreign jump survives');
    assert.deepEqual(r.wrong, [], 'every profile is as its last commit left it');
  });

  test('a kernel refusal is an EKERNEL error with errno and libiptc\'s message; nothing changes', async () => {
    const r = await runSteps([
      { op: 'sh', argv: ['iptables-legacy', '-t', 'nat', '-N', 'IPTLB_NAT_WEB'] },
      { op: 'sh', argv: ['iptables-legacy', '-t', 'nat', '-A', 'INPUT', '-j', 'IPTLB_NAT_WEB'] },
      cli('native', '--json', '-run', '-profile=web', '-src-addr=127.100.0.10:80', '-dest-addr=127.0.0.1:9001'),
    ]);
    assert.equal(r[2].code, 1);
    assert.match(r[2].stderr, /iptc_commit: .*\(errno 22\)/);
  });

  test(`memory: ${SOAK ? '100,000' : '10,000'} apply/read/delete cycles grow RSS by less than 5 MB`, async () => {
    const n = SOAK ? 100_000 : 10_000;
    const r = (await runJsonInFreshNetns(fixture('rss.js'), [String(n)], { timeoutMs: 600_000 })) as { rssGrowthMB: number; msPerCycle: number };
    assert.ok(r.rssGrowthMB < 5, `RSS grew ${r.rssGrowthMB.toFixed(2)} MB over ${n} cycles`);
  });
});
