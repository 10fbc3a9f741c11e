/**
 * The CLI additions of issue 17, without root: a bare `iptlb` prints the help, `completion bash`
 * lists every command and its flags, bad input to `completion` and `demo` is refused by field with
 * exit 2, and the man page made at build time holds every command's help.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { main, normalizeArgv } from '../../src/cli/main.js';
import { FLAG_VALUES } from '../../src/cli/commands/completion.js';
import { parseEngineChoice } from '../../src/engines/select.js';
import { parseExecutorChoice } from '../../src/engines/executors.js';
import { validateProfile } from '../../src/model/profile.js';
import { PROJECT_ROOT } from '../harness/env.js';

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(argv, { out: (s) => out.push(s), err: (s) => err.push(s) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

const COMMANDS = [
  'apply',
  'delete',
  'list',
  'show',
  'plan',
  'status',
  'top',
  'sync',
  'watch',
  'migrate',
  'agent',
  'fleet',
  'doctor',
  'demo',
  'completion',
];

test('a bare iptlb prints the help, as --help does, and exits 0', async () => {
  const bare = await run([]);
  const help = await run(['--help']);
  assert.equal(bare.code, 0);
  assert.equal(help.code, 0);
  assert.equal(bare.err, '');
  assert.match(bare.out, /^Usage: iptlb \[options\] \[command\]/);
  assert.equal(bare.out, help.out);
  for (const c of COMMANDS) assert.match(bare.out, new RegExp(`^  ${c}\\b`, 'm'), c);
});

/** The commands `--help` lists under `path` ('' the program, `fleet`), each with the flags its own `--help` lists. */
async function helpLevels(path: string[] = []): Promise<{ path: string[]; flags: string[]; commands: string[] }[]> {
  const help = (await run([...path, '--help'])).out.split('\n');
  const section = (title: string): string[] => {
    const at = help.indexOf(title);
    if (at < 0) return [];
    const end = help.findIndex((l, i) => i > at && l === '');
    return help.slice(at + 1, end < 0 ? undefined : end);
  };
  const flags = section('Options:').flatMap((l) => /^ {2}(-[^\s,]+(?:, -[^\s,]+)*)/.exec(l)?.[1]?.split(', ') ?? []);
  const commands = section('Commands:').flatMap((l) => /^ {2}([a-z][a-z-]*)/.exec(l)?.[1] ?? []);
  const levels = [{ path, flags, commands }];
  for (const c of commands) if (c !== 'help') levels.push(...(await helpLevels([...path, c])));
  return levels;
}

/** Every form of `flag` the command line takes: the original's flags with one dash too (normalizeArgv). */
function forms(flag: string): string[] {
  if (!flag.startsWith('--')) return [flag];
  const name = flag.slice(2);
  return normalizeArgv([`-${name}=1`])[0]?.startsWith(flag) ? [flag, `-${name}`] : [flag];
}

/**
 * Runs the completion script in bash: what it offers for each list of words (the last one is being
 * completed). `iptlb` (which the script runs for profile names) is this tree's, through a shim on PATH.
 */
function completions(script: string, cases: string[][], env: NodeJS.ProcessEnv = process.env): string[][] {
  const q = (w: string): string => `'${w.replace(/'/g, "'\\''")}'`;
  const bin = mkdtempSync(path.join(tmpdir(), 'iptlb-shim-'));
  writeFileSync(
    path.join(bin, 'iptlb'),
    `#!/bin/sh\nexec ${q(process.execPath)} ${q(path.join(PROJECT_ROOT, 'bin', 'iptlb.cjs'))} "$@"\n`,
    { mode: 0o755 },
  );
  const r = spawnSync(
    'bash',
    [
      '-c',
      `${script}
try() { COMP_WORDS=("$@"); COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _iptlb; echo "\${COMPREPLY[*]}"; }
${cases.map((words) => `try ${words.map(q).join(' ')}`).join('\n')}`,
    ],
    { encoding: 'utf8', env: { ...env, PATH: `${bin}:${env.PATH ?? ''}` } },
  );
  rmSync(bin, { recursive: true, force: true });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout
    .split('\n')
    .slice(0, cases.length)
    .map((l) => l.split(' ').filter(Boolean));
}

test("completion bash completes every command and subcommand and every flag the command line takes, the original's one-dash forms too, also after global flags", async () => {
  const r = await run(['completion', 'bash']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^complete -F _iptlb iptlb$/m);
  const levels = await helpLevels();
  assert.deepEqual(levels[0]!.commands, COMMANDS);
  assert.deepEqual(
    levels.filter((l) => l.path.length === 2).map((l) => l.path.join(' ')),
    ['fleet apply', 'fleet delete', 'fleet list', 'fleet status'],
  );
  // The one-dash forms are taken: the original's flags, as its README gives them.
  const top = levels[0]!.flags.flatMap(forms);
  for (const flag of ['-run', '-use-state', '-reset', '-delete', '-profile', '-src-addr', '-dest-addr', '-state-file'])
    assert.ok(top.includes(flag), flag);
  // Given first, or after global flags (a value flag's value is not the command: `--engine nft`, `-state-file=…`).
  const before = [[], ['--engine', 'nft'], ['-q', '-state-file', '=', '/tmp/s.db', '--executor', 'spawn']];
  const cases: { words: string[]; want: string[] }[] = [];
  for (const b of before) {
    for (const l of levels) {
      const at = ['iptlb', ...b, ...l.path];
      cases.push({ words: [...at, '-'], want: l.flags.flatMap(forms) });
      // `iptlb help [command]` is taken by main() (commander lists no help command for a program with an action).
      cases.push({ words: [...at, ''], want: l.path.length ? l.commands : [...l.commands, 'help'] });
    }
    cases.push({ words: ['iptlb', ...b, 'help', ''], want: COMMANDS });
  }
  const offered = completions(
    r.out,
    cases.map((c) => c.words),
  );
  const missing = cases.flatMap((c, i) => {
    const lacking = c.want.filter((w) => !offered[i]!.includes(w));
    return lacking.length ? [`${c.words.join(' ')}: ${lacking.join(' ')}`] : [];
  });
  assert.deepEqual(missing, []);
  // A prefix is completed; a flag's value is not a command or a flag: files for a path, else nothing.
  assert.deepEqual(
    completions(r.out, [
      ['iptlb', '--engine', 'nft', 'ap'],
      ['iptlb', '-run', '-use'],
      ['iptlb', '--state-file', '/'],
      ['iptlb', 'apply', '--file', '=', '/'],
      ['iptlb', '--src-addr', ''],
    ]).map((c) => c.filter((w) => !w.startsWith('/') || w === '/tmp')),
    [['apply'], ['-use-state'], ['/tmp'], ['/tmp'], []],
  );
});

test('completion bash completes the values of flags that take a few, and profile names from the state file the command line names', async () => {
  const r = await run(['completion', 'bash']);
  assert.equal(r.code, 0, r.err);
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-comp-'));
  try {
    const st = path.join(dir, 'state.db');
    for (const [i, name] of ['web', 'api', 'web2'].entries())
      assert.equal(
        (
          await run([
            `-state-file=${st}`,
            `-profile=${name}`,
            `-src-addr=127.100.0.${i + 1}:80`,
            '-dest-addr=127.0.0.1:9001',
            '-q',
          ])
        ).code,
        0,
      );
    const other = path.join(dir, 'other.db');
    assert.equal(
      (
        await run([
          `-state-file=${other}`,
          '-profile=dns',
          '-src-addr=127.100.0.9:53',
          '-dest-addr=127.0.0.1:9053',
          '-q',
        ])
      ).code,
      0,
    );
    const offered = completions(
      r.out,
      [
        ['iptlb', '--engine', ''],
        ['iptlb', '-engine', '=', 'n'],
        ['iptlb', 'migrate', '--to', ''],
        ['iptlb', 'apply', '--protocol', 'u'],
        ['iptlb', '-scheduler', '=', ''],
        ['iptlb', 'apply', '--rules-backend', 'p'],
        ['iptlb', 'apply', '--log-level', 'e'],
        ['iptlb', 'apply', '--health', ''],
        ['iptlb', 'apply', '--health-all-down', ''],
        ['iptlb', '--state-file', st, 'show', ''],
        ['iptlb', 'delete', '-state-file', '=', st, 'web', 'w'],
        ['iptlb', '-state-file', '=', st, '-run', '-delete', '-profile', 'a'],
        ['iptlb', 'show', ''],
        ['iptlb', '--state-file', path.join(dir, 'none.db'), 'show', ''],
      ],
      { ...process.env, IPTLB_STATE_FILE: other },
    );
    assert.deepEqual(offered, [
      ['legacy', 'nft', 'auto'],
      ['nft'],
      ['legacy', 'nft'],
      ['udp'],
      ['random', 'round-robin'],
      ['proxy'],
      ['emerg', 'err'],
      ['tcp', 'http', 'none'],
      ['keep', 'drain'],
      ['api', 'web', 'web2'],
      ['web', 'web2'],
      ['api'],
      ['dns'], // no -state-file: IPTLB_STATE_FILE's
      [], // a state file that does not exist holds no names
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the values completion offers are the ones the checks take', () => {
  for (const v of FLAG_VALUES.engine!.split(' ')) assert.equal(parseEngineChoice(v), v);
  for (const v of FLAG_VALUES.to!.split(' ')) assert.equal(parseEngineChoice(v), v);
  for (const v of FLAG_VALUES.executor!.split(' ')) assert.equal(parseExecutorChoice(v), v);
  const base = { name: 'x', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] };
  for (const v of FLAG_VALUES.protocol!.split(' ')) assert.equal(validateProfile({ ...base, protocol: v }).protocol, v);
  for (const v of FLAG_VALUES.scheduler!.split(' ')) validateProfile({ ...base, scheduler: v });
  for (const v of FLAG_VALUES['rules-backend']!.split(' ')) validateProfile({ ...base, rulesBackend: v });
  for (const v of FLAG_VALUES['log-level']!.split(' ')) validateProfile({ ...base, logEnabled: true, logLevel: v });
  for (const v of FLAG_VALUES.health!.split(' ')) validateProfile({ ...base, health: { kind: v } });
  for (const v of FLAG_VALUES['health-all-down']!.split(' '))
    validateProfile({ ...base, health: { kind: 'tcp', allDown: v } });
});

test('completion and demo refuse bad input by field, exit 2, nothing run', async () => {
  const z = await run(['completion', 'zsh']);
  assert.equal(z.code, 2);
  assert.equal(z.err, 'iptlb: error: shell: "zsh" is not supported (bash is)');
  for (const n of ['0', '-1', 'x', '1.5', '100001']) {
    const d = await run(['demo', `--connections=${n}`]);
    assert.equal(d.code, 2, n);
    assert.equal(d.err, `iptlb: error: connections: ${JSON.stringify(n)} must be a whole number from 1 to 100000`);
    assert.equal(d.out, '');
  }
});

test('the man page (dist/iptlb.1, made by npm run build) holds the help of every command and fleet subcommand', async () => {
  const man = readFileSync(path.join(PROJECT_ROOT, 'dist', 'iptlb.1'), 'utf8');
  assert.match(man, /^\.TH IPTLB 1 /);
  const fleet = ['apply', 'delete', 'list', 'status'].map((s) => `fleet ${s}`);
  assert.deepEqual(
    [...man.matchAll(/^\.SS (.+)$/gm)].map((m) => m[1]),
    COMMANDS.flatMap((c) => (c === 'fleet' ? [c, ...fleet] : [c])),
  );
  // Verbatim help text (dashes escaped for roff): a subcommand's options too (the page had none of fleet's).
  for (const argv of [['doctor'], ['fleet', 'apply']]) {
    const lines = (await run([...argv, '--help'])).out.split('\n');
    for (const line of [lines[0]!, lines.find((l) => l.includes('--etcd-timeout-ms')) ?? lines[0]!])
      assert.ok(man.includes(line.replace(/-/g, '\\-')), line);
  }
});

test('migrate --to names --to on a bad engine (it said `engine: "bogus"`), auto included; nothing is read or changed', async () => {
  for (const to of ['bogus', 'auto', '']) {
    const r = await run(['migrate', '--to', to, '--state-file', '/nonexistent/iptlb-state.db']);
    assert.equal(r.code, 2, r.err);
    assert.equal(
      r.err,
      `iptlb: error: to: ${JSON.stringify(to)} must be legacy or nft (migrate needs --to legacy or --to nft)`,
    );
  }
});

test('too many arguments: one line naming the command (a fleet subcommand by its two words), how many it got and what it takes; exit 2, nothing run', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-args-'));
  const state = path.join(dir, 'none', 'state.db');
  try {
    for (const [args, line] of [
      [['list', 'x'], 'list: too many arguments (1: "x"); it takes none'],
      [['sync', 'x', 'y'], 'sync: too many arguments (2: "x" "y"); it takes none'],
      [['show', 'a', 'b'], 'show: too many arguments (2: "a" "b"); it takes one: the profile name'],
      [
        ['completion', 'bash', 'zsh'],
        'completion: too many arguments (2: "bash" "zsh"); it takes one: the shell (bash)',
      ],
      [['fleet', 'list', 'x'], 'fleet list: too many arguments (1: "x"); it takes none'],
      [['--engine', 'nft', 'migrate', '--to', 'nft', 'x'], 'migrate: too many arguments (1: "x"); it takes none'],
      [
        ['status', '1', '2', '3', '4', '5', '6'],
        'status: too many arguments (6: "1" "2" "3" "4" "5" …); it takes none',
      ],
      [
        ['-run', 'x'],
        'too many arguments (1: "x"); the original\'s form takes flags only (-run -profile=… -src-addr=… -dest-addr=…), and a command goes first: iptlb COMMAND [flags]',
      ],
    ] as const) {
      const r = await run([...args, '--state-file', state]);
      assert.equal(r.code, 2, args.join(' '));
      assert.equal(r.err, `iptlb: error: ${line}`);
      assert.equal(r.out, '');
    }
    assert.equal(existsSync(path.dirname(state)), false, 'nothing made');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('top: a counter lower than at the last refresh was reset (a health commit rewrote the rules): its rate is what it counted since, not 0.0; the HEALTH column has its header', async () => {
  const { topRows, topLines } = await import('../../src/cli/commands/top.js');
  const report = (p1: number, p2: number, drained: boolean) => ({
    name: 'web',
    status: 'in-sync' as const,
    packets: p1 + p2,
    bytes: 0,
    destinations: [
      { destination: '127.0.0.1:9001', packets: p1, bytes: 0, health: 'up' as const },
      {
        destination: '127.0.0.1:9002',
        packets: p2,
        bytes: 0,
        health: drained ? ('down' as const) : ('up' as const),
        ...(drained ? { effectiveWeight: 0 } : {}),
      },
    ],
  });
  const prev = new Map<string, number>();
  const first = topRows([report(100, 100, false)], prev, 0);
  assert.equal(first[0]!.rate, null, 'no rate on the first refresh');
  const steady = topRows([report(120, 110, false)], prev, 2);
  assert.deepEqual([steady[0]!.rate, ...steady[0]!.destinations.map((d) => d.rate)], [15, 10, 5]);
  // A health commit drained 9002 and rewrote the profile: both counters start again from 0.
  const after = topRows([report(8, 0, true)], prev, 2);
  assert.deepEqual([after[0]!.rate, ...after[0]!.destinations.map((d) => d.rate)], [4, 4, 0]);
  const lines = topLines(after, 2, new Date(0));
  const header = lines[1]!.split('\t');
  assert.deepEqual(header, ['PROFILE', 'STATUS', 'DESTINATION', 'CONN/S', 'TOTAL', 'HEALTH']);
  assert.deepEqual(lines[2]!.split('\t'), ['web', 'in-sync', '*', '4.0', '8']);
  assert.deepEqual(lines[4]!.split('\t'), ['', '', '127.0.0.1:9002', '0.0', '0', 'down (drained)']);
  for (const l of lines.slice(3)) assert.equal(l.split('\t').length, header.length, l);
  // Without checked destinations: no HEALTH column.
  const plain = topRows([{ ...report(1, 1, false), destinations: [] }], new Map(), 0);
  assert.equal(topLines(plain, 1)[1], 'PROFILE\tSTATUS\tDESTINATION\tCONN/S\tTOTAL');
});

test('demo runs its scenario only in a namespace other than the one it was started in: a stale or hand-set IPTLB_DEMO_IN_NETNS is not enough', async () => {
  const { inOwnNamespace } = await import('../../src/cli/demo.js');
  const own = 'net:[4026531840]';
  assert.equal(inOwnNamespace({}, own), false);
  assert.equal(inOwnNamespace({ IPTLB_DEMO_IN_NETNS: '1' }, own), false, 'a stale value');
  assert.equal(inOwnNamespace({ IPTLB_DEMO_IN_NETNS: own }, own), false, 'the same namespace');
  assert.equal(inOwnNamespace({ IPTLB_DEMO_IN_NETNS: 'net:[4026532000]' }, own), true, 'started from another');
  assert.equal(inOwnNamespace({ IPTLB_DEMO_IN_NETNS: 'net:[4026532000]' }, ''), false, '/proc cannot tell');
});

test('--json is in the --help of every command but watch, which prints no result (its help said "print the result as JSON", and it printed nothing)', async () => {
  for (const c of ['apply', 'delete', 'list', 'show', 'plan', 'status', 'top', 'sync', 'migrate', 'doctor', 'watch']) {
    const help = await run([c, '--help']);
    assert.equal(help.code, 0, c);
    assert.equal(help.out.includes('--json'), c !== 'watch', c);
  }
});

test('--keep-conntrack is in the --help of the commands that remove destinations only; the others accept it', async () => {
  const changes = ['apply', 'delete', 'sync', 'watch'];
  for (const c of [...changes, 'list', 'show', 'status', 'top', 'doctor', 'plan', 'migrate']) {
    const help = await run([c, '--help']);
    assert.equal(help.code, 0, c);
    assert.equal(help.out.includes('--keep-conntrack'), changes.includes(c), c);
  }
  assert.match((await run(['--help'])).out, /--keep-conntrack/, 'the original command line (-run, -delete)');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-kc-'));
  try {
    const r = await run(['list', '--keep-conntrack', '--state-file', path.join(dir, 'none.db')]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out + r.err, /does not exist/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
