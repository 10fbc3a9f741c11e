/**
 * The state-file registry (src/core/registry.ts) across network namespaces of one inode (no root): the
 * kernel gives a dead namespace's inode to the next one, so a directory keyed by the inode can hold a
 * dead namespace's entries. The namespace cookie in an entry's name tells them apart; the cookies are
 * given here, as two namespaces of one inode would have them (the kernel test does it for real).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { dropEntry, otherStateFiles, registerStateFile, registryDir } from '../../src/core/registry.js';
import { netnsCookie } from '../../src/platform/addon.js';

/** A registry base and three state files that exist (a, b, c), removed by `done()`. */
function fixture(): { base: string; a: string; b: string; c: string; dir: string; done: () => void } {
  const root = mkdtempSync(path.join(tmpdir(), 'iptlb-registry-'));
  const base = path.join(root, 'registry');
  const [a, b, c] = ['a.db', 'b.db', 'c.db'].map((n) => path.join(root, n)) as [string, string, string];
  for (const f of [a, b, c]) writeFileSync(f, 'profiles: []\n');
  return { base, a, b, c, dir: registryDir(base)!, done: () => rmSync(root, { recursive: true, force: true }) };
}

const files = (base: string, b: string, cookie: string | null) => otherStateFiles(b, base, cookie).map((o) => o.file);

test('an entry names its namespace cookie: <hash>.<cookie>.path, or <hash>.path without one; its content is the path alone', () => {
  const f = fixture();
  try {
    assert.equal(registerStateFile(f.a, f.base, '1001'), undefined);
    assert.equal(registerStateFile(f.b, f.base, null), undefined);
    const names = readdirSync(f.dir).sort();
    assert.equal(names.length, 2, names.join(' '));
    const withCookie = names.find((n) => /^[0-9a-f]{16}\.1001\.path$/.test(n));
    const without = names.find((n) => /^[0-9a-f]{16}\.path$/.test(n));
    assert.ok(withCookie && without, names.join(' '));
    // What an older iptlb reads of every *.path file: the path and a newline.
    assert.equal(readFileSync(path.join(f.dir, withCookie), 'utf8'), `${f.a}\n`);
    assert.equal(readFileSync(path.join(f.dir, without), 'utf8'), `${f.b}\n`);
  } finally {
    f.done();
  }
});

test("an entry of another cookie (a dead namespace of the same inode) is dropped and not listed; one of the reader's own cookie is", () => {
  const f = fixture();
  try {
    registerStateFile(f.a, f.base, '1001'); // the namespace that is gone
    registerStateFile(f.c, f.base, '2002'); // this one's
    assert.deepEqual(files(f.base, f.b, '2002'), [f.c], "only this namespace's other state file");
    assert.deepEqual(
      readdirSync(f.dir).filter((n) => n.includes('.1001.')),
      [],
      "the dead namespace's entry is removed",
    );
    assert.deepEqual(files(f.base, f.b, '2002'), [f.c], 'and stays out');
  } finally {
    f.done();
  }
});

test("a new entry's registration drops the entries of other cookies in its directory (dead namespaces of its inode) at once, without a reader; entries without a cookie, and other inodes' directories, stay", () => {
  const f = fixture();
  try {
    // Entries of namespaces of this inode that are gone (as their registrations left them), and one without a cookie.
    mkdirSync(f.dir, { recursive: true });
    writeFileSync(path.join(f.dir, 'aaaaaaaaaaaaaaaa.1001.path'), `${f.a}\n`);
    writeFileSync(path.join(f.dir, 'bbbbbbbbbbbbbbbb.1002.path'), `${f.b}\n`);
    registerStateFile(f.b, f.base, null);
    // Another inode's directory (a namespace this process cannot tell alive or dead): left alone.
    const otherDir = path.join(f.base, '4026599999');
    mkdirSync(otherDir, { recursive: true });
    writeFileSync(path.join(otherDir, 'aaaaaaaaaaaaaaaa.1001.path'), `${f.a}\n`);
    assert.equal(readdirSync(f.dir).length, 3);
    // This namespace (cookie 2002) registers c: no status or sync reads the registry.
    registerStateFile(f.c, f.base, '2002');
    assert.deepEqual(
      readdirSync(f.dir)
        .map((n) => n.split('.').slice(1, -1).join('.') || 'none')
        .sort(),
      ['2002', 'none'],
      "the dead namespaces' entries are gone; the one without a cookie and this namespace's stay",
    );
    assert.deepEqual(readdirSync(otherDir), ['aaaaaaaaaaaaaaaa.1001.path'], "another inode's directory is not touched");
    assert.deepEqual(files(f.base, f.a, '2002'), [f.b, f.c]);
  } finally {
    f.done();
  }
});

test("an entry without a cookie (an older iptlb's, a process's without the addon) is kept by a reader with one; a reader without a cookie takes every entry, as before", () => {
  const f = fixture();
  try {
    registerStateFile(f.a, f.base, null);
    registerStateFile(f.c, f.base, '1001');
    // Without a cookie of its own, a reader cannot tell a dead namespace's entry: all of them count.
    assert.deepEqual(files(f.base, f.b, null), [f.a, f.c]);
    assert.equal(readdirSync(f.dir).length, 2, 'nothing dropped by a reader without a cookie');
    // With one, the entry without a cookie stays (its namespace cannot be told); 1001's goes.
    assert.deepEqual(files(f.base, f.b, '2002'), [f.a]);
    assert.equal(readdirSync(f.dir).length, 1);
  } finally {
    f.done();
  }
});

test('a state file registered in a dead namespace of the same inode registers again under the new cookie, and is listed once', () => {
  const f = fixture();
  try {
    registerStateFile(f.a, f.base, '1001'); // a's entry of the namespace that is gone
    registerStateFile(f.a, f.base, '2002'); // a used again in the new namespace: its own entry
    assert.ok(
      readdirSync(f.dir).some((n) => n.endsWith('.2002.path')),
      `an entry of cookie 2002: ${readdirSync(f.dir).join(' ')}`,
    );
    assert.deepEqual(files(f.base, f.b, '2002'), [f.a], "a's profiles are this namespace's");
    assert.deepEqual(
      readdirSync(f.dir).map((n) => n.split('.')[1]),
      ['2002'],
      "only the dead namespace's entry is dropped",
    );
  } finally {
    f.done();
  }
});

test('one state file under an entry without a cookie and one with: listed once, both entries dropped with it', () => {
  const f = fixture();
  try {
    registerStateFile(f.a, f.base, null); // an older iptlb in this namespace
    registerStateFile(f.a, f.base, '2002'); // this iptlb
    registerStateFile(f.c, f.base, '2002');
    const others = otherStateFiles(f.b, f.base, '2002');
    assert.deepEqual(
      others.map((o) => o.file),
      [f.a, f.c],
    );
    const a = others[0]!;
    assert.equal(a.entries.length, 2, 'both entries of a');
    assert.equal(a.exists, true);
    // a is gone: a reader drops it (core.ts: when nobody holds its lock), both entries at once.
    rmSync(f.a);
    const gone = otherStateFiles(f.b, f.base, '2002').find((o) => o.file === f.a)!;
    assert.equal(gone.exists, false);
    dropEntry(gone.entries);
    assert.deepEqual(files(f.base, f.b, '2002'), [f.c]);
    assert.equal(readdirSync(f.dir).length, 1);
  } finally {
    f.done();
  }
});

test("the addon's namespace cookie: a decimal string, the same twice (or null: no addon, a kernel before 5.14)", () => {
  const c = netnsCookie();
  if (c !== null) {
    assert.match(c, /^[0-9]+$/);
    assert.equal(netnsCookie(), c);
  }
  // A registration with this process's own cookie is read back by it.
  const f = fixture();
  try {
    registerStateFile(f.a, f.base);
    assert.deepEqual(files(f.base, f.b, c), [f.a]);
    assert.ok(existsSync(f.dir));
    assert.deepEqual(
      otherStateFiles(f.b, f.base).map((o) => o.file),
      [f.a],
    );
  } finally {
    f.done();
  }
});
