/**
 * How the state file is guarded: its lock on a read-only file system, and nothing created before a
 * refusal.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Core, upsertChange } from '../../src/core/core.js';
import { validateProfile } from '../../src/model/profile.js';
import { IptlbError } from '../../src/model/errors.js';
import { loadAddon } from '../../src/platform/addon.js';
import { lockStateFile } from '../../src/platform/lock.js';
import { main } from '../../src/cli/main.js';
import { FakeNftKernel } from '../harness/fake-kernel.js';
import { CLI_PATH } from '../harness/env.js';

const native = loadAddon('core');

const profile = (name: string, port: number) =>
  validateProfile({ name, source: `127.100.0.1:${port}`, destination: ['127.0.0.1:9001'] });

test(
  'a read-only file system: a command that writes nothing to the state file goes on without the lock (one line); a writer is refused before the kernel',
  { skip: native.ok ? false : 'the native addon is not built (the lock is then taken by flock(1))' },
  async (t) => {
    if (!native.ok) return;
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-guard-'));
    const file = path.join(dir, 's.db');
    const kernel = new FakeNftKernel();
    await new Core({ stateFile: file }, kernel).transact((s) => upsertChange(s, [profile('a', 80)]), { run: true });
    const before = readFileSync(file, 'utf8');
    // The lock file's open fails as on a read-only mount (the addon opens it O_RDWR | O_CREAT).
    t.mock.method(native.addon, 'flock', () =>
      Promise.reject(Object.assign(new Error('Read-only file system'), { errno: 30 })),
    );
    const lines: string[] = [];
    const core = new Core({ stateFile: file, log: (l) => lines.push(l) }, kernel);
    core.indexedReads = true;
    // `-use-state -run`: every profile of the file, which it already holds.
    const r = await core.transact((s) => ({ upsert: [...s.values()], remove: [] }), { run: true });
    assert.equal(r.stateWritten, false);
    const sync = await core.sync();
    assert.equal(sync.skipped, undefined);
    const said = lines.filter((l) => /read-only/.test(l));
    assert.deepEqual(said, [
      `the file system of ${file} is read-only here: going on without the state-file lock (this writes nothing to the state file, and nothing can write it here)`,
    ]);
    // A change the state file would have to record: refused, nothing committed.
    const commits = kernel.commits.length;
    for (const decide of [
      (s: Map<string, ReturnType<typeof profile>>) => upsertChange(s, [profile('b', 81)]),
      (s: Map<string, ReturnType<typeof profile>>) => ({ upsert: [], remove: [...s.keys()] }),
    ])
      await assert.rejects(
        core.transact(decide, { run: true }),
        (e: unknown) =>
          e instanceof IptlbError &&
          e.code === 'ESTATE' &&
          e.message ===
            `cannot write the state file ${file}: the file system is read-only (EROFS); nothing was changed`,
      );
    assert.equal(kernel.commits.length, commits, 'no kernel commit for a refused writer');
    assert.equal(readFileSync(file, 'utf8'), before);
    // A writer that takes the lock (a fold) still fails, naming the lock file.
    await assert.rejects(
      lockStateFile(file, 100),
      /cannot open the lock file .*s\.db\.lock\.queue: the file system is read-only \(EROFS\)/,
    );
    // Any other failure to open the lock file is not read as a read-only file system.
    t.mock.method(native.addon, 'flock', () =>
      Promise.reject(Object.assign(new Error('Permission denied'), { errno: 13 })),
    );
    await assert.rejects(
      new Core({ stateFile: file }, kernel).sync(),
      /cannot open the lock file .*: permission denied/,
    );
  },
);

test('a state-file directory that is refused: nothing is created first (no local/ left behind), and list creates nothing', async () => {
  const owners: [string, (d: string) => void][] = [['writable by anyone, not sticky', (d) => chmodSync(d, 0o777)]];
  // As `sudo iptlb` in a user's directory (needs root to give the directory away).
  if (process.geteuid?.() === 0) owners.push(['owned by another user', (d) => chownSync(d, 65534, 65534)]);
  for (const [what, make] of owners) {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-guard-'));
    const home = path.join(dir, 'home');
    mkdirSync(home, { mode: 0o755 });
    make(home);
    const file = path.join(home, 'local', 'state.db');
    await assert.rejects(
      lockStateFile(file, 100),
      (e: unknown) => e instanceof IptlbError && e.code === 'ESTATE' && /refusing to use it/.test(e.message),
      what,
    );
    await assert.rejects(
      new Core({ stateFile: file }, new FakeNftKernel()).transact((s) => upsertChange(s, [profile('a', 80)]), {
        run: true,
      }),
      /refusing to use it/,
      what,
    );
    let out = '';
    const code = await main(['list', '--state-file', file], { out: (s) => (out += s), err: (s) => (out += s) });
    assert.equal(code, 0, out);
    assert.deepEqual(readdirSync(home), [], `${what}: nothing created`);
    assert.equal(existsSync(path.join(home, 'local')), false);
  }
});

test(
  'a read-only tmpfs (fresh mount and network namespaces): -use-state -run and sync run, a change is refused; with the addon and with flock(1)',
  { skip: process.geteuid?.() === 0 ? false : 'needs root (mount and network namespaces)' },
  () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-guard-'));
    const iptlb = `"${process.execPath}" "${CLI_PATH}" -state-file="${dir}/ro/s.db"`;
    const script = [
      `mkdir "${dir}/ro" && mount -t tmpfs -o size=1m,mode=0755 tmpfs "${dir}/ro"`,
      `${iptlb} -q -profile=web -src-addr=127.100.0.9:80 -dest-addr=127.0.0.1:9001`,
      // No lock files yet: the lock cannot even be created.
      // (Without the addon the lock was held by a flock(1) child, which exits once it sees its parent
      // gone: until then its open lock file keeps the mount busy.)
      `rm -f "${dir}/ro/s.db.lock" "${dir}/ro/s.db.lock.queue"`,
      `for i in $(seq 100); do mount -o remount,ro "${dir}/ro" 2>/dev/null && break; sleep 0.05; done`,
      `touch "${dir}/ro/x" 2>/dev/null; test ! -e "${dir}/ro/x"`,
      `${iptlb} -use-state -run 2>&1; echo "rc=$?"`,
      `${iptlb} sync 2>&1; echo "rc=$?"`,
      `${iptlb} -q -profile=b -src-addr=127.100.0.8:80 -dest-addr=127.0.0.1:9001 -run 2>&1; echo "rc=$?"`,
    ].join(' && ');
    try {
      for (const env of [{}, { IPTLB_NO_NATIVE: '1' }]) {
        const r = spawnSync('unshare', ['-m', '-n', '--propagation', 'private', 'sh', '-c', script], {
          encoding: 'utf8',
          env: { ...process.env, ...env },
        });
        spawnSync('rm', ['-rf', `${dir}/ro`]);
        const out = r.stdout + r.stderr;
        const said = `iptlb: the file system of ${dir}/ro/s.db is read-only here: going on without the state-file lock`;
        assert.equal(out.split(said).length - 1, 2, out);
        assert.equal(out.match(/^rc=0$/gm)?.length, 2, out);
        assert.match(out, /apply profile web/);
        assert.match(
          out,
          new RegExp(
            `^iptlb: error: cannot write the state file ${dir}/ro/s\\.db: the file system is read-only \\(EROFS\\); nothing was changed\\nrc=1$`,
            'm',
          ),
        );
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
