/**
 * The CLI additions of issue 17, without root: a bare `iptlb` prints the help, `completion bash`
 * lists every command and its flags, bad input to `completion` and `demo` is refused by field with
 * exit 2, and the man page made at build time holds every command's help.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { main } from '../../src/cli/main.js';
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

test("completion bash: every command, and each command's flags", async () => {
  const r = await run(['completion', 'bash']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^complete -F _iptlb iptlb$/m);
  const words = /compgen -W "([^"]+)" -- "\$cur"\)\); return/.exec(r.out)?.[1]?.split(' ');
  assert.deepEqual(words, COMMANDS);
  assert.match(r.out, /^ {4}migrate\) opts="[^"]*--to[^"]*"/m);
  assert.match(r.out, /^ {4}demo\) opts="--connections --help"/m);
  assert.match(r.out, /^ {4}apply\) opts="--profile --src-addr --dest-addr [^"]*--file --help"/m);
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

test('the man page (dist/iptlb.1, made by npm run build) holds the help of every command', async () => {
  const man = readFileSync(path.join(PROJECT_ROOT, 'dist', 'iptlb.1'), 'utf8');
  assert.match(man, /^\.TH IPTLB 1 /);
  assert.deepEqual(
    [...man.matchAll(/^\.SS (\S+)$/gm)].map((m) => m[1]),
    COMMANDS,
  );
  // Verbatim help text (dashes escaped for roff).
  const doctorHelp = (await run(['doctor', '--help'])).out.split('\n')[0]!;
  assert.ok(man.includes(doctorHelp.replace(/-/g, '\\-')), doctorHelp);
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
