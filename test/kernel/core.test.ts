/**
 * Kernel tests of the core: every case runs in a fresh network namespace, with real backends and
 * real traffic through the virtual address, for each engine × executor pair.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { assertSplit } from '../harness/stats.js';
import {
  BACKENDS,
  DEST,
  VIP,
  aboveExecutor,
  cli,
  describePairs,
  ok,
  pairFlags,
  runSteps,
  type Proc,
} from './common.js';

const ORIGINAL_STATE = `test:
  destination:
  - 127.0.0.1:9001
  - 127.0.0.1:9002
  logEnabled: true
  logLevel: "4"
  protocol: tcp
  rulesBackend: client
  source: 127.100.0.10:8081
`;

function counts(split: { counts: Record<string, number> }, ports: number[]): number[] {
  return ports.map((p) => Object.entries(split.counts).find(([k]) => k.includes(String(p)))?.[1] ?? 0);
}

/** The nft text of an element `vip . port` of table ip iptlb (as `nft list ruleset` prints it). */
const el = (port: number, vip = VIP): string => `${vip} . ${port}`;

describePairs('core', (ex) => {
  const nft = ex.engine === 'nft';
  test('tcp: 300 connections split over 3 backends, none fails; delete restores the table exactly', async () => {
    const r = await runSteps([
      { op: 'save' },
      { op: 'backends', tcp: BACKENDS },
      cli(ex, '-run', '-profile=web', `-src-addr=${VIP}:8081`, `-dest-addr=${DEST}`),
      { op: 'tcp', vip: VIP, port: 8081, count: 300 },
      cli(ex, '-run', '-delete', '-profile=web'),
      { op: 'save' },
      { op: 'read', file: '$WORK/state.db' },
    ]);
    ok(r[2]);
    assert.equal(r[3].failures, 0, JSON.stringify(r[3].errors));
    assertSplit(counts(r[3], BACKENDS), [1, 1, 1]);
    ok(r[4]);
    assert.equal(r[5], r[0], 'nat table after delete equals the table before the profile existed');
    assert.equal(r[6], '{}\n');
  });

  test('udp: 300 datagrams from fresh sockets split over 3 backends (the original sent udp into tcp rules)', async () => {
    const r = await runSteps([
      { op: 'backends', udp: BACKENDS },
      cli(ex, '-run', '-profile=dns', '-protocol=udp', `-src-addr=${VIP}:5353`, `-dest-addr=${DEST}`),
      { op: 'udp', vip: VIP, port: 5353, count: 300 },
    ]);
    ok(r[1]);
    assert.equal(r[2].failures, 0, JSON.stringify(r[2].errors));
    assertSplit(counts(r[2], BACKENDS), [1, 1, 1]);
  });

  test('reset swaps the destinations in one commit; traffic only reaches the new ones', async () => {
    const r = await runSteps([
      { op: 'backends', tcp: [...BACKENDS, 9004] },
      cli(ex, '-run', '-profile=web', `-src-addr=${VIP}:8081`, `-dest-addr=${DEST}`),
      cli(ex, '-run', '-profile=web', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9004'),
      cli(ex, '-run', '-reset', '-profile=web', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9003,127.0.0.1:9004'),
      { op: 'tcp', vip: VIP, port: 8081, count: 200 },
      { op: 'save' },
    ]);
    ok(r[1]);
    assert.equal(r[2].code, 1, 'changing an existing profile without -reset is refused');
    assert.match(r[2].stderr, /-reset/);
    ok(r[3]);
    assert.equal(r[4].failures, 0);
    assert.deepEqual(counts(r[4], [9001, 9002]), [0, 0]);
    assertSplit(counts(r[4], [9003, 9004]), [1, 1]);
    if (nft) {
      assert.equal(r[5].split(`${VIP} . 8081 . `).length - 1, 2, 'exactly two backend elements after the reset');
      assert.match(r[5], /set out_tcp_2 \{[^}]*elements = \{ 127\.100\.0\.10 \. 8081 /);
      assert.doesNotMatch(r[5], /set out_tcp_1 /, 'the set no longer used is gone');
    } else {
      assert.equal((r[5].match(/iptlb:web/g) ?? []).length, 1, 'exactly one jump after the reset');
    }
  });

  test("logging: LOG rules carry the port; deleting one profile keeps the other profile's LOG rule", async () => {
    const r = await runSteps([
      cli(
        ex,
        '-run',
        '-log-custom-chain',
        '-log-level=6',
        '-profile=a',
        `-src-addr=${VIP}:80`,
        '-dest-addr=127.0.0.1:9001',
      ),
      cli(ex, '-run', '-log-custom-chain', '-profile=b', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9002'),
      cli(ex, '-run', '-delete', '-profile=a'),
      { op: 'save' },
    ]);
    for (const i of [0, 1, 2]) ok(r[i]);
    const save: string = r[3];
    assert.doesNotMatch(save, /iptlb:a/);
    if (nft) {
      assert.match(save, /ip daddr 127\.100\.0\.10 tcp dport 81 log prefix "IPTLB:VIP:B:" comment "iptlb:b"/);
      assert.match(save, /ip daddr 127\.100\.0\.10 tcp dport 81 log prefix "IPTLB:B:" comment "iptlb:b"/);
    } else {
      assert.match(
        save,
        /-A IPTLB_OUTPUT -d 127\.100\.0\.10\/32 -p tcp -m comment --comment "iptlb:b" -m tcp --dport 81 -j LOG --log-prefix "IPTLB:VIP:B:"/,
      );
      assert.match(save, /-A OUTPUT -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT/);
      assert.match(save, /-A IPTLB_NAT_B -j LOG --log-prefix "IPTLB:B:"/);
    }
  });

  test('"test" and "test2" are separate profiles (the original matched names by prefix)', async () => {
    const r = await runSteps([
      cli(ex, '-run', '-profile=test2', `-src-addr=${VIP}:82`, '-dest-addr=127.0.0.1:9002'),
      cli(ex, '-run', '-profile=test', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9001'),
      cli(ex, '-run', '-delete', '-profile=test'),
      { op: 'save' },
      cli(ex, 'list', '--json'),
    ]);
    for (const i of [0, 1, 2]) ok(r[i]);
    if (nft) {
      assert.ok(r[3].includes(el(82)));
      assert.ok(!r[3].includes(el(81)));
    } else {
      assert.match(r[3], /iptlb:test2/);
      assert.match(r[3], /IPTLB_NAT_TEST2/);
      assert.doesNotMatch(r[3], /IPTLB_NAT_TEST /);
    }
    assert.deepEqual(
      JSON.parse(r[4].stdout).map((p: { name: string }) => p.name),
      ['test2'],
    );
  });

  test('an 18-character name applies and deletes (its chain name as always); a 64-character one is refused with nothing changed', async () => {
    const long = 'a-very-long-name18';
    const r = await runSteps([
      cli(ex, '-run', `-profile=${long}`, `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
      { op: 'save' },
      cli(ex, '-run', `-profile=${'a'.repeat(64)}`, `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9001'),
      cli(ex, '-run', '-delete', `-profile=${long}`),
      { op: 'save' },
    ]);
    ok(r[0]);
    if (nft) assert.ok(r[1].includes(el(80)));
    else assert.match(r[1], /IPTLB_NAT_A_VERY_LONG_NAME18/);
    assert.equal(r[2].code, 2);
    assert.match(r[2].stderr, /^iptlb: error: name: .*1-63 characters/m);
    ok(r[3]);
    assert.doesNotMatch(r[4], nft ? /table ip iptlb/ : /IPTLB/);
  });

  test('server mode is accepted by the kernel (PREROUTING + addrtype LOCAL, not INPUT)', async () => {
    const r = await runSteps([
      cli(ex, '-run', '-rules-backend=server', '-profile=srv', `-src-addr=${VIP}:80`, `-dest-addr=${DEST}`),
      { op: 'save' },
    ]);
    ok(r[0]);
    if (nft) {
      assert.match(
        r[1],
        /chain prerouting \{[^}]*fib daddr type local ip daddr \. tcp dport @loc_tcp_3 dnat ip to ip daddr \. tcp dport \. numgen random mod 3 offset 3 map @be_tcp/,
      );
    } else {
      assert.match(
        r[1],
        /-A IPTLB_PREROUTING -d 127\.100\.0\.10\/32 -p tcp -m comment --comment "iptlb:srv" -m addrtype --dst-type LOCAL -m tcp --dport 80 -j IPTLB_NAT_SRV/,
      );
      assert.match(r[1], /-A PREROUTING -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_PREROUTING/);
      assert.doesNotMatch(r[1], /-A INPUT/);
    }
  });

  // Validation and the lock are layers above the executor (aboveExecutor): native pairs in CI.
  if (aboveExecutor(ex))
    test('bad input: one-line error naming the field, exit 2, kernel and state file unchanged', async () => {
      const bad: [string[], RegExp][] = [
        [['-rules-backend=bogus'], /rulesBackend/],
        [['-src-addr=1.2.3:80'], /^iptlb: error: source/m],
        [['-src-addr=127.100.0.10:99999'], /source/],
        [['-dest-addr=example.com:80'], /destination\[0\]/],
        [['-dest-addr=127.0.0.1:1,127.0.0.1:1'], /destination\[1\]/],
        [['-dest-addr='], /destination/],
        [['-protocol=icmp'], /protocol/],
        [['-log-level=9'], /logLevel/],
        [['-profile=a b'], /name/],
        [['-profile=x;reboot'], /name/],
        [['-masquerade'], /masquerade/],
        [['-run=maybe'], /run/],
        [['-use-state'], /use-state/],
      ];
      const steps = [
        cli(ex, '-run', '-profile=keep', `-src-addr=${VIP}:90`, '-dest-addr=127.0.0.1:9001'),
        { op: 'save' as const },
        { op: 'read' as const, file: '$WORK/state.db' },
      ];
      for (const [args] of bad) {
        const base: Record<string, string> = {
          '-profile': '-profile=p',
          '-src-addr': `-src-addr=${VIP}:8081`,
          '-dest-addr': `-dest-addr=${DEST}`,
        };
        for (const a of args) delete base[a.split('=')[0]];
        steps.push(cli(ex, '-run', ...Object.values(base), ...args));
      }
      steps.push({ op: 'save' }, { op: 'read', file: '$WORK/state.db' });
      const r = await runSteps(steps);
      ok(r[0]);
      bad.forEach(([args, re], i) => {
        const p: Proc = r[3 + i];
        assert.equal(p.code, 2, `${args.join(' ')} exited ${p.code}: ${p.stderr}`);
        assert.equal(p.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${p.stderr}`);
        assert.match(p.stderr, re);
      });
      assert.equal(r[r.length - 2], r[1], 'kernel unchanged');
      assert.equal(r[r.length - 1], r[2], 'state file unchanged');
    });

  // legacy only: the nft engine owns its whole table, so no foreign rule can make it refuse (the nft
  // engine's refusals are in test/native/nft.test.ts).
  if (!nft)
    test('kernel refusal: EKERNEL error, exit 1, nothing changed in the kernel or the state file', async () => {
      // A foreign jump reachable from nat INPUT into the chain the profile will use makes its DNAT
      // rules illegal. (Through a chain of its own: a jump from INPUT itself is the original iptlb's
      // server mode, which a change of that chain deletes.)
      const r = await runSteps([
        { op: 'sh', argv: ['iptables-legacy', '-t', 'nat', '-N', 'IPTLB_NAT_WEB'] },
        { op: 'sh', argv: ['iptables-legacy', '-t', 'nat', '-N', 'FOREIGN'] },
        { op: 'sh', argv: ['iptables-legacy', '-t', 'nat', '-A', 'FOREIGN', '-j', 'IPTLB_NAT_WEB'] },
        { op: 'sh', argv: ['iptables-legacy', '-t', 'nat', '-A', 'INPUT', '-j', 'FOREIGN'] },
        { op: 'save' },
        cli(ex, '-run', '-profile=web', `-src-addr=${VIP}:8081`, `-dest-addr=${DEST}`),
        { op: 'save' },
        { op: 'read', file: '$WORK/state.db' },
      ]);
      assert.equal(r[5].code, 1, r[5].stderr);
      assert.match(r[5].stderr, /^iptlb: error: .+/m);
      assert.equal(r[6], r[4], 'kernel unchanged');
      assert.equal(r[7], null, 'state file not written');
    });

  if (!nft)
    test("a delete refused because another tool's chain jumps to the profile's: the error says so and how to find the jump", async () => {
      const r = await runSteps([
        cli(ex, '-q', '-run', '-profile=web', `-src-addr=${VIP}:8081`, `-dest-addr=${DEST}`),
        { op: 'sh', argv: ['iptables-legacy', '-t', 'nat', '-N', 'FOREIGN'] },
        { op: 'sh', argv: ['iptables-legacy', '-t', 'nat', '-A', 'FOREIGN', '-j', 'IPTLB_NAT_WEB'] },
        cli(ex, '-run', '-delete', '-profile=web'),
      ]);
      ok(r[0]);
      assert.equal(r[3].code, 1, r[3].stderr);
      assert.match(
        r[3].stderr,
        /^iptlb: error: .*IPTLB_NAT_WEB.*; another rule still jumps to IPTLB_NAT_WEB .*iptables-legacy-save -t nat \| grep -- '-j IPTLB_NAT_WEB'/m,
      );
    });

  test('a state file written by the original applies with -use-state -run; a hand-edited number logLevel is refused', async () => {
    const r = await runSteps([
      { op: 'backends', tcp: [9001, 9002] },
      { op: 'write', file: '$WORK/state.db', text: ORIGINAL_STATE },
      cli(ex, '-use-state', '-run'),
      { op: 'tcp', vip: VIP, port: 8081, count: 100 },
      { op: 'read', file: '$WORK/state.db' },
      { op: 'write', file: '$WORK/state.db', text: ORIGINAL_STATE.replace('logLevel: "4"', 'logLevel: 4') },
      { op: 'save' },
      cli(ex, '-run', '-profile=other', `-src-addr=${VIP}:9999`, '-dest-addr=127.0.0.1:9001'),
      { op: 'save' },
      { op: 'read', file: '$WORK/state.db' },
      cli(ex, '-use-state', '-run', '-delete'),
    ]);
    ok(r[2]);
    assert.equal(r[3].failures, 0);
    assertSplit(counts(r[3], [9001, 9002]), [1, 1]);
    assert.equal(r[4], ORIGINAL_STATE, 'state bytes unchanged by re-applying');
    assert.equal(r[7].code, 1);
    assert.match(r[7].stderr, /logLevel must be a quoted string/);
    assert.equal(r[8], r[6]);
    assert.equal(
      r[9],
      ORIGINAL_STATE.replace('logLevel: "4"', 'logLevel: 4'),
      'a malformed state file is never overwritten',
    );
    assert.equal(r[10].code, 1);
  });

  if (aboveExecutor(ex))
    test('32 concurrent invocations on one state file lose no profile', async () => {
      const runs = Array.from({ length: 32 }, (_, i) => [
        ...pairFlags(ex),
        '-state-file=$WORK/state.db',
        '-run',
        `-profile=p${i}`,
        `-src-addr=${VIP}:${1000 + i}`,
        '-dest-addr=127.0.0.1:9001',
      ]);
      const r = await runSteps([{ op: 'parallel-cli', runs }, { op: 'save' }, cli(ex, 'list', '--json')]);
      r[0].forEach((p: Proc) => ok(p));
      const names = JSON.parse(r[2].stdout)
        .map((p: { name: string }) => p.name)
        .sort();
      assert.deepEqual(names, Array.from({ length: 32 }, (_, i) => `p${i}`).sort());
      for (let i = 0; i < 32; i++) {
        if (nft) assert.ok(r[1].includes(el(1000 + i)), `element of p${i}`);
        else assert.match(r[1], new RegExp(`--comment "iptlb:p${i}" -m tcp --dport ${1000 + i} -j IPTLB_NAT_P${i}\\n`));
      }
    });

  test('-use-state -run -delete removes every profile in one transaction and leaves foreign rules alone', async () => {
    const foreign = [
      ['-N', 'DOCKER'],
      ['-A', 'DOCKER', '-i', 'docker0', '-j', 'RETURN'],
      ['-A', 'PREROUTING', '-m', 'addrtype', '--dst-type', 'LOCAL', '-j', 'DOCKER'],
      ['-A', 'OUTPUT', '!', '-d', '127.0.0.0/8', '-m', 'addrtype', '--dst-type', 'LOCAL', '-j', 'DOCKER'],
      ['-A', 'POSTROUTING', '-s', '203.0.113.0/24', '!', '-o', 'docker0', '-j', 'MASQUERADE'],
      ['-N', 'KUBE-SERVICES'],
      ['-A', 'OUTPUT', '-m', 'comment', '--comment', 'kubernetes service portals', '-j', 'KUBE-SERVICES'],
    ]
      .map((a) => ({ op: 'sh' as const, argv: ['iptables-legacy', '-t', 'nat', ...a] }))
      .concat([
        {
          op: 'sh',
          argv: [
            'nft',
            'add table inet fw; add chain inet fw input { type filter hook input priority 0; policy accept; }; add rule inet fw input tcp dport 22 accept',
          ],
        },
        {
          op: 'sh',
          argv: [
            'nft',
            'add table ip kube; add chain ip kube out { type nat hook output priority -110; policy accept; }; add rule ip kube out ip daddr 198.51.100.1 tcp dport 443 dnat to 198.51.100.2:6443',
          ],
        },
      ]);
    const r = await runSteps([
      ...foreign,
      { op: 'save' },
      cli(ex, '-run', '-profile=a', `-src-addr=${VIP}:80`, `-dest-addr=${DEST}`),
      cli(ex, '-run', '-profile=b', '-rules-backend=proxy', '-masquerade', `-src-addr=${VIP}:81`, `-dest-addr=${DEST}`),
      cli(ex, '-run', '-reset', '-profile=a', '-log-custom-chain', `-src-addr=${VIP}:82`, '-dest-addr=127.0.0.1:9001'),
      { op: 'save' },
      cli(ex, '-use-state', '-run', '-delete'),
      { op: 'save' },
      { op: 'read', file: '$WORK/state.db' },
    ]);
    const n = foreign.length;
    // The foreign rules were really made: otherwise "byte-identical" below protects nothing.
    for (let i = 0; i < n; i++) ok(r[i], `foreign rule ${i}`);
    for (const mark of [
      '-A DOCKER -i docker0 -j RETURN',
      '-j KUBE-SERVICES',
      '-s 203.0.113.0/24',
      'table inet fw',
      'dnat to 198.51.100.2:6443',
    ])
      assert.ok(r[n].includes(mark), `the snapshot holds ${mark}`);
    for (const i of [n + 1, n + 2, n + 3, n + 5]) ok(r[i]);
    assert.match(r[n + 4], nft ? /masquerade comment "iptlb:b"/ : /iptlb:b.*MASQUERADE/);
    assert.match(r[n + 5].stderr, /in one transaction/);
    assert.equal((r[n + 5].stderr.match(/committed/g) ?? []).length, 1);
    assert.equal(r[n + 6], r[n], 'foreign rules byte-identical; all of iptlb gone');
    assert.equal(r[n + 7], '{}\n');
  });

  describe(`conntrack (${ex.name}): a change that removes a destination deletes the flows DNATed to it; --keep-conntrack keeps them`, () => {
    const run = async (scenario: string, keep: 'flush' | 'keep'): Promise<Record<string, any>> => {
      const { runJsonInFreshNetns } = await import('../harness/netns.js');
      const fx = new URL('./fixtures/conntrack.js', import.meta.url).pathname;
      return (await runJsonInFreshNetns(fx, [ex.name, scenario, keep], { timeoutMs: 120_000 })) as Record<string, any>;
    };
    for (const scenario of ['reset', 'delete', 'watch', 'sync', 'usestate'] as const) {
      test(`udp, ${scenario}: a client sending throughout reaches the removed destination no more; kept, it still does`, async () => {
        const f = await run(scenario, 'flush');
        assert.equal(f.code, 0, f.log);
        assert.ok(f.reachedA && f.beforeA >= 20, 'the flow went to A before the change');
        assert.ok(f.settled && f.drained, JSON.stringify(f));
        assert.equal(
          f.afterA,
          0,
          `no datagram sent after the change reached the removed destination (${JSON.stringify(f)})`,
        );
        assert.ok(f.afterOther >= 50);
        assert.match(f.log, /conntrack: removed 1 flow\(s\) of 127\.100\.0\.10:5353\/udp to 127\.0\.0\.1:9001/);
        const k = await run(scenario, 'keep');
        assert.equal(k.code, 0, k.log);
        assert.ok(k.settled && k.drained, JSON.stringify(k));
        assert.ok(k.afterA >= 50, 'kept: the flow lives on at A');
        assert.equal(k.afterOther, 0);
        assert.doesNotMatch(k.log, /conntrack:/);
      });
    }
    test('udp, a flow that began before the profile (the address had no rule: its entry is untranslated) is balanced once the profile is applied; kept, it is not', async () => {
      const f = await run('before', 'flush');
      assert.equal(f.code, 0, f.log);
      assert.ok(f.sentBefore && f.tracked, `the flow was tracked before the profile (${JSON.stringify(f)})`);
      assert.ok(f.settled && f.drained, JSON.stringify(f));
      assert.ok(f.afterA >= 50, 'the flow reaches the destination');
      assert.match(f.log, /conntrack: removed 1 flow\(s\) of 127\.100\.0\.10:5353\/udp made before its rules/);
      const k = await run('before', 'keep');
      assert.equal(k.code, 0, k.log);
      assert.ok(k.tracked && k.settled && k.drained, JSON.stringify(k));
      assert.equal(k.afterA, 0, 'kept: the flow stays untranslated');
      assert.doesNotMatch(k.log, /conntrack:/);
    });
    test('tcp, reset: a half-open connection moves to the live destination on its next SYN; an established one is left to finish; kept, the SYN goes to A again', async () => {
      const f = await run('tcp', 'flush');
      assert.equal(f.code, 0, f.log);
      assert.ok(f.synSeen, 'the half-open client knocked at A');
      assert.equal(f.before, '9001:one');
      assert.ok(f.settled, JSON.stringify(f));
      assert.equal(f.connectedTo, '9002:hello', 'the half-open client reached B');
      assert.equal(f.synsToAAfterChange, 0, 'no SYN reached A after the change');
      assert.equal(f.after, '9001:two', 'the established connection to A still works');
      assert.match(f.log, /conntrack: removed 1 half-open flow\(s\) of 127\.100\.0\.10:8080\/tcp to 127\.0\.0\.1:9001/);
      if (ex.executor === 'native') assert.match(f.log, /1 established connection\(s\) left to finish/);
      const k = await run('tcp', 'keep');
      assert.equal(k.code, 0, k.log);
      assert.ok(k.settled, JSON.stringify(k));
      assert.ok(k.synsToAAfterChange >= 1, 'kept: the retransmitted SYN went to A');
      assert.equal(k.connectedTo, null);
      assert.equal(k.after, '9001:two');
      assert.equal(k.accepted['9002'], 0);
    });
  });
});
