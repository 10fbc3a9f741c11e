/**
 * The CLI's start-up shortcuts (issue 18), without root: its lines go to the descriptor directly and
 * move to the stream (in order, nothing lost) once a direct write fails; a run registers only the
 * commands named on its command line, and what it prints and exits with is what the full program
 * gives: every command's --help, the program's help, completion, unknown commands and options.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { commandsFor, main } from '../../src/cli/main.js';
import { lineWriter } from '../../src/cli/stdio.js';
import { CLI_PATH } from '../harness/env.js';

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(argv, { out: (s) => out.push(s), err: (s) => err.push(s) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

test('lines are written to the descriptor directly, in order, with their newline', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-stdio-'));
  try {
    const file = path.join(dir, 'out');
    const fd = openSync(file, 'w');
    const streamed: unknown[] = [];
    const write = lineWriter(fd, () => ({ write: (c: unknown) => (streamed.push(c), true) }));
    write('first');
    write('é ünïcode');
    write('');
    closeSync(fd);
    assert.equal(readFileSync(file, 'utf8'), 'first\né ünïcode\n\n');
    assert.deepEqual(streamed, [], 'the stream is not touched while direct writes work');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('once a direct write fails, that line and every later one go to the stream', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-stdio-'));
  try {
    const fd = openSync(path.join(dir, 'gone'), 'w');
    closeSync(fd); // EBADF from now on
    const streamed: string[] = [];
    const write = lineWriter(fd, () => ({ write: (c: string | Uint8Array) => (streamed.push(String(c)), true) }));
    write('one');
    write('two');
    assert.deepEqual(streamed, ['one\n', 'two\n']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a stream that fails (EPIPE…) reports it once through gone; later lines are dropped, nothing is thrown', async () => {
  const { EventEmitter } = await import('node:events');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-stdio-'));
  try {
    const fd = openSync(path.join(dir, 'gone'), 'w');
    closeSync(fd); // EBADF: the lines go to the stream
    const stream = Object.assign(new EventEmitter(), { written: [] as string[] });
    const written = stream.written;
    let gone = 0;
    const write = lineWriter(
      fd,
      () => Object.assign(stream, { write: (c: string | Uint8Array) => (written.push(String(c)), true) }) as never,
      () => gone++,
    );
    write('one');
    assert.equal(stream.listenerCount('error'), 1, 'the stream has an error listener: no unhandled error event');
    stream.emit('error', Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
    write('two');
    stream.emit('error', Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
    assert.deepEqual(written, ['one\n']);
    assert.equal(gone, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a pipe whose reader went away (`| head`): no stack, closed is aborted, later lines are dropped, no stream made', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-stdio-'));
  try {
    const child = path.join(dir, 'child.mjs');
    const stdio = new URL('../../src/cli/stdio.js', import.meta.url).href;
    writeFileSync(
      child,
      `import { processOut } from ${JSON.stringify(stdio)};
const io = processOut();
let n = 0;
while (!io.closed.aborted && n < 100000) io.out('line ' + n++ + ' ' + 'x'.repeat(200));
io.out('after');
io.err('stderr still works after ' + n + ' lines; closed ' + io.closed.aborted + '; streams ' +
  process.moduleLoadList.some((m) => m === 'NativeModule net' || m === 'NativeModule internal/fs/sync_write_stream'));`,
    );
    const r = spawnSync(
      'bash',
      ['-c', `"${process.execPath}" "${child}" | head -1 >/dev/null; exit \${PIPESTATUS[0]}`],
      { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /^stderr still works after \d+ lines; closed true; streams false\n$/);
    assert.ok(Number(/after (\d+)/.exec(r.stderr)![1]) < 100000);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a direct write that fails for another reason than EAGAIN or EPIPE (ENOSPC) is reported through failed', () => {
  const fd = openSync('/dev/full', 'w');
  try {
    const failures: string[] = [];
    const streamed: string[] = [];
    const write = lineWriter(
      fd,
      () => ({ write: (c: string | Uint8Array) => (streamed.push(String(c)), true) }),
      () => {},
      (code) => failures.push(code),
    );
    write('one');
    assert.deepEqual(failures, ['ENOSPC']);
    assert.deepEqual(streamed, ['one\n'], 'the line still goes to the stream, as before');
  } finally {
    closeSync(fd);
  }
});

test('output lost to a full disk (stdout on /dev/full): one line on stderr and exit 1, not a silent 0; a reader gone away (| head) is still 0', () => {
  for (const args of ['completion bash', '--version', 'list --state-file /nonexistent-iptlb-dir/state.db']) {
    const r = spawnSync('bash', ['-c', `"${process.execPath}" "${CLI_PATH}" ${args} >/dev/full`], {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    assert.equal(r.status, 1, `${args}: ${r.stderr}`);
    assert.equal(r.stderr, 'iptlb: error: stdout: a write failed (ENOSPC); the output is incomplete\n', args);
  }
  const piped = spawnSync(
    'bash',
    ['-c', `"${process.execPath}" "${CLI_PATH}" completion bash | head -1 >/dev/null; exit \${PIPESTATUS[0]}`],
    { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } },
  );
  assert.equal(piped.status, 0, piped.stderr);
  assert.equal(piped.stderr, '');
});

const COMMANDS = ['apply', 'delete', 'list', 'show', 'plan', 'status', 'top', 'sync', 'watch', 'migrate', 'agent'];
const MORE = ['fleet', 'doctor', 'demo', 'completion'];

test('a run registers the command its arguments name (and the program), every one for help and completion', () => {
  const all = [null, ...COMMANDS, ...MORE];
  for (const name of [...COMMANDS, ...MORE]) {
    assert.deepEqual(commandsFor([name, '--engine=nft', 'x']), name === 'completion' ? all : [null, name], name);
    assert.deepEqual(commandsFor(['--engine=nft', name]), name === 'completion' ? all : [null, name], name);
  }
  assert.deepEqual(commandsFor(['--run', '--profile=web']), [null]);
  assert.deepEqual(commandsFor(['delete', 'list']), [null, 'delete', 'list']); // a profile named like a command
  for (const argv of [[], ['--help'], ['-h'], ['help'], ['apply', '--help'], ['help', 'apply']])
    assert.deepEqual(commandsFor(argv), all, argv.join(' '));
});

test("each command's --help and its errors come from that command", async () => {
  for (const name of [...COMMANDS, ...MORE]) {
    const help = await run([name, '--help']);
    assert.equal(help.code, 0, name);
    assert.match(help.out, new RegExp(`^Usage: iptlb ${name} `), name);
    const bad = await run([name, '--no-such-flag']);
    assert.equal(bad.code, 2, name);
    // The error names the command it comes from.
    assert.match(
      bad.err,
      new RegExp(`^iptlb: error: ${name}: (unknown option '--no-such-flag'|required option)`),
      name,
    );
  }
});

test('the program help and completion list every command; unknown input fails as before', async () => {
  const help = await run(['--help']);
  for (const name of [...COMMANDS, ...MORE]) assert.match(help.out, new RegExp(`^  ${name}\\b`, 'm'), name);
  const completion = await run(['completion', 'bash']);
  assert.equal(completion.code, 0);
  for (const name of [...COMMANDS, ...MORE]) assert.ok(completion.out.includes(name), name);
  const unknown = await run(['lsit']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.err, /too many arguments|unknown command/);
  const badOption = await run(['list', '--stat-file=x']);
  assert.equal(badOption.code, 2);
  assert.match(badOption.err, /unknown option '--stat-file=x'/);
  assert.match(badOption.err, /Did you mean --state-file\?/);
});

test('the bin creates neither process.stdout nor process.stderr for a one-shot command', () => {
  // A preload that reports, at exit, whether Node's stdio streams were created (their modules loaded).
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-stdio-'));
  try {
    const probe = path.join(dir, 'probe.cjs');
    writeFileSync(
      probe,
      `process.on('exit', () => require('node:fs').writeSync(2, 'STREAMS ' + process.moduleLoadList.some((m) => m === 'NativeModule internal/fs/sync_write_stream' || m === 'NativeModule net' || m === 'NativeModule tty') + '\\n'));`,
    );
    const r = spawnSync(process.execPath, ['-r', probe, CLI_PATH, '--version'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^\d+\.\d+\.\d+\n$/);
    assert.match(r.stderr, /STREAMS false/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
