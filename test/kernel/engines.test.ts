/**
 * The two engines side by side, in fresh namespaces: `auto` follows the rules already there,
 * `migrate` moves every profile with no moment without rules, and the nft engine repairs a table
 * someone else changed by rebuilding iptlb's content in it (another tool's objects there stay).
 */
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { ABOVE_EXECUTOR_PAIRS, BACKENDS, DEST, PAIRS, VIP, cli, ok, pairFlags, runSteps } from './common.js';
import type { Step } from './fixtures/steps.js';

const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;
const nftSpawn = PAIRS.find((p) => p.name === 'nft/spawn')!;
const nftNative = PAIRS.find((p) => p.name === 'nft/native')!;
const legacySpawn = PAIRS.find((p) => p.name === 'legacy/spawn')!;

for (const ex of ['spawn', 'native'] as const) {
  const skip = ex === 'spawn' ? nftSpawn.skip || legacySpawn.skip : nftNative.skip;
  test(
    `migrate (${ex}): legacy → nft → legacy → nft while a client connects without pause: no failed connection, rules in one engine only`,
    { skip },
    async () => {
      const r = (await runJsonInFreshNetns(fixture('migrate.js'), [ex], { timeoutMs: 120_000 })) as {
        steps: {
          to: string;
          code: number;
          log: string;
          where: { legacy: boolean; nft: boolean };
          auto: string;
          inSync: boolean;
        }[];
        traffic: { ok: number; failures: number; errorsSample: string[] };
      };
      for (const s of r.steps) {
        assert.equal(s.code, 0, s.log);
        assert.match(s.log, /installed 3 profile\(s\) in the \w+ engine in one transaction/);
        assert.match(s.log, /removed iptlb's objects from the \w+ engine in one transaction/);
        assert.deepEqual(s.where, { legacy: s.to === 'legacy', nft: s.to === 'nft' }, JSON.stringify(s));
        assert.equal(s.auto, s.to, 'auto picks the engine that holds the rules');
        assert.equal(s.inSync, true);
      }
      assert.equal(r.traffic.failures, 0, JSON.stringify(r.traffic.errorsSample));
      assert.ok(r.traffic.ok > 20, `only ${r.traffic.ok} connections`);
    },
  );
}

for (const ex of ['spawn', 'native'] as const) {
  const skip = ex === 'spawn' ? nftSpawn.skip || legacySpawn.skip : nftNative.skip;
  test(
    `migrate (${ex}) beside a running watch and a library handle: they follow it; the rules in one engine only, later changes reach the traffic`,
    { skip },
    async () => {
      type Split = { counts: Record<string, number>; failures: number; errors: string[] };
      const r = (await runJsonInFreshNetns(fixture('migrate-beside.js'), [ex], { timeoutMs: 120_000 })) as {
        before: string[];
        migrate: { code: number; log: string };
        apply: { code: number; log: string };
        where: { legacy: boolean; nft: boolean };
        status: { code: number; stderr: string };
        handleStatus: string[];
        a: Split;
        b: Split;
        watchLog: string;
        handleLog: string[];
      };
      const all = JSON.stringify(r, null, 1);
      assert.deepEqual(r.before, ['in-sync', 'in-sync']);
      assert.equal(r.migrate.code, 0, r.migrate.log);
      assert.equal(r.apply.code, 0, r.apply.log);
      assert.deepEqual(r.where, { legacy: false, nft: true }, all);
      assert.equal(r.status.code, 0, all);
      assert.deepEqual(r.handleStatus, ['a:in-sync', 'b:in-sync'], all);
      assert.deepEqual(r.a.counts, { 'backend:9002': 20 }, `the handle's change reaches the traffic: ${all}`);
      assert.deepEqual(r.b.counts, { 'backend:9003': 20 }, `the CLI's change reaches the traffic: ${all}`);
      assert.doesNotMatch(r.watchLog, /sync \w+: missing/, 'watch never put the profiles back in legacy');
      assert.match(r.watchLog, /moved the profiles from the legacy engine to nft; following them/);
      assert.ok(
        r.handleLog.some((l) => /following them$/.test(l)),
        all,
      );
    },
  );
}

describe('engine selection and nft repair', { skip: nftSpawn.skip || legacySpawn.skip }, () => {
  test('an explicit engine while the other holds the rules refuses a change; rules in both engines: status exits 3 with the fix', async () => {
    const r = await runSteps([
      cli(legacySpawn, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
      cli(nftSpawn, '-q', '-run', '-profile=b', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9002'),
      { op: 'sh', argv: ['nft', 'list', 'tables'] },
      // Another state file's profile in nft, as an older iptlb (or a migrate killed midway) leaves it: a dispatch
      // set of iptlb's with its element (the table or an empty base chain alone is no iptlb rule).
      {
        op: 'sh',
        argv: [
          'nft',
          `add table ip iptlb; add chain ip iptlb output { type nat hook output priority -100; }; add set ip iptlb out_tcp_1 { type ipv4_addr . inet_service; counter; }; add element ip iptlb out_tcp_1 { ${VIP} . 82 }`,
        ],
      },
      { op: 'cli', args: ['--executor=spawn', '-state-file=$WORK/state.db', 'status', '-q'] },
    ]);
    ok(r[0]);
    assert.equal(r[1].code, 1, r[1].stderr);
    assert.equal(
      r[1].stderr.trim(),
      "iptlb: error: engine: nft was asked for (--engine, IPTLB_ENGINE or the engine option), but iptlb's rules are in the legacy engine: run `iptlb migrate --to nft` to move them, or leave the engine auto",
    );
    assert.equal(r[2].stdout.trim(), '', 'nothing in nft');
    assert.equal(r[4].code, 3, r[4].stderr);
    assert.equal(
      r[4].stderr.trim(),
      "iptlb: iptlb's rules are in both engines (the x_tables nat table and table ip/ip6 iptlb), and traffic may use either copy: run `iptlb migrate --to legacy` (or --to nft) to keep them in one",
    );
  });

  test('auto: a fresh host follows its iptables flavour; iptlb rules already in one engine keep every profile there', async () => {
    const auto = (...a: string[]) => ({
      op: 'cli' as const,
      args: ['--executor=spawn', '-state-file=$WORK/state.db', ...a],
    });
    const r = await runSteps([
      auto('doctor', '--json'),
      cli(legacySpawn, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
      auto('doctor', '--json'),
      auto('-run', '-profile=b', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9002'),
      { op: 'save' },
      // A state file no command can read: not ready.
      { op: 'write', file: '$WORK/bad.db', text: 'a: [\n' },
      { op: 'cli', args: ['--executor=spawn', 'doctor', '--json', '-state-file=$WORK/bad.db'] },
    ]);
    // The host's flavour as iptables itself reports it ("iptables v1.8.9 (nf_tables)"), not as the product decides it.
    const version = execFileSync('iptables', ['--version'], { encoding: 'utf8' });
    assert.match(version, /\((nf_tables|legacy)\)/);
    assert.equal(JSON.parse(r[0].stdout).engine, /\(nf_tables\)/.test(version) ? 'nft' : 'legacy', r[0].stdout);
    ok(r[1]);
    const after = JSON.parse(r[2].stdout);
    assert.equal(after.engine, 'legacy');
    assert.match(after.engineReason, /already holds iptlb rules/);
    ok(r[3]);
    assert.match(r[4], /iptlb:b/, 'the second profile joined the first in the legacy engine');
    assert.doesNotMatch(r[4], /table ip iptlb/);
    assert.equal(r[6].code, 1, r[6].stdout);
    const broken = JSON.parse(r[6].stdout) as { ok: boolean; checks: { name: string; ok: boolean }[] };
    assert.equal(broken.ok, false);
    assert.equal(broken.checks.find((c) => c.name === 'state file')?.ok, false);
  });

  test('nft: after someone deletes table ip iptlb, the next change replaces it whole from the state, in one transaction', async () => {
    const r = await runSteps([
      { op: 'backends', tcp: [9001, 9002] },
      cli(nftSpawn, '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
      { op: 'sh', argv: ['nft', 'delete table ip iptlb'] },
      cli(nftSpawn, '-run', '-profile=b', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9002'),
      cli(nftSpawn, 'status', '--json'),
      { op: 'tcp', vip: VIP, port: 80, count: 20 },
      { op: 'tcp', vip: VIP, port: 81, count: 20 },
    ]);
    ok(r[1]);
    ok(r[3]);
    assert.match(
      r[3].stderr,
      /table ip iptlb does not exist yet \(after a reboot, or deleted\); creating it with all 2 profile\(s\) in one transaction/,
    );
    assert.equal(JSON.parse(r[4].stdout).inSync, true, r[4].stdout);
    assert.equal(r[5].failures, 0);
    assert.equal(r[6].failures, 0);
  });
});

for (const pair of PAIRS) {
  test(
    `${pair.name}: two state files on one host: no apply, reset or delete through one removes the other's profiles (real traffic)`,
    { skip: pair.skip },
    async () => {
      const B = '-state-file=$WORK/b.db';
      // 40 connections to a profile of two destinations: one alone (which the assertions take for a wrong split) once
      // in about 10^11 runs; with 12, once in 2,048, which a run saw.
      const served = { op: 'tcp' as const, vip: VIP, port: 80, count: 40 };
      const rr = { op: 'tcp' as const, vip: VIP, port: 82, count: 12 };
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003] },
        cli(pair, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'),
        cli(
          pair,
          '-q',
          '-run',
          '-profile=r',
          `-src-addr=${VIP}:82`,
          '-dest-addr=127.0.0.1:9003',
          '--scheduler=round-robin',
        ),
        cli(pair, '-q', B, '-run', '-profile=b', `-src-addr=${VIP}:81`, `-dest-addr=${DEST}`),
        served,
        rr,
        cli(pair, '-q', B, '-run', '-reset', '-profile=b', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9003'),
        served,
        rr,
        cli(pair, '-q', B, '-run', '-delete', '-profile=b'),
        served,
        rr,
        cli(pair, '-q', B, '-profile=c', `-src-addr=${VIP}:83`, '-dest-addr=127.0.0.1:9002'), // state only
        cli(pair, '-q', B, '-run', '-use-state'),
        served,
        rr,
        { op: 'tcp', vip: VIP, port: 83, count: 6 },
      ]);
      for (const i of [1, 2, 3, 6, 9, 12, 13]) ok(r[i]);
      for (const i of [4, 5, 7, 8, 10, 11, 14, 15, 16])
        assert.equal(r[i].failures, 0, `step ${i}: ${JSON.stringify(r[i])}`);
      assert.deepEqual(Object.keys(r[4].counts).sort(), ['backend:9001', 'backend:9002'], JSON.stringify(r[4]));
    },
  );
}

for (const pair of PAIRS) {
  test(
    `${pair.name}: an address another state file's profile holds is refused (ECONFLICT naming source), and nothing changes (real traffic); each state file's sync and status leave the other's profiles alone`,
    { skip: pair.skip },
    async () => {
      const B = '-state-file=$WORK/b.db';
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003] },
        cli(pair, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'),
        cli(
          pair,
          '-q',
          '-run',
          '-profile=r',
          `-src-addr=${VIP}:82`,
          '-dest-addr=127.0.0.1:9003',
          '--scheduler=round-robin',
        ),
        // 3: B holds nothing yet: a round-robin profile's address (rules, not elements).
        cli(pair, B, '-run', '-profile=b2', `-src-addr=${VIP}:82`, '-dest-addr=127.0.0.1:9001'),
        cli(pair, '-q', B, '-run', '-profile=bb', `-src-addr=${VIP}:84`, '-dest-addr=127.0.0.1:9001'),
        // 5: B holds a profile: on nft the change reads no table and meets the address in the kernel.
        cli(pair, B, '-run', '-profile=b', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9003'),
        // 6: moving B's own profile onto it is refused the same way.
        cli(pair, B, '-run', '-reset', '-profile=bb', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9003'),
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // two destinations: 40 (see above)
        { op: 'tcp', vip: VIP, port: 82, count: 6 },
        { op: 'tcp', vip: VIP, port: 84, count: 6 },
        cli(pair, 'status', '--json'),
        cli(pair, B, 'list'),
        // 12-14: one change of two profiles, one at a free address, one at a's: refused whole; the
        // legacy gate set gets no element of it (the spawn executor added them before its check).
        {
          op: 'write',
          file: '$WORK/two.yaml',
          text: `x1:\n  destination:\n  - 127.0.0.1:9001\n  source: ${VIP}:86\nx2:\n  destination:\n  - 127.0.0.1:9001\n  source: ${VIP}:80\n`,
        },
        cli(pair, B, 'apply', '--file', '$WORK/two.yaml'),
        { op: 'sh', argv: ['sh', '-c', 'ipset list iptlb-vip-inet 2>/dev/null || true'] },
        // 15-20: each state file's sync and status leave the other's profiles alone (the registry).
        cli(pair, B, 'sync'),
        cli(pair, 'status', '--json'),
        cli(pair, B, 'status', '--json'),
        // 20 connections: both of a's destinations are seen but with probability 2^-19.
        { op: 'tcp', vip: VIP, port: 80, count: 20 },
        cli(pair, 'sync'),
        { op: 'tcp', vip: VIP, port: 84, count: 6 },
        // 21: B's status in text says whose the profiles it leaves out are.
        cli(pair, B, 'status'),
      ]);
      for (const i of [1, 2, 4, 15, 19]) ok(r[i]);
      const othersOf = (i: number) =>
        (
          JSON.parse(r[i].stdout) as { otherStateFiles?: { stateFile: string; profiles: string[] }[] }
        ).otherStateFiles?.map((f) => `${path.basename(f.stateFile)}: ${[...f.profiles].sort().join(' ')}`);
      assert.deepEqual(othersOf(16), ['b.db: bb'], r[16].stdout);
      assert.deepEqual(othersOf(17), ['state.db: a r'], r[17].stdout);
      assert.equal(r[21].code, 0, r[21].stderr);
      assert.match(r[21].stderr, /^iptlb: not listed here, other state files' profiles: \/\S*\/state\.db \(a, r\)$/m);
      const profilesOf = (i: number) =>
        (JSON.parse(r[i].stdout) as { profiles: { name: string; status: string }[] }).profiles.map(
          (p) => `${p.name} ${p.status}`,
        );
      assert.deepEqual(profilesOf(16), ['a in-sync', 'r in-sync'], r[16].stdout);
      assert.deepEqual(profilesOf(17), ['bb in-sync'], r[17].stdout);
      assert.equal(r[16].code, 0, 'in sync: exit 0');
      assert.equal(r[18].failures, 0, JSON.stringify(r[18]));
      assert.deepEqual(Object.keys(r[18].counts).sort(), ['backend:9001', 'backend:9002'], "B's sync kept a");
      assert.equal(r[20].failures, 0, JSON.stringify(r[20]));
      assert.deepEqual(Object.keys(r[20].counts), ['backend:9001'], "A's sync kept bb");
      for (const [i, name] of [
        [3, 'b2'],
        [5, 'b'],
        [6, 'bb'],
      ] as const) {
        assert.equal(r[i].code, 1, `step ${i}: ${r[i].stderr}`);
        assert.match(
          r[i].stderr,
          new RegExp(`^iptlb: error: source: profile ${name}: its address .*taken in .*by (a )?profile`),
          `step ${i}`,
        );
        assert.equal(r[i].stderr.split('\n').length, 2, `one line: ${r[i].stderr}`);
      }
      assert.equal(r[7].failures, 0, JSON.stringify(r[7]));
      assert.deepEqual(Object.keys(r[7].counts).sort(), ['backend:9001', 'backend:9002'], 'a keeps its address');
      assert.deepEqual(Object.keys(r[8].counts), ['backend:9003'], 'r keeps its address');
      assert.deepEqual(Object.keys(r[9].counts), ['backend:9001'], 'bb stays where it was');
      // A's profiles are untouched (B's own shows there as orphaned: several state files share a table).
      const mine = (JSON.parse(r[10].stdout) as { profiles: { name: string; status: string }[] }).profiles.filter((p) =>
        ['a', 'r'].includes(p.name),
      );
      assert.deepEqual(
        mine.map((p) => `${p.name} ${p.status}`),
        ['a in-sync', 'r in-sync'],
        r[10].stdout,
      );
      assert.match(r[11].stdout, /^bb\b/m);
      assert.doesNotMatch(r[11].stdout, /^b2?\b/m, 'refused profiles are not recorded');
      assert.equal(r[13].code, 1, r[13].stderr);
      assert.match(r[13].stderr, /^iptlb: error: source: profile x2: /);
      assert.doesNotMatch(r[14].stdout, /:86\b/, `no element of the refused change: ${r[14].stdout}`);
      if (pair.engine === 'legacy') assert.match(r[14].stdout, /127\.100\.0\.10,tcp:80/, r[14].stdout);
    },
  );
}

for (const pair of ABOVE_EXECUTOR_PAIRS) {
  test(
    `${pair.name}: one state file's syncs while another's changes run beside them never remove the other's profiles (each other file is locked from its read to the sync's commit)`,
    { skip: pair.skip },
    async () => {
      const flags = `--engine=${pair.engine} --executor=${pair.executor}`;
      // 12 rounds: B creates a profile (a new name and address) while A syncs, side by side.
      const script = `for i in $(seq 1 12); do
  ${process.execPath} "$CLI" ${flags} -state-file=$WORK/b.db -q -run -profile=q$i -src-addr=${VIP}:$((1000 + i)) -dest-addr=127.0.0.1:9001 &
  ${process.execPath} "$CLI" ${flags} -state-file=$WORK/state.db -q sync || echo "sync $i failed"
  wait $! || echo "create $i failed"
done`;
      const r = await runSteps([
        { op: 'backends', tcp: [9001] },
        cli(pair, '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
        { op: 'sh', argv: ['sh', '-c', script] },
        cli(pair, '-state-file=$WORK/b.db', 'status', '--json'),
        cli(pair, 'status', '--json'),
        { op: 'tcp', vip: VIP, port: 1012, count: 3 },
      ]);
      ok(r[1]);
      assert.equal(r[2].code, 0, r[2].stderr);
      assert.doesNotMatch(r[2].stdout, /failed/, r[2].stdout + r[2].stderr);
      const statuses = (i: number) =>
        (JSON.parse(r[i].stdout) as { profiles: { name: string; status: string }[] }).profiles.map(
          (p) => `${p.name} ${p.status}`,
        );
      assert.deepEqual(statuses(3), Array.from({ length: 12 }, (_, i) => `q${i + 1} in-sync`).sort(), r[3].stdout);
      assert.deepEqual(statuses(4), ['a in-sync'], r[4].stdout);
      assert.equal(r[5].failures, 0, JSON.stringify(r[5]));
    },
  );
}

for (const pair of PAIRS) {
  test(
    `${pair.name}: a profile name another state file's profile holds is refused (ECONFLICT naming name, IPv4 and IPv6), and nothing changes (real traffic); an interrupted create is completed by applying it again; a profile of that name recorded without -run is refused by -use-state -run`,
    { skip: pair.skip },
    async () => {
      const B = '-state-file=$WORK/b.db';
      const V6 = '2001:db8::10';
      // On nft only rules carry a profile's name (elements are keyed by address): A's profiles log there.
      const named = pair.engine === 'nft' ? ['-log-custom-chain'] : [];
      const done = [
        '-q',
        '-run',
        '-profile=done',
        `-src-addr=${VIP}:83`,
        '-dest-addr=127.0.0.1:9002,127.0.0.1:9003*2',
        '-scheduler=round-robin',
        '-log-custom-chain',
      ];
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003] },
        { op: 'sh', argv: ['ip', '-6', 'addr', 'add', `${V6}/128`, 'dev', 'lo', 'nodad'] },
        { op: 'sh', argv: ['ip', '-6', 'addr', 'add', '2001:db8::1/128', 'dev', 'lo', 'nodad'] },
        { op: 'backends', tcp: [9004], host: '2001:db8::1' },
        // 4-5: A's profiles.
        cli(
          pair,
          '-q',
          '-run',
          '-profile=web',
          `-src-addr=${VIP}:80`,
          '-dest-addr=127.0.0.1:9001,127.0.0.1:9002',
          ...named,
        ),
        cli(pair, '-q', '-run', '-profile=web6', `-src-addr=[${V6}]:80`, '-dest-addr=[2001:db8::1]:9004', ...named),
        // 6-7: B's profiles of the same names, at other addresses: refused.
        cli(pair, B, '-run', '-profile=web', `-src-addr=${VIP}:81`, '-dest-addr=127.0.0.1:9003'),
        cli(pair, B, '-run', '-profile=web6', `-src-addr=[${V6}]:81`, '-dest-addr=[2001:db8::1]:9004'),
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // two destinations: 40 (see above)
        { op: 'tcp', vip: V6, port: 80, count: 6 },
        cli(pair, 'status', '--json'),
        cli(pair, B, 'list'),
        // 12-16: a create interrupted after its kernel commit, before its state write (C's state file
        // lost): D applies the same profile, which completes it.
        cli(pair, '-state-file=$WORK/c.db', ...done),
        { op: 'sh', argv: ['rm', '$WORK/c.db'] },
        cli(pair, '-state-file=$WORK/d.db', ...done),
        { op: 'tcp', vip: VIP, port: 83, count: 6 },
        cli(pair, '-state-file=$WORK/d.db', 'status', '--json'),
        // 17-21: B records a profile of A's name at another address without -run (a round-robin one:
        // on nft rules carry the name), then applies its file, or deletes the profile: refused, and
        // A's profile keeps its traffic.
        cli(
          pair,
          B,
          '-q',
          '-profile=web',
          `-src-addr=${VIP}:81`,
          '-dest-addr=127.0.0.1:9003',
          '-scheduler=round-robin',
        ),
        cli(pair, B, '-use-state', '-run'),
        cli(pair, B, '-run', '-delete', '-profile=web'),
        { op: 'tcp', vip: VIP, port: 80, count: 40 }, // two destinations: 40 (see above)
        cli(pair, 'status', '--json'),
        // 22-23 (legacy): E records a name that shares the chain of A's web (IPTLB_NAT_WEB), then applies it.
        ...(pair.engine === 'legacy'
          ? [
              cli(
                pair,
                '-state-file=$WORK/e.db',
                '-q',
                '-profile=WEB',
                `-src-addr=${VIP}:82`,
                '-dest-addr=127.0.0.1:9003',
              ),
              cli(pair, '-state-file=$WORK/e.db', '-use-state', '-run'),
            ]
          : []),
      ]);
      for (const i of [4, 5, 12, 14, 17]) ok(r[i]);
      for (const i of [18, 19]) {
        assert.equal(r[i].code, 1, r[i].stderr);
        assert.equal(
          r[i].stderr,
          `iptlb: error: name: profile web: ${pair.engine === 'legacy' ? "the nat table holds a profile of that name at another address than this state file's (rule iptlb:web in IPTLB_OUTPUT)" : "table ip iptlb holds a profile of that name at another address than this state file's (rule iptlb:web in chain output)"}: another state file's profile of that name (delete it there, or give this one another name; -delete without -run removes this one from this state file only), or one an interrupted change of this state file moved (\`iptlb sync\` puts back this state file's)\n`,
        );
      }
      assert.equal(r[20].failures, 0, JSON.stringify(r[20]));
      assert.deepEqual(Object.keys(r[20].counts).sort(), ['backend:9001', 'backend:9002'], "web is still A's");
      assert.equal(
        (JSON.parse(r[21].stdout) as { profiles: { name: string; status: string }[] }).profiles.find(
          (p) => p.name === 'web',
        )?.status,
        'in-sync',
        r[21].stdout,
      );
      if (pair.engine === 'legacy') {
        ok(r[22]);
        assert.equal(r[23].code, 1, r[23].stderr);
        assert.ok(
          r[23].stderr.startsWith(
            'iptlb: error: name: profile WEB: the nat table already holds a profile of that name (chain IPTLB_NAT_WEB, rule iptlb:web in IPTLB_OUTPUT), which this state file does not hold',
          ),
          r[23].stderr,
        );
      } else assert.equal(r.length, 22);
      for (const [i, name, table] of [
        [6, 'web', pair.engine === 'legacy' ? 'the nat table' : 'table ip iptlb'],
        [7, 'web6', pair.engine === 'legacy' ? 'the ip6tables nat table' : 'table ip6 iptlb'],
      ] as const) {
        assert.equal(r[i].code, 1, `step ${i}: ${r[i].stderr}`);
        assert.ok(
          r[i].stderr.startsWith(
            `iptlb: error: name: profile ${name}: ${table} already holds a profile of that name (`,
          ) &&
            r[i].stderr.endsWith(
              '), which this state file does not hold: delete it through the state file that holds it, or, if an interrupted change left it, `iptlb status` shows it orphaned and `iptlb sync` removes it\n',
            ),
          `step ${i}: ${r[i].stderr}`,
        );
        assert.equal(r[i].stderr.split('\n').length, 2, `one line: ${r[i].stderr}`);
      }
      assert.equal(r[8].failures, 0, JSON.stringify(r[8]));
      assert.deepEqual(Object.keys(r[8].counts).sort(), ['backend:9001', 'backend:9002'], "web is still A's");
      assert.equal(r[9].failures, 0, JSON.stringify(r[9]));
      assert.deepEqual(Object.keys(r[9].counts), ['backend:9004'], "web6 is still A's");
      const mine = (JSON.parse(r[10].stdout) as { profiles: { name: string; status: string }[] }).profiles.filter((p) =>
        ['web', 'web6'].includes(p.name),
      );
      assert.deepEqual(
        mine.map((p) => `${p.name} ${p.status}`),
        ['web in-sync', 'web6 in-sync'],
        r[10].stdout,
      );
      assert.doesNotMatch(r[11].stdout, /^web/m, 'refused profiles are not recorded');
      // (A's profiles show there as orphaned: several state files share a table.)
      const completed = (JSON.parse(r[16].stdout) as { profiles: { name: string; status: string }[] }).profiles.find(
        (p) => p.name === 'done',
      );
      assert.equal(completed?.status, 'in-sync', r[16].stdout);
      assert.equal(r[15].failures, 0, JSON.stringify(r[15]));
      assert.deepEqual(Object.keys(r[15].counts).sort(), ['backend:9002', 'backend:9003'], JSON.stringify(r[15]));
    },
  );
}

for (const pair of PAIRS.filter((p) => p.engine === 'legacy')) {
  test(
    `${pair.name}: the original iptlb's rules (jumps without a comment) are taken over by a reset and removed by a delete`,
    { skip: pair.skip },
    async () => {
      const ipt = (...a: string[]) => ({ op: 'sh' as const, argv: ['iptables-legacy', '-w', '-t', 'nat', ...a] });
      const original = (name: string, port: number, dests: string[]) =>
        originalRules('iptables-legacy', name, port, dests);
      const block = (name: string, port: number, dests: string[]) =>
        `${name}:\n  destination:\n${dests.map((d) => `  - ${d}\n`).join('')}  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${VIP}:${port}\n`;
      const two = ['127.0.0.1:9001', '127.0.0.1:9002'];
      const setup = [
        { op: 'backends' as const, tcp: [9001, 9002, 9003] },
        ...original('test', 8081, two),
        ...original('web', 8082, two),
        { op: 'write' as const, file: '$WORK/state.db', text: block('test', 8081, two) + block('web', 8082, two) },
      ];
      const r = (
        await runSteps([
          ...setup,
          { op: 'tcp', vip: VIP, port: 8081, count: 10 },
          // plan prints what the change commits, the -D of the original's jump included (native left it out).
          cli(pair, 'plan', '-reset', '-profile=web', `-src-addr=${VIP}:8082`, '-dest-addr=127.0.0.1:9003'),
          cli(pair, 'plan', '--delete', '-profile=test'),
          cli(pair, '-q', '-run', '-reset', '-profile=web', `-src-addr=${VIP}:8082`, '-dest-addr=127.0.0.1:9003'),
          { op: 'tcp', vip: VIP, port: 8082, count: 10 },
          cli(pair, '-q', '-run', '-delete', '-profile=test'),
          { op: 'tcp', vip: VIP, port: 8081, count: 3 },
          ipt('-S'),
          cli(pair, 'status', '--json'),
        ])
      ).slice(setup.length);
      const [served, planReset, planDelete, reset, afterReset, del, afterDelete, rules, status] = r;
      assert.equal(served.failures, 0, "the original's rules serve");
      ok(planReset, 'plan of the reset');
      assert.match(planReset.stdout, /^-D OUTPUT .*--dport 8082 -j IPTLB_NAT_WEB$/m, planReset.stdout);
      ok(planDelete, 'plan of the delete');
      assert.match(planDelete.stdout, /^-D OUTPUT .*--dport 8081 -j IPTLB_NAT_TEST$/m, planDelete.stdout);
      ok(reset, 'reset of a profile the original applied');
      assert.deepEqual(
        Object.keys(afterReset.counts),
        ['backend:9003'],
        `only the reset's destination: ${JSON.stringify(afterReset)}`,
      );
      ok(del, 'delete of a profile the original applied');
      assert.equal(afterDelete.failures, 3, 'test is gone');
      assert.doesNotMatch(rules.stdout, /IPTLB_NAT_TEST/, rules.stdout);
      assert.doesNotMatch(rules.stdout, /^-A OUTPUT .*-j IPTLB_NAT_/m, "the original's jumps are gone");
      assert.equal(JSON.parse(status.stdout).inSync, true, status.stdout);

      // migrate takes the original's rules away from the legacy engine too (its jumps would keep
      // their chains from being deleted: EMLINK, and the move undone).
      const m = (
        await runSteps([
          ...setup,
          {
            op: 'cli',
            args: ['--executor', pair.executor, '-state-file=$WORK/state.db', 'migrate', '--to', 'nft'],
          },
          { op: 'tcp', vip: VIP, port: 8081, count: 10 },
          { op: 'tcp', vip: VIP, port: 8082, count: 10 },
          ipt('-S'),
        ])
      ).slice(setup.length);
      ok(m[0], `migrate of the original's rules: ${m[0].stderr}`);
      assert.equal(m[1].failures, 0, 'test served by nft');
      assert.equal(m[2].failures, 0, 'web served by nft');
      assert.doesNotMatch(m[3].stdout, /IPTLB_NAT_/, m[3].stdout);
    },
  );
}

for (const pair of PAIRS.filter((p) => p.engine === 'legacy')) {
  test(
    `${pair.name}: a new profile at the address of the original iptlb's jump is refused naming source; a reset of the original's profile whose chain another chain jumps to is refused saying so; nothing changed`,
    { skip: pair.skip },
    async () => {
      const ipt = (...a: string[]) => ({ op: 'sh' as const, argv: ['iptables-legacy', '-w', '-t', 'nat', ...a] });
      const save = { op: 'sh' as const, argv: ['iptables-legacy-save', '-t', 'nat'] };
      const state = (f: string) => ({ op: 'read' as const, file: f });
      const original = `test:\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${VIP}:8081\n`;
      const other = `other:\n  destination:\n  - 127.0.0.1:9002\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${VIP}:8082\n`;
      const mine = ['-state-file=$WORK/mine.db'];
      // The rules iptables-legacy-save prints, without its time-stamped comment lines.
      const rules = (p: { stdout: string }): string =>
        p.stdout
          .split('\n')
          .filter((l) => !l.startsWith('#'))
          .join('\n');
      const r = await runSteps([
        { op: 'backends', tcp: [9001, 9002, 9003] },
        // The original's rules for test (seed-behaviour.md), and its state file.
        ...originalRules('iptables-legacy', 'test', 8081, ['127.0.0.1:9001']),
        { op: 'write', file: '$WORK/state.db', text: original },
        // Another state file with a profile of its own (its file must stay byte for byte).
        { op: 'write', file: '$WORK/mine.db', text: other },
        { op: 'cli', args: [...pairFlags(pair), ...mine, '-q', '-use-state', '-run'] },
        save, // 8
        state('$WORK/mine.db'),
        // 10: a new profile at the original's address, through the other state file.
        {
          op: 'cli',
          args: [
            ...pairFlags(pair),
            ...mine,
            '-run',
            '-profile=web2',
            `-src-addr=${VIP}:8081`,
            '-dest-addr=127.0.0.1:9003',
          ],
        },
        save,
        state('$WORK/mine.db'),
        { op: 'tcp', vip: VIP, port: 8081, count: 10 },
        // 14: a chain of another tool's that jumps to the original's chain: the reset of test refused.
        ipt('-N', 'MYCHAIN'),
        ipt('-A', 'MYCHAIN', '-j', 'IPTLB_NAT_TEST'),
        save, // 16
        state('$WORK/state.db'),
        cli(pair, '-run', '-reset', '-profile=test', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9003'),
        save,
        state('$WORK/state.db'),
        // 21: without that jump, the takeover under the original's name works.
        ipt('-F', 'MYCHAIN'),
        cli(pair, '-q', '-run', '-reset', '-profile=test', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9003'),
        { op: 'tcp', vip: VIP, port: 8081, count: 10 },
      ]);
      ok(r[7], 'the other state file applied');
      assert.equal(r[10].code, 1, r[10].stderr);
      assert.equal(
        r[10].stderr,
        `iptlb: error: source: profile web2: its address is served by the original iptlb's rule in OUTPUT (-p tcp -d ${VIP} --dport 8081 -j IPTLB_NAT_TEST, no comment), which this change would leave in place (two rules for one address: the first in OUTPUT wins): take that profile over under its original name (the one chain IPTLB_NAT_TEST was made from, applied with -run through the state file that holds it), or delete the original's rule: iptables-legacy -t nat -D OUTPUT -p tcp -d ${VIP} --dport 8081 -j IPTLB_NAT_TEST\n`,
      );
      assert.match(rules(r[8]), /^-A OUTPUT -d \S+ -p tcp -m tcp --dport 8081 -j IPTLB_NAT_TEST$/m);
      assert.equal(rules(r[11]), rules(r[8]), 'iptables-legacy-save unchanged');
      assert.equal(r[12], other, 'state file unchanged, byte for byte');
      assert.deepEqual(r[13].counts, { 'backend:9001': 10 }, "the original's rules still serve");
      assert.equal(r[18].code, 1, r[18].stderr);
      assert.equal(
        r[18].stderr,
        "iptlb: error: name: profile test: its chain IPTLB_NAT_TEST, which this change refills, is jumped to by a rule iptlb did not write (in MYCHAIN), whose packets would reach this profile's new rules: remove that jump (`iptables-legacy-save -t nat | grep -- '-j IPTLB_NAT_TEST'` finds it), then apply again\n",
      );
      assert.equal(rules(r[19]), rules(r[16]), 'iptables-legacy-save unchanged');
      assert.equal(r[17], original, 'state file as the original wrote it');
      assert.equal(r[20], original, 'state file unchanged, byte for byte');
      ok(r[22], 'the takeover without the other jump');
      assert.deepEqual(r[23].counts, { 'backend:9003': 10 }, 'test taken over');
    },
  );
}

/**
 * What the nft tests of the original iptlb's rules need per family: the VIP and the backends' host (IPv6: on lo, added
 * by the test), an address at a port, iptables-nft (or ip6tables-nft) on table nat, and a YAML scalar quoted for IPv6.
 */
function iptablesNftFamily(family: 'IPv4' | 'IPv6') {
  const v6 = family === 'IPv6';
  const vip = v6 ? '2001:db8::10' : VIP;
  const host = v6 ? '2001:db8::1' : '127.0.0.1';
  const tool = v6 ? 'ip6tables-nft' : 'iptables-nft';
  return {
    v6,
    vip,
    host,
    tool,
    at: (port: number): string => (v6 ? `[${host}]:${port}` : `${host}:${port}`),
    source: (port: number): string => (v6 ? `[${vip}]:${port}` : `${vip}:${port}`),
    ipt: (...a: string[]): Step => ({ op: 'sh', argv: [tool, '-w', '-t', 'nat', ...a] }),
    q: (text: string): string => (v6 ? `'${text}'` : text),
  };
}

for (const pair of PAIRS.filter((p) => p.engine === 'nft')) {
  for (const family of ['IPv4', 'IPv6'] as const) {
    test(
      `${pair.name}, ${family}: a new profile at the address of the original iptlb's jump in iptables-nft's nat table is refused naming source and the command that deletes it; the ruleset and the state file unchanged, the original's rules still serving; once that jump is deleted it applies`,
      { skip: pair.skip },
      async () => {
        const { v6, vip, host, at, source, tool, ipt, q } = iptablesNftFamily(family);
        const jump = ['-p', 'tcp', '-d', vip, '--dport', '8081', '-j', 'IPTLB_NAT_TEST'];
        const ruleset: Step = { op: 'sh', argv: ['nft', 'list', 'ruleset'] };
        const other = `other:\n  destination:\n  - ${q(at(9002))}\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${q(source(8082))}\n`;
        const mine = [...pairFlags(pair), '-state-file=$WORK/mine.db'];
        const r = await runSteps([
          ...(v6
            ? [vip, host].map((a): Step => ({
                op: 'sh',
                argv: ['ip', '-6', 'addr', 'add', `${a}/128`, 'dev', 'lo', 'nodad'],
              }))
            : [null, null].map((): Step => ({ op: 'sh', argv: ['true'] }))),
          { op: 'backends', tcp: [9001, 9002, 9003], host },
          // The original's rules for test (seed-behaviour.md), written by iptables-nft into table ip nat / ip6 nat.
          ipt('-N', 'IPTLB_NAT_TEST'),
          ipt('-A', 'IPTLB_NAT_TEST', ...jump.slice(0, -2), '-j', 'DNAT', '--to-destination', at(9001)),
          ipt('-A', 'IPTLB_NAT_TEST', '-j', 'RETURN'),
          ipt('-I', 'OUTPUT', '1', ...jump), // 6
          // A state file with a profile of its own at another port (its file must stay byte for byte).
          { op: 'write', file: '$WORK/mine.db', text: other },
          { op: 'cli', args: [...mine, '-q', '-use-state', '-run'] }, // 8
          ruleset,
          // 10: a new profile at the original's address.
          {
            op: 'cli',
            args: [...mine, '-run', '-profile=web2', `-src-addr=${source(8081)}`, `-dest-addr=${at(9003)}`],
          },
          {
            op: 'cli',
            args: [...mine, 'apply', '--profile=web3', `--src-addr=${source(8081)}`, `--dest-addr=${at(9003)}`],
          },
          ruleset,
          { op: 'read', file: '$WORK/mine.db' },
          { op: 'tcp', vip, port: 8081, count: 10 }, // 14
          // 15: the command the refusal names deletes the original's jump; then the profile applies and serves.
          { op: 'sh', argv: [tool, '-t', 'nat', '-D', 'OUTPUT', ...jump] },
          {
            op: 'cli',
            args: [...mine, '-q', '-run', '-profile=web2', `-src-addr=${source(8081)}`, `-dest-addr=${at(9003)}`],
          },
          { op: 'tcp', vip, port: 8081, count: 10 }, // 17
        ]);
        for (const i of [0, 1, 3, 4, 5, 6]) assert.equal(r[i].code, 0, r[i].stderr);
        ok(r[8], 'the other state file applied');
        const message = `iptlb: error: source: profile web2: its address is served by the original iptlb's rule in table ${v6 ? 'ip6' : 'ip'} nat chain OUTPUT (-p tcp -d ${vip} --dport 8081 -j IPTLB_NAT_TEST, no comment), which iptlb does not change and this change would leave in place (two tables' nat rules for one address: the chain the kernel registered first wins): delete the original's rule, then apply again: ${tool} -t nat -D OUTPUT -p tcp -d ${vip} --dport 8081 -j IPTLB_NAT_TEST\n`;
        assert.equal(r[10].code, 1, r[10].stderr);
        assert.equal(r[10].stderr, message);
        assert.equal(r[11].code, 1, r[11].stderr);
        assert.equal(r[11].stderr, message.replace('profile web2', 'profile web3'));
        assert.match(r[9].stdout, /IPTLB_NAT_TEST/);
        assert.equal(r[12].stdout, r[9].stdout, 'nft list ruleset unchanged');
        assert.equal(r[13], other, 'state file unchanged, byte for byte');
        assert.deepEqual(r[14].counts, { 'backend:9001': 10 }, "the original's rules still serve");
        assert.equal(r[15].code, 0, r[15].stderr);
        ok(r[16], 'applied once the jump is deleted');
        assert.deepEqual(r[17].counts, { 'backend:9003': 10 }, 'served by iptlb');
      },
    );
  }
}

for (const pair of PAIRS.filter((p) => p.engine === 'nft')) {
  for (const family of ['IPv4', 'IPv6'] as const) {
    test(
      `${pair.name}, ${family}: the original iptlb's rules in iptables-nft's nat table (its jump, no comment, and its chain) are taken over by -use-state -run and by a reset, in the batch of iptlb's change, and removed by a delete; nothing else of table nat touched`,
      { skip: pair.skip },
      async () => {
        const { v6, vip, host, at, source, ipt, q } = iptablesNftFamily(family);
        const nf = v6 ? 'ip6' : 'ip';
        // The original's rules for `name` (seed-behaviour.md), to at(9001), written by iptables-nft.
        const original = (name: string, port: number): Step[] => {
          const chain = `IPTLB_NAT_${name.toUpperCase()}`;
          const match = ['-p', 'tcp', '-d', vip, '--dport', String(port)];
          return [
            ipt('-N', chain),
            ipt('-A', chain, ...match, '-j', 'DNAT', '--to-destination', at(9001)),
            ipt('-A', chain, '-j', 'RETURN'),
            ipt('-I', 'OUTPUT', '1', ...match, '-j', chain),
          ];
        };
        // The state file as the original wrote it, but to at(9002): what serves after the takeover is iptlb.
        const block = (name: string, port: number): string =>
          `${name}:\n  destination:\n  - ${q(at(9002))}\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${q(source(port))}\n`;
        const natTable: Step = { op: 'sh', argv: ['nft', 'list', 'table', nf, 'nat'] };
        const setup: Step[] = [
          ...(v6
            ? [vip, host].map((a): Step => ({
                op: 'sh',
                argv: ['ip', '-6', 'addr', 'add', `${a}/128`, 'dev', 'lo', 'nodad'],
              }))
            : []),
          { op: 'backends', tcp: [9001, 9002, 9003], host },
          ...original('test', 8081),
          ...original('web', 8082),
          // Another tool's rule in table nat's OUTPUT: never touched.
          ipt('-A', 'OUTPUT', '-p', 'udp', '-d', vip, '--dport', '53', '-j', 'ACCEPT'),
          { op: 'write', file: '$WORK/state.db', text: block('test', 8081) + block('web', 8082) },
        ];
        // -use-state -run takes over every profile of the state file.
        const steps = async (more: Step[]) => {
          const all = await runSteps([...setup, ...more]);
          for (const [k, st] of setup.entries()) if (st.op === 'sh') assert.equal(all[k].code, 0, all[k].stderr);
          return all.slice(setup.length);
        };
        // -use-state -run takes over every profile of the state file.
        const u = await steps([
          { op: 'tcp', vip, port: 8081, count: 10 },
          cli(pair, '--verbose', '-use-state', '-run'),
          { op: 'tcp', vip, port: 8081, count: 10 },
          { op: 'tcp', vip, port: 8082, count: 10 },
          natTable,
          cli(pair, 'status', '--json'),
        ]);
        const [before, run, afterTest, afterWeb, table, status] = u;
        assert.deepEqual(before.counts, { 'backend:9001': 10 }, "the original's rules serve");
        ok(run, '-use-state -run');
        for (const chain of ['IPTLB_NAT_TEST', 'IPTLB_NAT_WEB']) {
          assert.match(
            run.stderr + run.stdout,
            new RegExp(
              `delete rule ${nf} nat OUTPUT handle \\d+ \\(the original iptlb's jump to ${chain}, no comment\\)`,
            ),
          );
          assert.match(
            run.stderr + run.stdout,
            new RegExp(`delete chain ${nf} nat ${chain} \\(the original iptlb's chain\\)`),
          );
        }
        assert.deepEqual(afterTest.counts, { 'backend:9002': 10 }, `served by iptlb: ${JSON.stringify(afterTest)}`);
        assert.deepEqual(afterWeb.counts, { 'backend:9002': 10 }, `served by iptlb: ${JSON.stringify(afterWeb)}`);
        ok(table, 'nft list table nat');
        assert.doesNotMatch(table.stdout, /IPTLB_NAT_/, table.stdout);
        assert.match(table.stdout, /udp dport 53 .*accept/, "another tool's rule kept");
        assert.equal(JSON.parse(status.stdout).inSync, true, status.stdout);

        // A delete removes the original's rules of the profile it deletes (and -run applies the state file's
        // other profiles: their original's rules taken over too); plan says what a reset deletes.
        const r = await steps([
          cli(pair, 'plan', '-reset', '-profile=test', `-src-addr=${source(8081)}`, `-dest-addr=${at(9003)}`),
          cli(pair, '--verbose', '-run', '-delete', '-profile=web'),
          { op: 'tcp', vip, port: 8082, count: 3 },
          { op: 'tcp', vip, port: 8081, count: 10 },
          natTable,
          cli(pair, '-q', '-run', '-reset', '-profile=test', `-src-addr=${source(8081)}`, `-dest-addr=${at(9003)}`),
          { op: 'tcp', vip, port: 8081, count: 10 },
          cli(pair, 'status', '--json'),
        ]);
        const [plan, del, afterDelete, testNow, table2, reset, afterReset, status2] = r;
        ok(plan, 'plan of the reset');
        assert.match(plan.stdout, new RegExp(`^delete rule ${nf} nat OUTPUT handle \\d+$`, 'm'), plan.stdout);
        assert.match(plan.stdout, new RegExp(`^delete chain ${nf} nat IPTLB_NAT_TEST$`, 'm'), plan.stdout);
        ok(del, 'delete of a profile the original applied');
        assert.match(
          del.stderr + del.stdout,
          new RegExp(
            `delete rule ${nf} nat OUTPUT handle \\d+ \\(the original iptlb's jump to IPTLB_NAT_WEB, no comment\\)`,
          ),
        );
        assert.equal(afterDelete.failures, 3, 'web is gone');
        assert.deepEqual(testNow.counts, { 'backend:9002': 10 }, `test served by iptlb: ${JSON.stringify(testNow)}`);
        ok(table2, 'nft list table nat');
        assert.doesNotMatch(table2.stdout, /IPTLB_NAT_/, table2.stdout);
        assert.match(table2.stdout, /udp dport 53 .*accept/, "another tool's rule kept");
        ok(reset, 'reset');
        assert.deepEqual(
          afterReset.counts,
          { 'backend:9003': 10 },
          `the reset's destination: ${JSON.stringify(afterReset)}`,
        );
        assert.equal(JSON.parse(status2.stdout).inSync, true, status2.stdout);
      },
    );
  }
}

/** A command with only the capabilities `caps` (as a unit's AmbientCapabilities= and CapabilityBoundingSet= give). */
const withCaps = (caps: string, ...args: string[]) => ({
  op: 'sh' as const,
  argv: [
    'setpriv',
    `--bounding-set=-all,${caps}`,
    `--inh-caps=-all,${caps}`,
    `--ambient-caps=-all,${caps}`,
    '--',
    process.execPath,
    '$CLI',
    '-state-file=$WORK/state.db',
    ...args,
  ],
});

describe('capabilities and what selection cannot read', { skip: legacySpawn.skip || nftSpawn.skip }, () => {
  test("CAP_NET_ADMIN alone: the legacy engine's commands name CAP_NET_RAW; auto over the original's legacy rules stops instead of installing into nft; with CAP_NET_RAW they work", async () => {
    const admin = '+net_admin';
    const both = '+net_admin,+net_raw';
    const r = await runSteps([
      // The original's rules (its chain and an uncommented jump), and its state file.
      ...originalRules('iptables-legacy', 'test', 8081, ['127.0.0.1:9001'], { noReturn: true }),
      {
        op: 'write',
        file: '$WORK/state.db',
        text: `test:\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${VIP}:8081\n`,
      },
      withCaps(admin, 'sync'), // 4: auto, as watch and the agent select
      { op: 'sh', argv: ['nft', 'list', 'tables'] },
      withCaps(admin, '--engine=legacy', '--executor=native', 'status'),
      withCaps(admin, '--engine=legacy', '--executor=spawn', 'status'),
      withCaps(admin, '--engine=legacy', '-run', '-profile=web', `-src-addr=${VIP}:8082`, '-dest-addr=127.0.0.1:9002'),
      withCaps(admin, '--engine=legacy', 'doctor', '--json'), // 9
      withCaps(admin, '--engine=nft', 'doctor', '--json'),
      withCaps(both, 'sync'),
      withCaps(both, 'status', '--json'),
      withCaps(both, 'doctor', '--json'),
    ]);
    const [sync, tables, native, spawn, apply, doctorLegacy, doctorNft, sync2, status, doctor2] = r.slice(4);
    assert.equal(sync.code, 1, sync.stderr);
    assert.match(
      sync.stderr,
      /^iptlb: error: engine: cannot tell whether the x_tables nat table holds iptlb rules: .*needs CAP_NET_RAW as well as CAP_NET_ADMIN/,
    );
    assert.equal(sync.stderr.trim().split('\n').length, 1, sync.stderr);
    assert.doesNotMatch(tables.stdout, /iptlb/, 'nothing installed into nft beside the legacy rules');
    for (const p of [native, spawn, apply]) {
      assert.equal(p.code, 1, p.stderr);
      assert.match(p.stderr, /needs CAP_NET_RAW as well as CAP_NET_ADMIN/);
      assert.doesNotMatch(p.stderr, /needs (root \()?CAP_NET_ADMIN\)? ?\(?run/);
    }
    const priv = (d: { stdout: string }) =>
      (JSON.parse(d.stdout) as { checks: { name: string; ok: boolean; detail: string }[] }).checks.find(
        (c) => c.name === 'privileges',
      )!;
    assert.equal(doctorLegacy.code, 1, doctorLegacy.stdout);
    assert.deepEqual(
      [priv(doctorLegacy).ok, priv(doctorLegacy).detail],
      [
        false,
        'CAP_NET_ADMIN present, CAP_NET_RAW missing (the legacy engine needs it: x_tables is reached through a raw socket)',
      ],
    );
    assert.equal(priv(doctorNft).ok, true, doctorNft.stdout);
    ok(sync2, 'sync with CAP_NET_RAW');
    assert.equal(JSON.parse(status.stdout).inSync, true, status.stdout);
    assert.equal(JSON.parse(doctor2.stdout).engine, 'legacy', doctor2.stdout);
    assert.equal(priv(doctor2).ok, true, doctor2.stdout);
  });

  test('--executor spawn on a host with nft but without the iptables tools: auto picks nft (nothing of iptlb in the kernel) and commits', async () => {
    // The tools hidden in a private mount namespace: /dev/null over each (PATH cannot hide them: sbin is searched too).
    const hidden = (...args: string[]) => ({
      op: 'sh' as const,
      argv: [
        'unshare',
        '-m',
        '--propagation',
        'private',
        '--',
        'sh',
        '-c',
        'for f in /usr/sbin/iptables* /usr/sbin/ip6tables* /usr/sbin/ipset /sbin/iptables* /sbin/ip6tables* /sbin/ipset; do [ -e "$f" ] && { mount --bind /dev/null "$f" || exit 90; }; done; exec "$@"',
        'x',
        process.execPath,
        '$CLI',
        '--executor=spawn',
        '-state-file=$WORK/state.db',
        ...args,
      ],
    });
    const r = await runSteps([
      hidden('doctor', '--json'),
      hidden('-q', '-run', '-profile=web', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9001'),
      { op: 'sh', argv: ['nft', 'list', 'tables'] },
    ]);
    const d = JSON.parse(r[0].stdout) as { engine: string; engineReason: string; executor: string };
    assert.equal(d.engine, 'nft', r[0].stdout);
    assert.equal(d.executor, 'spawn', r[0].stdout);
    assert.match(
      d.engineReason,
      /but the legacy engine cannot run here \(iptables-legacy-save\/-restore not found; .*\): the nft engine can$/,
    );
    ok(r[1], 'apply with the spawn executor');
    assert.match(r[2].stdout, /^table ip iptlb$/m);
  });

  // `iptlb doctor --json` as user nobody (no capabilities), with state file `stateFile`.
  const doctorAsNobody = (stateFile: string, ...more: string[]): Step => ({
    op: 'sh',
    argv: [
      ...['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--'],
      ...[process.execPath, '$CLI', 'doctor', '--json', `-state-file=${stateFile}`, ...more],
    ],
  });
  test('not root: doctor says it cannot tell which engine holds the rules, not that x_tables is unavailable', async () => {
    const r = await runSteps([
      { op: 'sh', argv: ['iptables-legacy', '-w', '-t', 'nat', '-N', 'OTHER'] },
      doctorAsNobody('/nonexistent/state.db'),
      // A state directory only root may search (as the default one is): the engine record cannot be
      // looked at, which is a reason of its own, not an engine ("none") with an error as executor.
      { op: 'sh', argv: ['sh', '-c', 'mkdir -m 700 $WORK/private'] },
      doctorAsNobody('$WORK/private/state.db'),
      // An engine given: that engine, and the other not asked (it could not be), said as such.
      doctorAsNobody('/nonexistent/state.db', '--engine', 'legacy'),
      doctorAsNobody('/nonexistent/state.db', '--engine', 'nft'),
    ]);
    const d = JSON.parse(r[1].stdout) as {
      ok: boolean;
      engine: string;
      engineReason: string;
      checks: { name: string; detail: string }[];
    };
    assert.equal(d.ok, false);
    assert.equal(d.engine, 'unknown', r[1].stdout);
    assert.match(d.engineReason, /^cannot tell without root whether the x_tables nat table holds iptlb rules/);
    assert.match(d.checks.find((c) => c.name === 'x_tables')!.detail, /^available/);
    const p = JSON.parse(r[3].stdout) as Omit<typeof d, 'checks'> & { checks: { name: string; fix?: string }[] };
    assert.equal(p.engine, 'unknown', r[3].stdout);
    assert.match(
      p.engineReason,
      /^cannot read the engine record .*\/private\/state\.db\.engine: permission denied \(EACCES\)$/,
    );
    assert.match(p.checks.find((c) => c.name === 'state file')!.fix!, /^run iptlb as root/);
    for (const [i, engine] of [
      [4, 'legacy'],
      [5, 'nft'],
    ] as const) {
      const e = JSON.parse(r[i].stdout) as Omit<typeof d, 'checks'> & {
        executor: string;
        checks: { name: string; detail: string; fix?: string }[];
      };
      assert.equal(e.engine, engine, r[i].stdout);
      assert.equal(e.executor, 'native', r[i].stdout);
      const split = e.checks.find((c) => c.name === 'engines')!;
      assert.match(split.detail, /^the other engine not asked: cannot tell without root /);
      assert.doesNotMatch(split.detail, /--engine/, 'not the advice it already followed');
      assert.equal(split.fix, 'run iptlb doctor as root');
    }
  });

  test("the original's rules in iptables-nft's table ip nat: doctor is not ready and names them, status says them (its exit status unchanged); neither doctor nor status touches them", async () => {
    const r = await runSteps([
      ...originalRules('iptables-nft', 'test', 8081, ['127.0.0.1:9001'], { noReturn: true }),
      { op: 'sh', argv: ['nft', 'list', 'table', 'ip', 'nat'] },
      {
        op: 'write',
        file: '$WORK/state.db',
        text: `test:\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${VIP}:8081\n`,
      },
      { op: 'cli', args: ['--executor=spawn', '-state-file=$WORK/state.db', 'doctor', '--json'] },
      { op: 'cli', args: ['--executor=spawn', '-state-file=$WORK/state.db', 'status'] },
      { op: 'cli', args: ['--executor=spawn', '-state-file=$WORK/state.db', 'status', '--json'] },
      { op: 'sh', argv: ['nft', 'list', 'table', 'ip', 'nat'] },
    ]);
    const [before, , doctor, status, statusJson, after] = r.slice(3);
    // The profile is not in iptlb's table (missing: exit 3, drift), and the original's chain is said apart.
    assert.equal(status.code, 3, status.stderr);
    assert.match(
      status.stderr,
      /^iptlb: table ip nat: chain IPTLB_NAT_TEST: the original iptlb's rules \(iptables-nft\), .*\(iptlb doctor says how to delete them\)$/m,
    );
    assert.deepEqual((JSON.parse(statusJson.stdout) as { originalRules?: unknown }).originalRules, [
      { table: 'ip nat', chain: 'IPTLB_NAT_TEST' },
    ]);
    const d = JSON.parse(doctor.stdout) as {
      ok: boolean;
      checks: { name: string; ok: boolean; detail: string; fix?: string }[];
    };
    assert.equal(doctor.code, 1, doctor.stdout);
    const original = d.checks.find((c) => c.name === 'original rules');
    assert.ok(original && !original.ok, doctor.stdout);
    assert.match(original.detail, /^table ip nat: chain IPTLB_NAT_TEST: the original iptlb's rules \(iptables-nft\)/);
    assert.match(original.fix!, /iptables-nft -t nat/);
    assert.equal(after.stdout, before.stdout, 'table ip nat untouched');
  });
});

for (const ex of ['spawn', 'native'] as const) {
  const skip = ex === 'spawn' ? nftSpawn.skip || legacySpawn.skip : nftNative.skip || legacySpawn.skip;
  test(
    `migrate (${ex}) nft → legacy with another tool's set in table ip iptlb: the set and the table stay, and nothing of iptlb's in it reads as rules in both engines (status, sync, doctor exit 0), a fresh state file applies`,
    { skip },
    async () => {
      const as = (...args: string[]): Step => ({ op: 'cli', args: [`--executor=${ex}`, ...args] });
      const r = await runSteps([
        { op: 'backends', tcp: BACKENDS },
        as(
          '--engine=nft',
          '-state-file=$WORK/s.db',
          '-q',
          '-run',
          '-profile=a',
          `-src-addr=${VIP}:80`,
          `-dest-addr=${DEST}`,
        ),
        {
          op: 'sh',
          argv: [
            'sh',
            '-ec',
            'nft add set ip iptlb theirs "{ type ipv4_addr; }"; nft add element ip iptlb theirs "{ 10.9.9.9 }"',
          ],
        },
        as('-state-file=$WORK/s.db', 'migrate', '--to', 'legacy'), // 3
        as('-state-file=$WORK/s.db', 'status'),
        as('-state-file=$WORK/s.db', 'status', '--json'), // 5
        as('-state-file=$WORK/s.db', 'sync'),
        as('-state-file=$WORK/s.db', 'doctor', '--json'), // 7
        as('-state-file=$WORK/s.db', 'migrate', '--to', 'legacy'),
        { op: 'sh', argv: ['nft', 'list', 'table', 'ip', 'iptlb'] }, // 9
        // Another state file, without a record: auto finds iptlb's rules in legacy only.
        as(
          '-state-file=$WORK/f.db',
          '-q',
          '-run',
          '-profile=b',
          '-src-addr=127.100.0.2:80',
          '-dest-addr=127.0.0.1:9002',
        ),
        as('-state-file=$WORK/f.db', 'status', '--json'), // 11
        { op: 'tcp', vip: VIP, port: 80, count: 6 },
        { op: 'tcp', vip: '127.100.0.2', port: 80, count: 4 }, // 13
        { op: 'sh', argv: ['nft', 'list', 'set', 'ip', 'iptlb', 'theirs'] },
      ]);
      const [, applied, added, migrated, status, json, sync, doctor, again, table, fresh, freshJson, a, b, set] = r;
      ok(applied, 'the nft apply');
      ok(added, 'the set of another tool');
      ok(migrated, 'migrate --to legacy');
      assert.equal(status.code, 0, status.stderr);
      assert.doesNotMatch(status.stderr, /both engines/);
      const report = JSON.parse(json.stdout) as { inSync: boolean; split?: string };
      assert.equal(report.split, undefined, json.stdout);
      assert.equal(report.inSync, true, json.stdout);
      assert.equal(sync.code, 0, sync.stderr);
      assert.doesNotMatch(sync.stderr, /both engines/);
      const d = JSON.parse(doctor.stdout) as { engine: string; checks: { name: string; detail: string }[] };
      assert.equal(d.engine, 'legacy', doctor.stdout);
      assert.equal(
        d.checks.find((c) => c.name === 'engines'),
        undefined,
        doctor.stdout,
      );
      ok(again, 'migrate --to legacy again');
      assert.match(table.stdout, /set theirs/, 'the table stays with the set of another tool');
      assert.doesNotMatch(table.stdout, /set (out|pre|loc)_|dnat|elements = \{ 127\./, table.stdout);
      ok(fresh, 'a -run with a fresh state file');
      const f = JSON.parse(freshJson.stdout) as { split?: string; profiles: { name: string; status: string }[] };
      assert.equal(f.split, undefined, freshJson.stdout);
      assert.equal(f.profiles.find((p) => p.name === 'b')?.status, 'in-sync', freshJson.stdout);
      assert.equal(a.failures, 0);
      assert.equal(b.failures, 0);
      ok(set, 'the set of another tool');
      assert.match(set.stdout, /10\.9\.9\.9/);
    },
  );
}

for (const ex of ['spawn', 'native'] as const) {
  const skip = ex === 'spawn' ? nftSpawn.skip || legacySpawn.skip : nftNative.skip || legacySpawn.skip;
  test(
    `nft (${ex}): another tool's set (with an element) and chain in table ip iptlb survive migrate --to nft, sync after drift and the rebuild of a change; status lists them apart, not as drift; traffic flows`,
    { skip },
    async () => {
      const as = (...args: string[]): Step => ({
        op: 'cli',
        args: [`--executor=${ex}`, '-state-file=$WORK/s.db', ...args],
      });
      const sh = (script: string): Step => ({ op: 'sh', argv: ['sh', '-ec', script] });
      const theirs: Step = sh('nft list set ip iptlb theirs; nft list chain ip iptlb zombie');
      const r = await runSteps([
        { op: 'backends', tcp: BACKENDS },
        as('--engine=legacy', '-q', '-run', '-profile=a', `-src-addr=${VIP}:80`, `-dest-addr=${DEST}`),
        // The other tool's objects, there before iptlb moves to nft: a set with an element, a chain using it.
        sh(
          'nft add table ip iptlb; nft add set ip iptlb theirs "{ type ipv4_addr; }"; nft add element ip iptlb theirs "{ 10.9.9.9 }"; nft add chain ip iptlb zombie; nft add rule ip iptlb zombie ip daddr @theirs counter',
        ),
        as('migrate', '--to', 'nft'), // 3
        theirs,
        { op: 'tcp', vip: VIP, port: 80, count: 6 }, // 5
        as('status', '--json'),
        as('status'), // 7
        as('sync'),
        // Drift: someone flushes iptlb's chain output.
        sh('nft flush chain ip iptlb output'), // 9
        as('status', '--json'),
        as('sync'), // 11
        theirs,
        { op: 'tcp', vip: VIP, port: 80, count: 6 }, // 13
        // iptlb's rule and its dispatch set gone: the next change finds the table not as planned and rebuilds it.
        sh(
          "nft flush chain ip iptlb output; for s in $(nft list table ip iptlb | grep -o 'set out_[a-z]*_[0-9]*' | cut -d' ' -f2); do nft delete set ip iptlb $s; done",
        ), // 14
        as('-run', '-profile=b', '-src-addr=127.100.0.2:80', `-dest-addr=${DEST}`),
        theirs, // 16
        { op: 'tcp', vip: VIP, port: 80, count: 6 },
        { op: 'tcp', vip: '127.100.0.2', port: 80, count: 6 }, // 18
        as('status', '--json'),
      ]);
      const [, applied, added, migrated, kept1, t1, json1, text, sync1, flushed, json2, sync2, kept2, t2, broken, b] =
        r.slice(0, 16);
      const [kept3, t3, t4, json3] = r.slice(16);
      ok(applied, 'the legacy apply');
      ok(added, "the other tool's objects");
      ok(migrated, 'migrate --to nft');
      for (const [i, k] of [kept1, kept2, kept3].entries()) {
        ok(k, `their set and chain are there (${i})`);
        assert.match(k.stdout, /10\.9\.9\.9/, k.stdout);
        assert.match(k.stdout, /ip daddr @theirs counter/, k.stdout);
      }
      for (const t of [t1, t2, t3, t4]) assert.equal(t.failures, 0);
      const report = JSON.parse(json1.stdout) as {
        inSync: boolean;
        profiles: { name: string; status: string }[];
        foreignObjects?: { where: string; objects: string[] }[];
      };
      assert.equal(json1.code, 0, json1.stdout);
      assert.equal(report.inSync, true, json1.stdout);
      assert.deepEqual(
        report.profiles.map((p) => [p.name, p.status]),
        [['a', 'in-sync']],
      );
      assert.deepEqual(
        report.foreignObjects?.map((f) => [f.where, [...f.objects].sort()]),
        [['table ip iptlb', ['theirs', 'zombie']]],
      );
      assert.equal(text.code, 0, text.stderr);
      assert.match(
        text.stderr,
        /table ip iptlb also holds objects of another tool \((theirs, zombie|zombie, theirs)\)/,
      );
      assert.equal(sync1.code, 0, sync1.stderr);
      assert.match(sync1.stderr, /nothing to do/, 'in step: their objects are no drift');
      ok(flushed, 'the flush');
      assert.equal(json2.code, 3, json2.stdout);
      ok(sync2, 'the sync after drift');
      assert.match(sync2.stderr, /committed the sync/);
      ok(broken, "iptlb's set deleted");
      ok(b, 'the change that rebuilds');
      assert.match(b.stderr, /not as the state says/, b.stderr);
      assert.equal(json3.code, 0, json3.stdout);
      assert.equal(JSON.parse(json3.stdout).inSync, true, json3.stdout);
    },
  );
}

/** a (127.100.0.10:80) in $WORK/s.db on legacy, b (127.100.0.2:80) in $WORK/n.db on nft: a split host. */
const splitHost = [
  { op: 'backends' as const, tcp: [9001, 9002] },
  {
    op: 'cli' as const,
    args: [
      '--engine=legacy',
      '-state-file=$WORK/s.db',
      '-q',
      '-run',
      '-profile=a',
      `-src-addr=${VIP}:80`,
      '-dest-addr=127.0.0.1:9001',
    ],
  },
  // Another state file whose profiles were moved to nft (its record says so: an explicit engine that does
  // not hold the rules is refused otherwise).
  { op: 'write' as const, file: '$WORK/n.db.engine', text: 'nft\n' },
  {
    op: 'cli' as const,
    args: [
      '--engine=nft',
      '-state-file=$WORK/n.db',
      '-q',
      '-run',
      '-profile=b',
      '-src-addr=127.100.0.2:80',
      '-dest-addr=127.0.0.1:9002',
    ],
  },
];

test(
  "a state file that does not exist: sync, migrate, -use-state -run (-delete) and plan --use-state refuse it on either engine (exit 1, one line naming it, no directory or lock file made, the kernel unchanged); {} is no profiles (its sync keeps another state file's, removes a leftover); a first -run still creates the file",
  { skip: nftNative.skip || legacySpawn.skip },
  async () => {
    const wrong = '-state-file=$WORK/x/nonexistent/state.db';
    const refused = ['legacy', 'nft'].flatMap((engine) =>
      [
        ['sync'],
        ['migrate', '--to', engine === 'nft' ? 'legacy' : 'nft'],
        ['-use-state', '-run'],
        ['-use-state', '-run', '-delete'],
        ['plan', '--use-state'],
      ].map((args) => ({ op: 'cli' as const, args: [`--engine=${engine}`, wrong, ...args] })),
    );
    const r = (
      await runSteps([
        ...splitHost,
        { op: 'save' },
        ...refused,
        { op: 'save' },
        { op: 'sh', argv: ['test', '-e', '$WORK/x'] },
        { op: 'tcp', vip: VIP, port: 80, count: 5 },
        { op: 'tcp', vip: '127.100.0.2', port: 80, count: 5 },
        { op: 'write', file: '$WORK/e.db', text: '{}\n' },
        { op: 'write', file: '$WORK/e.db.engine', text: 'nft\n' },
        { op: 'cli', args: ['--engine=nft', '-state-file=$WORK/e.db', 'sync'] },
        { op: 'tcp', vip: '127.100.0.2', port: 80, count: 3 },
        // b is n.db's (registered): kept; once n.db is gone, a leftover: removed.
        { op: 'sh', argv: ['rm', '$WORK/n.db'] },
        { op: 'cli', args: ['--engine=nft', '-state-file=$WORK/e.db', 'sync'] },
        { op: 'tcp', vip: '127.100.0.2', port: 80, count: 3 },
        {
          op: 'cli',
          args: [
            '-state-file=$WORK/new/dir/state.db',
            '-q',
            '-run',
            '-profile=c',
            '-src-addr=127.100.0.3:80',
            '-dest-addr=127.0.0.1:9002',
          ],
        },
        { op: 'tcp', vip: '127.100.0.3', port: 80, count: 5 },
      ])
    ).slice(splitHost.length);
    const [before, ...rest] = r;
    const runs = rest.slice(0, refused.length);
    const [after, exists, a, b, , , emptySync, bKept, , leftoverSync, bGone, first, c] = rest.slice(refused.length);
    runs.forEach((p, i) => {
      const what = refused[i].args.join(' ');
      assert.equal(p.code, 1, `${what}: ${p.stderr}`);
      assert.match(
        p.stderr,
        /^iptlb: error: state-file: \S+\/x\/nonexistent\/state\.db does not exist; nothing was changed \(.*\)\n$/,
        what,
      );
    });
    assert.equal(after, before, 'the kernel is unchanged');
    assert.equal(exists.code, 1, 'no directory was made');
    assert.equal(a.failures, 0);
    assert.equal(b.failures, 0);
    ok(emptySync, 'sync of {}');
    assert.equal(bKept.failures, 0, "{} holds no profiles, and b is another state file's: kept");
    ok(leftoverSync, 'sync of {} again');
    assert.equal(bGone.failures, 3, 'b of no state file: gone');
    ok(first, 'a first -run in a directory that does not exist');
    assert.equal(c.failures, 0);
  },
);

test(
  "migrate refuses, changing nothing, when either engine holds iptlb rules of profiles its state file does not hold (another state file's); with every profile in one state file it moves them",
  { skip: nftNative.skip || legacySpawn.skip },
  async () => {
    const moves = [
      ['-state-file=$WORK/s.db', 'migrate', '--to', 'legacy'],
      ['-state-file=$WORK/s.db', 'migrate', '--to', 'nft'],
      ['-state-file=$WORK/n.db', 'migrate', '--to', 'nft'],
    ];
    const r = (
      await runSteps([
        ...splitHost,
        { op: 'save' },
        ...moves.map((args) => ({ op: 'cli' as const, args })),
        { op: 'save' },
        { op: 'tcp', vip: '127.100.0.2', port: 80, count: 5 },
        // The way out: the other state file's profiles appended to this one (both YAML maps), then a migrate.
        { op: 'sh', argv: ['sh', '-c', 'cat "$0" >> "$1"', '$WORK/n.db', '$WORK/s.db'] },
        { op: 'cli', args: ['-state-file=$WORK/s.db', 'migrate', '--to', 'legacy'] },
        { op: 'tcp', vip: VIP, port: 80, count: 5 },
        { op: 'tcp', vip: '127.100.0.2', port: 80, count: 5 },
        { op: 'sh', argv: ['nft', 'list', 'tables'] },
      ])
    ).slice(splitHost.length);
    const [before, toLegacy, toNft, nToNft, after, bServed, merge, moved, a, b, tables] = r;
    for (const [p, other] of [
      [
        toLegacy,
        /the nft engine holds iptlb rules of profiles \S+\/s\.db does not hold \(127\.100\.0\.2:80, a profile of \S+\/n\.db\); /,
      ],
      [
        toNft,
        /the nft engine holds iptlb rules of profiles \S+\/s\.db does not hold \(127\.100\.0\.2:80, a profile of \S+\/n\.db\); /,
      ],
      [
        nToNft,
        /the legacy engine holds iptlb rules of profiles \S+\/n\.db does not hold \(a, a profile of \S+\/s\.db\); /,
      ],
    ] as const) {
      assert.equal(p.code, 1, p.stderr);
      assert.match(p.stderr, other);
      assert.equal(p.stderr.trim().split('\n').length, 1, p.stderr);
    }
    assert.equal(after, before, 'nothing was changed');
    assert.equal(bServed.failures, 0);
    ok(merge, 'the other state file appended');
    ok(moved, 'migrate with every profile in one state file');
    assert.equal(a.failures, 0);
    assert.equal(b.failures, 0);
    assert.doesNotMatch(tables.stdout, /iptlb/);
  },
);

test(
  "a change after a migrate killed between its install and its removal (its move marker left) commits in the recorded engine and says the other engine's copy may still take the traffic (exit 3); after the migrate is run again, nothing is said",
  { skip: nftNative.skip || legacySpawn.skip },
  async () => {
    const web = (name: string, port: number) => [
      '-state-file=$WORK/state.db',
      '-q',
      '-run',
      `-profile=${name}`,
      `-src-addr=${VIP}:${port}`,
      '-dest-addr=127.0.0.1:9001',
    ];
    const r = await runSteps([
      { op: 'backends', tcp: [9001] },
      { op: 'cli', args: ['--engine=legacy', ...web('web', 80)] },
      // What a migrate to nft killed after its install and its record leaves: the profiles in both engines,
      // the record naming nft, the move marker. (The nft copy is made by a sync of a copy of the state file.)
      { op: 'sh', argv: ['sh', '-c', 'cp "$0" "$1" && echo nft > "$1.engine"', '$WORK/state.db', '$WORK/copy.db'] },
      { op: 'cli', args: ['-state-file=$WORK/copy.db', '-q', 'sync'] },
      { op: 'sh', argv: ['sh', '-c', 'rm "$0" "$0.engine" "$0.lock"', '$WORK/copy.db'] },
      { op: 'write', file: '$WORK/state.db.engine', text: 'nft\n' },
      { op: 'write', file: '$WORK/state.db.engine.moving', text: 'legacy nft\n' },
      { op: 'cli', args: web('api', 81) },
      { op: 'tcp', vip: VIP, port: 81, count: 5 },
      { op: 'cli', args: ['-state-file=$WORK/state.db', 'migrate', '--to', 'nft'] },
      { op: 'sh', argv: ['sh', '-c', 'test ! -e "$0"', '$WORK/state.db.engine.moving'] },
      { op: 'cli', args: web('db', 82) },
    ]);
    ok(r[1], 'apply web (legacy)');
    assert.equal(r[3]!.code, 3, `the nft copy (its sync says both engines hold the rules): ${r[3]!.stderr}`);
    const split = r[7]!;
    assert.equal(split.code, 3, split.stderr);
    assert.match(split.stderr, /^iptlb: iptlb's rules are in both engines .*migrate --to nft/m);
    assert.equal(split.stderr.trim().split('\n').length, 1, split.stderr);
    assert.equal(r[8]!.failures, 0, 'api served');
    ok(r[9], 'migrate again');
    ok(r[10], 'the marker removed');
    ok(r[11], 'a change after it');
    assert.doesNotMatch(r[11]!.stderr, /both engines/);
  },
);

test(
  "sync after a migrate killed between its install and its removal: the kernel matches the state file in the recorded engine, and sync says the other engine's copy may still take the traffic (exit 3)",
  { skip: nftNative.skip || legacySpawn.skip },
  async () => {
    const r = await runSteps([
      {
        op: 'cli',
        args: [
          '-state-file=$WORK/state.db',
          '--engine=legacy',
          '-q',
          '-run',
          '-profile=web',
          `-src-addr=${VIP}:8081`,
          '-dest-addr=127.0.0.1:9001',
        ],
      },
      { op: 'write', file: '$WORK/state.db.engine', text: 'legacy\n' },
      // What a killed migrate from nft leaves: its copy in table ip iptlb (here the dispatch element alone).
      {
        op: 'sh',
        argv: [
          'nft',
          `add table ip iptlb; add set ip iptlb out_tcp_1 { type ipv4_addr . inet_service; counter; }; add element ip iptlb out_tcp_1 { ${VIP} . 8081 }`,
        ],
      },
      { op: 'cli', args: ['-state-file=$WORK/state.db', 'sync'] },
      { op: 'cli', args: ['-state-file=$WORK/state.db', 'migrate', '--to', 'legacy'] },
      { op: 'cli', args: ['-state-file=$WORK/state.db', 'sync'] },
    ]);
    ok(r[0], 'apply');
    assert.equal(r[3].code, 3, r[3].stderr);
    assert.match(r[3].stderr, /^iptlb: iptlb's rules are in both engines .*migrate --to legacy/m);
    ok(r[4], 'migrate');
    ok(r[5], 'sync after the migrate');
    assert.doesNotMatch(r[5].stderr, /both engines/);
  },
);

/**
 * The original iptlb's rules (seed-behaviour.md) for its profile `name` at VIP:`port`, written with
 * `tool` in the nat table: its chain, a DNAT cascade over `dests` (5-decimal probabilities), RETURN
 * (unless `noReturn`), and its uncommented jump at the top of OUTPUT.
 */
function originalRules(
  tool: 'iptables-legacy' | 'iptables-nft',
  name: string,
  port: number,
  dests: string[],
  o: { noReturn?: boolean } = {},
): Step[] {
  const ipt = (...a: string[]): Step => ({ op: 'sh', argv: [tool, '-w', '-t', 'nat', ...a] });
  const chain = `IPTLB_NAT_${name.toUpperCase()}`;
  const match = ['-p', 'tcp', '-d', VIP, '--dport', String(port)];
  return [
    ipt('-N', chain),
    ...dests.map((d, i) =>
      ipt(
        '-A',
        chain,
        ...match,
        ...(i < dests.length - 1
          ? ['-m', 'statistic', '--mode', 'random', '--probability', (1 / (dests.length - i)).toFixed(5)]
          : []),
        '-j',
        'DNAT',
        '--to-destination',
        d,
      ),
    ),
    ...(o.noReturn ? [] : [ipt('-A', chain, '-j', 'RETURN')]),
    ipt('-I', 'OUTPUT', '1', ...match, '-j', chain),
  ];
}

for (const pair of PAIRS.filter((p) => p.engine === 'legacy')) {
  test(
    `plan on the legacy engine (${pair.executor}) where x_tables has no nat table creates none (asking for a table by name would); apply then does`,
    { skip: pair.skip },
    async () => {
      // `|| true`: the list is absent while ip_tables / ip6_tables are not loaded (no table anywhere).
      const tables: Step = {
        op: 'sh',
        argv: ['sh', '-c', 'cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null || true'],
      };
      const [plan4, plan6, planUse, after, apply, applied] = await runSteps([
        cli(pair, 'plan', '-profile=web', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
        cli(pair, 'plan', '-profile=six', '-src-addr=[2001:db8::10]:80', '-dest-addr=[::1]:9001'),
        cli(pair, 'plan', '--delete', '-profile=web'),
        tables,
        cli(pair, '-q', '-run', '-profile=web', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
        tables,
      ]);
      ok(plan4, 'plan of an IPv4 profile');
      assert.match(plan4.stdout, /^-A IPTLB_NAT_WEB .*--to-destination 127\.0\.0\.1:9001$/m, plan4.stdout);
      ok(plan6, 'plan of an IPv6 profile');
      assert.match(plan6.stdout, /^-A IPTLB_NAT_SIX .*--to-destination \[::1\]:9001$/m, plan6.stdout);
      assert.equal(planUse.code, 1, planUse.stderr);
      assert.doesNotMatch(after.stdout, /^nat$/m, 'plan made no nat table');
      ok(apply, 'apply');
      assert.match(applied.stdout, /^nat$/m, 'the first commit makes it');
    },
  );
}

test(
  "status of a state file without profiles while another state file's profile is in the kernel: it does not say the kernel holds no iptlb rules",
  { skip: nftNative.skip },
  async () => {
    const pair = nftNative;
    const [applied, absent, empty] = await runSteps([
      cli(pair, '-q', '-run', '-profile=web', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
      cli(pair, '-state-file=$WORK/none.db', 'status'),
      { op: 'write', file: '$WORK/empty.db', text: '{}\n' },
      cli(pair, '-state-file=$WORK/empty.db', 'status'),
    ]).then((r) => [r[0], r[1], r[3]]);
    ok(applied, 'apply');
    for (const r of [absent, empty]) {
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /^iptlb: not listed here, other state files' profiles: \/\S*\/state\.db \(web\)$/m);
      assert.match(r.stdout, /^no profiles .* and no iptlb rules in the kernel but other state files' profiles$/m);
    }
  },
);

test(
  "status through the engine that does not hold iptlb's rules (--engine legacy while they are in nft): the profiles are missing there, and one line says where the rules are and what to run (--json: otherEngine)",
  { skip: nftNative.skip || legacySpawn.skip },
  async () => {
    const pair = nftNative;
    const [applied, text, json, auto] = await runSteps([
      cli(pair, '-q', '-run', '-profile=web', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001'),
      cli(pair, '--engine=legacy', '--executor=spawn', 'status'),
      cli(pair, '--engine=legacy', '--executor=spawn', 'status', '--json'),
      cli(pair, 'status', '--json'),
    ]);
    ok(applied, 'apply');
    const line =
      /^iptlb: engine: legacy was asked for .*but iptlb's rules are in the nft engine: run `iptlb migrate --to legacy`/m;
    assert.equal(text.code, 3, text.stderr);
    assert.match(text.stdout, /^web\tmissing/m);
    assert.match(text.stderr, line);
    assert.equal(json.code, 3, json.stderr);
    assert.match(`iptlb: ${JSON.parse(json.stdout).otherEngine}`, line);
    ok(auto, 'status in the engine holding them');
    assert.equal(JSON.parse(auto.stdout).otherEngine, undefined);
  },
);
