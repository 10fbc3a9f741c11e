/**
 * platform/fsp.ts, the file calls iptlb makes instead of node:fs/promises (issue 18, CLI start): in
 * both of its modes (asynchronous on the callback API; synchronous for one-shot CLI runs) every call
 * returns a promise with the same result or the same error code as node:fs/promises, and a failing
 * call rejects rather than throws. main() runs one-shot commands in the synchronous mode and gives the
 * mode back when it returns.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, promises as ref, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as fsp from '../../src/platform/fsp.js';
import { spawnSync } from 'node:child_process';
import { PROJECT_ROOT } from '../harness/env.js';
import { main } from '../../src/cli/main.js';

/** The error code a promise rejects with (it must reject, not throw). */
async function codeOf(p: () => Promise<unknown>): Promise<string | undefined> {
  let promise: Promise<unknown>;
  try {
    promise = p();
  } catch (e) {
    assert.fail(`threw instead of rejecting: ${(e as Error).message}`);
  }
  return promise.then(
    () => undefined,
    (e: NodeJS.ErrnoException) => e.code,
  );
}

for (const sync of [false, true]) {
  test(`fsp, ${sync ? 'synchronous' : 'asynchronous'} mode: the same results and errors as node:fs/promises`, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-fsp-'));
    const was = fsp.syncFs();
    fsp.useSyncFs(sync);
    try {
      assert.equal(fsp.syncFs(), sync);
      const file = path.join(dir, 'sub', 'a');
      await fsp.mkdirs(path.dirname(file), 0o700);
      assert.equal(statSync(path.dirname(file)).mode & 0o777, 0o700);
      await fsp.mkdirs(path.dirname(file), 0o700); // exists: no error
      // Parents made too, each with the mode (as mkdir -p -m; the umask here leaves 0o700 whole).
      await fsp.mkdirs(path.join(dir, 'p', 'q', 'r'), 0o700);
      for (const d of ['p', 'p/q', 'p/q/r']) assert.equal(statSync(path.join(dir, d)).mode & 0o777, 0o700, d);
      rmSync(path.join(dir, 'p'), { recursive: true });

      const fh = await fsp.open(file, 'wx', 0o600);
      await fh.writeFile('héllo\n', 'utf8');
      const w = await fh.write(Buffer.from('more\n'), 0, 5);
      assert.equal(w.bytesWritten, 5);
      const v = await fh.writev([Buffer.from('ab'), Buffer.from('c\n')]);
      assert.equal(v.bytesWritten, 4);
      await fh.sync();
      const st = await fh.stat({ bigint: true });
      assert.equal(typeof st.size, 'bigint');
      assert.deepEqual(
        [st.size, st.ino, st.mode & 0o777n],
        [(await ref.stat(file, { bigint: true })).size, (await ref.stat(file, { bigint: true })).ino, 0o600n],
      );
      assert.equal((await fh.stat()).size, 16);
      await fh.truncate(7);
      await fh.close();
      assert.equal(readFileSync(file, 'utf8'), 'héllo\n');

      const rh = await fsp.open(file, 'r');
      const buf = Buffer.alloc(16);
      const r = await rh.read(buf, 0, 16, null);
      assert.equal(buf.subarray(0, r.bytesRead).toString('utf8'), 'héllo\n');
      assert.equal((await rh.read(buf, 0, 16, null)).bytesRead, 0);
      await rh.close();

      const l = await fsp.lstat(file, { bigint: true });
      assert.equal(l.ino, (await ref.lstat(file, { bigint: true })).ino);
      assert.equal((await fsp.lstat(file)).isFile(), true);

      await fsp.writeFile(path.join(dir, 'b'), '{}\n', { mode: 0o644 });
      assert.equal(statSync(path.join(dir, 'b')).mode & 0o777, 0o644);
      await fsp.rename(path.join(dir, 'b'), path.join(dir, 'c'));
      assert.deepEqual((await fsp.readdir(dir)).sort(), ['c', 'sub']);
      await fsp.unlink(path.join(dir, 'c'));
      assert.deepEqual(await fsp.readdir(dir), ['sub']);

      // Errors: the code node:fs/promises gives, as a rejection.
      const missing = path.join(dir, 'missing');
      assert.equal(await codeOf(() => fsp.open(missing, 'r')), 'ENOENT');
      assert.equal(await codeOf(() => fsp.lstat(missing)), 'ENOENT');
      assert.equal(await codeOf(() => fsp.unlink(missing)), 'ENOENT');
      assert.equal(await codeOf(() => fsp.rename(missing, file)), 'ENOENT');
      assert.equal(await codeOf(() => fsp.readdir(missing)), 'ENOENT');
      assert.equal(await codeOf(() => fsp.open(file, 'wx')), 'EEXIST');
      assert.equal(await codeOf(() => fsp.mkdirs(path.join(file, 'x'), 0o700)), 'ENOTDIR');
      assert.equal(await codeOf(() => fsp.mkdirs(file, 0o700)), 'EEXIST', 'a file where the directory goes');
      assert.equal(await codeOf(() => ref.mkdir(file, { recursive: true })), 'EEXIST', 'the reference agrees');
      assert.equal(await codeOf(() => ref.open(missing, 'r')), 'ENOENT', 'the reference agrees');
      const closed = await fsp.open(file, 'r');
      await closed.close();
      assert.equal(await codeOf(() => closed.stat()), 'EBADF');
    } finally {
      fsp.useSyncFs(was);
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('main() runs one-shot commands with synchronous file calls and gives the mode back', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-fsp-main-'));
  const quiet = { out: () => {}, err: () => {} };
  // What the mode was while the command printed its lines.
  const seen: boolean[] = [];
  const spy = { out: () => seen.push(fsp.syncFs()), err: () => seen.push(fsp.syncFs()) };
  try {
    const state = path.join(dir, 'state.db');
    assert.equal(fsp.syncFs(), false);
    const code = await main(
      ['-profile=web', '-src-addr=127.100.0.10:80', '-dest-addr=127.0.0.1:9001', `-state-file=${state}`],
      spy,
    );
    assert.equal(code, 0);
    assert.match(readFileSync(state, 'utf8'), /^web:\n/);
    assert.ok(seen.length > 0 && seen.every((s) => s), 'its lines (state only, no -run) came in synchronous mode');
    assert.equal(fsp.syncFs(), false, 'the mode is given back');
    seen.length = 0;
    assert.equal(await main(['list', `--state-file=${state}`], spy), 0);
    assert.deepEqual(seen, [true, true], 'list: header and one profile');
    // Help lists every command, long-running ones included: asynchronous.
    seen.length = 0;
    assert.equal(await main(['--help'], spy), 0);
    assert.ok(seen.length > 0 && seen.every((s) => s === false));
    // A failing run gives it back too.
    assert.equal(await main(['list', `--state-file=${path.join(dir, 'nope', '..', 'state.db')}`, '--bad'], quiet), 2);
    assert.equal(fsp.syncFs(), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// A directory under /proc: its mkdir fails with ENOENT though its parent is there. Node 20's `recursive: true` then
// looped for ever (parent EEXIST, child ENOENT, again), which held a one-shot CLI's main thread: `--state-file
// /proc/x/state.db` or IPTLB_REGISTRY_DIR under /proc never returned, and ignored SIGTERM. Each case runs in a child
// process whose timeout only stops a hang (it is no time window): the call must fail with ENOENT, the CLI with one
// line naming the state file and exit 1, nothing written.
test('a directory that cannot be made under /proc fails with ENOENT at once, in both modes, and so do the CLI and the registry', () => {
  const fspUrl = new URL('../../src/platform/fsp.js', import.meta.url).href;
  const registryUrl = new URL('../../src/core/registry.js', import.meta.url).href;
  const child = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  for (const sync of [false, true]) {
    const r = child([
      '--input-type=module',
      '-e',
      `const f = await import(${JSON.stringify(fspUrl)}); f.useSyncFs(${sync});
       await f.mkdirs('/proc/iptlb-nope/a/b', 0o700).then(() => console.log('made'), (e) => console.log(e.code));`,
    ]);
    assert.equal(r.signal, null, `${sync ? 'synchronous' : 'asynchronous'} mkdirs returned (no hang)`);
    assert.equal(r.stdout.trim(), 'ENOENT', r.stderr);
  }
  const cli = child([
    path.join(PROJECT_ROOT, 'bin', 'iptlb.cjs'),
    '-profile=web',
    '-src-addr=127.100.0.10:80',
    '-dest-addr=127.0.0.1:9001',
    '-state-file=/proc/iptlb-nope/state.db',
  ]);
  assert.equal(cli.signal, null, 'the CLI returned (no hang)');
  assert.equal(cli.status, 1, cli.stderr);
  assert.match(
    cli.stderr,
    /^iptlb: error: cannot create the directory of the state file \/proc\/iptlb-nope\/state\.db: .*\(ENOENT\)\n$/,
  );
  // The registry (written before a change reaches the kernel): it cannot be written, which is said and not fatal.
  const reg = child([
    '--input-type=module',
    '-e',
    `const r = await import(${JSON.stringify(registryUrl)});
     console.log(String(r.registerStateFile('/tmp/iptlb-nope.db', '/proc/iptlb-nope/registry', '1')));`,
  ]);
  assert.equal(reg.signal, null, 'the registry returned (no hang)');
  assert.equal(reg.status, 0, reg.stderr);
});
