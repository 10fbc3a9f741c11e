/**
 * Drift, tested by breaking things by hand in a namespace: `status` reports in-sync, missing,
 * modified and orphaned (exit 3, --json for agents); `sync` repairs it in one transaction.
 * And `watch`: applies a change to the state file, re-applies after an external flush, and SIGTERM
 * leaves the rules and the state file in place.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PAIRS, VIP, cli, ok, runSteps } from './common.js';
import { pairOf } from '../harness/pair.js';
import { runJsonInFreshNetns } from '../harness/netns.js';

const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;

for (const { name: ex, skip } of PAIRS) {
  describe(`drift over ${ex}`, { skip }, () => {
    test('status finds missing, modified and orphaned rules made by hand; sync repairs them in one transaction', async () => {
      const nft = ex.startsWith('nft');
      const ipt = (...a: string[]) => ({ op: 'sh' as const, argv: ['iptables-legacy', '-t', 'nat', ...a] });
      const n = (cmd: string) => ({ op: 'sh' as const, argv: ['nft', cmd] });
      const tamper = nft
        ? [
            n(`delete element ip iptlb be_tcp { ${VIP} . 80 . 1 }`), // a: modified
            n(`delete element ip iptlb out_tcp_1 { ${VIP} . 81 }`),
            n(`delete element ip iptlb be_tcp { ${VIP} . 81 . 0 }`), // b: missing
            n(`add element ip iptlb out_tcp_1 { ${VIP} . 99 }`), // an orphan element
            n('add chain ip iptlb zombie'), // a chain iptlb does not write
            n('list table ip iptlb'),
          ]
        : [
            ipt('-F', 'IPTLB_NAT_A'), // a: modified
            ipt(
              '-D',
              'IPTLB_OUTPUT',
              '-d',
              `${VIP}/32`,
              '-p',
              'tcp',
              '-m',
              'comment',
              '--comment',
              'iptlb:b',
              '-m',
              'tcp',
              '--dport',
              '81',
              '-j',
              'IPTLB_NAT_B',
            ),
            ipt('-F', 'IPTLB_NAT_B'),
            ipt('-X', 'IPTLB_NAT_B'), // b: missing
            ipt('-N', 'IPTLB_NAT_ZOMBIE'), // an orphan chain
            ipt('-A', 'OUTPUT', '-m', 'comment', '--comment', 'iptlb:ghost', '-j', 'RETURN'), // an orphan rule
          ];
      const r = await runSteps([
        cli(ex, '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'),
        cli(ex, '-run', '-profile=b', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9003'),
        cli(ex, '-run', '-profile=c', `-src-addr=${VIP}:82`, '-dest-addr=127.0.0.1:9004'),
        cli(ex, 'status', '--json'), // 3: all in sync
        { op: 'save' }, // 4
        ...tamper, // 5-10
        cli(ex, 'status', '--json'), // 11
        cli(ex, 'status'), // 12
        cli(ex, 'sync'), // 13
        cli(ex, 'status', '--json'), // 14
        { op: 'save' }, // 15
      ]);
      for (const i of [0, 1, 2, 3]) ok(r[i]);
      // The tampering really happened: otherwise the drift found below proves nothing.
      for (let i = 5; i < 5 + tamper.length; i++) ok(r[i], `tampering step ${i - 5}`);
      assert.equal(tamper.length, 6);
      assert.equal(JSON.parse(r[3].stdout).inSync, true);
      assert.equal(r[11].code, 3, 'exit 3 on drift');
      const by = Object.fromEntries(
        JSON.parse(r[11].stdout).profiles.map((p: { name: string; status: string }) => [p.name, p.status]),
      );
      const orphans = nft
        ? { [`${VIP}:99`]: 'orphaned' } // (chain zombie is another tool's: neither drift nor an orphan, kept)
        : { ghost: 'orphaned', IPTLB_NAT_ZOMBIE: 'orphaned' };
      assert.deepEqual(by, { a: 'modified', b: 'missing', c: 'in-sync', ...orphans }, r[10].stdout);
      assert.match(r[12].stdout, /a\tmodified/);
      ok(r[13]);
      assert.equal((r[13].stderr.match(/committed/g) ?? []).length, 1, 'one transaction');
      assert.equal(JSON.parse(r[14].stdout).inSync, true);
      // The same rules; the jumps of different profiles may come back in another order (they match disjoint traffic).
      const lines = (t: string): string[] => t.split('\n').sort();
      if (nft) {
        // nft prints a set's elements in hash order, so compare what matters: no orphan left, every profile in sync.
        assert.doesNotMatch(r[15], /127\.100\.0\.10 \. 99/);
        assert.match(r[15], /chain zombie/, "sync keeps another tool's chain");
        assert.deepEqual(JSON.parse(r[11].stdout).foreignObjects, [{ where: 'table ip iptlb', objects: ['zombie'] }]);
        assert.match(r[12].stderr, /table ip iptlb also holds objects of another tool \(zombie\)/);
        for (const port of [80, 81, 82]) assert.ok(r[15].includes(`${VIP} . ${port}`));
      } else {
        assert.deepEqual(lines(r[15]), lines(r[4]), 'the kernel is back to exactly what the profiles plan');
      }
    });

    test('top: per-destination connection rates while traffic flows, refreshed every interval', async () => {
      const top = `${process.execPath} $CLI ${pairOf(ex).flags.join(' ')} -state-file=$WORK/state.db top --json --count 4 --interval 300 > $WORK/top.json`;
      // Connections for as long as top runs (however late a loaded host starts it).
      const traffic = `while kill -0 $TOP 2>/dev/null; do (exec 3<>/dev/tcp/${VIP}/8081) 2>/dev/null; sleep 0.003; done`;
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002] },
        cli(ex, '-q', '-run', '-profile=web', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'),
        { op: 'sh', argv: ['bash', '-c', `${top} & TOP=$!; ${traffic}; wait`] },
        { op: 'read', file: '$WORK/top.json' },
      ]);
      ok(r[1]);
      assert.equal(r[2].code, 0, r[2].stderr);
      const frames = (r[3] as string)
        .trim()
        .split('\n')
        .map(
          (l) =>
            JSON.parse(l) as {
              profiles: { name: string; rate: number | null; destinations: { rate: number | null }[] }[];
            },
        );
      assert.equal(frames.length, 4);
      assert.equal(frames[0].profiles[0].rate, null, 'no rate before the second sample');
      const busy = frames
        .slice(1)
        .map((f) => f.profiles[0])
        .filter((p) => (p.rate ?? 0) > 0);
      assert.ok(busy.length >= 1, JSON.stringify(frames));
      for (const p of busy) {
        // nft reads the dispatch set's counters and the backend map's one after the other, while
        // traffic flows: the sums agree only to within the packets that arrived in between.
        const sum = p.destinations.reduce((a, d) => a + (d.rate ?? 0), 0);
        assert.ok(
          Math.abs(sum - p.rate!) < 0.1 * p.rate! + 5,
          `destination rates ${sum} add up to the profile's ${p.rate}`,
        );
      }
    });

    test('watch: applies a change of the state file, re-applies after an external flush, and SIGTERM leaves everything in place', async () => {
      const r = (await runJsonInFreshNetns(fixture('watch.js'), [ex], { timeoutMs: 60_000 })) as Record<
        string,
        unknown
      >;
      assert.equal(r.appliedAfterFileChange, true, JSON.stringify(r));
      assert.equal(r.reappliedAfterFlush, true, JSON.stringify(r));
      assert.equal(r.exitCode, 0);
      assert.equal(r.rulesAfterSigterm, true);
      assert.equal(r.stateIntact, true);
    });
  });
}
