/**
 * The CLI's index of the state file (src/core/state-index.ts, issue 18): a file is indexed only when
 * the reference reading reads it without error and every profile is a plain one in the writer's
 * layout and order; what the index answers (a profile, the size, the shapes, the conflicts of a
 * candidate) is what the profiles read by the reference give; and the text it splices a change into
 * is byte for byte what the writer writes for the profiles after the change.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import YAML from 'yaml';
import { checkConflicts, familyOfProfile, slotCount, validateProfile } from '../../src/model/profile.js';
import { parseStateReference, serializeState } from '../../src/core/state.js';
import { IndexedState, indexState, indexStateBytes } from '../../src/core/state-index.js';
import { ChangedProfiles, type Change } from '../../src/engines/engine.js';
import { Core, upsertChange, deleteChange } from '../../src/core/core.js';
import { IptlbError } from '../../src/model/errors.js';
import type { Profile } from '../../src/model/types.js';
import { FakeLegacyKernel, FakeNftKernel } from '../harness/fake-kernel.js';
import { profileOfKind } from './state-checks.js';

// Small pools, so that names collide by chain (case, `-` and `_`) and sources by address.
const nameArb = fc.oneof(
  { weight: 6, arbitrary: fc.stringMatching(/^[a-c][a-c0-9]{0,2}$/) },
  { weight: 3, arbitrary: fc.stringMatching(/^[A-Ba-b][A-Ba-b_-]{0,2}$/) },
  { weight: 1, arbitrary: fc.constantFrom('yes', 'null', 'on', '123', 'n', 'True') },
  { weight: 1, arbitrary: fc.stringMatching(/^[a-b]{16}$|^[a-b]{19,20}$|^[A-B]{16}$/) },
);
const endpointArb = fc
  .tuple(fc.constantFrom('127.100.0.1', '127.100.0.2', '192.0.2.7', '198.51.100.9'), fc.integer({ min: 1, max: 4 }))
  .map(([i, p]) => `${i}:${8080 + p}`);
const v6Arb = fc.integer({ min: 1, max: 4 }).map((g) => `[2001:db8::${g}]:8081`);
const kindArb = fc.oneof(
  { weight: 8, arbitrary: fc.constant('plain') },
  { weight: 1, arbitrary: fc.constantFrom('weights', 'scheduler', 'affinity', 'v6', 'health') },
);
const profileArb = fc
  .record({
    kind: kindArb,
    name: nameArb,
    source: endpointArb,
    destination: fc.uniqueArray(endpointArb, { minLength: 1, maxLength: 3 }),
    // Mostly the defaults, so that profiles share shapes.
    protocol: fc.oneof({ weight: 4, arbitrary: fc.constant('tcp') }, fc.constantFrom('udp', 'sctp')),
    rulesBackend: fc.oneof({ weight: 4, arbitrary: fc.constant('client') }, fc.constantFrom('proxy', 'server')),
    logEnabled: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, fc.constant(true)),
    logLevel: fc.constantFrom('0', '4', '7'),
    masquerade: fc.boolean(),
    v6: fc.tuple(v6Arb, fc.uniqueArray(v6Arb, { minLength: 1, maxLength: 3 })),
  })
  .map(({ kind, v6, ...r }): Profile | null => {
    const input: Record<string, unknown> = {
      ...r,
      ...(kind === 'v6' ? { source: v6[0], destination: v6[1] } : {}),
      masquerade: r.masquerade && r.rulesBackend === 'proxy',
    };
    input.destination = (input.destination as string[]).filter((d) => d !== input.source);
    if ((input.destination as string[]).length === 0) return null;
    return profileOfKind(input, kind);
  });

/** Profiles that can live side by side (the writer only ever writes such a set). */
function compatible(ps: (Profile | null)[]): Profile[] {
  const out: Profile[] = [];
  for (const p of ps) {
    if (!p || out.some((o) => o.name === p.name)) continue;
    try {
      checkConflicts(p, out);
    } catch {
      continue;
    }
    // Names the yaml package reads back as something else are no reference (see state-fast.test.ts).
    if (String(Object.keys(YAML.parse(`${JSON.stringify(p.name)}: 1\n`, { version: '1.1' }))[0]) !== p.name) continue;
    out.push(p);
  }
  return out;
}
const stateArb = fc.array(profileArb, { maxLength: 14 }).map(compatible);
const plainStateArb = fc
  .array(
    profileArb.filter(
      (p) => !!p && !p.weights && !p.scheduler && !p.affinity && !p.health && familyOfProfile(p) === 'ipv4',
    ),
    { maxLength: 14 },
  )
  .map(compatible);

/** A change as the CLI makes one: upserts (new names, resets, renames into a collision) and deletions. */
const changeArb = (state: Profile[]) =>
  fc.record({
    upsert: fc.array(profileArb, { maxLength: 3 }),
    remove: fc.array(state.length ? fc.oneof(fc.constantFrom(...state.map((p) => p.name)), nameArb) : nameArb, {
      maxLength: 2,
    }),
  });

function outcomeOf(fn: () => void): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    return e instanceof IptlbError ? `${e.code} ${e.field} ${e.message}` : `other ${(e as Error).message}`;
  }
}

test('the index reads exactly the files of plain profiles the reference reads, and answers as their profiles do', async () => {
  const seen = { indexed: 0, declined: 0, shapes: 0 };
  await fc.assert(
    fc.asyncProperty(stateArb, async (profiles) => {
      const text = serializeState(profiles);
      const reference = await parseStateReference(text);
      const index = indexState(text);
      const plain = profiles.every(
        (p) => !p.weights && !p.scheduler && !p.affinity && !p.health && familyOfProfile(p) === 'ipv4',
      );
      assert.equal(index !== null, plain, text);
      if (!index) return void seen.declined++;
      seen.indexed++;
      assert.equal(index.size, reference.size);
      for (const [n, p] of reference) assert.deepEqual(index.get(n), p);
      assert.equal(index.get('not-there'), undefined);
      // Shapes: one profile and a count per shape, counts summing to the size; every profile's
      // fields but its name and addresses are those of its shape's profile.
      const shapes = index.shapes()!;
      assert.equal(
        shapes.reduce((s, [, n]) => s + n, 0),
        reference.size,
      );
      if (shapes.some(([, n]) => n > 1)) seen.shapes++;
      const key = (p: Profile) =>
        JSON.stringify([
          familyOfProfile(p),
          slotCount(p),
          p.protocol,
          p.rulesBackend,
          p.logEnabled,
          p.logLevel,
          !!p.masquerade,
        ]);
      for (const [p, n] of shapes)
        assert.equal([...reference.values()].filter((q) => key(q) === key(p)).length, n, key(p));
      assert.equal(index.materialized, false, 'answering built no profile beyond those asked for');
      // Iterated, it is every profile, in the file's order.
      assert.deepEqual([...index], [...reference]);
      assert.equal(index.materialized, true);
      assert.equal(index.shapes(), null, 'no fast answer once iterated');
    }),
    { numRuns: 500 },
  );
  // Every branch ran: files indexed and declined, shapes shared by several profiles.
  for (const [k, n] of Object.entries(seen)) assert.ok(n > 20, `${k}: ${n}`);
});

test('the spliced text is byte for byte what the writer writes after the change; conflicts are those of checkConflicts', async () => {
  const seen = { name: 0, source: 0, none: 0, added: 0, replaced: 0, removed: 0 };
  await fc.assert(
    fc.asyncProperty(
      plainStateArb.chain((s) => fc.tuple(fc.constant(s), changeArb(s))),
      async ([profiles, raw]) => {
        const text = serializeState(profiles);
        // As the CLI reads it: from the file's bytes.
        const index = indexStateBytes(Buffer.from(text, 'utf8'))!;
        assert.ok(index, text);
        const reference = await parseStateReference(text);
        const upsert = raw.upsert.filter((p): p is Profile => !!p);
        // Conflicts of each candidate, as upsertChange checks them.
        const skip = new Set(upsert.map((p) => p.name));
        for (const p of upsert) {
          const expected = outcomeOf(() => checkConflicts(p, reference.values(), skip));
          const got = index.conflictOf(p, skip);
          seen[got === null ? 'none' : (got!.field as 'name' | 'source')]++;
          assert.equal(got === null ? 'ok' : `${got!.code} ${got!.field} ${got!.message}`, expected);
        }
        assert.equal(
          outcomeOf(() => upsertChange(index, upsert)),
          outcomeOf(() => upsertChange(new Map(reference), upsert)),
        );
        // The splice, for any change (conflicting ones included: the text is the writer's either way).
        const change: Change = { upsert, remove: raw.remove };
        for (const p of upsert) seen[reference.has(p.name) ? 'replaced' : 'added']++;
        for (const n of raw.remove) if (reference.has(n) && !skip.has(n)) seen.removed++;
        const spliced = index.spliced(change)!;
        const expected = serializeState(new ChangedProfiles(reference, change).values());
        assert.equal(spliced, expected);
        // The bytes written: the same, the unchanged blocks being the bytes read.
        assert.equal(Buffer.concat(index.splicedBytes(change)!).toString('utf8'), expected);
        assert.deepEqual(YAML.parse(spliced, { version: '1.1' }), YAML.parse(expected, { version: '1.1' }));
        assert.equal(index.materialized, false);
        // After the change is applied to it (as Core.record does), it answers from the edits, and
        // no longer splices.
        for (const n of change.remove) index.delete(n);
        for (const p of upsert) index.set(p.name, p);
        const after = new Map(reference);
        for (const n of change.remove) after.delete(n);
        for (const p of upsert) after.set(p.name, p);
        assert.equal(index.size, after.size);
        for (const n of [...after.keys(), ...change.remove]) assert.deepEqual(index.get(n), after.get(n));
        if (change.upsert.length || change.remove.some((n) => reference.has(n))) {
          assert.equal(index.spliced(change), null);
          assert.equal(
            index.conflictOf(
              upsert[0] ??
                profiles[0] ??
                validateProfile({ name: 'x', source: '1.2.3.4:5', destination: ['1.2.3.4:6'] }),
            ),
            undefined,
          );
        }
        assert.deepEqual(new Map(index), after);
      },
    ),
    { numRuns: 1500 },
  );
  // Every branch ran. A name conflict is the rarest: 43-93 of 1,500 runs over 22 runs of this test
  // (mean 67, spread 12), so a bound of 50 failed about one run in eleven (3 of 33 here); 20 is four spreads below.
  for (const [k, n] of Object.entries(seen)) assert.ok(n > 20, `${k}: ${n}`);
});

test('a file the index does not take: out of order, a conflict between profiles, anything the general path reads or refuses', async () => {
  const a = validateProfile({ name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] });
  const b = validateProfile({ name: 'b', source: '127.100.0.2:80', destination: ['127.0.0.1:9001'] });
  const text = serializeState([a, b]);
  assert.ok(indexState(text));
  const [blockA, blockB] = [serializeState([a]), serializeState([b])];
  assert.equal(indexState(blockB + blockA), null, 'out of order');
  assert.equal(indexState(blockA + blockA), null, 'a name twice');
  assert.equal(indexState(blockA + blockB.replace('127.100.0.2:80', '127.100.0.1:80')), null, 'a source twice');
  assert.equal(indexState(blockA.replace(/^a:/, 'A:') + blockA), null, 'a chain twice (A and a)');
  assert.equal(
    indexState(blockA.replace(/^a:/, 'a-b:') + blockA.replace(/^a:/, 'a_b:').replace('0.1:80', '0.3:80')),
    null,
  );
  assert.equal(indexState(`# comment\n${text}`), null);
  assert.equal(indexState(blockA.replace('  - 127.0.0.1:9001\n', '  - 127.0.0.1:9001\n  - 127.0.0.1:9001\n')), null);
  assert.equal(
    indexState(blockA.replace('  - 127.0.0.1:9001\n', '  - 127.100.0.1:80\n')),
    null,
    'the source as a destination',
  );
  assert.equal(
    indexState(blockA.replace('  protocol', '  masquerade: true\n  protocol')),
    null,
    'masquerade without proxy',
  );
  // Empty states.
  for (const t of ['', '{}\n']) {
    const e = indexState(t)!;
    assert.equal(e.size, 0);
    assert.equal(e.spliced({ upsert: [a], remove: [] }), serializeState([a]));
    assert.equal(e.spliced({ upsert: [], remove: ['a'] }), '{}\n');
  }
  assert.equal(indexState(serializeState([a]))!.spliced({ upsert: [], remove: ['a'] }), '{}\n');
});

// 1,500 profiles are a file of more than NATIVE_READ_MIN_BYTES: read through the addon's readText where it
// is built (its bytes and text are then external memory, test/native/addon.test.ts), else the usual way.
for (const count of [300, 1500])
  test(`a CLI-like Core (indexed reads) changes one profile of ${count} without building the others, and writes the writer's file`, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-index-'));
    const file = path.join(dir, 'state.db');
    const profiles = Array.from({ length: count }, (_, i) =>
      validateProfile({
        name: `p${i + 1}`,
        source: `127.100.${i >> 8}.${i & 255}:8081`,
        destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
      }),
    );
    writeFileSync(file, serializeState(profiles), { mode: 0o600 });
    const kernel = new FakeNftKernel();
    // The kernel holds the profiles (as after the change that wrote the file).
    const loader = new Core({ stateFile: file }, kernel);
    await loader.transact((s) => ({ upsert: [...s.values()], remove: [] }), { run: true });
    const core = new Core({ stateFile: file }, kernel);
    core.indexedReads = true;
    let seen: Map<string, Profile> | undefined;
    const p0 = validateProfile({
      name: 'p0',
      source: '127.100.9.9:8081',
      destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9004'],
    });
    await core.transact(
      (state) => {
        seen = state;
        return upsertChange(state, [p0]);
      },
      { run: true },
    );
    assert.ok(seen instanceof IndexedState);
    assert.equal((seen as IndexedState).materialized, false, 'no profile but those looked up was built');
    assert.equal(readFileSync(file, 'utf8'), serializeState([...profiles, p0]));
    // A reset and a delete, each a new one-shot Core.
    const reset = validateProfile({ ...p0, destination: ['127.0.0.1:9005', '127.0.0.1:9006', '127.0.0.1:9007'] });
    for (const [decide, expected] of [
      [(s: Map<string, Profile>) => upsertChange(s, [reset]), [...profiles, reset]],
      [(s: Map<string, Profile>) => deleteChange(s, ['p7']), [...profiles.filter((p) => p.name !== 'p7'), reset]],
    ] as const) {
      const one = new Core({ stateFile: file }, kernel);
      one.indexedReads = true;
      await one.transact(decide, { run: true });
      assert.equal(readFileSync(file, 'utf8'), serializeState(expected));
    }
    // The kernel holds what a Core reading every profile sees.
    const check = new Core({ stateFile: file }, kernel);
    assert.deepEqual(
      (await check.status()).filter((r) => r.status !== 'in-sync'),
      [],
    );
    // A conflict: refused with the field named, the file unchanged.
    const before = readFileSync(file, 'utf8');
    const clash = new Core({ stateFile: file }, kernel);
    clash.indexedReads = true;
    await assert.rejects(
      clash.transact((s) => upsertChange(s, [validateProfile({ ...reset, name: 'q', source: profiles[5].source })]), {
        run: true,
      }),
      (e: unknown) =>
        e instanceof IptlbError && e.code === 'ECONFLICT' && e.field === 'source' && /profile "p6"/.test(e.message),
    );
    await assert.rejects(
      clash.transact((s) => upsertChange(s, [validateProfile({ ...reset, name: 'P6', source: '127.100.99.1:1' })]), {
        run: true,
      }),
      (e: unknown) => e instanceof IptlbError && e.code === 'ECONFLICT' && e.field === 'name',
    );
    assert.equal(readFileSync(file, 'utf8'), before);
  });

/** Hand edits of one line of a file the writer produced (a subset of state-fast.test.ts's). */
const handEdits: ((lines: string[], at: number) => void)[] = [
  (l, at) => l.splice(at, 1),
  (l, at) => l.splice(at, 0, l[at]),
  (l, at) => at + 1 < l.length && ([l[at], l[at + 1]] = [l[at + 1], l[at]]),
  (l, at) => (l[at] = l[at].replace(/^(\S+):$/, '"$1":')),
  (l, at) => (l[at] = l[at].replace(/^"(\S+)":$/, '$1:')),
  (l, at) => l.splice(at, 0, '  masquerade: true'),
  (l, at) => (l[at] = l[at].replace(/(\d+)\.(\d+)/, '$1.0$2')),
  (l, at) => (l[at] = l[at].replace(/tcp|udp|sctp/, 'udp')),
  (l, at) => (l[at] = l[at].replace(/client|proxy|server/, 'proxy')),
  (l, at) => (l[at] = l[at].replace(/^([a-z])/, (c) => c.toUpperCase())),
  (l, at) => (l[at] = l[at].replace(/^([a-z]\S*):$/, '$1-x:')),
  (l, at) => {
    const src = l.slice(0, at).find((x) => x.startsWith('  source: '));
    if (src) l[at] = l[at].replace(/^  source: .*/, src);
  },
  (l, at) => {
    const src = l.slice(at).find((x) => x.startsWith('  source: '));
    if (src) l[at] = l[at].replace(/(  - ).*/, `$1${src.slice(10)}`);
  },
];

test('hand-edited files: what the index takes, the reference reads the same; the rest goes to the general path', async () => {
  let taken = 0;
  let declined = 0;
  await fc.assert(
    fc.asyncProperty(
      plainStateArb.filter((ps) => ps.length > 1),
      fc.array(fc.tuple(fc.nat(), fc.nat(handEdits.length - 1)), { minLength: 1, maxLength: 2 }),
      async (profiles, changes) => {
        const lines = serializeState(profiles).split('\n');
        lines.pop();
        for (const [pos, which] of changes) if (lines.length) handEdits[which](lines, pos % lines.length);
        const text = lines.join('\n') + '\n';
        const index = indexState(text);
        const reference = await parseStateReference(text).catch(() => null);
        if (index === null) return void declined++;
        taken++;
        assert.ok(reference, `the index took a file the reference refuses:\n${text}`);
        assert.deepEqual(new Map(index), reference, text);
        assert.equal(serializeState(reference.values()), text, 'only files the writer would write');
      },
    ),
    { numRuns: 1500 },
  );
  assert.ok(taken > 50 && declined > 50, `taken ${taken}, declined ${declined}`);
});

test('the spliced bytes are written whole whatever each vectored write takes', async () => {
  const { writeAll } = await import('../../src/core/state.js');
  const chunks = ['ab', '', 'cdefg', 'h', 'ijklmnopq'].map((s) => Buffer.from(s));
  for (const most of [1, 2, 3, 7, 100]) {
    let written = '';
    const fh = {
      writev: async (bufs: Buffer[]) => {
        const all = Buffer.concat(bufs).subarray(0, most);
        written += all.toString();
        return { bytesWritten: all.length, buffers: bufs };
      },
    };
    await writeAll(fh as never, chunks);
    assert.equal(written, 'abcdefghijklmnopq', `at most ${most} byte(s) per call`);
  }
});

/** A plain profile of `n` destinations (127.1.x.y:80, y from 1 to 128), named `name`, at source 127.100.0.`s`:80. */
function wideProfile(name: string, n: number, s: number): Profile {
  const destination = Array.from({ length: n }, (_, i) => `127.1.${i >> 7}.${(i & 127) + 1}:80`);
  return validateProfile({ name, source: `127.100.0.${s}:80`, destination });
}

test('profiles of many destinations: indexed as the reference reads them, a destination twice or equal to the source anywhere among them refused (the general path says so)', async () => {
  const profiles = [
    wideProfile('a', 1, 1),
    wideProfile('b', 32, 2),
    wideProfile('c', 33, 3),
    wideProfile('d', 200, 4),
    wideProfile('e', 1024, 5),
    wideProfile('f', 3, 6),
  ];
  const text = serializeState(profiles);
  const reference = await parseStateReference(text);
  const change: Change = { upsert: [wideProfile('cc', 40, 7)], remove: ['d'] };
  assert.equal(indexState(text)!.spliced(change), serializeState(new ChangedProfiles(reference, change).values()));
  // (Iterated, it builds every profile: no longer the text as read, it splices nothing.)
  assert.deepEqual(new Map(indexState(text)!), reference);
  // The checks of a wide block: the first destination again as the last, or the source among them.
  for (const n of [32, 33, 200, 1024]) {
    const p = serializeState([wideProfile('w', n, 9)]);
    const first = '  - 127.1.0.1:80\n';
    const last = /  - [^\n]*\n(?=  logEnabled)/.exec(p)![0];
    for (const bad of [p.replace(last, first), p.replace(last, '  - 127.100.0.9:80\n')]) {
      assert.equal(indexState(bad), null, `${n} destinations`);
      await assert.rejects(parseStateReference(bad), /destination/);
    }
  }
  // More than 1,024: left to the general path, which refuses it.
  const tooMany = serializeState([wideProfile('w', 1024, 9)]).replace('  logEnabled', '  - 127.2.0.1:80\n  logEnabled');
  assert.equal(indexState(tooMany), null);
  await assert.rejects(parseStateReference(tooMany), /at most 1024/);
});

// The index's check of a block looked for each destination among all the lines after it: the square of their
// number. A file of one profile of 200,000 destinations (refused: at most 1,024) took about half an hour to
// index, at every CLI change; it is given up at the 1,025th line. Run in a child process, killed after a minute:
// a hang guard (the index is synchronous), not a measure.
test('a profile of 200,000 destinations is not indexed in time that grows with their square', () => {
  const module = new URL('../../src/core/state-index.js', import.meta.url).href;
  const script = `import { indexState } from ${JSON.stringify(module)};
const lines = Array.from({ length: 200000 }, (_, i) => \`  - 10.\${i >> 14}.\${(i >> 7) & 127}.\${(i & 127) + 1}:80\\n\`);
const text = \`big:\\n  destination:\\n\${lines.join('')}  logEnabled: false\\n  logLevel: "4"\\n  protocol: tcp\\n  rulesBackend: client\\n  source: 10.200.0.1:80\\n\`;
process.stdout.write(String(indexState(text)));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.error, undefined, 'indexing did not end within a minute');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'null');
});

// `iptlb plan` and `iptlb show NAME` read the state file as a change does: one profile of 10,000 planned or shown
// built that profile alone (they built every profile of the file, and plan counted every profile's dispatch set).
for (const engine of ['nft', 'legacy'] as const)
  test(`a CLI-like Core's plan and stateProfile (${engine}) build only the profiles they look up`, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-index-'));
    const file = path.join(dir, 'state.db');
    const profiles = Array.from({ length: 300 }, (_, i) =>
      validateProfile({
        name: `p${i + 1}`,
        source: `127.100.${i >> 8}.${i & 255}:8081`,
        destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
      }),
    );
    writeFileSync(file, serializeState(profiles), { mode: 0o600 });
    const kernel = engine === 'nft' ? new FakeNftKernel() : new FakeLegacyKernel();
    await new Core({ stateFile: file }, kernel).transact((s) => ({ upsert: [...s.values()], remove: [] }), {
      run: true,
    });
    const core = new Core({ stateFile: file }, kernel);
    core.indexedReads = true;
    let seen: Map<string, Profile> | undefined;
    const reset = validateProfile({
      ...profiles[6],
      destination: ['127.0.0.1:9004', '127.0.0.1:9005', '127.0.0.1:9006'],
    });
    const { plans } = await core.plan((state) => {
      seen = state;
      return upsertChange(state, [reset]);
    });
    assert.ok(seen instanceof IndexedState);
    assert.equal((seen as IndexedState).materialized, false, 'plan: no profile but those looked up was built');
    assert.equal(plans.length, 1);
    assert.ok(plans[0].steps.length > 0);
    assert.deepEqual(await core.stateProfile('p7'), profiles[6]);
    assert.equal(await core.stateProfile('nope'), undefined);
    // The planned change is the one the change commits.
    await core.transact((s) => upsertChange(s, [reset]), { run: true });
    assert.deepEqual(await new Core({ stateFile: file }, kernel).stateProfile('p7'), reset);
  });

// `iptlb top` and `status --watch` refresh every second: a state file that did not change is not parsed again for
// each refresh (it was: every frame built every profile again, 1.6 s of CPU a frame at 10,000 mixed profiles).
test('a Core reading a state file that did not change between two reads parses it once', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-index-'));
  const file = path.join(dir, 'state.db');
  const profiles = Array.from({ length: 50 }, (_, i) =>
    validateProfile({
      name: `p${i + 1}`,
      source: i % 2 ? `[2001:db8::${i + 1}]:8081` : `127.100.0.${i + 1}:8081`,
      destination: i % 2 ? ['[::1]:9001'] : ['127.0.0.1:9001', '127.0.0.1:9002'],
    }),
  );
  writeFileSync(file, serializeState(profiles), { mode: 0o600 });
  const kernel = new FakeNftKernel();
  for (const indexed of [false, true]) {
    const core = new Core({ stateFile: file }, kernel);
    core.indexedReads = indexed;
    const a = await core.readState();
    const b = await core.readState();
    assert.notEqual(a, b, 'each caller gets its own map');
    assert.equal(a.get('p2'), b.get('p2'), 'the same profile: not parsed again');
    await core.status();
    assert.equal((await core.readState()).get('p2'), a.get('p2'));
    // Changed by another process: read again.
    const changed = validateProfile({ ...profiles[1], destination: ['[::1]:9002'] });
    await new Core({ stateFile: file }, kernel).transact((s) => upsertChange(s, [changed]), { run: false });
    assert.deepEqual((await core.readState()).get('p2'), changed);
    await new Core({ stateFile: file }, kernel).transact((s) => upsertChange(s, [profiles[1]]), { run: false });
  }
});
