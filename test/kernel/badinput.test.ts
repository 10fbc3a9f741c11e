/**
 * The bad-input corpus: CLI flags, hand-edited state files and API calls. Each case gets a one-line
 * error naming the field, exit code 2 (usage) or 1 (refused), and changes nothing: the nat table and
 * the state file's bytes are compared before and after every case.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { PAIRS, VIP, cli, ok, runSteps, type Proc } from './common.js';
import { pairOf } from '../harness/pair.js';
import type { Step } from './fixtures/steps.js';

const BASE = { profile: 'p', 'src-addr': `${VIP}:8081`, 'dest-addr': '127.0.0.1:9001,127.0.0.1:9002' };
type Flags = Partial<Record<string, string | null>>;
/**
 * [label, overrides of the base flags (null removes one), extra args, expected exit code, field named in the message]
 */
const CLI_CASES: [string, Flags, string[], 1 | 2, RegExp][] = [];
const add = (label: string, over: Flags, extra: string[], code: 1 | 2, re: RegExp): void =>
  void CLI_CASES.push([label, over, extra, code, re]);

for (const s of [
  '1.2.3:80',
  '1.2.3.4.5:80',
  '256.0.0.1:80',
  '1.2.3.4:0',
  '1.2.3.4:65536',
  '1.2.3.4:99999',
  'localhost:80',
  'example.com:80',
  '[::1]:80',
  '::1:80',
  '2001:db8::1',
  '1.2.3.4',
  ':80',
  '',
  ' 1.2.3.4:80',
  '01.2.3.4:80',
  '1.2.3.4:-1',
  '0.0.0.0:80',
  '255.255.255.255:80',
  '224.0.0.1:80',
  '1.2.3.4:80\n-A OUTPUT -j DROP',
  '1.2.3.4:80;reboot',
  '$(reboot):80',
  '1.2.3.4:0x50',
  '1.2.3.4:８０',
]) {
  add(`source ${JSON.stringify(s)}`, { 'src-addr': s }, [], 2, /source/);
}
for (const d of [
  '',
  ',',
  '127.0.0.1:1,',
  '127.0.0.1:1,127.0.0.1:1',
  'a:1',
  '127.0.0.1',
  '127.0.0.1:1 127.0.0.1:2',
  `${VIP}:8081`,
  '127.0.0.1:80,[2001:db8::1]:80',
  Array.from({ length: 5000 }, (_, i) => `127.0.${i >> 8}.${i & 255}:80`).join(','),
  '127.0.0.1:80"',
  '127.0.0.1:80 -j ACCEPT',
]) {
  add(`destination ${JSON.stringify(d.slice(0, 40))}`, { 'dest-addr': d }, [], 2, /destination/);
}
for (const n of [
  '',
  'a'.repeat(64),
  '-j',
  '-',
  'a b',
  'a\nb',
  'a"b',
  "a'b",
  'a;b',
  '$(x)',
  '`x`',
  'ä',
  'a/b',
  'a.b',
  '-j DROP',
  'a\tb',
  'a\u0001b',
  '*',
  'a,b',
]) {
  add(`name ${JSON.stringify(n)}`, { profile: n }, [], 2, /name|profile/);
}
for (const p of ['icmp', 'TCPX', '', 'tcp udp', 'tcp;x'])
  add(`protocol ${JSON.stringify(p)}`, { protocol: p }, [], 2, /protocol/);
for (const b of ['INPUT', 'bogus', '', 'server;x', 'OUTPUT'])
  add(`rules-backend ${JSON.stringify(b)}`, { 'rules-backend': b }, [], 2, /rulesBackend/);
for (const l of ['8', '-1', 'loud', '4.5', '', '0x4'])
  add(`log-level ${JSON.stringify(l)}`, { 'log-level': l }, ['-log-custom-chain'], 2, /logLevel/);
for (const d of [
  '127.0.0.1:9001*x',
  '127.0.0.1:9001*1001',
  '127.0.0.1:9001*-1',
  '127.0.0.1:9001*1.5',
  '127.0.0.1:9001*0,127.0.0.1:9002*0',
  '127.0.0.1:9001*1000,127.0.0.1:9002*999',
  '127.0.0.1:9001*',
]) {
  add(`weights ${JSON.stringify(d)}`, { 'dest-addr': d }, [], 2, /weights/);
}
for (const sch of ['fast', '', 'roundrobin', 'random;x'])
  add(`scheduler ${JSON.stringify(sch)}`, {}, [`-scheduler=${sch}`], 2, /scheduler/);
for (const af of ['x', '-1', '86401', '1.5', '2s', '', '1e3', '10;x'])
  add(`affinity ${JSON.stringify(af)}`, {}, [`-affinity=${af}`], 2, /affinity/);
add('-run=maybe', {}, ['-run=maybe'], 2, /run/);
add('-delete without -run', {}, ['-delete', '-run=false'], 2, /-delete needs -run/);
add('-delete with -reset', {}, ['-delete', '-reset', '-run'], 2, /-delete and -reset/);
add('-use-state with -src-addr', {}, ['-use-state', '-run'], 2, /-use-state cannot/);
add('-masquerade in client mode', {}, ['-masquerade'], 2, /masquerade/);
add('unknown flag', {}, ['-bogus'], 2, /unknown option/);
add('missing -src-addr', { 'src-addr': null }, [], 2, /source/);
add('missing -dest-addr', { 'dest-addr': null }, [], 2, /destination/);
add('executor typo', {}, ['--executor=fast'], 2, /executor/);
add('changing an existing profile without -reset', { profile: 'keep' }, [], 1, /-reset/);
add(
  '-reset of an existing profile with bad input keeps the old rules',
  { profile: 'keep', 'src-addr': '1.2.3:90' },
  ['-reset'],
  2,
  /source/,
);
add(
  '-reset with an unknown rules-backend keeps the old rules',
  { profile: 'keep', 'src-addr': `${VIP}:90`, 'rules-backend': 'INPUT' },
  ['-reset'],
  2,
  /rulesBackend/,
);
add('source owned by another profile', { 'src-addr': `${VIP}:90` }, [], 1, /source.*already belongs/);
add('chain-name collision', { profile: 'KEEP', 'src-addr': `${VIP}:91` }, [], 1, /name.*IPTLB_NAT_KEEP/);
// -run without addresses re-applies a profile as the state file holds it: a profile flag beside it was ignored
// (exit 0, keep applied without logging, as tcp).
for (const [flag, field] of [
  ['-log-custom-chain', 'log-custom-chain'],
  ['-protocol=udp', 'protocol'],
  ['-rules-backend=proxy', 'rules-backend'],
  ['-log-level=7', 'log-level'],
])
  add(
    `${flag} beside -run without addresses, which re-applies the profile as it is`,
    { profile: 'keep', 'src-addr': null, 'dest-addr': null },
    [flag],
    2,
    new RegExp(`^iptlb: error: ${field}: -${field} needs -src-addr and -dest-addr`),
  );

const GOOD_STATE =
  'keep:\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: 127.100.0.10:90\n';
/** Hand-edited state files: [label, content or special, field in the message] */
const STATE_CASES: [string, string, RegExp][] = [
  ['logLevel as a number', GOOD_STATE.replace('"4"', '4'), /logLevel/],
  ['logEnabled as a string', GOOD_STATE.replace('logEnabled: false', 'logEnabled: "no"'), /logEnabled/],
  [
    'destination as a scalar',
    GOOD_STATE.replace('  destination:\n  - 127.0.0.1:9001', '  destination: 127.0.0.1:9001'),
    /destination/,
  ],
  ['destination with a number', GOOD_STATE.replace('- 127.0.0.1:9001', '- 9001'), /destination/],
  ['unknown protocol', GOOD_STATE.replace('protocol: tcp', 'protocol: icmp'), /protocol/],
  ['unknown key', GOOD_STATE + '  weight: 3\n', /weight/],
  ['weights naming no destination', GOOD_STATE + '  weights:\n    127.0.0.1:9009: 2\n', /weights/],
  ['weight as a string', GOOD_STATE + '  weights:\n    127.0.0.1:9001: "2"\n', /weights/],
  ['weights all 0', GOOD_STATE + '  weights:\n    127.0.0.1:9001: 0\n', /weights/],
  ['unknown scheduler', GOOD_STATE.replace('  source:', '  scheduler: fastest\n  source:'), /scheduler/],
  ['affinity as a string', GOOD_STATE.replace('  destination:', '  affinity: "2"\n  destination:'), /affinity/],
  ['affinity out of range', GOOD_STATE.replace('  destination:', '  affinity: 86401\n  destination:'), /affinity/],
  ['affinity fractional', GOOD_STATE.replace('  destination:', '  affinity: 2.5\n  destination:'), /affinity/],
  [
    'alias bomb',
    'a: &a ["x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c]\n',
    /alias|YAML/i,
  ],
  [
    'anchor reuse',
    'keep: &k\n  destination: [127.0.0.1:9001]\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: 127.100.0.10:90\nother: *k\n',
    /alias|YAML/i,
  ],
  ['truncated', GOOD_STATE.slice(0, 30), /state file/],
  ['binary garbage', '\u0000\u0001\u0002\uFFFD{[', /state file/],
  ['duplicate profile', GOOD_STATE + GOOD_STATE, /profile "keep" appears twice \(lines 1 and \d+\); keep one of them/],
  ['two profiles, one source', GOOD_STATE + GOOD_STATE.replace('keep:', 'keep2:'), /already belongs/],
  [
    'chain collision in the file',
    GOOD_STATE + GOOD_STATE.replace('keep:', 'KEEP:').replace(':90', ':91'),
    /IPTLB_NAT_KEEP/,
  ],
  ['a list at the top', '- keep\n', /mapping/],
  ['bad name in the file', GOOD_STATE.replace('keep:', '"a b":'), /name/],
  ['empty source', GOOD_STATE.replace('source: 127.100.0.10:90', 'source: ""'), /source/],
];

// Validation happens before any engine is involved: the whole corpus runs on the first pair, and every
// tenth case on the others (to show the refusal leaves each engine's kernel alone too).
for (const { name: ex, skip } of PAIRS) {
  const sample = <T>(cases: T[]): T[] => (ex === PAIRS[0].name ? cases : cases.filter((_, i) => i % 10 === 0));
  const cliCases = sample(CLI_CASES);
  const stateCases = sample(STATE_CASES);
  describe(`bad input over ${ex}`, { skip }, () => {
    test(`${cliCases.length} bad command lines: exit 2 or 1, one line naming the field, nothing changed`, async () => {
      const steps: Step[] = [
        cli(ex, '-run', '-profile=keep', `-src-addr=${VIP}:90`, '-dest-addr=127.0.0.1:9001'),
        { op: 'save' },
        { op: 'read', file: '$WORK/state.db' },
      ];
      for (const [, over, extra] of cliCases) {
        const flags = { ...BASE, ...over } as Record<string, string | null>;
        const args = Object.entries(flags)
          .filter(([, v]) => v !== null)
          .map(([k, v]) => `-${k}=${v}`);
        steps.push(cli(ex, '-run', ...args, ...extra), { op: 'save' }, { op: 'read', file: '$WORK/state.db' });
      }
      const r = await runSteps(steps, 300_000);
      ok(r[0]);
      assert.equal(r.length, 3 + 3 * cliCases.length, 'every case ran');
      cliCases.forEach(([label, , , code, re], i) => {
        const p: Proc = r[3 + 3 * i];
        assert.equal(p.code, code, `${label}: exit ${p.code}, ${p.stderr}`);
        const lines = p.stderr.trim().split('\n');
        assert.equal(lines.length, 1, `${label}: one line: ${p.stderr}`);
        assert.match(lines[0], /^iptlb: error: /, label);
        assert.match(lines[0], re, label);
        assert.equal(r[4 + 3 * i], r[1], `${label}: kernel unchanged`);
        assert.equal(r[5 + 3 * i], r[2], `${label}: state file unchanged`);
      });
    });

    test('apply with -run=false or -reset=false, which it would ignore: exit 2, one line naming the flag, nothing changed', async () => {
      const cases: [string[], string][] = [
        [['apply', '-run=false', '-profile=new', `-src-addr=${VIP}:95`, '-dest-addr=127.0.0.1:9005'], 'run'],
        [['apply', '--reset=false', '-profile=keep', `-src-addr=${VIP}:90`, '-dest-addr=127.0.0.1:9002'], 'reset'],
      ];
      const steps: Step[] = [
        cli(ex, '-run', '-profile=keep', `-src-addr=${VIP}:90`, '-dest-addr=127.0.0.1:9001'),
        { op: 'save' },
        { op: 'read', file: '$WORK/state.db' },
      ];
      for (const [args] of cases) steps.push(cli(ex, ...args), { op: 'save' }, { op: 'read', file: '$WORK/state.db' });
      const r = await runSteps(steps);
      ok(r[0]);
      cases.forEach(([args, flag], i) => {
        const p: Proc = r[3 + 3 * i];
        assert.equal(p.code, 2, `${args.join(' ')}: exit ${p.code}, ${p.stderr}`);
        assert.equal(p.stderr.trim().split('\n').length, 1, p.stderr);
        assert.match(p.stderr, new RegExp(`^iptlb: error: apply: -${flag}=false would be ignored: `));
        assert.equal(r[4 + 3 * i], r[1], `${args.join(' ')}: kernel unchanged`);
        assert.equal(r[5 + 3 * i], r[2], `${args.join(' ')}: state file unchanged`);
      });
    });

    test(`${stateCases.length} hand-edited state files: exit 1, one line, file never overwritten, kernel unchanged`, async () => {
      const steps: Step[] = [
        cli(ex, '-run', '-profile=keep', `-src-addr=${VIP}:90`, '-dest-addr=127.0.0.1:9001'),
        { op: 'save' },
      ];
      for (const [, text] of stateCases) {
        steps.push(
          { op: 'write', file: '$WORK/state.db', text },
          cli(ex, '-run', '-profile=new', `-src-addr=${VIP}:95`, '-dest-addr=127.0.0.1:9005'),
          cli(ex, '-use-state', '-run'),
          { op: 'read', file: '$WORK/state.db' },
          { op: 'save' },
        );
      }
      steps.push(
        { op: 'sh', argv: ['mkdir', '-p', '$WORK/dir.db'] },
        cli(ex, '-run', '-profile=new', `-src-addr=${VIP}:95`, '-dest-addr=127.0.0.1:9005', '-state-file=$WORK/dir.db'),
      );
      steps.push(
        { op: 'write', file: '$WORK/real.db', text: GOOD_STATE },
        { op: 'sh', argv: ['ln', '-s', '$WORK/real.db', '$WORK/link.db'] },
      );
      steps.push(
        {
          op: 'cli',
          args: [
            ...pairOf(ex).flags,
            '-state-file=$WORK/link.db',
            '-run',
            '-profile=new',
            `-src-addr=${VIP}:95`,
            '-dest-addr=127.0.0.1:9005',
          ],
        },
        { op: 'read', file: '$WORK/real.db' },
        { op: 'save' },
      );
      const r = await runSteps(steps, 300_000);
      ok(r[0]);
      stateCases.forEach(([label, text, re], i) => {
        const [, , p1, p2, after, save] = [0, 0, ...r.slice(3 + 5 * i, 3 + 5 * i + 4)] as [
          number,
          number,
          Proc,
          Proc,
          string,
          string,
        ];
        for (const p of [p1, p2]) {
          assert.equal(p.code, 1, `${label}: exit ${p.code}: ${p.stderr}`);
          assert.equal(p.stderr.trim().split('\n').length, 1, `${label}: ${p.stderr}`);
          assert.match(p.stderr, /^iptlb: error: state file /, label);
          assert.match(p.stderr, re, label);
        }
        assert.equal(after, text, `${label}: file bytes unchanged`);
        assert.equal(save, r[1], `${label}: kernel unchanged`);
      });
      const n = 2 + 5 * stateCases.length; // index of the mkdir step
      assert.equal(r[n + 1].code, 1);
      assert.match(r[n + 1].stderr, /is a directory/);
      assert.equal(r[n + 4].code, 1);
      assert.match(r[n + 4].stderr, /symbolic link/);
      assert.equal(r[n + 5], GOOD_STATE, 'the symlink target is untouched');
      assert.equal(r[n + 6], r[1]);
    });

    test('bad API calls: typed errors naming the field, nothing changed', async () => {
      const results = (await runJsonInFreshNetns(new URL('./fixtures/api-bad.js', import.meta.url).pathname, [ex], {
        timeoutMs: 60_000,
      })) as {
        label: string;
        outcome: { code?: string; field?: string; message: string; typed: boolean } | null;
        unchanged: boolean;
      }[];
      assert.ok(results.length >= 15);
      for (const r of results) {
        assert.ok(r.outcome, `${r.label}: did not reject`);
        assert.ok(r.outcome.typed, `${r.label}: untyped ${r.outcome.message}`);
        assert.ok(
          ['EINVAL_PROFILE', 'ECONFLICT', 'ENOTFOUND', 'EUSAGE'].includes(r.outcome.code!),
          `${r.label}: ${r.outcome.code}`,
        );
        assert.ok(r.outcome.field, `${r.label}: names no field: ${r.outcome.message}`);
        assert.ok(!r.outcome.message.includes('\n'), r.label);
        assert.ok(r.unchanged, `${r.label}: something changed`);
      }
    });
  });
}
