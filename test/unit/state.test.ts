import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, readFileSync, symlinkSync, mkdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import {
  parseState,
  parseStateReference,
  serializeState,
  readState,
  readStateFull,
  writeState,
  yamlReads,
} from '../../src/core/state.js';
import { indexStateBytes } from '../../src/core/state-index.js';
import { Core, upsertChange } from '../../src/core/core.js';
import { validateProfile } from '../../src/model/profile.js';
import { IptlbError } from '../../src/model/errors.js';
import { FakeNftKernel } from '../harness/fake-kernel.js';
import { seeded } from '../harness/random.js';

// Written by the original Go iptlb (its README).
const ORIGINAL = `test:
  destination:
  - 10.0.1.4:8080
  logEnabled: true
  logLevel: "4"
  protocol: tcp
  rulesBackend: client
  source: 10.100.0.10:8081
`;

test('a file the original wrote reads here and is written back byte for byte', async () => {
  const state = await parseState(ORIGINAL);
  assert.deepEqual([...state.keys()], ['test']);
  assert.deepEqual(state.get('test'), {
    name: 'test',
    source: '10.100.0.10:8081',
    destination: ['10.0.1.4:8080'],
    protocol: 'tcp',
    rulesBackend: 'client',
    logEnabled: true,
    logLevel: '4',
  });
  assert.equal(serializeState(state.values()), ORIGINAL);
});

test('keys sorted, profiles sorted, empty state is {}', async () => {
  const text = `b:\n  destination:\n  - 127.0.0.1:1\n  - 127.0.0.1:2\n  logEnabled: false\n  logLevel: "7"\n  protocol: udp\n  rulesBackend: proxy\n  source: 127.100.0.1:53\na:\n  destination:\n  - 127.0.0.1:3\n  logEnabled: false\n  logLevel: "4"\n  masquerade: true\n  protocol: tcp\n  rulesBackend: proxy\n  source: 127.100.0.2:80\n`;
  const out = serializeState((await parseState(text)).values());
  assert.ok(out.startsWith('a:\n'));
  assert.deepEqual(await parseState(out), await parseState(text));
  assert.equal(serializeState([]), '{}\n');
  assert.equal((await parseState('{}\n')).size, 0);
  assert.equal((await parseState('')).size, 0);
});

/** The state file of one plain profile named `name`. */
const one = (name: string): string =>
  serializeState([
    {
      name,
      source: '127.0.0.1:80',
      destination: ['127.0.0.1:81'],
      protocol: 'tcp',
      rulesBackend: 'client',
      logEnabled: false,
      logLevel: '4',
    },
  ]);

test('names that YAML 1.1 would read as numbers or booleans are quoted', async () => {
  for (const name of ['123', 'yes', 'No', 'on', 'null', '1e5', '0x1F', '-']) {
    const text = one(name);
    assert.ok(text.startsWith(`"${name}":`), text);
    if (name !== '-') assert.deepEqual([...(await parseState(text)).keys()], [name]);
  }
});

test("names are quoted exactly when Go's yaml.v2 would not read them plain as strings (its ints, floats, dates)", async () => {
  const { goYamlNonString } = await import('../../src/core/state.js');
  // strconv.ParseInt(_, 0, 64) after removing "_": any prefix case, 0o, leading-zero octal;
  // dates of time.Parse("2006-1-2").
  const quoted = [
    '0o17',
    '0O17',
    '0X1F',
    '0B101',
    '0_7',
    '-0x1F',
    '1e-5',
    '1_0e1_0',
    '08',
    '2021-12-24',
    '2021-1-2',
    '2020-2-29',
  ];
  // Out of int64/uint64 (hex, octal, binary are not floats either: yaml.v2 reads a string, written
  // quoted all the same, as the `yaml` package reads a number), no date, or no number at all.
  for (const name of ['0x1ffffffffffffffff', '2021-02-29', '2021-2-29', '2021-13-1']) {
    assert.equal(goYamlNonString(name), false);
    assert.ok(one(name).startsWith(`"${name}":`));
    assert.deepEqual([...(await parseState(`# a comment: the general reader\n${one(name)}`)).keys()], [name]);
  }
  const plain = ['0o', '0x', '2021-12-245', '202-1-1', 'web10', 'a-1', '1a', '-', '0b2'];
  for (const name of quoted) {
    assert.ok(goYamlNonString(name), name);
    assert.ok(one(name).startsWith(`"${name}":`), one(name));
    assert.deepEqual([...(await parseState(one(name))).keys()], [name]);
  }
  for (const name of plain) assert.equal(goYamlNonString(name), false, name);
  for (const name of plain.filter((n) => n !== '-')) {
    assert.ok(one(name).startsWith(`${name}:`), one(name));
    assert.deepEqual([...(await parseState(one(name))).keys()], [name]);
  }
});

async function refused(text: string, re: RegExp): Promise<void> {
  await assert.rejects(parseState(text, 'f'), (e: unknown) => {
    assert.ok(e instanceof IptlbError);
    assert.equal(e.code, 'ESTATE');
    assert.ok(!e.message.includes('\n'));
    assert.match(e.message, re);
    return true;
  });
}

test('wrong types, unknown keys, aliases, garbage are refused with one line', async () => {
  await refused(ORIGINAL.replace('logLevel: "4"', 'logLevel: 4'), /logLevel must be a quoted string/);
  await refused(ORIGINAL.replace('logEnabled: true', 'logEnabled: "true"'), /logEnabled/);
  await refused(ORIGINAL.replace('protocol: tcp', 'protocol: icmp'), /protocol/);
  await refused(
    ORIGINAL.replace('protocol: tcp', 'weight: 3'),
    /unknown key "weight" \(a profile's keys are affinity, destination, .*, weights; .*correct or remove it\)/,
  );
  await refused(ORIGINAL.replace('- 10.0.1.4:8080', '- 1.2.3:80'), /destination\[0\]/);
  await refused('- a\n- b\n', /mapping/);
  await refused('test: [1\n', /not valid YAML/);
  await refused('a: &x [1,2]\nb: *x\n', /alias|YAML/i);
  const bomb =
    'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n';
  await refused(bomb, /alias|YAML/i);
  await refused(
    ORIGINAL + ORIGINAL,
    /^state file f: profile "test" appears twice \(lines 1 and 9\); keep one of them$/,
  );
  const two = ORIGINAL + ORIGINAL.replace('test:', 'test2:');
  await refused(two, /already belongs to profile/);
});

test('a file that is not valid YAML is refused naming the line where the parser stopped, and an alias its line', async () => {
  const lines = ORIGINAL.split('\n');
  // A tab for indentation (line 3), a key out of column (line 5), a second document (line 9).
  await refused(
    lines.map((l, i) => (i === 2 ? l.replace(/^  /, '\t') : l)).join('\n'),
    /^state file f: is not valid YAML \(line 3: Tabs are not allowed as indentation\)$/,
  );
  await refused(
    lines.map((l, i) => (i === 4 ? l.slice(1) : l)).join('\n'),
    /^state file f: is not valid YAML \(line 5: .*\)$/,
  );
  await refused(ORIGINAL + '---\nb: 1\n', /^state file f: is not valid YAML \(line 9: more than one document/);
  // A quote never closed runs to the end of the file.
  await refused(ORIGINAL.replace('"4"', '"4'), /^state file f: is not valid YAML \(at the end of the file: .*quote\)$/);
  await refused('a: &x [1,2]\nb: *x\n', /^state file f: is not usable YAML \(line 2: an alias, \*x: /);
  await refused(ORIGINAL + 'b:\n  <<: *x\n', /is not usable YAML \(line 10: an alias, \*x: /);
});

test('a hand edit YAML ignores (CRLF or CR line ends, a BOM, comments, blank lines, trailing spaces, no last newline) is read without the yaml package, as it reads it', async () => {
  const two =
    ORIGINAL +
    'web:\n  destination:\n  - 127.0.0.1:9001\n  - 127.0.0.1:9002\n  logEnabled: false\n  logLevel: "4"\n' +
    '  protocol: udp\n  rulesBackend: proxy\n  scheduler: round-robin\n  source: 127.100.0.1:53\n' +
    '  weights:\n    127.0.0.1:9002: 3\n';
  const edits: [string, string][] = [
    ['CRLF', two.replace(/\n/g, '\r\n')],
    // YAML's third line end, which Go's yaml.v2 reads (the yaml package did not: refused, "Nested mappings").
    ['CR alone', two.replace(/\n/g, '\r')],
    ['a BOM', '\ufeff' + two],
    ['comment lines', '# written by hand\n' + two.replace('  protocol: udp\n', '  # udp for DNS\n  protocol: udp\n')],
    [
      'trailing comments',
      two.replace('  - 127.0.0.1:9001\n', '  - 127.0.0.1:9001   # the first\n').replace('web:\n', 'web: # x\n'),
    ],
    ['blank lines', '\n' + two.replace('web:\n', '\n\nweb:\n') + '\n'],
    ['trailing spaces and tabs', two.replace(/\n/g, ' \t\n')],
    ['no last newline', two.slice(0, -1)],
    ['all of them', '\ufeff# hi\r\n' + two.replace(/\n/g, '  # c\r\n').slice(0, -2)],
  ];
  const expected = await parseStateReference(two);
  for (const [what, text] of edits) {
    const before = yamlReads.count;
    const got = await parseState(text, 'f');
    assert.equal(yamlReads.count, before, `${what}: read by the line reader`);
    assert.deepEqual(got, expected, what);
    assert.deepEqual(got, await parseStateReference(text), `${what}: as the yaml package reads it`);
  }
  // What only looks like one is left to the yaml package, and read as it reads it: a '#' in a quoted
  // name or value is no comment, a comment without a space before it is part of the value.
  const quoted = two.replace('web:\n', '"web #1":\n');
  await assert.rejects(parseState(quoted), /profile "web #1": name:/);
  await assert.rejects(parseState(two.replace('source: 127.100.0.1:53', 'source: 127.100.0.1:53#x'), 'f'), /source/);
  await assert.rejects(parseState(two.replace('logLevel: "4"', 'logLevel: "4 # x"'), 'f'), /logLevel/);
  // The errors are the yaml package's, with the file's lines.
  await refused(two.replace(/\n/g, '\r\n').replace('  logEnabled: false', '  owner: me'), /unknown key "owner"/);
  // A file the line reader leaves to the yaml package (quoted values), with CR line ends: read as with LF.
  const quotedValues = two.replace('source: 127.100.0.1:53', 'source: "127.100.0.1:53"');
  assert.deepEqual(await parseState(quotedValues.replace(/\n/g, '\r'), 'f'), expected);
  assert.deepEqual(await parseStateReference(quotedValues.replace(/\n/g, '\r')), expected);
  await refused(two.replace(/\n/g, '\r').replace('  logEnabled: false', '  owner: me'), /unknown key "owner"/);
});

/** A plain profile's block under the key `key` as written (a hand edit). */
const block = (key: string, port: number): string =>
  `${key}:\n  destination:\n  - 127.0.0.1:81\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: 127.0.0.1:${port}\n`;

test("a plain key is read as its text, as Go's yaml.v2 reads a key into a string: 0x1F, 017, 1_000, yes, Off stay names", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-state-'));
  const keys = ['0x1F', '017', '1_000', '1e3', 'yes', 'on', 'Off', 'no', '1000', 'web'];
  const sorted = [...keys].sort();
  // Laid out as iptlb writes it (but the keys plain), and hand-edited (keys out of order, a comment).
  const canonical = sorted.map((k, i) => block(k, 100 + i)).join('');
  const edited = '# edited\n' + keys.map((k, i) => block(k, 200 + i).replace(/  logEnabled: false\n/, '')).join('');
  for (const text of [canonical, edited]) {
    assert.deepEqual(
      [...(await parseState(text))].map(([k, p]) => [k, p.name]).sort(),
      sorted.map((k) => [k, k]),
    );
    const file = path.join(dir, `s${text.length}.db`);
    writeFileSync(file, text, { mode: 0o600 });
    // Every reader: the library's, and the CLI's index (which leaves such a file to the general path).
    assert.deepEqual([...(await readStateFull(file)).profiles.keys()].sort(), sorted);
    assert.deepEqual([...(await readStateFull(file, indexStateBytes)).profiles.keys()].sort(), sorted);
    // The next change writes them back under their own names (quoted where yaml.v2 quotes them).
    const core = new Core({ stateFile: file }, new FakeNftKernel());
    core.indexedReads = true;
    const added = validateProfile({ name: 'zz', source: '127.0.0.2:80', destination: ['127.0.0.1:82'] });
    await core.transact((s) => upsertChange(s, [added]), { run: true });
    const written = readFileSync(file, 'utf8');
    for (const k of ['0x1F', '017', '1_000', '1e3', 'yes', 'on', 'Off', 'no', '1000'])
      assert.match(written, new RegExp(`^"${k}":$`, 'm'));
    assert.match(written, /^web:$/m);
    assert.doesNotMatch(written, /^"?(31|15|true|false)"?:$/m);
    assert.deepEqual([...(await readState(file)).keys()].sort(), [...sorted, 'zz'].sort());
  }
});

test('a key that reads as null, or a key given twice, is refused naming it and its lines', async () => {
  const a = block('a', 90);
  for (const key of ['~', 'null', 'NULL', '']) {
    const re =
      key === ''
        ? /^state file f: line 1: an empty key reads as null/
        : new RegExp(`^state file f: line 1: key "${key}" reads as null in YAML, not a profile name`);
    await refused(block(key, 91) + a, re);
  }
  await refused(
    a.replace('  protocol:', '  ~: 1\n  protocol:'),
    /^state file f: profile "a": line 6: key "~" reads as null in YAML, not a key$/,
  );
  // Two blocks of one profile, also where one is quoted; a key twice in one profile, or in its weights.
  await refused(
    a + block('b', 91) + block('a', 92),
    /^state file f: profile "a" appears twice \(lines 1 and 17\); keep one of them$/,
  );
  await refused(a + block('"a"', 92), /^state file f: profile "a" appears twice \(lines 1 and 9\)/);
  await refused(
    a.replace('  source:', '  source: 127.0.0.1:95\n  source:'),
    /^state file f: profile "a": key "source" appears twice \(lines 8 and 9\); keep one of them$/,
  );
  const w =
    a.replace('  - 127.0.0.1:81\n', '  - 127.0.0.1:81\n  - 127.0.0.1:82\n') +
    '  weights:\n    127.0.0.1:82: 2\n    127.0.0.1:82: 3\n';
  await refused(w, /^state file f: profile "a": weights: key "127.0.0.1:82" appears twice \(lines 11 and 12\)/);
  // Keys that yaml.v2 reads as distinct strings are distinct, though they resolve alike (1000, true).
  assert.deepEqual(
    [...(await parseState(block('1000', 91) + block('1_000', 92) + block('yes', 93) + block('on', 94))).keys()].sort(),
    ['1000', '1_000', 'on', 'yes'],
  );
});

test('files: missing is empty, symlink/directory refused, written 0600 in a 0700 directory', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-state-'));
  const file = path.join(dir, 'sub', 'state.db');
  assert.equal((await readState(file)).size, 0);
  await writeState(file, (await parseState(ORIGINAL)).values());
  assert.equal(readFileSync(file, 'utf8'), ORIGINAL);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.equal(statSync(path.dirname(file)).mode & 0o777, 0o700);
  const link = path.join(dir, 'link.db');
  symlinkSync(file, link);
  await assert.rejects(readState(link), /symbolic link/);
  await assert.rejects(writeState(link, []), /symbolic link/);
  assert.equal(readFileSync(file, 'utf8'), ORIGINAL, 'target of the symlink untouched');
  const d = path.join(dir, 'adir');
  mkdirSync(d);
  await assert.rejects(readState(d), /directory/);
  const trunc = path.join(dir, 'trunc.db');
  writeFileSync(trunc, ORIGINAL.slice(0, 40));
  await assert.rejects(readState(trunc), (e: IptlbError) => e.code === 'ESTATE');
});

test('fast canonical parser agrees with the full YAML parser on what the serializer writes', async () => {
  const { parseCanonical } = await import('../../src/core/state.js');
  const YAML = await import('yaml');
  const rnd = seeded(7);
  const names = ['a', 'web', 'yes', '123', 'x-y', 'A_B1', 'null', 'on', '1e3', 'test2', 'n'];
  for (let round = 0; round < 200; round++) {
    const profiles = [];
    const used = new Set<string>();
    for (let i = 0; i < 1 + rnd(4); i++) {
      const name = names[rnd(names.length)];
      if (used.has(name)) continue;
      used.add(name);
      const backend = (['client', 'proxy', 'server'] as const)[rnd(3)];
      profiles.push({
        name,
        source: `127.100.${i}.${rnd(255)}:${1 + rnd(65535)}`,
        destination: Array.from({ length: 1 + rnd(5) }, (_, k) => `127.0.${k}.${rnd(256)}:${1 + rnd(65535)}`).filter(
          (d, k, a) => a.indexOf(d) === k,
        ),
        protocol: (['tcp', 'udp', 'sctp'] as const)[rnd(3)],
        rulesBackend: backend,
        logEnabled: rnd(2) === 1,
        logLevel: String(rnd(8)),
        ...(backend === 'proxy' && rnd(2) ? { masquerade: true } : {}),
      });
    }
    const text = serializeState(profiles);
    const fast = parseCanonical(text);
    assert.ok(fast, `fast path refused canonical text:\n${text}`);
    assert.deepEqual({ ...fast }, JSON.parse(JSON.stringify(YAML.parse(text, { version: '1.1' }))));
  }
  // keys in another order or missing: still the fast line parser, same result as YAML
  const loose =
    'b:\n  source: 127.100.0.1:80\n  destination:\n  - 127.0.0.1:9001\na:\n  protocol: udp\n  destination:\n  - 127.0.0.1:9002\n';
  assert.deepEqual({ ...parseCanonical(loose) }, JSON.parse(JSON.stringify(YAML.parse(loose, { version: '1.1' }))));
  // anything outside the canonical layout goes to the full parser
  for (const t of [
    'test: {}\n',
    '# comment\n{}\n',
    'a:\n  logLevel: 4\n',
    'a:\n  destination: [1]\n',
    'yes:\n  source: 1.2.3.4:5\n',
    'a:\n  protocol: "tcp"\n',
  ]) {
    assert.equal(parseCanonical(t), null, t);
  }
});

test("names of the original's that iptlb does not take: the line names the profile, the original's chain, and what to do", async () => {
  const b = (key: string): string => block(key, 90);
  for (const [key, name, chain] of [
    ['web.v1', 'web.v1', 'IPTLB_NAT_WEB.V1'],
    ['über', 'über', 'IPTLB_NAT_ÜBER'],
    ['a-b.c', 'a-b.c', 'IPTLB_NAT_A_B.C'],
  ])
    await refused(
      b(key),
      new RegExp(
        `^state file f: profile "${name}": name: .* \\(iptlb cannot take this name: delete the profile with the original, \`-run -delete -profile=${name}\`, or take it out of the file and delete the original's chain ${chain} and its jump by hand; then add it under a valid name\\)$`,
      ),
    );
  for (const [key, chain] of [
    ['"my svc"', '"IPTLB_NAT_MY SVC"'],
    ['a'.repeat(19) + '.', '"IPTLB_NAT_' + 'A'.repeat(19) + '."'],
  ])
    await refused(
      b(key),
      new RegExp(
        `name: .* \\(iptlb cannot take this name, and the original could not apply it either, iptables refuses its chain name ${chain}: take it out of the file; then add it under a valid name\\)$`,
      ),
    );
});

test("logLevel as a level's name (the original's -log-level=warning) is written back as it was while the profile is unchanged", async () => {
  const text =
    block('a', 90).replace('logLevel: "4"', 'logLevel: warning') +
    block('b', 91).replace('logLevel: "4"', 'logLevel: debug');
  const state = await parseState(text);
  assert.equal(state.get('a')!.logLevel, '4');
  assert.equal(state.get('b')!.logLevel, '7');
  assert.equal(serializeState(state.values()), text);
  // Through a change of another profile, on every reader (the CLI's index leaves such a file to the general path).
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-state-'));
  const file = path.join(dir, 's.db');
  writeFileSync(file, text, { mode: 0o600 });
  const core = new Core({ stateFile: file }, new FakeNftKernel());
  core.indexedReads = true;
  const c = validateProfile({ name: 'c', source: '127.0.0.2:80', destination: ['127.0.0.1:82'] });
  await core.transact((s) => upsertChange(s, [c]), { run: true });
  assert.equal(readFileSync(file, 'utf8'), text + serializeState([c]));
  // A change of the profile itself writes the number; a name in capitals is read, and written as the number.
  const a = validateProfile({ ...state.get('a')!, destination: ['127.0.0.1:83'] });
  await core.transact((s) => upsertChange(s, [a]), { run: true });
  assert.match(readFileSync(file, 'utf8'), /^a:\n(?:.*\n)*?  logLevel: "4"\n/);
  assert.match(readFileSync(file, 'utf8'), /logLevel: debug/);
  const caps = block('a', 90).replace('logLevel: "4"', 'logLevel: WARNING');
  assert.equal(serializeState((await parseState(caps)).values()), block('a', 90));
});
