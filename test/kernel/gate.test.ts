/**
 * The legacy gate (src/engines/legacy/gate.ts), on both legacy executors, with real traffic in a namespace:
 * rules of the layout before the gate (jumps directly in nat OUTPUT) are reported as modified and
 * moved behind the gate by `sync`; the gate set holds exactly the virtual address:port pairs of the
 * profiles (an element shared by nothing else goes with its profile, the others stay); the last
 * profile's removal takes the gates, the dispatch chains and the set along; a connection to an
 * address that is not a virtual one is not redirected.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PAIRS, VIP, cli, ok, runSteps } from './common.js';
import { earlierChainRules, planProfile } from '../../src/engines/legacy/plan.js';
import { renderRule } from '../../src/engines/legacy/restore.js';
import { validateProfile } from '../../src/model/profile.js';
import { countsFor } from '../harness/traffic.js';

const A = validateProfile({ name: 'a', source: `${VIP}:80`, destination: ['127.0.0.1:9001', '127.0.0.1:9002'] });
const B = validateProfile({ name: 'b', source: `${VIP}:81`, destination: ['127.0.0.1:9003'] });

/**
 * What iptlb before the gate wrote for A and B: their chains (each rule checking the port, `-j RETURN`
 * last), and every jump in nat OUTPUT itself.
 */
function oldLayout(): string {
  const plans = [A, B].map((p) => {
    const plan = planProfile(p);
    return { ...plan, older: earlierChainRules(p, plan.chain.rules) };
  });
  const out = ['*nat'];
  for (const p of plans) out.push(`:${p.chain.name} - [0:0]`);
  for (const p of plans) for (const r of p.older) out.push(`-A ${p.chain.name} ${renderRule(r)}`);
  for (const p of plans) for (const h of p.hookRules) out.push(`-A ${h.chain} ${renderRule(h.rule)}`);
  out.push('COMMIT', '');
  return out.join('\n');
}

const GATE = '-A OUTPUT -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT';

for (const pair of PAIRS.filter((p) => p.engine === 'legacy')) {
  describe(`legacy gate over ${pair.name}`, { skip: pair.skip }, () => {
    test('an older layout is modified until sync moves it behind the gate; the set follows the profiles; the last delete leaves nothing', async () => {
      const sh = (cmd: string) => ({ op: 'sh' as const, argv: ['bash', '-c', cmd] });
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003, 7999] }, // 0 (7999: an address that is not virtual)
        // 1: state file only
        cli(pair, '-q', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'),
        cli(pair, '-q', '-profile=b', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9003'), // 2
        { op: 'write', file: '$WORK/old.rules', text: oldLayout() }, // 3
        sh('iptables-legacy-restore --noflush < $WORK/old.rules'), // 4
        cli(pair, 'status', '--json'), // 5: modified (old layout)
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // 6: the old layout still balances
        cli(pair, 'sync'), // 7
        cli(pair, 'status', '--json'), // 8: in sync
        { op: 'save' }, // 9
        sh('ipset save iptlb-vip-inet'), // 10
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // 11
        { op: 'tcp', vip: VIP, port: 81, count: 10 }, // 12
        { op: 'tcp', vip: '127.0.0.1', port: 7999, count: 10 }, // 13: not a VIP: reaches 7999 itself
        cli(pair, 'delete', 'a'), // 14
        sh('ipset save iptlb-vip-inet'), // 15
        { op: 'tcp', vip: VIP, port: 81, count: 10 }, // 16: b still balanced
        cli(pair, 'delete', 'b'), // 17
        { op: 'save' }, // 18
        sh('ipset list -n'), // 19
        // 20: from nothing again
        cli(pair, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'),
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // 21
        cli(pair, 'status', '--json'), // 22
      ]);
      for (const i of [1, 2, 7, 14, 17, 20]) ok(r[i]);
      assert.equal(r[4].code, 0, r[4].stderr);
      const before = JSON.parse(r[5].stdout) as {
        inSync: boolean;
        profiles: { name: string; status: string; detail?: string }[];
      };
      assert.equal(before.inSync, false);
      for (const p of before.profiles) {
        assert.equal(p.status, 'modified', JSON.stringify(p));
        assert.match(p.detail ?? '', /behind the gate/);
      }
      assert.deepEqual(
        countsFor(r[6], [9001, 9002]).reduce((a, b) => a + b, 0),
        40,
        JSON.stringify(r[6]),
      );
      assert.equal(JSON.parse(r[8].stdout).inSync, true, r[8].stdout);
      const save: string = r[9];
      assert.ok(save.includes(GATE), save);
      assert.doesNotMatch(save, /-A OUTPUT -d /, 'no jump left in OUTPUT itself');
      assert.doesNotMatch(save, /-A IPTLB_NAT_. .*--dport|-j RETURN/, "the chains were rewritten in today's layout");
      assert.match(save, /-A IPTLB_NAT_A -d 127\.100\.0\.10\/32 -p tcp -m statistic --mode random --probability 0\.5/);
      assert.match(
        save,
        /-A IPTLB_OUTPUT -d 127\.100\.0\.10\/32 -p tcp -m comment --comment "?iptlb:a"? -m tcp --dport 80 -j IPTLB_NAT_A/,
      );
      assert.match(
        save,
        /-A IPTLB_OUTPUT -d 127\.100\.0\.10\/32 -p tcp -m comment --comment "?iptlb:b"? -m tcp --dport 81 -j IPTLB_NAT_B/,
      );
      const members = (t: { stdout: string }): string[] =>
        t.stdout
          .split('\n')
          .filter((l) => l.startsWith('add '))
          .sort();
      assert.deepEqual(members(r[10]), [
        'add iptlb-vip-inet 127.100.0.10,tcp:80',
        'add iptlb-vip-inet 127.100.0.10,tcp:81',
      ]);
      const [c1, c2] = countsFor(r[11], [9001, 9002]);
      assert.equal(c1 + c2, 40, JSON.stringify(r[11]));
      assert.ok(c1 > 0 && c2 > 0, `both destinations take connections: ${c1}/${c2}`);
      assert.equal(countsFor(r[12], [9003])[0], 10, JSON.stringify(r[12]));
      assert.equal(countsFor(r[13], [7999])[0], 10, JSON.stringify(r[13]));
      assert.deepEqual(
        members(r[15]),
        ['add iptlb-vip-inet 127.100.0.10,tcp:81'],
        "a's element went with it, b's stayed",
      );
      assert.equal(countsFor(r[16], [9003])[0], 10, JSON.stringify(r[16]));
      const empty: string = r[18];
      assert.doesNotMatch(empty, /iptlb|IPTLB|match-set/, empty);
      assert.equal(r[19].stdout.trim(), '', 'the set went with the last profile');
      const [d1, d2] = countsFor(r[21], [9001, 9002]);
      assert.equal(d1 + d2, 40, JSON.stringify(r[21]));
      assert.equal(JSON.parse(r[22].stdout).inSync, true);
    });

    test("an address deleted from the gate's set by hand (ipset del) is modified in status, and sync re-adds it", async () => {
      const sh = (cmd: string) => ({ op: 'sh' as const, argv: ['bash', '-c', cmd] });
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003] }, // 0
        cli(pair, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'), // 1
        cli(pair, '-q', '-run', '-profile=b', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9003'), // 2
        sh(`ipset del iptlb-vip-inet ${VIP},tcp:80`), // 3
        { op: 'tcp', vip: VIP, port: 80, count: 10 }, // 4: past iptlb's rules: refused
        cli(pair, 'status', '--json'), // 5
        cli(pair, 'sync'), // 6
        sh('ipset save iptlb-vip-inet'), // 7
        cli(pair, 'status', '--json'), // 8
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // 9
        { op: 'tcp', vip: VIP, port: 81, count: 10 }, // 10
      ]);
      for (const i of [1, 2, 6]) ok(r[i]);
      assert.equal(r[3].code, 0, r[3].stderr);
      assert.equal(r[4].failures, 10, `the rules are not reached without the element: ${JSON.stringify(r[4])}`);
      assert.equal(r[5].code, 3, 'status exits 3: the kernel does not balance a');
      const before = JSON.parse(r[5].stdout) as { profiles: { name: string; status: string; detail?: string }[] };
      const a = before.profiles.find((p) => p.name === 'a')!;
      assert.equal(a.status, 'modified', JSON.stringify(a));
      assert.match(a.detail ?? '', /127\.100\.0\.10,tcp:80 is missing from the gate's set iptlb-vip-inet/);
      assert.equal(before.profiles.find((p) => p.name === 'b')!.status, 'in-sync');
      assert.match(r[6].stderr, /sync a: modified/);
      assert.ok(r[7].stdout.includes(`add iptlb-vip-inet ${VIP},tcp:80`), r[7].stdout);
      assert.equal(JSON.parse(r[8].stdout).inSync, true, r[8].stdout);
      const [x, y] = countsFor(r[9], [9001, 9002]);
      assert.equal(x + y, 40, JSON.stringify(r[9]));
      assert.equal(countsFor(r[10], [9003])[0], 10, JSON.stringify(r[10]));
    });

    test("an element another tool added to the gate's set (ipset add) is orphaned in status (exit 3), sync deletes it and keeps the profiles'; one beside another tool's rule behind the gate is left", async () => {
      const sh = (cmd: string) => ({ op: 'sh' as const, argv: ['bash', '-c', cmd] });
      const members = (t: { stdout: string }): string[] =>
        t.stdout
          .split('\n')
          .filter((l) => l.startsWith('add '))
          .sort();
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003] }, // 0
        cli(pair, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'), // 1
        cli(pair, '-q', '-run', '-profile=six', '-src-addr=[2001:db8::10]:80', '-dest-addr=[2001:db8::1]:9001'), // 2
        sh('ipset add iptlb-vip-inet 127.100.0.99,tcp:443 && ipset add iptlb-vip-inet6 2001:db8::99,udp:53'), // 3
        cli(pair, 'status', '--json'), // 4
        cli(pair, 'sync'), // 5
        sh('ipset save iptlb-vip-inet; ipset save iptlb-vip-inet6'), // 6
        cli(pair, 'status', '--json'), // 7
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // 8
        // Another tool's rule behind the gate, with its element: that element is the other tool's.
        sh(
          'iptables-legacy -t nat -A IPTLB_OUTPUT -d 127.100.0.98/32 -p tcp --dport 444 -j DNAT --to-destination 127.0.0.1:9003' +
            ' && ipset add iptlb-vip-inet 127.100.0.98,tcp:444',
        ), // 9
        cli(pair, 'status', '--json'), // 10
        cli(pair, 'sync'), // 11
        sh('ipset save iptlb-vip-inet'), // 12
        { op: 'tcp', vip: '127.100.0.98', port: 444, count: 10 }, // 13
      ]);
      for (const i of [1, 2, 5, 11]) ok(r[i]);
      for (const i of [3, 9]) assert.equal(r[i].code, 0, r[i].stderr);
      assert.equal(r[4].code, 3, `status exits 3 on the stray elements: ${r[4].stdout}`);
      const before = JSON.parse(r[4].stdout) as {
        inSync: boolean;
        profiles: { name: string; status: string; detail?: string }[];
      };
      assert.equal(before.inSync, false);
      const status = (name: string): string | undefined => before.profiles.find((p) => p.name === name)?.status;
      assert.equal(status('a'), 'in-sync');
      assert.equal(status('six'), 'in-sync');
      assert.equal(status('gate:127.100.0.99,tcp:443'), 'orphaned', r[4].stdout);
      assert.equal(status('gate:2001:db8::99,udp:53'), 'orphaned', r[4].stdout);
      assert.match(r[5].stderr, /sync gate:127\.100\.0\.99,tcp:443: orphaned/);
      assert.match(r[5].stderr, /sync gate:2001:db8::99,udp:53: orphaned/);
      assert.deepEqual(members(r[6]), [
        'add iptlb-vip-inet 127.100.0.10,tcp:80',
        'add iptlb-vip-inet6 2001:db8::10,tcp:80',
      ]);
      assert.equal(r[7].code, 0, r[7].stdout);
      assert.equal(JSON.parse(r[7].stdout).inSync, true, r[7].stdout);
      const [x, y] = countsFor(r[8], [9001, 9002]);
      assert.equal(x + y, 40, JSON.stringify(r[8]));
      assert.equal(r[10].code, 0, `another tool's rule behind the gate explains its element: ${r[10].stdout}`);
      assert.ok(!JSON.parse(r[10].stdout).profiles.some((p: { name: string }) => p.name.startsWith('gate:')));
      assert.match(r[11].stderr, /nothing to do/);
      assert.ok(members(r[12]).includes('add iptlb-vip-inet 127.100.0.98,tcp:444'), r[12].stdout);
      assert.equal(countsFor(r[13], [9003])[0], 10, JSON.stringify(r[13]));
    });

    test("the gate's set left with no rule of iptlb's (the profile deleted by another means) is orphaned in status (exit 3) and destroyed by sync; one another tool's rule uses is left", async () => {
      const sh = (cmd: string) => ({ op: 'sh' as const, argv: ['bash', '-c', cmd] });
      const ipt = 'iptables-legacy -t nat';
      const r = await runSteps([
        { op: 'backends', tcp: [9001] }, // 0
        cli(pair, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'), // 1
        // Deleted by another means: its rules, gate and chains by hand, the profile from the state file (emptied).
        sh(
          `${ipt} -D OUTPUT -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT && ${ipt} -F IPTLB_OUTPUT && ` +
            `${ipt} -X IPTLB_OUTPUT && ${ipt} -F IPTLB_NAT_A && ${ipt} -X IPTLB_NAT_A`,
        ), // 2
        sh('printf "{}\\n" > $WORK/state.db && rm -f $WORK/state.db.journal'), // 3
        cli(pair, 'status', '--json'), // 4
        cli(pair, 'sync'), // 5
        sh('ipset -n list'), // 6
        cli(pair, 'status', '--json'), // 7
        // Another tool's rule uses the set: it is that tool's now, and ipset would not destroy it.
        sh(
          `ipset create iptlb-vip-inet hash:ip,port family inet && ${ipt} -A OUTPUT -m set --match-set iptlb-vip-inet dst,dst -j ACCEPT`,
        ), // 8
        cli(pair, 'status', '--json'), // 9
        cli(pair, 'sync'), // 10
        sh('ipset -n list'), // 11
      ]);
      for (const i of [1, 5, 10]) ok(r[i], `step ${i}`);
      for (const i of [2, 3, 6, 8, 11]) assert.equal(r[i].code, 0, `step ${i}: ${r[i].stderr}`);
      assert.equal(r[4].code, 3, `status exits 3 on the set left: ${r[4].stdout}`);
      const left = (JSON.parse(r[4].stdout) as { profiles: { name: string; status: string; detail?: string }[] })
        .profiles;
      assert.deepEqual(
        left.map((p) => `${p.name}:${p.status}`),
        ['gate:iptlb-vip-inet:orphaned'],
        r[4].stdout,
      );
      assert.match(left[0]!.detail ?? '', /the gate's set iptlb-vip-inet is there \(1 element\(s\)\)/);
      assert.match(r[5].stderr, /sync gate:iptlb-vip-inet: orphaned/);
      assert.doesNotMatch(r[6].stdout, /iptlb-vip-inet/, 'sync left the set');
      assert.equal(r[7].code, 0, r[7].stdout);
      assert.equal(JSON.parse(r[7].stdout).inSync, true, r[7].stdout);
      assert.equal(r[9].code, 0, `a set another tool's rule uses is not iptlb's leftover: ${r[9].stdout}`);
      assert.match(r[10].stderr, /nothing to do/);
      assert.match(r[11].stdout, /^iptlb-vip-inet$/m, 'sync destroyed a set in use');
    });

    test("a chain in the layout before 2026-12-05 (the port in every rule, -j RETURN last) is in sync and balances; the profile's next change rewrites it", async () => {
      const sh = (cmd: string) => ({ op: 'sh' as const, argv: ['bash', '-c', cmd] });
      const older = [
        '*nat',
        ':IPTLB_NAT_A - [0:0]', // declared again: --noflush flushes this chain only
        ...earlierChainRules(A, planProfile(A).chain.rules).map((r) => `-A IPTLB_NAT_A ${renderRule(r)}`),
        'COMMIT',
        '',
      ].join('\n');
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003] }, // 0
        cli(pair, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'), // 1
        { op: 'write', file: '$WORK/older.rules', text: older }, // 2
        sh('iptables-legacy-restore --noflush < $WORK/older.rules'), // 3
        { op: 'save' }, // 4
        cli(pair, 'status', '--json'), // 5
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // 6
        cli(
          pair,
          '-q',
          '-run',
          '-reset',
          '-profile=a',
          `-src-addr=${VIP}:80`,
          '-dest-addr=127.0.0.1:9001,127.0.0.1:9003',
        ), // 7
        { op: 'save' }, // 8
        cli(pair, 'status', '--json'), // 9
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // 10
      ]);
      for (const i of [1, 7]) ok(r[i]);
      assert.equal(r[3].code, 0, r[3].stderr);
      const chainOf = (save: string): string[] =>
        save
          .split('\n')
          .filter((l) => l.startsWith('-A IPTLB_NAT_A '))
          .map((l) => l.replace(/ -m statistic .* -j/, ' -m statistic … -j'));
      const bothTake = (split: Parameters<typeof countsFor>[0], ports: number[]): void => {
        const [x, y] = countsFor(split, ports);
        assert.equal(x + y, 40, JSON.stringify(split));
        assert.ok(x > 0 && y > 0, `both destinations take connections: ${x}/${y}`);
      };
      // The older layout really is in the kernel: otherwise "in sync" below proves nothing.
      assert.deepEqual(chainOf(r[4]), [
        '-A IPTLB_NAT_A -d 127.100.0.10/32 -p tcp -m tcp --dport 80 -m statistic … -j DNAT --to-destination 127.0.0.1:9001',
        '-A IPTLB_NAT_A -d 127.100.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:9002',
        '-A IPTLB_NAT_A -j RETURN',
      ]);
      assert.equal(JSON.parse(r[5].stdout).inSync, true, r[5].stdout);
      bothTake(r[6], [9001, 9002]);
      assert.deepEqual(chainOf(r[8]), [
        '-A IPTLB_NAT_A -d 127.100.0.10/32 -p tcp -m statistic … -j DNAT --to-destination 127.0.0.1:9001',
        '-A IPTLB_NAT_A -d 127.100.0.10/32 -p tcp -j DNAT --to-destination 127.0.0.1:9003',
      ]);
      assert.equal(JSON.parse(r[9].stdout).inSync, true, r[9].stdout);
      bothTake(r[10], [9001, 9003]);
    });
  });
}
