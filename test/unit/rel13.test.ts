/**
 * Issue 13 ("Reliability, round two"), the points that need no root: each test failed before the fix.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { open, IptlbError, serializeState, validateProfile } from '../../src/index.js';
import { main } from '../../src/cli/main.js';
import { CLI_PATH } from '../harness/env.js';
import { advance as advanceClock, flush } from '../harness/mock-clock.js';

function tmpdir(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'iptlb-rel13-'));
}

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n') });
  return { code, out, err };
}

function manyProfiles(n: number): string {
  const list = [];
  for (let i = 0; i < n; i++) {
    list.push(
      validateProfile({
        name: `p${i}`,
        source: `127.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}:80`,
        destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
      }),
    );
  }
  return serializeState(list);
}

test('3: list --json of 1,000 profiles into a slow pipe: every byte arrives, valid JSON, exit 0', () => {
  const dir = tmpdir();
  try {
    const state = path.join(dir, 'state.db');
    writeFileSync(state, manyProfiles(1000), { mode: 0o600 });
    // The reader starts reading 1 s after the CLI has written: far more than a pipe's 64 KiB waits.
    const r = spawnSync(
      'bash',
      [
        '-c',
        `"${process.execPath}" "${CLI_PATH}" list --json --state-file "${state}" | (sleep 1; cat > "${dir}/out"); exit \${PIPESTATUS[0]}`,
      ],
      {
        encoding: 'utf8',
        env: { ...process.env, NODE_OPTIONS: '' },
      },
    );
    assert.equal(r.status, 0, r.stderr);
    const out = spawnSync('cat', [`${dir}/out`], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout;
    assert.ok(out.length > 65536 * 2, `only ${out.length} bytes arrived`);
    const parsed = JSON.parse(out) as unknown[];
    assert.equal(parsed.length, 1000);
    // The exit status survives the wait for the pipe.
    const bad = spawnSync(
      'bash',
      [
        '-c',
        `"${process.execPath}" "${CLI_PATH}" list --json --state-file "${state}" --bogus | (sleep 0.2; cat >/dev/null); exit \${PIPESTATUS[0]}`,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(bad.status, 2, bad.stderr);
    const code = spawnSync(process.execPath, [CLI_PATH, 'list', '--bogus'], { encoding: 'utf8' });
    assert.equal(code.status, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('5: every open() option is validated: a typed EUSAGE naming the option, before anything is chosen', async () => {
  const cases: [unknown, string][] = [
    [null, 'options'],
    [42, 'options'],
    ['x', 'options'],
    [{ engine: 'bogus' }, 'engine'],
    [{ engine: 42 }, 'engine'],
    [{ executor: 'x' }, 'executor'],
    [{ lockWaitMs: -5 }, 'lockWaitMs'],
    [{ lockWaitMs: 1.5 }, 'lockWaitMs'],
    [{ lockWaitMs: '100' }, 'lockWaitMs'],
    [{ lockWaitMs: Infinity }, 'lockWaitMs'],
    [{ stateFile: 42 }, 'stateFile'],
    [{ stateFile: '' }, 'stateFile'],
    [{ stateFile: true }, 'stateFile'],
    [{ stateFile: 'a\0b' }, 'stateFile'],
    [{ log: 'yes' }, 'log'],
    [{ keepConntrack: 1 }, 'keepConntrack'],
    [{ stateRegistry: true }, 'stateRegistry'],
    [{ stateRegistry: 'relative/dir' }, 'stateRegistry'],
    [{ stateRegistry: '/tmp/registry\0' }, 'stateRegistry'],
    [{ coalesce: 'no' }, 'coalesce'],
    [{ driftCheckMs: 5 }, 'driftCheckMs'],
    [{ driftCheckMs: '100' }, 'driftCheckMs'],
    [{ driftCheckMs: 2 ** 31 }, 'driftCheckMs'],
    [{ health: { bogus: 1 } }, 'health.bogus'],
    [{ health: { prober: 'nope' } }, 'health.prober'],
    [{ health: { refreshMs: 0 } }, 'health.refreshMs'],
    [{ health: { refreshMs: 'x' } }, 'health.refreshMs'],
    [{ health: { tickMs: -1 } }, 'health.tickMs'],
    [{ health: { jitter: 5 } }, 'health.jitter'],
    [{ statefile: '/x' }, 'statefile'],
  ];
  for (const [opts, field] of cases) {
    await assert.rejects(
      () => open(opts as never),
      (e: unknown) =>
        e instanceof IptlbError &&
        e.code === 'EUSAGE' &&
        e.field === field &&
        e.message.startsWith(`${field}:`) &&
        !e.message.includes('\n'),
      `open(${String(JSON.stringify(opts))}) names ${field}`,
    );
  }
});

test('12: -state-file= (empty) is a usage error, nothing read or written', async () => {
  for (const args of [
    ['list', '-state-file='],
    ['-state-file=', '-profile=web', '-src-addr=127.0.0.9:80', '-dest-addr=127.0.0.1:9001'],
    ['doctor', '--state-file='],
  ]) {
    const r = await cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, /^iptlb: error: state-file: must not be empty/);
  }
});

const ROOT = process.getuid?.() === 0;
const NOT_ROOT = ROOT ? false : 'needs root (chown to another user, mount namespaces)';
/** State-only CLI run (no -run: the kernel is never touched): takes the lock, reads and writes the state file. */
function stateOnly(state: string, name = 'web', port = 80, extra: string[] = []): ReturnType<typeof spawnSync> {
  return spawnSync(
    process.execPath,
    [
      CLI_PATH,
      `-state-file=${state}`,
      '-q',
      `-profile=${name}`,
      `-src-addr=127.0.0.9:${port}`,
      '-dest-addr=127.0.0.1:9001',
      ...extra,
    ],
    { encoding: 'utf8' },
  );
}
function oneLine(s: string | Buffer): string {
  const t = String(s).trim();
  assert.equal(t.split('\n').length, 1, `one line: ${t}`);
  return t;
}

test('4: apply --file /dev/zero, an endless stdin and a state file past 64 MiB fail at once with one line; nothing is written', () => {
  const dir = tmpdir();
  try {
    const state = path.join(dir, 'state.db');
    const z = spawnSync(process.execPath, [CLI_PATH, 'apply', `--state-file=${state}`, '--file=/dev/zero'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(z.status, 2, z.stderr);
    assert.match(oneLine(z.stderr), /^iptlb: error: file: "\/dev\/zero" is larger than 64 MiB/);
    const pipe = spawnSync(
      'sh',
      ['-c', `cat /dev/zero | "${process.execPath}" "${CLI_PATH}" apply --state-file="${state}" --file=-`],
      { encoding: 'utf8', timeout: 60_000 },
    );
    assert.equal(pipe.status, 2, pipe.stderr);
    assert.match(oneLine(pipe.stderr), /^iptlb: error: file: standard input is larger than 64 MiB/);
    assert.equal(
      spawnSync('ls', ['-A', dir], { encoding: 'utf8' }).stdout,
      '',
      'no state file, no lock: nothing was written',
    );
    // A state file past the limit (sparse: no disk used).
    writeFileSync(state, '', { mode: 0o600 });
    spawnSync('truncate', ['-s', `${64 * 1024 * 1024 + 1}`, state]);
    const big = spawnSync(process.execPath, [CLI_PATH, 'list', `--state-file=${state}`], { encoding: 'utf8' });
    assert.equal(big.status, 1);
    assert.match(
      oneLine(big.stderr),
      /state file .* is larger than 67108864 bytes \(64 MiB, the limit of a state file\)/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('6: a lock that cannot be opened says why at once, never "gave up after … ms"', () => {
  const dir = tmpdir();
  try {
    writeFileSync(path.join(dir, 'file'), 'x');
    const cases: [string, RegExp][] = [
      [
        path.join(dir, 'file', 'sub', 'state.db'),
        /a component of the path (is not a directory|exists and is not a directory)/,
      ],
      [path.join(dir, 'x'.repeat(300), 'state.db'), /the path is too long \(ENAMETOOLONG\)/],
      ['/proc/version', /cannot .*\/proc\/version/],
      // A symbolic link: refused as the state file's read refuses it, before a lock file is made beside it.
      ['/proc/self/fd/0', /state file \/proc\/self\/fd\/0: is a symbolic link; refusing to follow it/],
    ];
    for (const [state, re] of cases) {
      const r = stateOnly(state);
      assert.equal(r.status, 1, `${state}: ${r.stderr}`);
      const line = oneLine(r.stderr);
      assert.match(line, re, state);
      assert.doesNotMatch(line, /gave up|internal error/, state);
    }
    // A lock file that is a directory.
    const d2 = path.join(dir, 'd2');
    spawnSync('mkdir', ['-p', path.join(d2, 'state.db.lock')]);
    const r = stateOnly(path.join(d2, 'state.db'));
    assert.match(oneLine(r.stderr), /lock file .*state\.db\.lock is a directory/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('6: on a read-only file system: one line that says so (private mount namespace)', { skip: NOT_ROOT }, () => {
  const dir = tmpdir();
  try {
    const mnt = path.join(dir, 'ro');
    spawnSync('mkdir', [mnt]);
    const r = spawnSync(
      'unshare',
      [
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        `mount -t tmpfs -o ro,size=1m tmpfs "${mnt}" && "${process.execPath}" "${CLI_PATH}" -state-file="${mnt}/state.db" -q -profile=web -src-addr=127.0.0.9:80 -dest-addr=127.0.0.1:9001`,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 1, r.stderr);
    assert.match(oneLine(r.stderr), /read-only \(EROFS\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(
  '2: a state file, lock or directory another user owns or could replace is refused with one line; a sticky /tmp-like directory is fine',
  { skip: NOT_ROOT },
  () => {
    const dir = tmpdir();
    const chmod = (p: string, m: string): void => void spawnSync('chmod', [m, p]);
    const chown = (p: string, u: string): void => void spawnSync('chown', [u, p]);
    try {
      // A directory anyone may write to (no sticky bit): a planted state.db would be applied.
      const open777 = path.join(dir, 'open');
      spawnSync('mkdir', [open777]);
      chmod(open777, '0777');
      writeFileSync(path.join(open777, 'state.db'), '{}\n', { mode: 0o600 });
      let r = stateOnly(path.join(open777, 'state.db'));
      assert.equal(r.status, 1);
      assert.match(
        oneLine(r.stderr),
        /directory .*\/open is writable by anyone \(mode 0777\) without the sticky bit; refusing/,
      );
      r = spawnSync(process.execPath, [CLI_PATH, 'list', `--state-file=${path.join(open777, 'state.db')}`], {
        encoding: 'utf8',
      });
      assert.equal(r.status, 1, 'reading is refused too');
      // A state file owned by uid 65534.
      const owned = path.join(dir, 'owned');
      spawnSync('mkdir', [owned]);
      writeFileSync(path.join(owned, 'state.db'), '{}\n', { mode: 0o600 });
      chown(path.join(owned, 'state.db'), '65534');
      r = stateOnly(path.join(owned, 'state.db'));
      assert.equal(r.status, 1);
      assert.match(oneLine(r.stderr), /state file .*owned\/state\.db is owned by uid 65534, another user; refusing/);
      // A group-writable state file.
      const gw = path.join(dir, 'gw');
      spawnSync('mkdir', [gw]);
      writeFileSync(path.join(gw, 'state.db'), '{}\n', { mode: 0o660 });
      chmod(path.join(gw, 'state.db'), '0660');
      r = stateOnly(path.join(gw, 'state.db'));
      assert.match(oneLine(r.stderr), /state file .* is writable by its group/);
      // A lock planted and held by uid 65534: refused at once, not a 10 s timeout.
      const held = path.join(dir, 'held');
      spawnSync('mkdir', [held]);
      writeFileSync(path.join(held, 'state.db.lock'), '', { mode: 0o600 });
      chown(path.join(held, 'state.db.lock'), '65534');
      r = stateOnly(path.join(held, 'state.db'));
      assert.match(oneLine(r.stderr), /lock file .*held\/state\.db\.lock is owned by uid 65534/);
      // A parent directory of another user.
      const theirs = path.join(dir, 'theirs');
      spawnSync('mkdir', ['-p', path.join(theirs, 'sub')]);
      chown(theirs, '65534');
      r = stateOnly(path.join(theirs, 'sub', 'state.db'));
      assert.match(oneLine(r.stderr), /directory .*\/theirs is owned by uid 65534/);
      // Sticky and world-writable (as /tmp): accepted.
      const sticky = path.join(dir, 'sticky');
      spawnSync('mkdir', [sticky]);
      chmod(sticky, '1777');
      r = stateOnly(path.join(sticky, 'state.db'));
      assert.equal(r.status, 0, String(r.stderr));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('8: temporary files of killed writers are removed on the next run (only ours, only dead or old); others stay', async () => {
  const dir = tmpdir();
  try {
    const state = path.join(dir, 'state.db');
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {
      encoding: 'utf8',
    }).stdout;
    const { spawn } = await import('node:child_process');
    const live = spawn('sleep', ['30']);
    const names = {
      dead: `.state.db.tmp-${dead}-abc123`,
      liveYoung: `.state.db.tmp-${live.pid}-abc123`,
      liveOld: `.state.db.tmp-${live.pid}-old1`,
      otherName: `.state.db.tmp-foo`,
      otherFile: `.other.db.tmp-${dead}-abc123`,
    };
    for (const n of Object.values(names)) writeFileSync(path.join(dir, n), 'x');
    const { utimesSync, symlinkSync, readdirSync } = await import('node:fs');
    const old = new Date(Date.now() - 120_000);
    utimesSync(path.join(dir, names.liveOld), old, old);
    symlinkSync('/etc/passwd', path.join(dir, `.state.db.tmp-${dead}-link1`));
    const r = stateOnly(state);
    live.kill();
    assert.equal(r.status, 0, String(r.stderr));
    const left = readdirSync(dir).sort();
    assert.deepEqual(
      left,
      [
        names.otherFile,
        names.liveYoung,
        `.state.db.tmp-${dead}-link1`,
        names.otherName,
        'state.db',
        'state.db.lock',
        'state.db.lock.queue',
      ].sort(),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('11: the periodic drift check never reads the kernel while a commit of the instance is in flight (injected executor, 20 ms commits)', async () => {
  for (const stateFile of [false as const, 'file']) {
    const dir = tmpdir();
    try {
      let inFlight = 0;
      let readsDuringCommit = 0;
      let reads = 0;
      const ex = {
        kind: 'spawn' as const,
        engine: 'legacy' as const,
        async commit() {
          inFlight++;
          await new Promise((r) => setTimeout(r, 20));
          inFlight--;
          return { durationMs: 20 };
        },
        async read() {
          reads++;
          if (inFlight) readsDuringCommit++;
          return { chains: [], hookRules: [] };
        },
        async render() {
          return '';
        },
      };
      const lb = await open(
        { stateFile: stateFile === 'file' ? path.join(dir, 'state.db') : false, driftCheckMs: 10 },
        ex,
      );
      lb.on('drift', () => {});
      for (let i = 0; i < 15; i++)
        await Promise.all(
          [0, 1, 2].map((k) =>
            lb.apply({ name: `p${k}`, source: `127.0.3.${k + 1}:80`, destination: [`127.0.0.1:${9000 + i}`] }),
          ),
        );
      await lb.close();
      assert.ok(reads > 0, `${stateFile}: the drift check ran`);
      assert.equal(
        readsDuringCommit,
        0,
        `${stateFile}: ${readsDuringCommit} of ${reads} kernel reads overlapped a commit`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('13: watch applies a changed file only once it has settled (no change for settleMs) and parses; a partial or empty file changing under it is never applied (mock timers)', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const { startWatch } = await import('../../src/core/watch.js');
  let v = 'v0';
  let parses = true;
  const syncs: string[] = [];
  const logs: string[] = [];
  const core = {
    statePath: '/nonexistent-iptlb-dir/state.db',
    async sync() {
      syncs.push(v);
      return { before: [], committed: true, commitMs: 1 };
    },
    async readState() {
      if (!parses) throw new Error('state file x: is not valid YAML');
      return new Map();
    },
  };
  const advance = (ms: number): Promise<void> => advanceClock(t, ms);
  // What was applied, in order (the periodic check may apply the same settled file again: harmless).
  const applied = (): string[] => syncs.filter((x, k) => x !== syncs[k - 1]);
  const w = startWatch(core as never, {
    intervalMs: 300,
    settleMs: 1000,
    log: (l) => logs.push(l),
    version: async () => v,
  });
  await flush();
  assert.deepEqual(applied(), ['v0'], 'the start check applies the file as it is');
  // An in-place rewrite in two writes 700 ms apart: the first half parses (fewer profiles).
  v = 'half';
  w.changed();
  await advance(700);
  v = 'whole';
  w.changed();
  await advance(900);
  assert.deepEqual(applied(), ['v0'], 'nothing applied while the file changes, not even by the periodic check');
  await advance(200);
  assert.deepEqual(applied(), ['v0', 'whole'], 'the whole file, once settled');
  // Truncated, then written slowly: an empty file for 2 s that then fills, in steps 500 ms apart.
  v = 'empty';
  w.changed();
  for (const step of ['a', 'ab', 'abc', 'abcd']) {
    await advance(500);
    v = step;
    w.changed();
  }
  await advance(900);
  assert.deepEqual(applied(), ['v0', 'whole'], 'no step of the slow write applied');
  await advance(200);
  assert.deepEqual(applied(), ['v0', 'whole', 'abcd']);
  // A settled file that does not parse: not applied, said once; applied when it parses again.
  v = 'broken';
  parses = false;
  w.changed();
  await advance(3000);
  assert.deepEqual(applied(), ['v0', 'whole', 'abcd']);
  assert.equal(logs.filter((l) => l.includes('is not applied')).length, 1, logs.join('\n'));
  v = 'fixed';
  parses = true;
  w.changed();
  await advance(1100);
  assert.equal(syncs.at(-1), 'fixed');
  // With the file unchanged, the periodic check repairs the kernel (each 300 ms).
  const n = syncs.length;
  await advance(650);
  assert.ok(syncs.length >= n + 2);
  await w.stop();
});

test('13: watch: SIGHUP while the file is being rewritten in place applies no half of it: the kernel is held to the version applied, the file applied once settled (mock timers)', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const { startWatch } = await import('../../src/core/watch.js');
  let v = 'v0';
  const syncs: string[] = [];
  const logs: string[] = [];
  const core = {
    statePath: '/nonexistent-iptlb-dir/state.db',
    async sync(opts: { profiles: Map<string, unknown> }) {
      syncs.push(String(opts.profiles.get('version')));
      return { before: [], committed: true, commitMs: 1, state: opts.profiles };
    },
    async readState() {
      return new Map([['version', v]]);
    },
  };
  const w = startWatch(core as never, {
    intervalMs: 60_000,
    settleMs: 2000,
    log: (l) => logs.push(l),
    version: async () => v,
  });
  await flush();
  assert.deepEqual(syncs, ['v0']);
  // A writer truncates the file and writes its first part; 300 ms later the operator reloads.
  v = 'half';
  w.changed();
  await advanceClock(t, 300);
  process.emit('SIGHUP');
  await flush();
  assert.deepEqual(syncs, ['v0', 'v0'], 'SIGHUP repairs toward the version applied, not the half-written file');
  assert.match(logs.join('\n'), /SIGHUP/);
  await advanceClock(t, 500);
  v = 'whole';
  w.changed();
  await advanceClock(t, 1900);
  assert.ok(!syncs.includes('half') && !syncs.includes('whole'), syncs.join());
  await advanceClock(t, 200);
  assert.deepEqual(syncs.slice(2), ['whole'], 'the whole file, once settled');
  // SIGHUP with the file settled applies it at once.
  process.emit('SIGHUP');
  await flush();
  assert.deepEqual(syncs.slice(2), ['whole', 'whole']);
  await w.stop();
});

test('13: watch started while the file is being written (changed within the settle time) waits for it to settle (mock timers)', async (t) => {
  const dir = tmpdir();
  const file = path.join(dir, 'state.db');
  writeFileSync(file, '{}\n'); // just now, as by a writer part way through
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  try {
    const { startWatch } = await import('../../src/core/watch.js');
    const syncs: string[] = [];
    const core = {
      statePath: file,
      async sync() {
        syncs.push('sync');
        return { before: [], committed: false, commitMs: 0 };
      },
      async readState() {
        return new Map();
      },
    };
    const w = startWatch(core as never, {
      intervalMs: 60_000,
      settleMs: 1000,
      log: () => {},
      version: async () => 'v',
    });
    await flush();
    assert.deepEqual(syncs, [], 'not applied at start: written within the settle time');
    await advanceClock(t, 1100);
    assert.deepEqual(syncs, ['sync'], 'applied once settled');
    await w.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('13: watch: a check that saw the file settled applies only that version, even when a writer truncates the file while it parses it and another check sees the empty file (mock timers)', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const { startWatch } = await import('../../src/core/watch.js');
  let v = 'v0';
  const syncs: string[] = [];
  let raced = false;
  // eslint-disable-next-line prefer-const
  let w: ReturnType<typeof startWatch>;
  const core = {
    statePath: '/nonexistent-iptlb-dir/state.db',
    // As the core does: the guard is asked under the lock, before (and after) the file is read.
    async sync(o?: { guard?: () => Promise<boolean> }) {
      if (o?.guard && !(await o.guard())) return { before: [], committed: false, commitMs: 0, skipped: true };
      syncs.push(v);
      return { before: [], committed: true, commitMs: 1 };
    },
    async readState() {
      // The periodic check saw 'v0' settled and parses the file; meanwhile a writer truncates it (an
      // empty file parses: no profiles) and the file event's check sees the new version.
      if (syncs.length > 0 && !raced) {
        raced = true;
        v = 'empty';
        w.changed();
        t.mock.timers.tick(25);
        await flush();
      }
      return new Map();
    },
  };
  w = startWatch(core as never, { intervalMs: 300, settleMs: 1000, log: () => {}, version: async () => v });
  await flush();
  assert.deepEqual(syncs, ['v0'], 'the start check applies the file as it is');
  t.mock.timers.tick(300);
  for (let i = 0; i < 4; i++) await flush(); // the periodic check, the file event's check inside it, and its end
  assert.equal(raced, true, 'the periodic check ran while the writer truncated the file');
  assert.deepEqual(syncs, ['v0'], 'the empty file is not applied: it has not settled');
  v = 'whole';
  w.changed();
  for (let i = 0; i < 12; i++) {
    t.mock.timers.tick(100);
    await flush();
  }
  assert.deepEqual(
    syncs.filter((x, k) => x !== syncs[k - 1]),
    ['v0', 'whole'],
  );
  await w.stop();
});

test('12: names: 1-63 of A-Za-z0-9_-, not starting with -; up to 18 keep their chain name, longer ones get a stable hashed one; old state files stay valid', async () => {
  const { chainName, validateName } = await import('../../src/model/profile.js');
  const { planTransaction } = await import('../../src/engines/legacy/plan.js');
  const { planNftProfile } = await import('../../src/engines/nft/plan.js');
  const { parseState: parse } = await import('../../src/core/state.js');
  const long = 'a'.repeat(63);
  for (const ok of ['web', 'Web_1', '_x', '9', 'web-frontend-production-eu-west-1', long])
    assert.equal(validateName(ok), ok);
  for (const bad of ['-j', '-', '', 'a'.repeat(64), 'a b', 'a.b', 'é'])
    assert.throws(
      () => validateName(bad),
      (e: IptlbError) => e.code === 'EINVAL_PROFILE' && e.field === 'name' && /1-63 characters/.test(e.message),
      bad,
    );
  // The chain names of today's names are unchanged.
  assert.equal(chainName('web-1'), 'IPTLB_NAT_WEB_1');
  assert.equal(chainName('a'.repeat(18)), `IPTLB_NAT_${'A'.repeat(18)}`);
  // Longer: IPTLB_NAT_ + 16 characters of base32(sha256(name)), stable, within 28 characters.
  const h = chainName('web-frontend-production');
  assert.match(h, /^IPTLB_NAT_[A-Z2-7]{16}$/);
  assert.equal(
    h,
    'IPTLB_NAT_QMW7GBG5OLCXTIZ3',
    'a stable value: changing the hash would orphan every long-named chain',
  );
  assert.equal(chainName('a'.repeat(19)), chainName('a'.repeat(19)));
  assert.notEqual(
    chainName('A'.repeat(19)),
    chainName('a'.repeat(19)),
    'names that differ in case only get different chains',
  );
  // Every kernel name made of it fits: chain ≤ 28, LOG prefixes ≤ 29, the nft comment ≤ 127.
  const p = validateProfile({
    name: long,
    source: '127.100.0.10:80',
    destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
    logEnabled: true,
    affinity: 60,
  });
  const tx = planTransaction([p], []);
  for (const c of tx.chains) assert.ok(c.name.length <= 28, c.name);
  const prefixes = [...tx.chains.flatMap((c) => c.rules), ...tx.hookRules.map((x) => x.rule)].flatMap((r) =>
    r.target.name === 'LOG' ? [r.target.prefix] : [],
  );
  assert.equal(prefixes.length, 2);
  for (const pre of prefixes) assert.ok(pre.length <= 29, pre);
  for (const r of planNftProfile(p).rules)
    if ('prefix' in r.rule) assert.ok((r.rule as { prefix: string }).prefix.length <= 29);
  // A state file written before (a name with a leading -, 18 characters) stays valid; a new profile may not take such a
  // name.
  const old = await parse(
    '-old:\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: 127.100.0.10:81\n',
  );
  assert.equal(chainName([...old.keys()][0]), 'IPTLB_NAT__OLD');
  assert.throws(
    () => validateProfile({ name: '-j', source: '127.100.0.10:80', destination: ['127.0.0.1:9001'] }),
    /1-63 characters/,
  );
  // CLI: -profile=-j is refused (it would read as a flag in `iptlb delete -j`).
  const r = await cli([
    '-profile=-j',
    '-src-addr=127.100.0.10:80',
    '-dest-addr=127.0.0.1:9001',
    '-state-file=/nonexistent-iptlb/x.db',
  ]);
  assert.equal(r.code, 2);
  assert.match(r.err, /name: "-j" must be 1-63 characters/);
});

test('12: the state file round-trips 63-character names; a case collision of short names is a conflict', async () => {
  const { parseState: parse } = await import('../../src/core/state.js');
  const long = 'Service_' + 'x'.repeat(55);
  const text = serializeState([
    validateProfile({ name: long, source: '127.100.0.10:80', destination: ['127.0.0.1:9001'] }),
  ]);
  assert.deepEqual([...(await parse(text)).keys()], [long]);
  const dir = tmpdir();
  try {
    const state = path.join(dir, 'state.db');
    assert.equal(stateOnly(state, 'web', 80).status, 0);
    const clash = stateOnly(state, 'WEB', 81);
    assert.equal(clash.status, 1);
    assert.match(oneLine(clash.stderr), /IPTLB_NAT_WEB/);
    assert.equal(stateOnly(state, long, 82).status, 0);
    assert.equal(
      stateOnly(state, long.toLowerCase(), 83).status,
      0,
      'long names differing in case have different hashed chains',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('7: a waiter queued behind others waits on while the lock changes hands; a holder that keeps it for the whole wait times it out', async () => {
  const { lockStateFile } = await import('../../src/platform/lock.js');
  const dir = tmpdir();
  try {
    const state = path.join(dir, 'state.db');
    const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
    // Eight holders of 600 ms each, each its own process (as CLI calls are).
    const { spawn } = await import('node:child_process');
    const lockJs = new URL('../../src/platform/lock.js', import.meta.url).pathname;
    const holder = (ms: number): Promise<number | null> =>
      new Promise((resolve) => {
        const code = `import(${JSON.stringify(lockJs)}).then(async (m) => { const l = await m.lockStateFile(${JSON.stringify(state)}, 30000); await new Promise((r) => setTimeout(r, ${ms})); l.release(); })`;
        const c = spawn(process.execPath, ['-e', code], { stdio: 'ignore' });
        c.on('exit', (c2) => resolve(c2));
      });
    const first = await lockStateFile(state, 30_000);
    const others = Array.from({ length: 7 }, () => holder(600));
    await sleep(1000);
    // A wait of 2000 ms, behind up to 4.2 s of others' turns: the lock changes hands every 600 ms (a wait of
    // 1000 ms timed out once at load 14, when a hand-off between two processes took more than 400 ms).
    const waiter = lockStateFile(state, 2000).then(
      (l) => (l.release(), 'ok'),
      (e: Error) => e.message,
    );
    await sleep(150);
    first.release();
    assert.deepEqual(await Promise.all(others), Array(7).fill(0));
    assert.equal(await waiter, 'ok');
    // One holder that keeps it: a timeout, with the usual message.
    const hog = await lockStateFile(state, 1000);
    const r = await lockStateFile(state, 300).then(
      (l) => (l.release(), 'ok'),
      (e: IptlbError) => `${e.code}: ${e.message}`,
    );
    hog.release();
    assert.match(r, /^ELOCK: another iptlb holds .*state\.db\.lock; gave up after 300 ms$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
