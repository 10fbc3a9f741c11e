/**
 * What the CLI says a commit did, on each engine × executor pair in a fresh namespace: `--verbose`
 * prints the committed rules for delete, sync and migrate as for apply; the chains it and `show` name
 * are the chains the rules are in (`iptables-legacy-save -t nat`, `nft list ruleset`); a migration to
 * the engine that already holds the rules says so and changes nothing. (The same without root, over
 * the fake kernels: test/unit/cli-commits.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VIP, aboveExecutor, cli, describePairs, ok, runSteps, type Proc } from './common.js';

const DEST = '127.0.0.1:9001,127.0.0.1:9002';
/** The `--verbose` lines of a run (the rules, indented under `iptlb:`). */
const rulesOf = (p: Proc): string[] =>
  p.stderr
    .split('\n')
    .filter((l) => l.startsWith('iptlb:   '))
    .map((l) => l.slice('iptlb:   '.length));
/** Everything the kernel holds, with counters and nft handles: any commit shows. */
const KERNEL = [
  'sh',
  '-c',
  '(iptables-legacy-save -c; ip6tables-legacy-save -c; nft -a list ruleset; ipset list) 2>&1 | grep -v "^#"',
] as const;
const FILES = ['stat', '-c', '%n %i %s %y', '$WORK/state.db', '$WORK/state.db.engine'] as const;

describePairs('the CLI on what it committed', (pair) => {
  const other = pair.engine === 'legacy' ? 'nft' : 'legacy';
  const executor = `--executor=${pair.executor}`;

  test('--verbose prints the rules delete, sync and migrate committed, as apply; they and show name the chain each rule is in', async () => {
    const tamper =
      pair.engine === 'legacy'
        ? ['iptables-legacy', '-t', 'nat', '-F', 'IPTLB_NAT_WEB']
        : ['nft', 'flush', 'map', 'ip', 'iptlb', 'be_tcp'];
    const r = await runSteps([
      cli(pair, '--verbose', 'apply', '-profile=web', `-src-addr=${VIP}:8081`, `-dest-addr=${DEST}`),
      cli(pair, '--verbose', 'apply', '-profile=two', '-src-addr=127.100.0.11:8081', `-dest-addr=${DEST}`),
      { op: 'sh', argv: ['iptables-legacy-save', '-t', 'nat'] },
      { op: 'sh', argv: ['nft', 'list', 'ruleset'] },
      cli(pair, 'show', 'web'),
      cli(pair, 'show', '--json', 'web'),
      { op: 'sh', argv: tamper },
      cli(pair, '--verbose', 'sync'),
      cli(pair, 'sync', '--verbose'),
      cli(pair, 'delete', 'two', '--verbose'),
      { op: 'cli', args: [executor, '-state-file=$WORK/state.db', 'migrate', '--to', other, '--verbose'] },
    ]);
    const [applied, , save, ruleset, shown, shownJson, , synced, inStep, deleted, migrated] = r as Proc[];
    for (const [i, p] of r.entries()) if (p) ok(p, `step ${i}: ${p.stderr}`);
    assert.ok(rulesOf(applied).length > 0, applied.stderr);
    const savedText = save.stdout;
    if (pair.engine === 'legacy') {
      // The jump is in IPTLB_OUTPUT, reached from OUTPUT through the gate: so say the verbose lines, the log and show.
      assert.match(savedText, /^-A IPTLB_OUTPUT -d 127\.100\.0\.10\/32 .*iptlb:web.* -j IPTLB_NAT_WEB$/m);
      assert.doesNotMatch(savedText, /^-A OUTPUT .*iptlb:web/m);
      assert.ok(
        rulesOf(applied).some((l) => l.startsWith('[insert] nat/IPTLB_OUTPUT: ')),
        applied.stderr,
      );
      assert.ok(!rulesOf(applied).some((l) => /nat\/OUTPUT/.test(l)), applied.stderr);
      assert.match(
        applied.stderr,
        /\(client: jump in nat IPTLB_OUTPUT \(behind the gate in OUTPUT\), chain IPTLB_NAT_WEB /,
      );
      // At the position iptables-legacy-save gives it in that chain (two was inserted above it).
      const position = savedText
        .split('\n')
        .filter((l) => l.startsWith('-A IPTLB_OUTPUT '))
        .findIndex((l) => l.includes('iptlb:web'));
      assert.equal(position, 1, savedText);
      assert.match(shown.stdout, /^ {2}IPTLB_OUTPUT #2\t.*iptlb:web/m);
      assert.doesNotMatch(shown.stdout, /^ {2}OUTPUT /m);
      // --json says the same: the chain the rule is in and its position there, and the hook it serves.
      const hooks = (JSON.parse(shownJson.stdout) as { kernel: { hookRules: Record<string, unknown>[] } }).kernel
        .hookRules;
      assert.deepEqual(
        hooks.map((h) => ({ chain: h.chain, position: h.position, hook: h.hook })),
        [{ chain: 'IPTLB_OUTPUT', position: 2, hook: 'OUTPUT' }],
        shownJson.stdout,
      );
    } else {
      // Every chain, set and map show and the verbose lines name is one `nft list ruleset` has.
      const named = [
        ...shown.stdout.matchAll(/^ {2}(chain|set|map) (\S+)\t/gm),
        ...rulesOf(applied).flatMap((l) => [
          ...l.matchAll(/^\[nft\] add (chain|set|map|rule|element) ip iptlb (\w+)/g),
        ]),
      ].map((m) => m[2]);
      assert.ok(named.length > 0, shown.stdout);
      for (const n of named) assert.match(ruleset.stdout, new RegExp(`^\\t(chain|set|map) ${n} \\{`, 'm'), n);
    }
    // sync put web back (and says with what); a second sync has nothing to commit, nothing to print.
    const sync = rulesOf(synced);
    assert.ok(
      pair.engine === 'legacy'
        ? sync.includes(`[append] nat/IPTLB_NAT_WEB: -d ${VIP}/32 -p tcp -j DNAT --to-destination 127.0.0.1:9002`) &&
            sync.some((l) => l.startsWith('[insert] nat/IPTLB_OUTPUT: '))
        : sync.some((l) => /^\[nft\] add element ip iptlb be_tcp \{ .*127\.100\.0\.10 \. 8081 /.test(l)),
      synced.stderr,
    );
    assert.deepEqual(rulesOf(inStep), [], inStep.stderr);
    assert.match(inStep.stderr, /kernel already matches the state file; nothing to do/);
    assert.deepEqual(
      rulesOf(deleted),
      pair.engine === 'legacy'
        ? ['[delete] nat: the rules commented "iptlb:two"', '[delete] nat/IPTLB_NAT_TWO: the chain']
        : rulesOf(deleted).filter((l) => l.startsWith('[nft] ')),
      deleted.stderr,
    );
    assert.ok(rulesOf(deleted).length > 0, deleted.stderr);
    // The migration's install in the other engine, then its removal from this one.
    const moved = rulesOf(migrated);
    const nftFirst = moved.findIndex((l) => l.startsWith('[nft] '));
    const legacyFirst = moved.findIndex((l) => !l.startsWith('[nft] '));
    assert.ok(nftFirst >= 0 && legacyFirst >= 0, migrated.stderr);
    assert.equal(nftFirst < legacyFirst, other === 'nft', migrated.stderr);
  });

  if (pair.engine === 'legacy')
    test("--verbose lists the original iptlb's jumps a change deletes: a takeover (-run -reset) and a delete of its profiles", async () => {
      const ipt = (...a: string[]) => ({ op: 'sh' as const, argv: ['iptables-legacy', '-w', '-t', 'nat', ...a] });
      // The original Go iptlb's rules for two profiles (seed-behaviour.md): a chain, and a jump without a comment.
      const original = (name: string, port: number) => {
        const chain = `IPTLB_NAT_${name.toUpperCase()}`;
        const match = ['-p', 'tcp', '-d', VIP, '--dport', String(port)];
        return [
          ipt('-N', chain),
          ipt('-A', chain, ...match, '-j', 'DNAT', '--to-destination', '127.0.0.1:9001'),
          ipt('-A', chain, '-j', 'RETURN'),
          ipt('-I', 'OUTPUT', '1', ...match, '-j', chain),
        ];
      };
      const entry = (name: string, port: number) =>
        `${name}:\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${VIP}:${port}\n`;
      const r = (await runSteps([
        ...original('test', 8081),
        ...original('gone', 8082),
        { op: 'write', file: '$WORK/state.db', text: entry('test', 8081) + entry('gone', 8082) },
        cli(pair, '--verbose', '-run', '-reset', '-profile=test', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9002'),
        cli(pair, '--verbose', 'delete', 'gone'),
        { op: 'sh', argv: ['iptables-legacy-save', '-t', 'nat'] },
      ])) as Proc[];
      const [taken, deleted, save] = r.slice(-3) as [Proc, Proc, Proc];
      ok(taken, 'the takeover');
      ok(deleted, 'the delete');
      const jump = (port: number, chain: string) =>
        `[delete] nat/OUTPUT: -d ${VIP}/32 -p tcp -m tcp --dport ${port} -j ${chain} (the original iptlb's jump, no comment)`;
      assert.deepEqual(
        rulesOf(taken).filter((l) => l.startsWith('[delete]')),
        [jump(8081, 'IPTLB_NAT_TEST')],
        taken.stderr,
      );
      assert.deepEqual(
        rulesOf(deleted),
        [
          '[delete] nat: the rules commented "iptlb:gone"',
          jump(8082, 'IPTLB_NAT_GONE'),
          '[delete] nat/IPTLB_NAT_GONE: the chain',
        ],
        deleted.stderr,
      );
      // They are gone indeed: no rule without a comment jumps to a profile's chain.
      assert.doesNotMatch(save.stdout, /^-A OUTPUT (?!.*--comment).*-j IPTLB_NAT_/m, save.stdout);
    });

  test(`migrate --to ${pair.engine} with the rules in ${pair.engine} already: says so, exit 0, the kernel, the state file and the record unchanged`, async () => {
    const to = ['-state-file=$WORK/state.db', executor, 'migrate', '--to', pair.engine];
    const r = (await runSteps([
      cli(pair, 'apply', '-profile=web', `-src-addr=${VIP}:8081`, `-dest-addr=${DEST}`),
      cli(pair, 'apply', '-profile=six', '-src-addr=[::1]:8081', '-dest-addr=[::1]:9001'),
      // Connections through the rules: their counters, which a commit that rewrote the rules would reset.
      { op: 'backends', tcp: [9001, 9002] },
      { op: 'tcp', vip: VIP, port: 8081, count: 6 },
      // Put there with --engine: no record yet; the first migrate writes it and commits nothing.
      { op: 'sh', argv: [...KERNEL] },
      { op: 'cli', args: [...to, '--verbose'] },
      { op: 'sh', argv: [...KERNEL] },
      { op: 'sh', argv: [...FILES] },
      { op: 'cli', args: [...to, '--verbose'] },
      { op: 'cli', args: [...to, '--json'] },
      { op: 'sh', argv: [...KERNEL] },
      { op: 'sh', argv: [...FILES] },
      { op: 'read', file: '$WORK/state.db.engine' },
    ])) as (Proc | string)[];
    const [, , , , k0, recorded, k1, f1, again, json, k2, f2, record] = r as Proc[];
    ok(recorded, 'first migrate');
    ok(again, 'second migrate');
    ok(json, 'migrate --json');
    assert.match(k0.stdout, pair.engine === 'legacy' ? /^\[[1-9]\d*:\d+\] -A IPTLB_OUTPUT /m : /counter packets [1-9]/);
    assert.equal(k1.stdout, k0.stdout, 'the first migrate committed nothing');
    assert.equal(k2.stdout, k0.stdout, 'nor did the next ones');
    assert.equal(f2.stdout, f1.stdout, 'state file and record untouched');
    const already = `the rules are already in the ${pair.engine} engine \\(2 profile\\(s\\) of /\\S+/state\\.db, in step\\) and the ${other} engine holds none of iptlb's`;
    assert.match(
      recorded.stderr,
      new RegExp(
        `^iptlb: ${already}: the kernel was not changed; the ${pair.engine} engine is now recorded in /\\S+/state\\.db\\.engine\n$`,
      ),
    );
    for (const p of [again, json]) assert.match(p.stderr, new RegExp(`^iptlb: ${already}: nothing was changed\n$`));
    assert.deepEqual(rulesOf(again), [], 'nothing committed, nothing printed');
    assert.deepEqual(JSON.parse(json.stdout), {
      to: pair.engine,
      moved: 0,
      installMs: 0,
      removeMs: 0,
      removedFrom: false,
      unchanged: true,
      recorded: false,
    });
    assert.equal(record as unknown as string, `${pair.engine}\n`);
  });
  // The original's -run and -reset after the command (`apply`, `plan`): parsing, above the executor.
  if (aboveExecutor(pair))
    test("the original's -run and -reset after the command: plan -run commits nothing and writes no state; apply -reset replaces the destinations", async () => {
      const r = await runSteps([
        cli(pair, 'apply', '-profile=web', `-src-addr=${VIP}:8081`, `-dest-addr=${DEST}`),
        { op: 'sh', argv: [...KERNEL] },
        { op: 'read', file: '$WORK/state.db' },
        cli(pair, 'plan', '-run', '-profile=two', '-src-addr=127.100.0.11:8081', `-dest-addr=${DEST}`),
        cli(pair, 'plan', '-reset', '-profile=web', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9009'),
        { op: 'sh', argv: [...KERNEL] },
        { op: 'read', file: '$WORK/state.db' },
        cli(pair, 'apply', '-reset', '-profile=web', `-src-addr=${VIP}:8081`, '-dest-addr=127.0.0.1:9009'),
        cli(pair, 'apply', '-run', '-profile=two', '-src-addr=127.100.0.11:8081', '-dest-addr=127.0.0.1:9001'),
        cli(pair, 'status', '--json'),
      ]);
      const [applied, k0, s0, planRun, planReset, k1, s1, reset, run, status] = r as Proc[];
      for (const p of [applied, planRun, planReset, reset, run, status]) ok(p, p.stderr);
      assert.match(planRun.stdout, /127\.100\.0\.11/, 'the plan of the new profile is printed');
      assert.match(planReset.stdout, /127\.0\.0\.1:9009|127\.0\.0\.1 \. 9009/, planReset.stdout);
      assert.equal(k1.stdout, k0.stdout, 'plan -run and plan -reset committed nothing');
      assert.equal(s1 as unknown as string, s0 as unknown as string, 'nor wrote the state file');
      const st = JSON.parse(status.stdout) as {
        inSync: boolean;
        profiles: { name: string; destinations: { destination: string }[] }[];
      };
      assert.equal(st.inSync, true, status.stdout);
      assert.deepEqual(
        st.profiles.map((p) => [p.name, p.destinations.map((d) => d.destination)]).sort(),
        [
          ['two', ['127.0.0.1:9001']],
          ['web', ['127.0.0.1:9009']],
        ],
        status.stdout,
      );
    });

  test('delete --all: every profile in one commit; again: says the state file holds none, exit 0; a state file that does not exist: refused, nothing made', async () => {
    const r = await runSteps([
      cli(pair, 'apply', '-profile=web', `-src-addr=${VIP}:8081`, `-dest-addr=${DEST}`),
      cli(pair, 'apply', '-profile=two', '-src-addr=127.100.0.11:8081', `-dest-addr=${DEST}`),
      cli(pair, 'delete', '--all'),
      cli(pair, 'list'),
      cli(pair, 'delete', '--all'),
      { op: 'cli', args: [executor, '-state-file=$WORK/none/state.db', 'delete', '--all'] },
      { op: 'sh', argv: ['sh', '-c', 'ls -A "$WORK"'] },
    ]);
    const [a, b, all, list, again, none, ls] = r as Proc[];
    for (const p of [a, b, all, list, again]) ok(p, p.stderr);
    assert.match(all.stderr, /committed 2 profile change\(s\) in one transaction/);
    assert.match(list.stdout, /^no profiles in \S+\/state\.db\n$/);
    assert.match(again.stderr, /^iptlb: delete --all: \S+\/state\.db holds no profiles; nothing was changed\n$/);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /^iptlb: error: state-file: \S+\/none\/state\.db does not exist; nothing was changed/);
    assert.doesNotMatch(ls.stdout, /^none$/m, 'no directory made for it');
  });
});
