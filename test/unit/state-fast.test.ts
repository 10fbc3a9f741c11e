/**
 * The state file's fast reader (issue 18): a file in the layout iptlb writes, of plain profiles, is
 * read without the `yaml` package and with a per-profile check of each field's canonical text. It
 * must read exactly what the reference reading (the `yaml` package and the general validation)
 * reads, on every file the writer produces and on hand-edited ones, which it hands to the general
 * path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  EXISTING_NAME,
  LEGACY_NAME_PATTERN,
  NAME_PATTERN,
  PLAIN_UNICAST_V4_LINE,
  isPlainUnicastV4,
  plainInput,
  plainProfile,
  validateProfile,
} from '../../src/model/profile.js';
import { parseExactProfiles, parseState, parseStateReference, serializeState } from '../../src/core/state.js';
import type { Profile } from '../../src/model/types.js';
import YAML from 'yaml';
import { profileOfKind } from './state-checks.js';

/**
 * Names the `yaml` package reads back as themselves. It reads a few plain names Go's yaml.v2 (and
 * iptlb) read as strings as something else (`E0` as NaN: its YAML 1.1 float pattern lets every part
 * be optional), so it is no reference for them.
 */
const yamlReadsBack = (name: string): boolean =>
  Object.keys(YAML.parse(`${JSON.stringify(name)}: 1\n${name}x: 2\n`, { version: '1.1' }) ?? {})[0] === name &&
  String(Object.keys(YAML.parse(`${name}: 1\n`, { version: '1.1' }) ?? {})[0]) === name;

/** What a reading gives: the profiles by name (as plain data), or the error's code and message. */
async function outcome(read: () => Promise<Map<string, Profile>>): Promise<unknown> {
  try {
    const m = await read();
    return { profiles: JSON.parse(JSON.stringify([...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))) };
  } catch (e) {
    const err = e as { code?: string; message?: string };
    return { error: err.code ?? 'none', message: err.message };
  }
}

// Octets and ports near every edge the checks have: leading zeros, 0, 255, 256, multicast, 65535.
const octetText = fc.oneof(
  fc.integer({ min: 0, max: 255 }).map(String),
  fc.constantFrom('00', '01', '010', '256', '999', '1000', ''),
);
const firstOctet = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 1, max: 223 }).map(String) },
  { weight: 1, arbitrary: fc.constantFrom('0', '224', '239', '240', '255', '127', '01') },
);
const portText = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 1, max: 65535 }).map(String) },
  { weight: 1, arbitrary: fc.constantFrom('0', '65536', '99999', '080', '', '123456') },
);
const wildEndpoint = fc
  .oneof(
    { weight: 6, arbitrary: fc.tuple(firstOctet, octetText, octetText, octetText, portText) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        ['0', '0', '0', '0', '80'],
        ['255', '255', '255', '255', '80'],
        ['1', '2', '3', '4', ''],
        ['1', '2', '3', '4', '5'],
      ),
    },
  )
  .map(([a, b, c, d, p]) => `${a}.${b}.${c}.${d}:${p}`);
const wildName = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9_-]{1,20}$/),
  fc.constantFrom('yes', 'no', 'null', 'on', '1e3', '-', '-x', 'a'.repeat(19), 'a'.repeat(64), 'x y', ''),
);

test('plainProfile makes exactly what validateProfile makes, or declines', () => {
  fc.assert(
    fc.property(
      wildName,
      wildEndpoint,
      fc.array(fc.oneof(wildEndpoint, fc.constant('1.2.3.4:5')), { minLength: 0, maxLength: 20 }),
      fc.constantFrom('tcp', 'udp', 'sctp', 'TCP', 'icmp', ''),
      fc.constantFrom('client', 'proxy', 'server', 'Client', 'nat'),
      fc.boolean(),
      fc.constantFrom('0', '4', '7', '8', 'warning', ' 4', '44', ''),
      fc.boolean(),
      (name, source, destination, protocol, rulesBackend, logEnabled, logLevel, masquerade) => {
        const input = { name, source, destination, protocol, rulesBackend, logEnabled, logLevel, masquerade };
        let reference: Profile | null = null;
        try {
          // `health: undefined` keeps validateProfile on its general path (its plain fast path is plainProfile).
          reference = validateProfile(
            { ...input, destination: [...destination], health: undefined },
            { existing: true },
          );
        } catch {
          reference = null;
        }
        const fast = plainProfile(
          name,
          source,
          [...destination],
          protocol,
          rulesBackend,
          logEnabled,
          logLevel,
          masquerade,
        );
        if (fast !== null) {
          assert.ok(reference, `plainProfile accepted what validateProfile refuses: ${JSON.stringify(input)}`);
          assert.deepEqual(fast, reference);
          assert.ok(Object.isFrozen(fast) && Object.isFrozen(fast.destination));
          assert.equal(validateProfile(fast), fast, 'a profile plainProfile made is known as validated');
        } else if (
          reference &&
          reference.source === source &&
          reference.logLevel === logLevel &&
          reference.protocol === protocol &&
          reference.rulesBackend === rulesBackend &&
          reference.destination.length === destination.length &&
          reference.destination.every((d, i) => d === destination[i])
        ) {
          assert.fail(`plainProfile declined a profile already in canonical form: ${JSON.stringify(input)}`);
        }
      },
    ),
    { numRuns: 3000 },
  );
});

test("validateProfile's fast path for plain inputs gives what its general path gives: the profile, or the error", () => {
  /** The outcome of one validation: the profile as plain data and whether it is frozen, or the error. */
  const outcomeOf = (input: Record<string, unknown>, existing: boolean): unknown => {
    try {
      const p = validateProfile(input, { existing });
      assert.ok(Object.isFrozen(p) && Object.isFrozen(p.destination));
      assert.equal(validateProfile(p), p, 'the result is known as validated');
      return { profile: JSON.parse(JSON.stringify(p)) };
    } catch (e) {
      const err = e as { code?: string; message?: string; field?: string };
      return { error: err.code, message: err.message, field: err.field };
    }
  };
  /** An optional field: absent, a value validation takes as it is, or one it converts or refuses. */
  const field = <T, U>(good: fc.Arbitrary<T>, other: fc.Arbitrary<U>): fc.Arbitrary<T | U | undefined> =>
    fc.oneof(
      { weight: 5, arbitrary: fc.constant(undefined) },
      { weight: 4, arbitrary: good },
      { weight: 1, arbitrary: other },
    );
  // Mostly valid ones (what callers pass), and the wild ones above.
  const goodEndpoint = fc
    .tuple(fc.integer({ min: 1, max: 223 }), fc.nat(255), fc.nat(255), fc.integer({ min: 1, max: 254 }))
    .chain(([a, b, c, d]) => fc.integer({ min: 1, max: 65535 }).map((port) => `${a}.${b}.${c}.${d}:${port}`));
  const anyEndpoint = fc.oneof({ weight: 3, arbitrary: goodEndpoint }, { weight: 1, arbitrary: wildEndpoint });
  let fast = 0;
  fc.assert(
    fc.property(
      fc.oneof({ weight: 3, arbitrary: fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/) }, wildName, fc.constant(7)),
      fc.oneof({ weight: 9, arbitrary: anyEndpoint }, { weight: 1, arbitrary: fc.constant(12) }),
      fc.oneof(
        { weight: 8, arbitrary: fc.array(fc.oneof(anyEndpoint, fc.constant('1.2.3.4:5')), { maxLength: 20 }) },
        { weight: 8, arbitrary: fc.uniqueArray(goodEndpoint, { minLength: 1, maxLength: 20 }) },
        { weight: 1, arbitrary: fc.constant('1.2.3.4:5,1.2.3.5:5') },
        { weight: 1, arbitrary: fc.constant(['1.2.3.4:5*2', 5]) },
      ),
      field(fc.constantFrom('tcp', 'udp', 'sctp'), fc.constantFrom('TCP', 'icmp', '', 6)),
      field(fc.constantFrom('client', 'proxy', 'server'), fc.constantFrom('Client', 'nat')),
      field(fc.boolean(), fc.constant('yes')),
      field(fc.constantFrom('0', '4', '7'), fc.constantFrom('8', 'warning', ' 4', '44', '', 4)),
      field(fc.constant(false), fc.constantFrom(true, 1)),
      fc.boolean(),
      fc.constantFrom(undefined, 'scheduler', 'bogus'),
      (name, source, destination, protocol, rulesBackend, logEnabled, logLevel, masquerade, existing, extra) => {
        const input: Record<string, unknown> = { name, source, destination };
        const fields = { protocol, rulesBackend, logEnabled, logLevel, masquerade };
        for (const [k, v] of Object.entries(fields)) if (v !== undefined) input[k] = v;
        if (extra === 'scheduler') input.scheduler = 'random';
        if (extra === 'bogus') input.bogus = 1;
        const copy = (): Record<string, unknown> => ({
          ...input,
          destination: Array.isArray(destination) ? [...destination] : destination,
        });
        const got = outcomeOf(copy(), existing);
        // `health: undefined` keeps validateProfile on its general path.
        const want = outcomeOf({ ...copy(), health: undefined }, existing);
        assert.deepEqual(got, want, JSON.stringify(input));
        // The fast path itself: it takes every valid input already in canonical form (each field as
        // the profile has it) without other fields, and gives the same profile.
        const out = (got as { profile?: Record<string, unknown> }).profile;
        const canonical =
          out !== undefined &&
          extra === undefined &&
          Array.isArray(destination) &&
          JSON.stringify(out.destination) === JSON.stringify(destination) &&
          out.source === source &&
          Object.entries(fields).every(([k, v]) => v === undefined || out[k] === v);
        if (canonical) {
          const taken = plainInput(copy(), existing);
          assert.ok(taken, `the fast path declined ${JSON.stringify(input)}`);
          assert.deepEqual({ profile: JSON.parse(JSON.stringify(taken)) }, want);
          fast++;
        }
        // The caller's list is not kept (the profile's is frozen; the caller may change its own).
        if (Array.isArray(destination)) assert.ok(!Object.isFrozen(input.destination));
      },
    ),
    { numRuns: 4000 },
  );
  // 91-145 of 4,000 runs over 30 runs of this test (mean 120, spread 12): a bound of 100 failed about one
  // run in twenty (CI failed on exactly 100); 40 is six spreads below.
  assert.ok(fast > 40, `only ${fast} inputs were valid plain profiles: the fast path was hardly exercised`);
});

test('the patterns the fast reader matches accept exactly what the checks accept', () => {
  const line = new RegExp(`^${PLAIN_UNICAST_V4_LINE}$`);
  const name = new RegExp(`^${EXISTING_NAME}$`);
  fc.assert(
    fc.property(wildEndpoint, (e) => {
      assert.equal(line.test(`${e}\n`), isPlainUnicastV4(e), e);
      if (isPlainUnicastV4(e)) {
        let ok = true;
        try {
          validateProfile({ name: 'a', source: e, destination: [e === '9.9.9.9:9' ? '9.9.9.9:8' : '9.9.9.9:9'] });
        } catch {
          ok = false;
        }
        assert.ok(ok, e);
      }
    }),
    { numRuns: 5000 },
  );
  for (const e of ['0.0.0.0:1', '255.255.255.255:1', '224.0.0.1:1', '239.1.1.1:1', '240.0.0.1:1', '1.2.3.4:65535'])
    assert.equal(line.test(`${e}\n`), isPlainUnicastV4(e), e);
  fc.assert(
    fc.property(wildName, (n) => assert.equal(name.test(n), NAME_PATTERN.test(n) || LEGACY_NAME_PATTERN.test(n), n)),
    { numRuns: 3000 },
  );
});

// Valid profiles of every kind the file holds: plain ones (the fast reader's) and the others.
const octet = fc.integer({ min: 0, max: 255 });
const ip = fc.tuple(fc.integer({ min: 1, max: 223 }), octet, octet, octet).map((a) => a.join('.'));
const endpoint = fc.tuple(ip, fc.integer({ min: 1, max: 65535 })).map(([i, p]) => `${i}:${p}`);
const v6endpoint = fc
  .tuple(fc.integer({ min: 1, max: 0xffff }), fc.integer({ min: 1, max: 65535 }))
  .map(([g, p]) => `[2001:db8::${g.toString(16)}]:${p}`);
const profileArb = fc
  .oneof(
    { weight: 5, arbitrary: fc.constant('plain') },
    { weight: 1, arbitrary: fc.constantFrom('weights', 'scheduler', 'affinity', 'v6', 'health') },
  )
  .chain((kind) =>
    fc
      .record({
        name: fc.oneof(
          fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_-]{0,30}$/),
          fc.constantFrom('yes', 'null', 'on', '123', '1e3', 'n'),
        ),
        source: kind === 'v6' ? v6endpoint : endpoint,
        destination: fc.uniqueArray(kind === 'v6' ? v6endpoint : endpoint, { minLength: 1, maxLength: 6 }),
        protocol: fc.constantFrom('tcp', 'udp', 'sctp'),
        rulesBackend: fc.constantFrom('client', 'proxy', 'server'),
        logEnabled: fc.boolean(),
        logLevel: fc.constantFrom('0', '1', '2', '3', '4', '5', '6', '7'),
        masquerade: fc.boolean(),
      })
      .map((r) => {
        const input: Record<string, unknown> = {
          ...r,
          destination: r.destination.filter((d) => d !== r.source),
          masquerade: r.masquerade && r.rulesBackend === 'proxy',
        };
        if ((input.destination as string[]).length === 0) input.destination = [r.source.replace(/:\d+$/, ':1')];
        return profileOfKind(input, kind);
      }),
  );
const stateArb = fc.array(profileArb, { minLength: 0, maxLength: 12 }).map((ps) => {
  // Profiles that can live side by side (the writer only ever writes such a set).
  const out: Profile[] = [];
  const names = new Set<string>();
  const sources = new Set<string>();
  for (const p of ps) {
    if (
      !p ||
      !yamlReadsBack(p.name) ||
      names.has(p.name.toUpperCase().replace(/-/g, '_')) ||
      sources.has(`${p.source}/${p.protocol}`)
    )
      continue;
    names.add(p.name.toUpperCase().replace(/-/g, '_'));
    sources.add(`${p.source}/${p.protocol}`);
    out.push(p);
  }
  return out;
});

test('the fast reader and the yaml package read the same profiles from every file the writer produces', async () => {
  await fc.assert(
    fc.asyncProperty(stateArb, async (profiles) => {
      const text = serializeState(profiles);
      const fast = await outcome(() => parseState(text));
      assert.deepEqual(fast, await outcome(() => parseStateReference(text)));
      assert.ok('profiles' in (fast as object), text);
      // Written back byte for byte.
      assert.equal(serializeState((await parseState(text)).values()), text);
      // A file of plain profiles only is read by the fast reader itself.
      const plain = profiles.every(
        (p) => !p.weights && !p.scheduler && !p.affinity && !p.health && !p.source.startsWith('['),
      );
      const exact = parseExactProfiles(text);
      if (plain) assert.ok(exact, `the fast reader declined a file of plain profiles:\n${text}`);
      if (exact) assert.deepEqual(new Map(exact), await parseStateReference(text));
    }),
    { numRuns: 400 },
  );
});

/** Hand edits: one change to one line of a file the writer produced. */
const edits: ((lines: string[], at: number, r: number) => void)[] = [
  (l, at) => l.splice(at, 1), // a line removed
  (l, at) => l.splice(at, 0, l[at]), // a line doubled
  (l, at) => at + 1 < l.length && ([l[at], l[at + 1]] = [l[at + 1], l[at]]), // two lines swapped
  (l, at) => (l[at] = l[at].replace(/^(\S+):$/, '"$1":')), // a name quoted
  (l, at) => l.splice(at, 0, '  masquerade: false'),
  (l, at) => l.splice(at, 0, '  masquerade: true'),
  (l, at) => (l[at] = l[at].replace(/(\d+)\.(\d+)/, '$1.0$2')), // a leading zero
  (l, at) => (l[at] = l[at].replace(/:(\d+)$/, ':0')), // port 0
  (l, at) => (l[at] = l[at].replace(/:(\d+)$/, ':65536')),
  (l, at) => (l[at] = l[at].replace(/ (\d+)\./, ' 224.')), // multicast
  (l, at) => (l[at] = l[at].replace(/ [\d.]+:/, ' 0.0.0.0:')),
  (l, at) => (l[at] = l[at].replace(/"(\d)"/, '$1')), // logLevel: 4, unquoted
  (l, at) => (l[at] = l[at].replace(/"(\d)"/, '"9"')),
  (l, at) => (l[at] = l[at].replace(/"(\d)"/, '"warning"')),
  (l, at) => (l[at] = l[at].replace(/tcp|udp|sctp/, 'icmp')),
  (l, at) => (l[at] = l[at].replace(/client|proxy|server/, 'proxy')),
  (l, at) => (l[at] = l[at].replace(/true|false/, 'yes')),
  (l, at) => (l[at] = `${l[at]} # a comment`),
  (l, at) => (l[at] = `${l[at]}\r`),
  (l, at) => (l[at] = l[at].replace(/^  /, '   ')),
  (l, at) => l.splice(at, 0, '  scheduler: round-robin'),
  (l, at) => l.splice(at, 0, '  affinity: 30'),
  (l, at) => l.splice(at, 0, '  unknown: 1'),
  (l, at, r) => (l[at] = l[at].slice(0, r % (l[at].length + 1))), // a line cut short
  (l, at) => {
    // a destination made the source of its profile, or another profile's source
    const src = l.slice(at).find((x) => x.startsWith('  source: '));
    if (src) l[at] = l[at].replace(/(  - ).*/, `$1${src.slice(10)}`);
  },
  (l, at) => {
    // a profile's source made that of the profile before it
    const src = l.slice(0, at).find((x) => x.startsWith('  source: '));
    if (src) l[at] = l[at].replace(/^  source: .*/, src);
  },
  (l, at) => (l[at] = l[at].replace(/^([a-z])/, (c) => c.toUpperCase())), // a name in another case
];

test('hand-edited files: the fast reader hands them to the general path, which reads what the yaml package reads', async () => {
  await fc.assert(
    fc.asyncProperty(
      stateArb.filter((ps) => ps.length > 0),
      fc.array(fc.tuple(fc.nat(), fc.nat(edits.length - 1), fc.nat()), { minLength: 1, maxLength: 3 }),
      async (profiles, changes) => {
        const lines = serializeState(profiles).split('\n');
        lines.pop();
        for (const [pos, which, r] of changes) if (lines.length) edits[which](lines, pos % lines.length, r);
        const text = lines.join('\n') + '\n';
        assert.deepEqual(await outcome(() => parseState(text)), await outcome(() => parseStateReference(text)), text);
        // What the fast reader reads alone (conflicts between profiles are checked after it) is
        // what the reference reads, when that reads anything.
        const exact = parseExactProfiles(text);
        const reference = await parseStateReference(text).catch(() => null);
        if (exact && reference) assert.deepEqual(new Map(exact), reference, text);
      },
    ),
    { numRuns: 1500 },
  );
});

test('a name with nothing under it is null, as in YAML, not an empty profile (found by the property above)', async () => {
  const good = serializeState([validateProfile({ name: 'a', source: '1.0.0.0:1', destination: ['1.0.0.0:2'] })]);
  for (const text of ['web:\n', `A:\n${good}`, `${good}B:\n`, `web:\n${good.replace(/^a:/, 'b:')}`]) {
    const want = await outcome(() => parseStateReference(text));
    assert.match(JSON.stringify(want), /must be a mapping, got null/, text);
    assert.deepEqual(await outcome(() => parseState(text)), want, text);
  }
});

test('a conflict names the same profile whatever order a reading meets them in (found by the property above)', async () => {
  // The yaml package reads "123" before "0a" (an integer-like key comes first in an object); the fast
  // reader reads the file in its order. Both name the conflict as met in the writer's order.
  const p = (name: string, dest: string) =>
    validateProfile({ name, source: '1.0.0.0:7', destination: [dest] }, { existing: true });
  const text = serializeState([p('0a', '1.0.0.0:1'), p('123', '1.0.0.0:2')]);
  assert.ok(parseExactProfiles(text), 'the fast reader takes the file');
  const want = await outcome(() => parseStateReference(text));
  assert.match(JSON.stringify(want), /already belongs to profile \\"0a\\"/);
  assert.deepEqual(await outcome(() => parseState(text)), want);
});

test('the fast reader keeps each profile as written: a change writes the other profiles back byte for byte', async () => {
  const profiles = Array.from({ length: 50 }, (_, i) =>
    validateProfile({ name: `p${i}`, source: `127.100.0.${i + 1}:8081`, destination: [`127.0.0.1:${9001 + i}`] }),
  );
  const text = serializeState(profiles);
  const read = parseExactProfiles(text);
  assert.ok(read);
  const next = new Map(read);
  next.set('p7', validateProfile({ name: 'p7', source: '127.100.0.8:8081', destination: ['127.0.0.1:9999'] }));
  next.delete('p9');
  const expected = serializeState([...profiles.filter((p) => p.name !== 'p7' && p.name !== 'p9'), next.get('p7')!]);
  assert.equal(serializeState(next.values()), expected);
});

test('a short file is matched past its end (V8 compiles the pattern natively) without reading past it', async () => {
  const one = serializeState([
    validateProfile({ name: 'web', source: '127.100.0.10:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] }),
  ]);
  assert.ok(one.length < 1000, 'shorter than the length at which V8 compiles at once');
  assert.deepEqual([...(parseExactProfiles(one) ?? new Map()).keys()], ['web']);
  // Without its last newline, or with a NUL where the padding goes, the file is not in the layout.
  assert.equal(parseExactProfiles(one.slice(0, -1)), null);
  assert.equal(parseExactProfiles(`${one.slice(0, -1)}\0`), null);
  assert.equal(parseExactProfiles(`${one}\0`), null);
  // Both readings agree on those (the general path refuses or reads them as the yaml package does).
  for (const text of [one, one.slice(0, -1)])
    assert.deepEqual(await outcome(() => parseState(text)), await outcome(() => parseStateReference(text)));
});
