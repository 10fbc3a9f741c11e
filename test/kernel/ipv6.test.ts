/**
 * IPv6 (issue 8, part 2) with real traffic in fresh network namespaces, on every engine × executor
 * pair: a weighted split over IPv6 destinations within a chi-square bound, beside an IPv4 profile
 * that keeps working; round-robin's exact rotation; a profile moving between families; a profile
 * mixing families refused with nothing changed; UDP, and a pinned UDP flow that leaves a removed
 * destination; session affinity per IPv6 client address, and its expiry. The split, the rotation and
 * affinity run on the native pairs only (rulesOnly: the spawn executors commit the same rules, and
 * the same checks over IPv4 run on all four pairs in weights.test.ts and affinity.test.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertSplit } from '../harness/stats.js';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { describePairs, rulesOnly } from './common.js';

const FX = new URL('./fixtures/ipv6.js', import.meta.url).pathname;
const run = (pair: string, mode: string): Promise<any> => runJsonInFreshNetns(FX, [pair, mode], { timeoutMs: 180_000 });
const countsOf = (split: { counts: Record<string, number> }, ports: number[]): number[] =>
  ports.map((p) => split.counts[`backend:${p}`] ?? 0);
const ok = (r: { code: number; stderr: string }, what: string): void => assert.equal(r.code, 0, `${what}: ${r.stderr}`);

describePairs('IPv6', (pair) => {
  if (rulesOnly(pair))
    test('weights 1,2,3 over IPv6: 600 connections split 1:2:3; an IPv4 profile beside it; delete leaves no IPv6 object and IPv4 balancing', async () => {
      const r = await run(pair.name, 'split');
      ok(r.apply, 'apply IPv6');
      ok(r.apply4, 'apply IPv4');
      assert.equal(r.split.failures, 0, JSON.stringify(r.split.errors));
      assertSplit(countsOf(r.split, [9001, 9002, 9003]), [1, 2, 3]);
      assert.equal(r.split4.failures, 0, JSON.stringify(r.split4.errors));
      assert.equal(
        countsOf(r.split4, [9101, 9102]).reduce((a, b) => a + b, 0),
        100,
      );
      assert.equal(r.status.inSync, true, JSON.stringify(r.status));
      const web6 = r.status.profiles.find((p: any) => p.name === 'web6');
      assert.deepEqual(
        web6.destinations.map((d: any) => [d.destination, d.weight, d.packets]),
        [
          ['[2001:db8::1]:9001', undefined, r.split.counts['backend:9001']],
          ['[2001:db8::2]:9002', 2, r.split.counts['backend:9002']],
          ['[2001:db8::3]:9003', 3, r.split.counts['backend:9003']],
        ],
        'per-destination counters equal the connections each backend served',
      );
      assert.match(
        r.list,
        /web6\t\[2001:db8::10\]:80\/tcp\tclient\t\[2001:db8::1\]:9001,\[2001:db8::2\]:9002\*2,\[2001:db8::3\]:9003\*3/,
      );
      ok(r.show, 'show');
      assert.match(
        r.show.stdout,
        pair.engine === 'nft' ? /kernel \(table ip6 iptlb, / : /kernel \(ip6tables nat table, /,
      );
      // The state file: IPv6 endpoints single-quoted, as the original's YAML library writes them.
      assert.match(
        r.state,
        /^web6:\n  destination:\n  - '\[2001:db8::1\]:9001'\n  - '\[2001:db8::2\]:9002'\n  - '\[2001:db8::3\]:9003'\n/m,
      );
      assert.match(
        r.state,
        /  source: '\[2001:db8::10\]:80'\n  weights:\n    '\[2001:db8::2\]:9002': 2\n    '\[2001:db8::3\]:9003': 3\n/,
      );
      // Each family's objects in its own table.
      assert.match(r.kernelBefore.v6, /2001:db8::10/);
      assert.doesNotMatch(r.kernelBefore.v6, /127\.100\.0\.10/);
      assert.match(r.kernelBefore.v4, /127\.100\.0\.10/);
      assert.doesNotMatch(r.kernelBefore.v4, /2001:db8/);
      ok(r.delete, 'delete IPv6');
      assert.doesNotMatch(
        r.kernelAfter.v6,
        pair.engine === 'nft' ? /2001:db8::10|iptlb:/ : /IPTLB|iptlb/,
        'no IPv6 object of the profile is left',
      );
      assert.equal(r.kernelAfter.v4, r.kernelBefore.v4, 'the IPv4 table is untouched by the IPv6 delete');
      assert.equal(r.afterDelete.failures, 5, 'the IPv6 virtual address no longer balances');
      assert.equal(r.split4After.failures, 0, JSON.stringify(r.split4After.errors));
      assert.equal(r.statusAfter.inSync, true, JSON.stringify(r.statusAfter));
      assert.deepEqual(
        r.statusAfter.profiles.map((p: any) => p.name),
        ['web4'],
      );
    });

  if (rulesOnly(pair))
    test('round-robin over IPv6: 30 connections one after the other are an exact rotation', async () => {
      const r = await run(pair.name, 'rr');
      ok(r.apply, 'apply');
      const first = [9001, 9002, 9003];
      assert.deepEqual(r.seq.slice(0, 3), first, r.seq.join(','));
      r.seq.forEach((v: number, i: number) => assert.equal(v, first[i % 3], `connection ${i}: ${r.seq.join(',')}`));
      assert.equal(r.status.inSync, true, JSON.stringify(r.status));
      assert.deepEqual(
        r.status.profiles[0].destinations.map((d: any) => d.packets),
        [10, 10, 10],
      );
    });

  test('a profile moves from IPv4 to IPv6 and back; a profile mixing families is refused, naming the field, with nothing changed', async () => {
    const r = await run(pair.name, 'move');
    ok(r.apply4, 'apply IPv4');
    assert.equal(r.split4.failures, 0, JSON.stringify(r.split4.errors));
    ok(r.move6, 'move to IPv6');
    assert.doesNotMatch(r.kernel6.v4, /127\.100\.0\.10|IPTLB_NAT_MOVER|iptlb:mover/, 'the IPv4 objects are gone');
    assert.match(r.kernel6.v6, /2001:db8::11/);
    assert.equal(r.split6.failures, 0, JSON.stringify(r.split6.errors));
    assert.equal(
      countsOf(r.split6, [9001, 9002]).reduce((a, b) => a + b, 0),
      40,
    );
    assert.equal(r.old4.failures, 3, 'the old IPv4 virtual address no longer balances');
    assert.equal(r.status6.inSync, true, JSON.stringify(r.status6));
    assert.notEqual(r.mixed.code, 0);
    assert.match(
      r.mixed.stderr,
      /destination\[1\]: "127\.0\.0\.1:9101" is IPv4 but source "\[2001:db8::10\]:81" is IPv6/,
    );
    assert.equal(r.mixed.stderr.trim().split('\n').length, 1, r.mixed.stderr);
    assert.notEqual(r.unbracketed.code, 0);
    assert.match(
      r.unbracketed.stderr,
      /source: "2001:db8::10:81" is an IPv6 address without brackets; write it as \[ipv6\]:port/,
    );
    assert.equal(r.unchanged, true, 'refused changes leave the state file and the kernel as they were');
    ok(r.back4, 'back to IPv4');
    assert.doesNotMatch(
      r.kernel4.v6,
      pair.engine === 'nft' ? /2001:db8::11|iptlb:mover/ : /IPTLB_NAT_MOVER|iptlb:mover/,
    );
    assert.equal(r.split4b.failures, 0, JSON.stringify(r.split4b.errors));
    assert.equal(r.status4.inSync, true, JSON.stringify(r.status4));
  });

  test('UDP over IPv6; a pinned flow to a removed destination moves to the one left (its conntrack entry is deleted)', async () => {
    const r = await run(pair.name, 'udp');
    ok(r.apply, 'apply');
    assert.equal(r.split.failures, 0, JSON.stringify(r.split.errors));
    assert.ok(
      countsOf(r.split, [9001, 9002]).every((c) => c > 0),
      JSON.stringify(r.split.counts),
    );
    assert.equal(new Set(r.pinned).size, 1, `a pinned flow stays on one destination: ${r.pinned}`);
    ok(r.reset, 'reset');
    assert.ok(!r.after.includes(`backend:${r.gone}`), `no datagram reached the removed destination: ${r.after}`);
    assert.ok(
      r.after.every((x: string) => x === `backend:${r.gone === 9001 ? 9002 : 9001}`),
      `the flow went to the destination left: ${r.after}`,
    );
    assert.equal(r.status.inSync, true, JSON.stringify(r.status));
  });

  test('drift of the IPv6 profile: status names it, plan prints IPv6 rules, sync repairs it alone and traffic flows again', async () => {
    const r = await run(pair.name, 'sync');
    ok(r.apply6, 'apply IPv6');
    ok(r.apply4, 'apply IPv4');
    ok(r.plan, 'plan');
    assert.match(
      r.plan.stdout,
      pair.engine === 'nft'
        ? /add element ip6 iptlb be_tcp \{ 2001:db8::10 \. 80 \. 3 : 2001:db8::1 \. 9001, /
        : /-d 2001:db8::10\/128 .*-j DNAT --to-destination \[2001:db8::3\]:9003/,
    );
    assert.equal(r.broken.failures, 3, 'with its rules gone the IPv6 virtual address does not balance');
    const byName = (s: any): Record<string, string> =>
      Object.fromEntries(s.profiles.map((p: any) => [p.name, p.status]));
    assert.equal(r.drifted.inSync, false);
    assert.deepEqual(
      byName(r.drifted),
      { web4: 'in-sync', web6: pair.engine === 'nft' ? 'missing' : 'modified' },
      JSON.stringify(r.drifted),
    );
    ok(r.sync, 'sync');
    assert.equal(r.status.inSync, true, JSON.stringify(r.status));
    assert.deepEqual(byName(r.status), { web4: 'in-sync', web6: 'in-sync' });
    assert.equal(r.v4Unchanged, true, 'sync left the IPv4 table as it was');
    assert.equal(r.split6.failures, 0, JSON.stringify(r.split6.errors));
  });

  test('migrate to the other engine and back with an IPv4 and an IPv6 profile: both tables of each engine, both keep balancing', async () => {
    const r = await run(pair.name, 'migrate');
    ok(r.apply6, 'apply IPv6');
    ok(r.apply4, 'apply IPv4');
    ok(r.migrate, 'migrate');
    assert.equal(r.split6.failures, 0, JSON.stringify(r.split6.errors));
    assert.equal(r.split4.failures, 0, JSON.stringify(r.split4.errors));
    assert.equal(r.statusMoved.inSync, true, JSON.stringify(r.statusMoved));
    assert.deepEqual(r.statusMoved.profiles.map((p: any) => p.name).sort(), ['web4', 'web6']);
    // The engine left holds nothing of iptlb's in either family (no iptlb line in either nat table; no ip or ip6
    // iptlb table).
    assert.deepEqual(r.kernelLeft, { v4: '', v6: '' });
    ok(r.back, 'migrate back');
    assert.equal(r.split6b.failures, 0, JSON.stringify(r.split6b.errors));
    assert.equal(r.status.inSync, true, JSON.stringify(r.status));
  });

  if (rulesOnly(pair))
    test('affinity over IPv6: 12 client addresses each keep one destination over 6 connections, and are balanced afresh after it expires', async () => {
      const r = await run(pair.name, 'affinity');
      ok(r.apply, 'apply');
      for (const [client, seq] of Object.entries(r.held as Record<string, string[]>)) {
        assert.equal(new Set(seq).size, 1, `client ${client} kept one destination: ${seq}`);
      }
      const used = new Set(Object.values(r.held as Record<string, string[]>).map((s) => s[0]));
      assert.ok(used.size >= 2, `the clients were spread over the destinations: ${[...used]}`);
      // After the affinity lapsed, each client is balanced again: with 3 destinations, all 12 landing
      // where they were has probability (1/3)^12.
      const moved = Object.entries(r.later as Record<string, string>).filter(([c, b]) => b !== r.held[c][0]);
      assert.ok(moved.length >= 1, `some client moved after expiry: ${JSON.stringify(r.later)}`);
      assert.equal(r.status.inSync, true, JSON.stringify(r.status));
    });
});
