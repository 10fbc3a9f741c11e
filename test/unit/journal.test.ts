/**
 * The state journal (src/journal.ts) without root: a library handle journals each change and folds
 * it into the YAML; a reader that does not know journals sees an older complete YAML; every torn
 * append, every crash point of a fold and a foreign rewrite of the YAML read back correctly.
 */
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import fs, {
  appendFileSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  statSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { open, IptlbError, validateProfile } from '../../src/index.js';
import { Core } from '../../src/core/core.js';
import {
  appendRecord,
  baseIdentity,
  decodeJournal,
  encodeRecord,
  journalHeader,
  journalPath,
  profileBody,
} from '../../src/core/journal.js';
import { FileHandle } from '../../src/platform/fsp.js';
import { MAX_STATE_BYTES } from '../../src/model/limits.js';
import {
  parseState,
  readState,
  readStateFull,
  serializeState,
  stateVersion,
  writeState,
} from '../../src/core/state.js';
import { FakeLegacyKernel, FakeNftKernel } from '../harness/fake-kernel.js';
import type { AfterCommit, CommitResult, Profile, Transaction } from '../../src/model/types.js';

const stateFile = (): string => path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-journal-')), 'state.db');
const prof = (name: string, port: number, dest = 9000): Profile =>
  validateProfile({ name, source: `127.100.0.${port % 250}:${port}`, destination: [`127.0.0.1:${dest}`] });
const names = (m: Map<string, Profile>): string[] => [...m.keys()].sort();

test('decodeJournal: records up to the first torn or corrupt one; another base voids the journal', () => {
  const r1 = encodeRecord({ set: { a: { destination: ['127.0.0.1:1'], source: '127.0.0.1:80' } } });
  const r2 = encodeRecord({ del: ['a'] });
  const text = journalHeader('1:2:3:4') + r1 + r2;
  assert.equal(decodeJournal(text, '1:2:3:4').records.length, 2);
  assert.equal(decodeJournal(text, '1:2:3:4').validEnd, Buffer.byteLength(text));
  assert.equal(decodeJournal(text, '1:2:3:5').valid, false);
  // Every cut inside the second record keeps the first one only.
  for (let cut = text.length - r2.length; cut < text.length; cut++) {
    const d = decodeJournal(text.slice(0, cut), '1:2:3:4');
    assert.equal(d.records.length, 1, `cut at ${cut}`);
    assert.equal(d.validEnd, text.length - r2.length);
  }
  // A torn header: no journal.
  for (let cut = 0; cut < journalHeader('1:2:3:4').length; cut++)
    assert.equal(decodeJournal(text.slice(0, cut), '1:2:3:4').valid, false);
  // A flipped byte in a record's JSON fails its digest; a record of another shape is refused.
  const bad = text.replace('"a"]', '"b"]');
  assert.equal(decodeJournal(bad, '1:2:3:4').records.length, 1);
  const json = JSON.stringify({ put: 1 });
  const other = journalHeader('x') + encodeRecord({}).slice(0, 0) + `${'0'.repeat(16)} ${json}\n`;
  assert.equal(decodeJournal(other, 'x').records.length, 0);
});

test('a journal damaged before its last record (good records after a bad one) is refused, not read up to the damage: a crash cuts only the last', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('a', 1001));
  await lb.close(); // the YAML holds a
  const lb2 = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  for (const [n, port] of [
    ['b', 1002],
    ['c', 1003],
    ['d', 1004],
  ] as const)
    await lb2.apply(prof(n, port));
  const good = readFileSync(journalPath(file), 'utf8');
  const lines = good.split('\n');
  // One byte of record 2 (c) flipped: b before it, d after it.
  const damaged = [...lines.slice(0, 2), lines[2].replace('1003', '1013'), ...lines.slice(3)].join('\n');
  writeFileSync(journalPath(file), damaged);
  const cut = Buffer.byteLength(lines.slice(0, 2).join('\n') + '\n');
  const lb3 = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  for (const read of [() => readState(file), () => lb3.list(), () => lb3.apply(prof('e', 1005))])
    await assert.rejects(read(), (e: IptlbError) => {
      assert.equal(e.code, 'ESTATE');
      assert.ok(!e.message.includes('\n'));
      assert.equal(
        e.message,
        `state journal ${journalPath(file)}: record 2 (line 3) is damaged and 1 intact record(s) follow it, which a crash does not leave (it cuts only the last); nothing was read or changed: \`truncate -s ${cut} ${journalPath(file)}\` keeps the 1 record(s) before it and drops the changes after, moving the journal aside drops all (\`iptlb sync\` then makes the kernel match)`,
      );
      return true;
    });
  assert.equal(readFileSync(journalPath(file), 'utf8'), damaged, 'the journal is as it was');
  // The cut the line gives reads the records before the damage.
  truncateSync(journalPath(file), cut);
  assert.deepEqual(names(await readState(file)), ['a', 'b']);
  // Damage in the last record is what a torn append leaves: read up to it, as before.
  writeFileSync(journalPath(file), [...lines.slice(0, 3), lines[3].replace('1004', '1014'), ''].join('\n'));
  assert.deepEqual(names(await readState(file)), ['a', 'b', 'c']);
  writeFileSync(journalPath(file), good);
  assert.deepEqual(names(await readState(file)), ['a', 'b', 'c', 'd']);
  await lb3.close();
  await lb2.close();
});

test('a handle journals each change (the YAML stays the older complete version) and folds it at close', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('a', 1001));
  const yamlBefore = existsSync(file) ? readFileSync(file, 'utf8') : null;
  await lb.apply(prof('b', 1002));
  await lb.apply(prof('a', 1001, 9001));
  await lb.delete('b');
  // Old readers (the Go tool, older iptlb) read the YAML: unchanged, complete.
  assert.equal(existsSync(file) ? readFileSync(file, 'utf8') : null, yamlBefore);
  // Readers that know the journal see every change, durable already.
  const now = await readStateFull(file);
  assert.deepEqual(names(now.profiles), ['a']);
  assert.equal(now.profiles.get('a')!.destination[0], '127.0.0.1:9001');
  assert.equal(now.records, 4);
  await lb.close();
  assert.equal(existsSync(journalPath(file)), false);
  assert.equal(readFileSync(file, 'utf8'), serializeState([prof('a', 1001, 9001)]));
});

test('the fold runs stateFoldMs after the first journaled change (mock timers), not later with each change', async () => {
  const file = stateFile();
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const lb = await open({ stateFile: file, stateFoldMs: 500, coalesce: false }, new FakeNftKernel());
    await lb.apply(prof('a', 1001));
    mock.timers.tick(300);
    await lb.apply(prof('b', 1002));
    assert.equal(existsSync(journalPath(file)), true);
    mock.timers.tick(199);
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    assert.equal(existsSync(journalPath(file)), true, 'not folded before 500 ms');
    mock.timers.tick(1);
    // The fold is queued behind the calls; wait until it removed the journal (real file-system calls).
    const t0 = Date.now();
    while (existsSync(journalPath(file)) && Date.now() - t0 < 10_000) await new Promise((r) => setImmediate(r));
    assert.equal(existsSync(journalPath(file)), false, 'folded 500 ms after the first change');
    assert.deepEqual(names(await parseState(readFileSync(file, 'utf8'))), ['a', 'b']);
    await lb.close();
  } finally {
    mock.timers.reset();
  }
});

test('a fold that fails on a busy lock is tried again, after stateFoldMs, doubling (mock timers)', async () => {
  const { lockStateFile } = await import('../../src/platform/lock.js');
  const file = stateFile();
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const lines: string[] = [];
    const lb = await open(
      { stateFile: file, stateFoldMs: 300, lockWaitMs: 1000, coalesce: false, log: (l) => lines.push(l) },
      new FakeNftKernel(),
    );
    await lb.apply(prof('a', 1001));
    // Another taker holds the state-file lock (here: of this process, whose waiters time out on a timer).
    const holder = await lockStateFile(file, 0);
    const failed = () => lines.filter((l) => l.startsWith('could not fold'));
    // Ticks of 100 ms until `done`, letting the file-system calls in between run (real time, 10 s at most).
    const until = async (done: () => boolean): Promise<void> => {
      const t0 = Date.now();
      while (!done() && Date.now() - t0 < 10_000) {
        mock.timers.tick(100);
        for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
      }
    };
    await until(() => failed().length === 1);
    assert.match(failed()[0] ?? '', /gave up after 1000 ms\); it stays, and the fold is tried again in 300 ms$/);
    await until(() => failed().length === 2);
    assert.match(failed()[1] ?? '', /the fold is tried again in 600 ms$/);
    assert.equal(existsSync(journalPath(file)), true);
    holder.release();
    await until(() => !existsSync(journalPath(file)));
    assert.equal(existsSync(journalPath(file)), false, 'folded once the lock was free');
    assert.deepEqual(names(await parseState(readFileSync(file, 'utf8'))), ['a']);
    assert.equal(failed().length, 2);
    await lb.close();
  } finally {
    mock.timers.reset();
  }
});

test('doctor counts the profiles of a state that is only a journal (a handle killed before its first fold)', async () => {
  const { doctor } = await import('../../src/core/doctor.js');
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeNftKernel());
  await lb.apply([prof('a', 1001), prof('b', 1002)]);
  assert.equal(existsSync(file), false, 'no YAML before the first fold');
  const stateCheck = async (): Promise<string> => {
    let out = '';
    await doctor({ stateFile: file, json: true }, { out: (l) => (out += l), err: () => {} });
    const checks = (JSON.parse(out) as { checks: { name: string; ok: boolean; detail: string }[] }).checks;
    const c = checks.find((x) => x.name === 'state file');
    assert.equal(c?.ok, true);
    return c!.detail;
  };
  assert.equal(
    await stateCheck(),
    `${file}: 2 profile(s), only in the journal (1 change(s) in ${journalPath(file)}, not folded yet; the file is not created yet)`,
  );
  await lb.close();
  assert.equal(await stateCheck(), `${file}: 2 profile(s)`);
});

test('stateVersion changes with every append, so watch and other processes notice journaled changes', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('a', 1001));
  const v1 = await stateVersion(file);
  await lb.apply(prof('a', 1001, 9002));
  const v2 = await stateVersion(file);
  assert.notEqual(v1, v2);
  // Another handle on the same file reads the journal, appends to it, and the first sees that.
  const other = new Core({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  assert.equal((await other.readState()).get('a')!.destination[0], '127.0.0.1:9002');
  await other.transact(() => ({ upsert: [prof('c', 1003)], remove: [] }), { run: false });
  assert.deepEqual(names(await lb.list().then((l) => new Map(l.map((p) => [p.name, p])))), ['a', 'c']);
  await other.foldState();
  await lb.close();
  assert.deepEqual(names(await parseState(readFileSync(file, 'utf8'))), ['a', 'c']);
});

test('a torn append at every byte of the last record reads as the change before it; the next append cuts it', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('a', 1001));
  await lb.close(); // the YAML holds a
  const lb2 = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb2.apply(prof('b', 1002));
  const before = readFileSync(journalPath(file));
  await lb2.apply(prof('c', 1003));
  const full = readFileSync(journalPath(file));
  const saved = path.join(path.dirname(file), 'saved');
  copyFileSync(journalPath(file), saved);
  for (let cut = before.length; cut < full.length; cut++) {
    writeFileSync(journalPath(file), full.subarray(0, cut));
    assert.deepEqual(names(await readState(file)), ['a', 'b'], `cut at ${cut}`);
  }
  // A new writer after a torn tail: its record is not hidden behind the garbage.
  writeFileSync(journalPath(file), Buffer.concat([full.subarray(0, before.length + 5)]));
  const core = new Core({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await core.transact(() => ({ upsert: [prof('d', 1004)], remove: [] }), { run: false });
  assert.deepEqual(names(await readState(file)), ['a', 'b', 'd']);
  // A torn header (a writer killed creating the journal): the YAML alone.
  copyFileSync(saved, journalPath(file));
  truncateSync(journalPath(file), 10);
  assert.deepEqual(names(await readState(file)), ['a']);
  await core.foldState();
  await lb2.close();
});

test('a fold killed at any step reads correctly: before the rename the journal applies, after it the journal is void', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply([prof('a', 1001), prof('b', 1002)]);
  await lb.delete('a');
  await lb.apply(prof('c', 1003));
  const journal = readFileSync(journalPath(file));
  const expect = names(await readState(file));
  assert.deepEqual(expect, ['b', 'c']);
  // Killed after the temp file was written, before the rename: the old YAML + the journal.
  const tmp = path.join(path.dirname(file), `.state.db.tmp-999999-abc`);
  writeFileSync(tmp, serializeState((await readState(file)).values()), { mode: 0o600 });
  assert.deepEqual(names(await readState(file)), expect);
  // Killed after the rename, before the journal was removed: the new YAML, the journal void (it
  // names the YAML it replaced), not applied twice.
  await writeState(file, (await readState(file)).values());
  writeFileSync(journalPath(file), journal, { mode: 0o600 });
  const r = await readStateFull(file);
  assert.deepEqual(names(r.profiles), expect);
  assert.equal(r.journal, null);
  await lb.close();
});

test('a YAML replaced by a writer that does not know journals voids the journal: that writer wins', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('a', 1001));
  await lb.close();
  const lb2 = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb2.apply(prof('b', 1002));
  // The Go tool rewrites the YAML in place (same inode, new size and time).
  writeFileSync(file, serializeState([prof('a', 1001), prof('z', 1026)]));
  assert.deepEqual(names(await readState(file)), ['a', 'z']);
  await lb2.close();
});

test('the CLI core (stateFoldMs 0) writes the YAML whole and removes a journal a library handle left', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('a', 1001));
  await lb.apply(prof('b', 1002));
  // The process dies without folding: the journal stays (durable), the YAML is older.
  const cli = new Core({ stateFile: file }, new FakeLegacyKernel());
  assert.equal(cli.foldMs, 0);
  await cli.transact(() => ({ upsert: [prof('c', 1003)], remove: [] }), { run: false });
  assert.equal(existsSync(journalPath(file)), false);
  assert.deepEqual(names(await parseState(readFileSync(file, 'utf8'))), ['a', 'b', 'c']);
  assert.equal(statSync(file).mode & 0o777, 0o600);
});

test('the CLI deletes a profile of a state that is only a journal (a handle not folded yet, or killed before it)', async () => {
  const { deleteChange } = await import('../../src/core/core.js');
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply([prof('a', 1001), prof('b', 1002)]);
  assert.equal(existsSync(file), false, 'no YAML before the first fold');
  // What `iptlb delete a` does: its decide is tried first against no profiles only where no state exists yet.
  const cli = new Core({ stateFile: file }, new FakeLegacyKernel());
  const r = await cli.transact((state) => deleteChange(state, ['a']), { run: false, decideFirst: true });
  assert.deepEqual(r.deleted, ['a']);
  assert.deepEqual(names(await parseState(readFileSync(file, 'utf8'))), ['b']);
  await lb.close();
});

test('a journal that is not a regular file, or writable by others, is refused like the YAML', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('a', 1001));
  const { chmodSync } = await import('node:fs');
  chmodSync(journalPath(file), 0o666);
  await assert.rejects(readState(file), (e: IptlbError) => e.code === 'ESTATE' && /journal.*writable/.test(e.message));
  chmodSync(journalPath(file), 0o600);
  await lb.close();
});

test('a journal that is a directory or a symbolic link is named as the journal; a path through a file is named as the state file', async () => {
  const file = stateFile();
  writeFileSync(file, '{}\n', { mode: 0o600 });
  mkdirSync(journalPath(file));
  await assert.rejects(readState(file), (e: IptlbError) => {
    assert.equal(e.message, `state journal ${journalPath(file)}: is a directory`);
    return true;
  });
  rmdirSync(journalPath(file));
  symlinkSync(file, journalPath(file));
  await assert.rejects(readState(file), (e: IptlbError) => {
    assert.equal(e.message, `state journal ${journalPath(file)}: is a symbolic link; refusing to follow it`);
    return true;
  });
  // A directory of the path that is a file: said of the state file, not of a journal the user never made.
  const through = path.join(file, 'state.db');
  await assert.rejects(readState(through), (e: IptlbError) => {
    assert.equal(e.message, `state file ${through}: cannot be opened (ENOTDIR)`);
    return true;
  });
});

test('stateFoldMs is validated: a bad value is one EUSAGE line naming it', async () => {
  for (const bad of [-1, 1.5, '10', 86_400_001])
    await assert.rejects(
      open({ stateFile: stateFile(), stateFoldMs: bad as number }, new FakeLegacyKernel()),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'stateFoldMs',
    );
});

test('watch sees a journaled change: the journal file event and its version bring a sync of the new state', async () => {
  const { startWatch } = await import('../../src/core/watch.js');
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('a', 1001));
  const reader = new Core({ stateFile: file }, new FakeLegacyKernel());
  const seen: string[][] = [];
  const core = {
    statePath: file,
    readState: () => reader.readState(),
    sync: async (o?: { guard?: () => Promise<boolean> }) => {
      if (o?.guard && !(await o.guard())) return { skipped: true } as never;
      seen.push(names(await reader.readState()));
      return { before: [], committed: false, commitMs: 0 } as never;
    },
  };
  const w = startWatch(core as never, { log: () => {}, settleMs: 30, debounceMs: 5, intervalMs: 60_000 });
  const until = async (f: () => boolean): Promise<void> => {
    const t0 = Date.now();
    while (!f() && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 10));
  };
  await until(() => seen.length > 0); // the sync at start
  await lb.apply(prof('b', 1002)); // an append only: the YAML is untouched
  await until(() => seen.some((s) => s.includes('b')));
  assert.ok(
    seen.some((s) => s.join() === 'a,b'),
    `watch synced ${JSON.stringify(seen)}`,
  );
  await w.stop();
  await lb.close();
});

test('status of another handle sees the journaled change (drift is judged against YAML + journal)', async () => {
  const file = stateFile();
  const kernel = new FakeNftKernel();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000, engine: 'nft' }, kernel);
  await lb.apply([prof('a', 1001), prof('b', 1002)]);
  await lb.delete('a');
  const other = await open({ stateFile: file, stateFoldMs: 60_000, engine: 'nft' }, kernel);
  const st = await other.status();
  assert.deepEqual(
    st.map((r) => `${r.name}:${r.status}`),
    ['b:in-sync'],
  );
  await other.close();
  await lb.close();
});

test('a journal past 4 MiB is folded at once, whatever stateFoldMs says', async () => {
  const { FOLD_BYTES } = await import('../../src/core/core.js');
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 600_000, coalesce: false }, new FakeLegacyKernel());
  const big = (i: number): Profile =>
    validateProfile({
      name: 'big',
      source: '127.100.0.1:80',
      destination: Array.from({ length: 1000 }, (_, k) => `127.0.${k >> 8}.${k & 255}:${1000 + (i % 2)}`),
    });
  let folded = false;
  let maxSize = 0;
  for (let i = 0; i < 400 && !folded; i++) {
    await lb.apply(big(i));
    const size = existsSync(journalPath(file)) ? statSync(journalPath(file)).size : 0;
    maxSize = Math.max(maxSize, size);
    folded = i > 0 && size < maxSize;
  }
  assert.ok(folded, `never folded; the journal reached ${maxSize} bytes`);
  assert.ok(maxSize < FOLD_BYTES + 64 * 1024, `the journal reached ${maxSize} bytes`);
  await lb.close();
  assert.equal((await parseState(readFileSync(file, 'utf8'))).get('big')!.destination.length, 1000);
});

test('readers beside the transactions (list, the conntrack janitor, health) never swap the state a transaction decided on', async () => {
  const file = stateFile();
  // A kernel that takes a moment per commit, as a real one does: the readers' reads overlap the transactions.
  const kernel = new FakeLegacyKernel();
  const commit = kernel.commit.bind(kernel);
  kernel.commit = async (tx) => {
    await new Promise((r) => setTimeout(r, 1));
    return commit(tx);
  };
  const core = new Core({ stateFile: file, stateFoldMs: 60_000 }, kernel);
  let stop = false;
  const readers = Array.from({ length: 4 }, async (_, k) => {
    while (!stop) {
      await core.readState();
      if (k % 2) await new Promise((r) => setImmediate(r));
    }
  });
  try {
    for (let i = 0; i < 150; i++)
      await core.transact(() => ({ upsert: [prof(`p${i % 7}`, 1000 + (i % 7), 9000 + i)], remove: [] }), {
        run: true,
      });
  } finally {
    stop = true;
    await Promise.all(readers);
  }
  assert.equal((await readState(file)).get('p3')!.destination[0], `127.0.0.1:${9000 + 143}`);
  await core.foldState();
});

/** A fake native executor that writes the journal's record itself after its commit, as the addon does. */
class AppendingKernel extends FakeLegacyKernel {
  appends = 0;
  /** Makes the next append write this many bytes and fail with ENOSPC. */
  failNext?: number;
  override async commit(tx: Transaction, after?: AfterCommit): Promise<CommitResult> {
    const r = await super.commit(tx);
    if (!after) return r;
    this.appends++;
    const { fd, data } = after;
    if (this.failNext !== undefined) {
      const written = writeSync(fd, data, 0, this.failNext);
      this.failNext = undefined;
      const error = Object.assign(new Error('ENOSPC: write failed (errno 28)'), { code: 'ENOSPC', errno: -28 });
      return { ...r, appended: { written, error } };
    }
    return { ...r, appended: { written: writeSync(fd, data) } };
  }
}

test('an executor that writes the record after its commit (AfterCommit): one record per change, read back exactly; a failed write undoes the kernel change and the next change cuts the torn record', async () => {
  const file = stateFile();
  const kernel = new AppendingKernel();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, kernel);
  await lb.apply(prof('a', 1001)); // creates the journal (this thread)
  await lb.apply(prof('b', 1002));
  await lb.apply(prof('a', 1001, 9001));
  await lb.delete('b');
  assert.equal(kernel.appends, 3, 'every change after the first was written by the executor');
  let now = await readStateFull(file);
  assert.equal(now.records, 4);
  assert.deepEqual(names(now.profiles), ['a']);
  assert.equal(now.profiles.get('a')!.destination[0], '127.0.0.1:9001');
  const tablesBefore = JSON.stringify([...kernel.tables]);
  const journalBefore = readFileSync(journalPath(file));

  kernel.failNext = 7;
  await assert.rejects(lb.apply(prof('c', 1003)), (e: IptlbError) => {
    assert.equal(e.code, 'ESTATE');
    assert.match(e.message, /\(ENOSPC\); the kernel change was undone, nothing was changed$/);
    return true;
  });
  assert.equal(JSON.stringify([...kernel.tables]), tablesBefore, 'the fake kernel is as before');
  assert.equal(readFileSync(journalPath(file)).length, journalBefore.length + 7, 'a torn record is left');
  assert.deepEqual(names((await readStateFull(file)).profiles), ['a'], 'and read past');

  await lb.apply(prof('c', 1003)); // reopens the journal, cuts the torn record off (this thread)
  await lb.apply(prof('d', 1004)); // the executor again
  assert.equal(kernel.appends, 5);
  now = await readStateFull(file);
  assert.deepEqual(names(now.profiles), ['a', 'c', 'd']);
  assert.equal(now.records, 6);
  await lb.close();
  assert.deepEqual(names((await readStateFull(file)).profiles), ['a', 'c', 'd']);
});

test('a profile named __proto__ is journaled as any other: another reader and a reader after a crash see it', async () => {
  const file = stateFile();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await lb.apply(prof('__proto__', 1001));
  await lb.apply(prof('web', 1002));
  // Read while the handle is open and has not folded: what a crash now would leave.
  const now = await readStateFull(file);
  assert.equal(now.records, 2);
  assert.deepEqual(names(now.profiles), ['__proto__', 'web']);
  assert.equal(now.profiles.get('__proto__')!.source, '127.100.0.1:1001');
  await lb.close();
  assert.deepEqual(names(await readState(file)), ['__proto__', 'web']);
});

test('a reader beside a fold sees every change that returned: the journal is opened before the YAML', async () => {
  const file = stateFile();
  const core = new Core({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await core.transact(() => ({ upsert: [prof('a', 1001)], remove: [] }), { run: true });
  await core.foldState(); // the YAML holds a
  await core.transact(() => ({ upsert: [prof('b', 1002)], remove: [] }), { run: true }); // the journal holds b
  // Another process's fold lands between the reader's two opens: the YAML with a and b renamed in,
  // then the journal removed.
  const folded = serializeState([prof('a', 1001), prof('b', 1002)]);
  const realOpen = fs.open;
  let opened: string | undefined;
  fs.open = ((p: fs.PathLike, ...rest: unknown[]) => {
    const cb = rest.pop() as (err: NodeJS.ErrnoException | null, fd: number) => void;
    return (realOpen as (...a: unknown[]) => void)(p, ...rest, (err: NodeJS.ErrnoException | null, fd: number) => {
      if (opened === undefined && (p === file || p === journalPath(file))) {
        opened = String(p);
        writeFileSync(`${file}.other`, folded);
        renameSync(`${file}.other`, file);
        unlinkSync(journalPath(file));
      }
      cb(err, fd);
    });
  }) as typeof fs.open;
  syncBuiltinESMExports();
  let read: Awaited<ReturnType<typeof readStateFull>>;
  try {
    read = await readStateFull(file);
  } finally {
    fs.open = realOpen;
    syncBuiltinESMExports();
  }
  assert.equal(opened, journalPath(file), "the fold came after the first open, the journal's");
  assert.deepEqual(names(read.profiles), ['a', 'b']);
  assert.equal(read.records, 0, 'the journal opened named the YAML before the fold: void');
  await core.foldState();
});

test('a short write when the journal is created fails the change and undoes it, as any failed append', async () => {
  const file = stateFile();
  const kernel = new FakeLegacyKernel();
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, kernel);
  // The file system takes 10 bytes of the header and the record, then says it is full.
  let calls = 0;
  const write = mock.method(FileHandle.prototype, 'write', async function (this: FileHandle, buf: Buffer) {
    if (calls++ === 0) return { bytesWritten: 10, buffer: buf };
    throw Object.assign(new Error('EFBIG: file too large, write'), { code: 'EFBIG', errno: -27 });
  });
  try {
    await assert.rejects(lb.apply(prof('a', 1001)), (e: IptlbError) => {
      assert.equal(e.code, 'ESTATE');
      assert.match(e.message, /EFBIG.*the kernel change was undone, nothing was changed$/);
      return true;
    });
  } finally {
    write.mock.restore();
  }
  assert.equal(calls, 2, 'the rest was written again after the short write');
  const ipv4 = kernel.tables.get('ipv4')!;
  assert.deepEqual([Object.keys(ipv4.chains), ...Object.values(ipv4.hooks)], [[], [], [], [], []], 'no rule is left');
  assert.deepEqual(names(await readState(file)), []);
  await lb.apply(prof('a', 1001)); // and the next change goes through
  assert.deepEqual(names(await readState(file)), ['a']);
  await lb.close();
});

test('a state file or journal longer than a reader accepts (64 MiB) is not written: the change is refused', async () => {
  const file = stateFile();
  const huge = Buffer.allocUnsafe(MAX_STATE_BYTES + 1);
  await assert.rejects(writeState(file, [], [huge]), (e: IptlbError) => {
    assert.equal(e.code, 'ESTATE');
    assert.match(e.message, /would be 67108865 bytes, more than 67108864 \(64 MiB, the limit of a state file\)$/);
    return true;
  });
  assert.equal(existsSync(file), false);
  await writeState(file, [prof('a', 1001)]);
  const base = `${statSync(file, { bigint: true }).dev}:x`;
  // An append that would take the journal past the limit, onto one this process holds, or a new one.
  const at = { base, validEnd: MAX_STATE_BYTES - 10, ino: 1n };
  const line = Buffer.from(encodeRecord({ del: ['a'] }));
  for (const over of [at, null])
    await assert.rejects(
      appendRecord(file, base, over, over ? line : Buffer.allocUnsafe(MAX_STATE_BYTES)),
      (e: IptlbError) => {
        assert.equal(e.code, 'ESTATE');
        assert.match(e.message, /^state journal .*: would be \d+ bytes, more than 67108864/);
        return true;
      },
    );
  assert.equal(existsSync(journalPath(file)), false);
});

test('cutting a torn tail that fails fails the change and closes the journal it opened', async () => {
  const file = stateFile();
  const first = new Core({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await first.transact(() => ({ upsert: [prof('a', 1001)], remove: [] }), { run: true });
  await first.foldState();
  await first.transact(() => ({ upsert: [prof('b', 1002)], remove: [] }), { run: true });
  const other = new Core({ stateFile: file, stateFoldMs: 60_000 }, new FakeLegacyKernel());
  await other.readState(); // reads the journal; its first append reopens it
  appendFileSync(journalPath(file), 'deadbeef torn'); // a writer killed in its append
  const journalFds = (): number =>
    readdirSync('/proc/self/fd').filter((f) => {
      try {
        return readlinkSync(`/proc/self/fd/${f}`) === journalPath(file);
      } catch {
        return false;
      }
    }).length;
  const before = journalFds();
  const truncate = mock.method(FileHandle.prototype, 'truncate', async () => {
    throw Object.assign(new Error('EPERM: operation not permitted, ftruncate'), { code: 'EPERM', errno: -1 });
  });
  try {
    for (let i = 0; i < 3; i++)
      await assert.rejects(
        other.transact(() => ({ upsert: [prof(`c${i}`, 1003 + i)], remove: [] }), { run: true }),
        (e: IptlbError) => e.code === 'ESTATE' && /EPERM/.test(e.message),
      );
  } finally {
    truncate.mock.restore();
  }
  assert.equal(journalFds(), before, 'no descriptor of the journal is left open');
  await other.transact(() => ({ upsert: [prof('c', 1003)], remove: [] }), { run: true });
  assert.deepEqual(names(await readState(file)), ['a', 'b', 'c']);
  await other.foldState();
});

test('a state file of 0 bytes, which no writer leaves, is refused (read as no profiles, a sync would remove every rule)', async () => {
  const file = stateFile();
  writeFileSync(file, serializeState([]));
  assert.equal(readFileSync(file, 'utf8'), '{}\n', 'no profiles is written as {}');
  assert.equal((await readStateFull(file)).profiles.size, 0);
  writeFileSync(file, '');
  await assert.rejects(readStateFull(file), (e: IptlbError) => {
    assert.equal(e.code, 'ESTATE');
    assert.equal(
      e.message,
      `state file ${file}: is empty (0 bytes), which no writer leaves (a file cut short by a crash?): restore it, or remove it to start with no profiles`,
    );
    return true;
  });
  const core = new Core({ stateFile: file }, new FakeLegacyKernel());
  await assert.rejects(core.sync(), /is empty \(0 bytes\)/);
  assert.equal(readFileSync(file, 'utf8'), '', 'left as it was');
});

test('a journal record that makes the state invalid is said of the journal (the record, its line) with a cut that works', async () => {
  const file = stateFile();
  await writeState(file, [prof('a', 1001)]);
  const base = baseIdentity(lstatSync(file, { bigint: true }));
  const good = encodeRecord({ set: { b: { ...profileBody(prof('b', 1002)) } } });
  const bad = encodeRecord({ set: { j6: { ...profileBody(prof('j6', 1003)), source: '1.2.3:80' } } });
  const later = encodeRecord({ del: ['b'] });
  const header = journalHeader(base);
  writeFileSync(journalPath(file), header + good + bad + later, { mode: 0o600 });
  const jf = journalPath(file);
  const cut = Buffer.byteLength(header + good);
  await assert.rejects(readState(file), (e: unknown) => {
    assert.ok(e instanceof IptlbError);
    assert.equal(e.code, 'ESTATE');
    assert.equal(e.field, 'source');
    assert.equal(
      e.message,
      `state journal ${jf}: record 2 (line 3): profile "j6": source: "1.2.3:80" is not a dotted-quad IPv4 address; ${file} alone is valid: \`truncate -s ${cut} ${jf}\` drops this record and the 1 after it, moving the journal aside drops all 3 (the changes since the last fold; \`iptlb sync\` then makes the kernel match)`,
    );
    return true;
  });
  // The cut it names works: the records before it stay.
  truncateSync(jf, cut);
  assert.deepEqual(names(await readState(file)), ['a', 'b']);
  // A conflict between a record's profile and the YAML's: the record that made it.
  const clash = encodeRecord({ set: { c: { ...profileBody(prof('c', 1001)) } } });
  writeFileSync(jf, header + good + later + clash, { mode: 0o600 });
  await assert.rejects(
    readState(file),
    /state journal .*: record 3 \(line 4\): source: "127\.100\.0\.1:1001"\/tcp of profile "c" already belongs to profile "a"; .* alone is valid: `truncate -s \d+ .*` drops this record, moving/,
  );
  // A YAML that is itself invalid: its own error, as without a journal.
  writeFileSync(file, readFileSync(file, 'utf8').replace('logLevel: "4"', 'logLevel: 4'));
  writeFileSync(jf, journalHeader(baseIdentity(lstatSync(file, { bigint: true }))) + good + bad, { mode: 0o600 });
  await assert.rejects(readState(file), /: state file .*: profile "a": logLevel must be a quoted string/);
});

test('status waits for the state-file lock another writer holds (its commit may be in flight: the kernel ahead of the file), then compares', async () => {
  const { lockStateFile } = await import('../../src/platform/lock.js');
  const { serializeState } = await import('../../src/core/state.js');
  const file = stateFile();
  const kernel = new FakeLegacyKernel();
  const writer = new Core({ stateFile: file, stateFoldMs: 0 }, kernel);
  await writer.transact(() => ({ upsert: [prof('web', 80)], remove: [] }), { run: true });
  const reader = new Core({ stateFile: file, stateFoldMs: 0 }, kernel);
  // Another process's change in flight: it holds the lock and the kernel has its new destination; the file not yet.
  const held = await lockStateFile(file, 1000);
  type Provider = {
    read(f: 'ipv4'): Promise<unknown>;
    planReplace(f: 'ipv4', p: Map<string, Profile>, view: unknown): unknown;
    commit(tx: unknown): Promise<unknown>;
  };
  const { provider } = await (writer as unknown as { select(): Promise<{ provider: Provider }> }).select();
  const next = prof('web', 80, 9100);
  await provider.commit(provider.planReplace('ipv4', new Map([['web', next]]), await provider.read('ipv4')));
  const order: string[] = [];
  const status = reader.status().then((r) => {
    order.push('status');
    return r;
  });
  await new Promise((r) => setTimeout(r, 50));
  // Its state write, then its release.
  writeFileSync(file, serializeState([next]));
  order.push('released');
  held.release();
  const reports = await status;
  assert.deepEqual(order, ['released', 'status'], 'status waited for the lock');
  assert.deepEqual(
    reports.map((r) => `${r.name}:${r.status}`),
    ['web:in-sync'],
  );
});
