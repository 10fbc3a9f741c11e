/**
 * Tables of many profiles: what the code does per profile must not grow with the table. No clock is
 * read here: the work is counted (reads of the kernel view's lists), so a quadratic walk fails at
 * any machine's speed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planTransaction } from '../../src/engines/legacy/plan.js';
import { compare, syncTransaction } from '../../src/engines/legacy/drift.js';
import { elementOf } from '../../src/engines/legacy/gate.js';
import { validateProfile } from '../../src/model/profile.js';
import { parseCanonical, parseState, serializeState } from '../../src/core/state.js';
import { upsertChange } from '../../src/core/core.js';
import { indexState } from '../../src/core/state-index.js';
import { planNftRebuild } from '../../src/engines/nft/plan.js';
import { compareNft } from '../../src/engines/nft/view.js';
import { FakeLegacyKernel, FakeNftKernel } from '../harness/fake-kernel.js';
import type { NftView } from '../../src/engines/nft/ops.js';
import type { KernelView, Profile } from '../../src/model/types.js';

const N = 3000;

function profiles(n: number, extra: Record<string, unknown> = {}): Map<string, Profile> {
  const out = new Map<string, Profile>();
  for (let i = 0; i < n; i++) {
    const p = validateProfile({
      name: `p${String(i).padStart(5, '0')}`,
      source: `127.100.${i >> 8}.${i & 255}:80`,
      destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
      ...extra,
    });
    out.set(p.name, p);
  }
  return out;
}

/** `list` behind a proxy that counts the reads of its elements into `reads.n`. */
function counted<T>(list: T[], reads: { n: number }): T[] {
  return new Proxy(list, {
    get(target, key, receiver) {
      if (typeof key === 'string' && /^\d+$/.test(key)) reads.n++;
      return Reflect.get(target, key, receiver) as unknown;
    },
  });
}

test('legacy compare: reads the view once per table, not once per profile (status, sync and top at 10,000)', async () => {
  const state = profiles(N);
  const kernel = new FakeLegacyKernel();
  await kernel.commit(planTransaction([...state.values()], [], 'ipv4'));
  const real = await kernel.read('ipv4');
  // As the native read gives it: the gate's set holds the address of every rule behind the gate.
  const members = real.hookRules.map((h) => elementOf(h.rule)).filter((e): e is string => !!e);
  assert.equal(members.length, N);
  const reads = { n: 0 };
  const view: KernelView = {
    ...real,
    hookRules: counted(real.hookRules, reads),
    chains: counted(real.chains, reads),
    gate: { gates: ['OUTPUT'], dispatch: ['OUTPUT'], members: counted(members, reads) },
  };
  const reports = compare(state, view);
  assert.equal(reports.length, N);
  assert.deepEqual(new Set(reports.map((r) => r.status)), new Set(['in-sync']));
  // Each list is walked a few times in all (3 lists of N); per profile, it was N × N.
  assert.ok(reads.n <= 10 * N, `compare read the view's lists ${reads.n} times for ${N} profiles`);

  // Half the profiles gone from the state: their rules and chains are orphans, each reported once.
  const half = new Map([...state].slice(0, N / 2));
  reads.n = 0;
  const orphans = compare(half, view).filter((r) => r.status === 'orphaned');
  assert.equal(orphans.length, N / 2);
  assert.equal(new Set(orphans.map((r) => r.name)).size, N / 2);
  assert.ok(reads.n <= 10 * N, `compare read the view's lists ${reads.n} times for ${N} profiles`);

  // A sync of an empty state removes every chain once.
  const tx = syncTransaction(new Map(), real);
  assert.equal(tx.deleteChains.length, N);
  assert.equal(new Set(tx.deleteChains).size, N);
});

test('legacy compare: a profile of 1,024 destinations is one walk of its chain, not one per destination', async () => {
  const destination = Array.from({ length: 1024 }, (_, i) => `127.0.0.1:${10000 + i}`);
  const p = validateProfile({ name: 'wide', source: '127.100.0.1:80', destination, scheduler: 'round-robin' });
  const state = new Map([[p.name, p]]);
  const kernel = new FakeLegacyKernel();
  await kernel.commit(planTransaction([p], [], 'ipv4'));
  const real = await kernel.read('ipv4');
  const reads = { n: 0 };
  const view: KernelView = {
    ...real,
    chains: real.chains.map((c) => ({ ...c, rules: counted(c.rules, reads) })),
  };
  const [report] = compare(state, view);
  assert.equal(report?.status, 'in-sync');
  assert.equal(report?.destinations.length, 1024);
  // Per destination, every rule of the chain was read: 1,024 × 1,024.
  assert.ok(reads.n <= 10 * 1024, `compare read the chain's rules ${reads.n} times for 1,024 destinations`);
});

test('nft compare: round-robin and affinity profiles find their rules in one walk of the base chains', async () => {
  // Each has rules of its own in a base chain; per profile, every rule of the chains was read.
  for (const extra of [{ scheduler: 'round-robin' }, { affinity: 60 }]) {
    const state = profiles(N / 2, extra);
    const kernel = new FakeNftKernel();
    await kernel.commit(planNftRebuild([...state.values()], kernel.genid));
    const real = await kernel.read('ip');
    const reads = { n: 0 };
    const view: NftView = { ...real, chains: real.chains.map((c) => ({ ...c, rules: counted(c.rules, reads) })) };
    const rules = real.chains.reduce((n, c) => n + c.rules.length, 0);
    assert.ok(rules >= N / 2);
    const reports = compareNft(state, view);
    assert.equal(reports.length, N / 2);
    assert.deepEqual(new Set(reports.map((r) => r.status)), new Set(['in-sync']));
    assert.ok(reads.n <= 10 * rules, `compareNft read ${reads.n} rules for ${rules} rules (${JSON.stringify(extra)})`);
  }
});

test('a state file of IPv6 profiles is read line by line, as IPv4 ones are, not by the yaml package', async () => {
  // The yaml package takes 50 to 100 times the file's size in memory: a 64 MiB file of IPv6 profiles of
  // 1,024 destinations took 35 s and 1.8 GB of memory for `iptlb list` (13 s and 560 MB line by line).
  const YAML = await import('yaml');
  const list = [
    validateProfile({
      name: 'web6',
      source: '[fd00::10]:80',
      destination: ['[::1]:9001', '[2001:db8::1:2]:9002', '[fd00:1:2:3:4:5:6:7]:65535'],
      weights: { '[::1]:9001': 0, '[2001:db8::1:2]:9002': 3 },
      scheduler: 'round-robin',
      affinity: 60,
    }),
    validateProfile({ name: 'web4', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] }),
  ];
  const text = serializeState(list);
  assert.match(text, /  - '\[::1\]:9001'\n/);
  const fast = parseCanonical(text);
  assert.ok(fast, `the line reader refused what serializeState wrote:\n${text}`);
  assert.deepEqual(JSON.parse(JSON.stringify(fast)), JSON.parse(JSON.stringify(YAML.parse(text, { version: '1.1' }))));
  assert.deepEqual(
    [...(await parseState(text)).values()],
    [...new Map(list.map((p) => [p.name, p])).values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
  );
  // Quoted text that is not exactly an IPv6 endpoint is left to the yaml package, which reads it as it is.
  for (const t of [
    "a:\n  destination:\n  - '[::1]:80 '\n",
    "a:\n  destination:\n  - '[::1]:80''x'\n",
    "a:\n  destination:\n  - '127.0.0.1:80'\n",
    "a:\n  source: '[::1]:80\n",
    "a:\n  weights:\n    '[::1]:80': 01\n",
  ])
    assert.equal(parseCanonical(t), null, t);
});

test('a change of many profiles checks their conflicts by lookup, not each against every other (apply --file)', () => {
  // A state whose walks are counted: per upserted profile, the whole state was walked (and every profile
  // of the change before it): `apply --file` of 20,000 profiles took 34 s.
  let walks = 0;
  class CountedMap<K, V> extends Map<K, V> {
    override values(): MapIterator<V> {
      walks++;
      return super.values();
    }
  }
  const state = new CountedMap([...profiles(N)]);
  const inputs = [...profiles(2 * N).values()].slice(N).map((p) => ({ ...p }));
  const change = upsertChange(state, inputs);
  assert.equal(change.upsert.length, N);
  assert.ok(walks <= 2, `the state was walked ${walks} times for ${N} profiles`);
  // The conflicts found are those checked one by one, with the same error.
  const taken = { name: 'other', source: '127.100.0.7:80', destination: ['127.0.0.1:9001'] };
  assert.throws(
    () => upsertChange(state, [...inputs, taken]),
    (e: Error & { code?: string }) =>
      e.code === 'ECONFLICT' &&
      /source: "127\.100\.0\.7:80"\/tcp of profile "other" already belongs to profile "p00007"/.test(e.message),
  );
  const twice = { name: 'other', source: inputs[5]!.source, destination: ['127.0.0.1:9001'] };
  assert.throws(
    () => upsertChange(new Map(), [...inputs, twice]),
    (e: Error & { code?: string }) =>
      e.code === 'ECONFLICT' && e.message.includes(`already belongs to profile "${inputs[5]!.name}"`),
  );
  // A name whose chain another profile's name has (`P00001` beside `p00001`).
  assert.throws(
    () => upsertChange(state, [{ name: 'P00001', source: '127.99.0.1:80', destination: ['127.0.0.1:9001'] }]),
    (e: Error & { code?: string }) =>
      e.code === 'ECONFLICT' && /maps to chain .* already used by profile "p00001"/.test(e.message),
  );
});

test("re-applying many profiles of the CLI's indexed state file does not search the file once per profile", () => {
  // IndexedState.conflictOf searches the file's text for the profile's source line: for every profile of
  // `apply --file` replacing what the file holds, that was quadratic (20,000 profiles: 20 s).
  const list = [...profiles(N).values()];
  const state = indexState(serializeState(list));
  assert.ok(state, 'the canonical file is indexed');
  let searches = 0;
  const conflictOf = state.conflictOf.bind(state);
  state.conflictOf = (...args) => {
    searches++;
    return conflictOf(...args);
  };
  const change = upsertChange(
    state,
    list.map((p) => ({ ...p })),
  );
  assert.equal(change.upsert.length, N);
  assert.ok(searches <= 16, `the file's text was searched ${searches} times for ${N} profiles`);
  // A conflict in such a change is still found, with checkConflicts' error.
  const taken = { name: 'other', source: '127.100.0.9:80', destination: ['127.0.0.1:9001'] };
  assert.throws(
    () => upsertChange(state, [...list.slice(100).map((p) => ({ ...p })), taken]),
    (e: Error & { code?: string }) =>
      e.code === 'ECONFLICT' && e.message.includes('already belongs to profile "p00009"'),
  );
  // A few profiles still ask the index.
  searches = 0;
  upsertChange(state, [{ ...list[3]! }]);
  assert.equal(searches, 1);
});
