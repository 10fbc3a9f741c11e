import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { normalizeArgv, main } from '../../src/cli/main.js';

test('Go-style flags: one or two dashes, =value or a space, booleans with =true/=false (last wins)', () => {
  assert.deepEqual(normalizeArgv(['-src-addr=1.2.3.4:5', '--dest-addr', 'x', '-run', '-reset=true']), [
    '--src-addr=1.2.3.4:5',
    '--dest-addr',
    'x',
    '--run',
    '--reset',
  ]);
  assert.deepEqual(normalizeArgv(['-run', '-run=false']), []);
  assert.deepEqual(normalizeArgv(['-run=false', '-run']), ['--run']);
  assert.deepEqual(normalizeArgv(['list', '-q', '--', '-run']), ['list', '-q', '--', '-run']);
  assert.throws(() => normalizeArgv(['-run=maybe']), /run/);
});

test('-q=false and -q=true (a one-letter boolean with a value, as Go takes one): --quiet or not, last wins; not "unknown option \'-=false\'"', async () => {
  assert.deepEqual(normalizeArgv(['-q=false']), []);
  assert.deepEqual(normalizeArgv(['-q=true']), ['--quiet']);
  assert.deepEqual(normalizeArgv(['-q', '-q=0']), []);
  assert.deepEqual(normalizeArgv(['-q=false', '-q']), ['-q']);
  assert.deepEqual(normalizeArgv(['-quiet', '-q=f']), []);
  assert.throws(
    () => normalizeArgv(['-q=maybe']),
    (e: Error & { field?: string }) => e.field === 'quiet',
  );
  const r = await cli(['list', '-q=false', '--state-file', '/nonexistent-iptlb-dir/state.db']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^no profiles: the state file \/nonexistent-iptlb-dir\/state\.db does not exist/);
});

test('a flag whose value was left out, followed by another flag: EUSAGE naming it (not "too many arguments", nor the flag as its value)', async () => {
  for (const [args, field, next] of [
    [['apply', '--src-addr', '--dest-addr', '127.0.0.1:9001'], 'src-addr', '--dest-addr'],
    [['-profile', '-run'], 'profile', '-run'],
    [['-profile=x', '-src-addr', '-dest-addr=127.0.0.1:9001'], 'src-addr', '-dest-addr=127.0.0.1:9001'],
  ] as const) {
    assert.throws(
      () => normalizeArgv([...args]),
      (e: Error & { code?: string; field?: string }) =>
        e.code === 'EUSAGE' && e.field === field && e.message.includes(JSON.stringify(next)),
    );
    const r = await cli([...args, '--state-file', '/nonexistent-iptlb-dir/state.db']);
    assert.equal(r.code, 2);
    assert.equal(r.err.trim().split('\n').length, 1, r.err);
    assert.match(r.err, new RegExp(`^iptlb: error: ${field}: the value is missing`));
  }
  // A value that only looks like a flag is a value: a negative number, a word.
  assert.deepEqual(normalizeArgv(['--weight', '-1']), ['--weight', '-1']);
  assert.deepEqual(normalizeArgv(['--profile', '-x']), ['--profile', '-x']);
});

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n') });
  return { code, out, err };
}

test('usage errors exit 2 with one line; help exits 0 and lists the original flags and subcommands', async () => {
  const help = await cli(['--help']);
  assert.equal(help.code, 0);
  for (const word of [
    '--src-addr',
    '--dest-addr',
    '--rules-backend',
    '--use-state',
    'apply',
    'delete',
    'list',
    'show',
    'plan',
    'doctor',
    'status',
    'sync',
    'watch',
  ]) {
    assert.ok(help.out.includes(word), `help mentions ${word}`);
  }
  const bad = await cli(['-bogus']);
  assert.equal(bad.code, 2);
  assert.equal(bad.err.trim().split('\n').length, 1);
  assert.match(bad.err, /^iptlb: error: unknown option/);
  const conflict = await cli(['-use-state', '-src-addr=1.2.3.4:5']);
  assert.equal(conflict.code, 2);
  assert.match(conflict.err, /-use-state cannot be combined/);
  const noRun = await cli(['-delete', '-profile=x']);
  assert.equal(noRun.code, 2);
  assert.match(noRun.err, /-delete needs -run/);
});

test('-use-state -delete with a -profile (the original form and plan): refused as usage (exit 2, one line naming -profile), not every profile of the state file deleted with the profile ignored', async () => {
  const absent = ['--state-file', '/nonexistent-iptlb-dir/state.db'];
  for (const args of [
    ['-run', '-delete', '-use-state', '-profile=web'],
    ['-use-state', '-run', '-delete', '--profile', 'web'],
    ['plan', '--use-state', '--delete', '-profile=web'],
  ]) {
    const r = await cli([...args, ...absent]);
    assert.equal(r.code, 2, r.err);
    assert.equal(r.err.trim().split('\n').length, 1, r.err);
    assert.match(
      r.err,
      /^iptlb: error: -use-state with -delete removes every profile of the state file, not only -profile "web"/,
    );
  }
  // Without -profile (its default is not a choice), or without -delete (every profile applied, web too):
  // as before.
  for (const args of [
    ['-run', '-delete', '-use-state'],
    ['-run', '-use-state', '-profile=web'],
    ['plan', '--use-state', '--delete'],
  ]) {
    const r = await cli([...args, ...absent]);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /^iptlb: error: state-file: \/nonexistent-iptlb-dir\/state\.db does not exist/);
  }
});

test('-run without addresses (which re-applies the profile as the state file holds it) beside another profile flag: refused as usage naming that flag, before the lock, not the flag ignored', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-cli-'));
  try {
    const st = path.join(dir, 'state.db');
    for (const [flag, field] of [
      ['-log-custom-chain', 'log-custom-chain'],
      ['--protocol=udp', 'protocol'],
      ['-rules-backend', 'rules-backend'],
      ['-health=tcp', 'health'],
      ['-scheduler=round-robin', 'scheduler'],
    ]) {
      const args = ['-run', '-profile=web', flag, ...(flag === '-rules-backend' ? ['proxy'] : []), `-state-file=${st}`];
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
      assert.match(
        r.err,
        new RegExp(
          `^iptlb: error: ${field}: -${field} needs -src-addr and -dest-addr \\(without them, -run re-applies profile "web" as the state file holds it`,
        ),
      );
      assert.deepEqual(readdirSync(dir), [], args.join(' '));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('apply with -run=false or -reset=false (which apply would ignore: it commits and replaces): refused as usage naming the flag, before the input is read', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-cli-'));
  try {
    const st = path.join(dir, 'state.db');
    // A bad destination too: without the refusal the command stops there, before any kernel.
    const input = ['--profile', 'x', '--src-addr', '1.2.3.4:80', '--dest-addr', 'bad', `-state-file=${st}`];
    for (const [flags, flag] of [
      [['-run=false'], 'run'],
      [['-run', '--run=0'], 'run'],
      [['-reset=FALSE'], 'reset'],
      [['-run', '-reset=f'], 'reset'],
    ] as const) {
      const r = await cli(['apply', ...flags, ...input]);
      assert.equal(r.code, 2, `${flags.join(' ')}: ${r.err}`);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
      assert.match(r.err, new RegExp(`^iptlb: error: apply: -${flag}=false would be ignored: apply `));
      assert.deepEqual(readdirSync(dir), []);
    }
    // Set true last, or not given: the input is read (and here refused).
    for (const flags of [['-run=false', '-run'], ['-reset=false', '-reset=true'], ['-delete=false']]) {
      const r = await cli(['apply', ...flags, ...input]);
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, /^iptlb: error: destination/);
    }
    // The original's form takes -run=false as no -run (the state file only), as Go's flag package does.
    const orig = await cli(['-run=false', ...input]);
    assert.match(orig.err, /^iptlb: error: destination/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a mistyped command, a suggestion, a missing argument or command and `help`: one line and exit 2, or the help', async () => {
  for (const word of ['aply', 'frobnicate']) {
    const r = await cli([word, '-q']);
    assert.equal(r.code, 2);
    assert.equal(r.err.trim().split('\n').length, 1);
    assert.match(r.err, new RegExp(`^iptlb: error: unknown command "${word}" \\(commands: apply, delete, list,`));
  }
  const suggested = await cli(['plan', '--file', 'x.yaml']);
  assert.equal(suggested.code, 2);
  assert.equal(suggested.err.trim().split('\n').length, 1, suggested.err);
  assert.match(suggested.err, /^iptlb: error: plan: unknown option '--file' \(Did you mean --profile\?\)$/m);
  // commander's other usage errors name the command too.
  const missing = await cli(['show']);
  assert.equal(missing.code, 2);
  assert.equal(missing.err, "iptlb: error: show: missing required argument 'name'\n");
  // A program option after a command (parsed by the program) names the command; alone, none.
  const global = await cli(['apply', '--profile']);
  assert.equal(global.code, 2);
  assert.equal(global.err, "iptlb: error: apply: option '--profile <name>' argument missing\n");
  assert.equal((await cli(['--profile'])).err, "iptlb: error: option '--profile <name>' argument missing\n");
  // A command group without its command: one line naming them, not the whole help.
  const group = await cli(['fleet']);
  assert.equal(group.code, 2);
  assert.equal(
    group.err,
    'iptlb: error: fleet: missing command (one of: apply, delete, list, status; iptlb fleet --help says more)\n',
  );
  assert.equal(group.out, '');
  const help = await cli(['help']);
  assert.equal(help.code, 0);
  assert.match(help.out, /^Usage: iptlb \[options\] \[command\]/);
  const applyHelp = await cli(['help', 'apply']);
  assert.equal(applyHelp.code, 0);
  assert.match(applyHelp.out, /^Usage: iptlb apply \[options\]/);
  // A command of a group: its own help, as `iptlb fleet help apply` and `iptlb fleet apply --help` give.
  const fleetApply = await cli(['help', 'fleet', 'apply']);
  assert.equal(fleetApply.code, 0);
  assert.equal(fleetApply.out, (await cli(['fleet', 'apply', '--help'])).out);
  assert.match(fleetApply.out, /^Usage: iptlb fleet apply \[options\]/);
  // `help help`: the program's help (it said "unknown command help", exit 2).
  const helpHelp = await cli(['help', 'help']);
  assert.equal(helpHelp.code, 0, helpHelp.err);
  assert.equal(helpHelp.out, help.out);
});

test('apply --file: what is wrong in the file is a usage error naming it (exit 2), and so is a file without profiles', async () => {
  const { mkdtempSync, writeFileSync, existsSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-file-'));
  const state = path.join(dir, 'state.db');
  const file = (name: string, text: string): string => (
    writeFileSync(path.join(dir, name), text),
    path.join(dir, name)
  );
  const bad = file('bad.yaml', 'q:\n  destination: ["127.0.0.1:9001"]\n  source: 127.100.0.9:80\n  protocol: 6\n');
  const r = await cli(['apply', '--file', bad, '--state-file', state]);
  assert.equal(r.code, 2);
  assert.equal(r.err, `iptlb: error: file: ${JSON.stringify(bad)}: profile "q": protocol must be a string, got 6\n`);
  for (const text of ['', '{}\n', 'null\n', '# nothing\n']) {
    const empty = file('empty.yaml', text);
    const e = await cli(['apply', '--file', empty, '--state-file', state]);
    assert.equal(e.code, 2, JSON.stringify(text));
    assert.equal(e.err, `iptlb: error: file: ${JSON.stringify(empty)} holds no profiles\n`);
  }
  // The YAML parser's own words (its API, a stack overflow) are said in the file's terms.
  const multi = file('multi.yaml', 'a: 1\n---\nb: 2\n');
  const deep = file('deep.yaml', `a: ${'['.repeat(5000)}${']'.repeat(5000)}\n`);
  for (const [f, why] of [
    [multi, 'line 2: more than one document; a state file is one mapping'],
    [deep, 'line 1: nested too deeply'],
  ]) {
    const e = await cli(['apply', '--file', f, '--state-file', state]);
    assert.equal(e.code, 2);
    assert.equal(e.err, `iptlb: error: file: ${JSON.stringify(f)}: is not valid YAML (${why})\n`);
  }
  assert.equal(existsSync(state), false, 'nothing was written');
});

test('IPTLB_STATE_FILE set but empty is a usage error, as -state-file= is, not the default in the working directory', async () => {
  const saved = process.env.IPTLB_STATE_FILE;
  process.env.IPTLB_STATE_FILE = '';
  try {
    for (const args of [['list'], ['-profile=a', '-src-addr=127.100.0.1:80', '-dest-addr=127.0.0.1:9001']]) {
      const r = await cli(args);
      assert.equal(r.code, 2, r.err);
      assert.equal(
        r.err,
        'iptlb: error: IPTLB_STATE_FILE: must not be empty (unset it for the default ./local/state.db)\n',
      );
    }
  } finally {
    if (saved === undefined) delete process.env.IPTLB_STATE_FILE;
    else process.env.IPTLB_STATE_FILE = saved;
  }
});

test('the CLI bundle is started with its V8 code cache, which V8 accepts; without it the bundle still loads', async () => {
  const { spawnSync } = await import('node:child_process');
  const path = await import('node:path');
  const { PROJECT_ROOT } = await import('../harness/env.js');
  const loader = path.join(PROJECT_ROOT, 'bin', 'load-bundle.cjs');
  const bundle = path.join(PROJECT_ROOT, 'dist', 'iptlb.cjs');
  // In a plain node process: V8 takes a cache only under the flags it was made with (this runner
  // adds --expose-gc), which is why bin/iptlb.cjs falls back to compiling.
  const probe = (cache: string): { rejected: boolean; main: string } => {
    const code = `const l = require(${JSON.stringify(loader)}); const fs = require('fs');
      const r = l.compileBundle(${JSON.stringify(bundle)}, ${cache});
      process.stdout.write(JSON.stringify({ rejected: r.script.cachedDataRejected, main: typeof r.exports.main }));`;
    const r = spawnSync(process.execPath, ['-e', code], {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  assert.deepEqual(
    probe(`l.readCache(${JSON.stringify(bundle)})`),
    { rejected: false, main: 'function' },
    'npm run build writes a cache this Node accepts',
  );
  // V8 copies cached data that is not 8-byte aligned before reading it; the file pads the path to keep it aligned.
  const { readCache, BUNDLE_WRAPPER_HEAD } = (await import('node:module')).createRequire(import.meta.url)(loader);
  assert.equal(readCache(bundle).byteOffset % 8, 0, 'the cached data is 8-byte aligned');
  // The bundle is the wrapper function itself: V8 compiles the string read from the file, not a joined copy.
  assert.ok(readFileSync(bundle, 'utf8').startsWith(BUNDLE_WRAPPER_HEAD));
  assert.deepEqual(
    probe(`Buffer.from('not a code cache')`),
    { rejected: true, main: 'function' },
    'a rejected cache only costs the compile',
  );
});

test('stack traces of the bundle name the file that ran, not the one the code cache was made for; a copy makes its own cache, which V8 accepts', async () => {
  const { spawnSync } = await import('node:child_process');
  const fs = await import('node:fs');
  const { PROJECT_ROOT } = await import('../harness/env.js');
  const copy = mkdtempSync(path.join(tmpdir(), 'iptlb-copy-'));
  try {
    // An installed package elsewhere: the bin, the bundle with the cache made at build time, the cache script.
    for (const d of ['bin', 'dist', 'scripts']) fs.mkdirSync(path.join(copy, d));
    for (const f of [
      'bin/iptlb.cjs',
      'bin/load-bundle.cjs',
      'dist/iptlb.cjs',
      'dist/iptlb.cjs.cache',
      'scripts/code-cache.cjs',
    ])
      fs.copyFileSync(path.join(PROJECT_ROOT, f), path.join(copy, f));
    fs.copyFileSync(path.join(PROJECT_ROOT, 'package.json'), path.join(copy, 'package.json'));
    fs.symlinkSync(path.join(PROJECT_ROOT, 'node_modules'), path.join(copy, 'node_modules'));
    const bundle = path.join(copy, 'dist', 'iptlb.cjs');
    const probe = (): { cache: boolean; rejected?: boolean; frame: string } => {
      const code = `const l = require(${JSON.stringify(path.join(copy, 'bin', 'load-bundle.cjs'))});
        const data = l.readCache(${JSON.stringify(bundle)});
        const r = l.compileBundle(${JSON.stringify(bundle)}, data);
        let frame = '';
        try { r.exports.normalizeArgv(null); } catch (e) { frame = e.stack.split('\\n').find((x) => x.includes('iptlb.cjs')); }
        process.stdout.write(JSON.stringify({ cache: !!data, rejected: r.script.cachedDataRejected, frame }));`;
      const r = spawnSync(process.execPath, ['-e', code], {
        encoding: 'utf8',
        env: { ...process.env, NODE_OPTIONS: '' },
      });
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout);
    };
    const before = probe();
    assert.equal(before.cache, false, "the build tree's cache is not used for the copy");
    assert.ok(before.frame.includes(`(${bundle}:`), before.frame);
    // What npm's install script runs where the package is installed.
    const made = spawnSync(process.execPath, [path.join(copy, 'scripts', 'code-cache.cjs')], { encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);
    const after = probe();
    assert.equal(after.cache, true);
    assert.equal(after.rejected, false, 'V8 takes the cache made for the copy');
    assert.ok(after.frame.includes(`(${bundle}:`), after.frame);
    const version = spawnSync(process.execPath, [path.join(copy, 'bin', 'iptlb.cjs'), '--version'], {
      encoding: 'utf8',
    });
    assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
});

test("bad input given by flags leaves nothing in the state file's directory, not even the lock's files", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-cli-'));
  const files = mkdtempSync(path.join(tmpdir(), 'iptlb-cli-file-'));
  const file = path.join(files, 'profiles.yaml');
  writeFileSync(file, 'af1:\n  destination:\n  - 127.0.0.1:9001\n  source: 127.0.13.1:80\n');
  try {
    const st = path.join(dir, 'state.db');
    for (const args of [
      ['-profile=x', '-src-addr=bad', '-dest-addr=127.0.0.1:1', `-state-file=${st}`],
      ['-run', '-profile=x', '-src-addr=1.2.3.4:80', '-dest-addr=127.0.0.1:0', `-state-file=${st}`],
      ['-profile=bad name', '-src-addr=1.2.3.4:80', '-dest-addr=127.0.0.1:1', `-state-file=${st}`],
      ['apply', '--profile', 'x', '--src-addr', '1.2.3.4:0', '--dest-addr', '127.0.0.1:1', '--state-file', st],
      ['apply', '--profile', 'x', '--src-addr', '1.2.3.4:80', '--dest-addr', '127.0.0.1:1*0', '--state-file', st],
      // Settings of --watch without it.
      ['status', '--interval', '0', '--state-file', st],
      ['status', '--count', '3', '--state-file', st],
      // A setting of a health check without the check: refused, not taken as --health tcp.
      ['-profile=x', '-src-addr=1.2.3.4:80', '-dest-addr=127.0.0.1:1', '-health-fall=2', `-state-file=${st}`],
      // No addresses, where the state file does not exist (so no profile to re-apply): decided before the lock.
      ['-run', `-state-file=${st}`],
      ['-reset', '-profile=x', `-state-file=${st}`],
      ['-log-level', '4', `-state-file=${st}`],
      ['apply', '--profile', 'x', '--state-file', st],
      // Periods Node's timers cannot take (over 2^31 - 1 ms: they would fire every millisecond).
      ['watch', '--interval', '3000000000', '--state-file', st],
      ['watch', '--interval', '86400001', '--state-file', st],
      ['watch', '--settle', '600001', '--state-file', st],
      ['top', '--interval', '2147483648', '--state-file', st],
      ['status', '--watch', '--interval', '1e10', '--state-file', st],
      // A count Number() takes but that is no whole number written in digits (1e99 ran on for ever).
      ['top', '--count', '1e99', '--state-file', st],
      ['top', '--count', '0x10', '--state-file', st],
      ['top', '--count', '2.0', '--state-file', st],
      ['status', '--watch', '--count', '99999999999999999999', '--state-file', st],
      // A profile flag beside --file would be ignored: refused.
      ['apply', '--file', file, '--protocol', 'udp', '--state-file', st],
      ['apply', '--file', file, '--profile', 'other', '--state-file', st],
      ['--protocol=udp', 'apply', '--file', file, '--state-file', st],
      ['apply', '--file', file, '--health-fall', '2', '--state-file', st],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
      assert.deepEqual(readdirSync(dir), [], args.join(' '));
    }
    assert.match(
      (await cli(['watch', '--interval', '3000000000', '--state-file', st])).err,
      /^iptlb: error: interval: "3000000000" must be a whole number of ms from 100 to 86400000$/m,
    );
    assert.match(
      (await cli(['apply', '--file', file, '--protocol', 'udp', '--state-file', st])).err,
      /^iptlb: error: protocol: cannot be combined with --file \(the file gives every field of its profiles\)$/m,
    );
    // A profile deleted from a state file that does not exist: not found (exit 1), nothing made either.
    const del = await cli(['-run', '-delete', '-profile=x', `-state-file=${st}`]);
    assert.equal(del.code, 1, del.err);
    assert.deepEqual(readdirSync(dir), []);
    // Every profile deleted from a state file that does not exist: refused as sync refuses it (a wrong
    // path would otherwise say nothing and leave every rule), nothing made.
    const all = await cli(['delete', '--all', `--state-file=${st}`]);
    assert.equal(all.code, 1, all.err);
    assert.match(all.err, /^iptlb: error: state-file: \S+ does not exist; nothing was changed/);
    assert.deepEqual(readdirSync(dir), []);
    // A state file that is a directory: refused before any lock file is made beside it.
    mkdirSync(path.join(dir, 'sub'));
    const sub = await cli([
      '-profile=x',
      '-src-addr=1.2.3.4:80',
      '-dest-addr=127.0.0.1:1',
      `-state-file=${path.join(dir, 'sub')}`,
    ]);
    assert.match(sub.err, /^iptlb: error: state file .*\/sub: is a directory$/m);
    assert.deepEqual(readdirSync(dir), ['sub']);
    assert.match(
      (await cli(['-profile=x', '-src-addr=1.2.3.4:80', '-dest-addr=127.0.0.1:1', '-health-fall=2'])).err,
      /^iptlb: error: health-fall: needs --health tcp or --health http/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(files, { recursive: true, force: true });
  }
});

test('a name starting with - : refused for a new profile, taken from a state file (list, delete); --help says both', async () => {
  const help = (await cli(['--help'])).out.replace(/\s+/g, ' ');
  assert.match(
    help,
    /--profile <name> profile name: 1-63 of A-Z a-z 0-9 _ -, not starting with - \(a profile of an older state file, 1-18 of them, may: -run -delete and -run without addresses take it\); names are one namespace per host: creating a profile whose name the kernel holds for another state file is refused/,
  );
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-cli-'));
  try {
    const st = path.join(dir, 's.db');
    const created = await cli([
      '-profile=-x',
      '-src-addr=127.100.0.1:80',
      '-dest-addr=127.0.0.1:81',
      `-state-file=${st}`,
    ]);
    assert.equal(created.code, 2);
    assert.match(created.err, /name: "-x" must be 1-63 characters .*not starting with -/);
    const { writeFileSync } = await import('node:fs');
    writeFileSync(
      st,
      '"-x":\n  destination:\n  - 127.0.0.1:81\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: 127.100.0.1:80\n',
      { mode: 0o600 },
    );
    const listed = await cli(['list', `--state-file=${st}`]);
    assert.equal(listed.code, 0, listed.err);
    assert.match(listed.out, /^-x\t127\.100\.0\.1:80\/tcp/m);
    const { Core, deleteChange } = await import('../../src/core/core.js');
    const { FakeNftKernel } = await import('../harness/fake-kernel.js');
    const { validateName } = await import('../../src/model/profile.js');
    const core = new Core({ stateFile: st }, new FakeNftKernel());
    await core.transact((s) => deleteChange(s, [validateName('-x', 'name', { existing: true })]), { run: true });
    // (Not out.includes('-x'): the empty list names the state file, whose temporary directory's random
    // suffix may start with x. It did, once in CI.)
    assert.equal((await cli(['list', `--state-file=${st}`])).out, `no profiles in ${st}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a flag of the original's form after a command that does not take it is refused, not ignored: one line naming both, exit 2", async () => {
  // Commander gives a flag the program knows to the program wherever it stands: the command never saw
  // it (`iptlb apply --delete --profile web …` created web, `iptlb top --profile web` showed every profile).
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-foreign-'));
  try {
    const st = path.join(dir, 'state.db');
    for (const [args, command, flag] of [
      [['list', '--src-addr', '127.0.0.1:80'], 'list', '--src-addr'],
      [['sync', '--run'], 'sync', '--run'],
      [['-profile=web', 'migrate', '--to', 'nft'], 'migrate', '--profile'],
      [['delete', '--all', '-delete'], 'delete', '--delete'],
      [['completion', 'bash', '--json'], 'completion', '--json'],
    ] as const) {
      const r = await cli(command === 'completion' ? [...args] : [...args, `--state-file=${st}`]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
      assert.equal(r.out, '');
      assert.equal(
        r.err,
        `iptlb: error: ${command}: ${flag} is not an option of ${command} (\`iptlb ${command} --help\` lists the options it takes)\n`,
      );
    }
    assert.deepEqual(readdirSync(dir), []);
    // The flags a command takes are its own, before or after it.
    const listed = await cli(['--json', 'list', '-q', `--state-file=${st}`]);
    assert.equal(listed.code, 0, listed.err);
    assert.equal(listed.out, '[]\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the original flags' examples of --help, run in the order given, each succeed (without -run: the state file alone)", async () => {
  const help = (await cli(['--help'])).out;
  const section = help.slice(help.indexOf('Original flags'));
  // The examples that change one profile; -delete needs -run (the kernel), so it is left out.
  const examples = [...section.matchAll(/^ {2}iptlb (-run .*-profile=.*)$/gm)]
    .map((m) => m[1]!.split(/\s+/).filter((w) => w !== '-run'))
    .filter((args) => !args.includes('-delete'));
  assert.ok(examples.length >= 4, section);
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-cli-'));
  try {
    for (const args of examples) {
      const r = await cli([...args, `-state-file=${path.join(dir, 's.db')}`, '-q']);
      assert.equal(r.code, 0, `iptlb ${args.join(' ')}: ${r.err}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
