/**
 * The fleet agent's reconcile logic against a fake store (etcd's semantics: revisions, MVCC ranges,
 * compaction, silent watches without quorum) and the stateful fake nft kernel. No root.
 */
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { readFileSync } from 'node:fs';
import { Agent, type AgentOptions, type HostStatus } from '../../src/fleet/agent.js';
import { decide, parseStored, profileKey } from '../../src/fleet/reconcile.js';
import { fleetApply, fleetDelete, fleetList, fleetStatus } from '../../src/fleet/fleet.js';
import { prefixEnd, parseEndpoints } from '../../src/fleet/store.js';
import { Core } from '../../src/core/core.js';
import { validateProfile } from '../../src/model/profile.js';
import { IptlbError } from '../../src/model/errors.js';
import { FakeNftKernel } from '../harness/fake-kernel.js';
import { FakeStore } from '../harness/fake-store.js';
import { P, cliWithStore, fastAgent, prof, putProf, stateFile, until } from '../harness/fleet-agents.js';
import type { NftTransaction } from '../../src/engines/nft/ops.js';

/** The agents a test made: stopped after it, also when it failed (a running one keeps the file's process alive). */
const agents: Agent[] = [];
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop();
});

function makeAgent(store: FakeStore, kernel: FakeNftKernel, file: string, extra: Partial<AgentOptions> = {}): Agent {
  const a = fastAgent(store, kernel, file, extra);
  agents.push(a);
  return a;
}

/** The profiles in the kernel that are in sync, by name. */
async function inKernel(a: Agent | Core): Promise<string[]> {
  const core = a instanceof Agent ? a.core : a;
  return (await core.status())
    .filter((r) => r.status === 'in-sync')
    .map((r) => r.name)
    .sort();
}
const ipCommits = (k: FakeNftKernel): NftTransaction[] => k.commits.filter((c) => c.family === 'ip');

describe('fleet: decide (pure)', () => {
  const v = (name: string, port: number, dest = 9000) => parseStored(name, JSON.stringify(prof(name, port, dest)));
  test('new and changed profiles are upserted, owned ones the store lost are removed, unchanged ones untouched', () => {
    const owned = new Map([
      ['a', validateProfile(prof('a', 1))],
      ['b', validateProfile(prof('b', 2))],
      ['gone', validateProfile(prof('gone', 3))],
    ]);
    const stored = new Map([
      ['a', v('a', 1)],
      ['b', v('b', 2, 9100)],
      ['c', v('c', 4)],
    ]);
    const { change, refused } = decide(stored, owned);
    assert.deepEqual(
      change.upsert.map((p) => p.name),
      ['b', 'c'],
    );
    assert.deepEqual(change.remove, ['gone']);
    assert.deepEqual(refused, []);
  });
  test('an invalid value is refused alone and its old version stays; a conflict is refused, the first holder keeps the address', () => {
    const owned = new Map([['a', validateProfile(prof('a', 1))]]);
    const stored = new Map([
      ['a', parseStored('a', '{"name":"a","source":"nonsense"}')],
      ['x', v('x', 5)],
      ['y', v('y', 5)], // same source as x
      ['z', v('z', 1)], // same source as a's old version, which stays
      ['m', parseStored('m', JSON.stringify(prof('n', 6)))], // name does not match the key
      ['j', parseStored('j', '{not json')],
    ]);
    const { change, refused } = decide(stored, owned);
    assert.deepEqual(
      change.upsert.map((p) => p.name),
      ['x'],
    );
    assert.deepEqual(change.remove, []);
    assert.deepEqual(
      refused.map((r) => [r.name, r.code]),
      [
        ['a', 'EINVAL_PROFILE'],
        ['j', 'EINVAL_PROFILE'],
        ['m', 'EINVAL_PROFILE'],
        ['y', 'ECONFLICT'],
        ['z', 'ECONFLICT'],
      ],
    );
    assert.match(refused.find((r) => r.name === 'm')!.message, /does not match its key/);
    assert.match(refused.find((r) => r.name === 'a')!.message, /^source:/);
  });
  test('conflicts go by the order of creation in the store, so a fresh host decides as one that held the older profile', () => {
    const at = (name: string, port: number, createRevision: number, dest = 9000) => ({
      ...v(name, port, dest),
      createRevision,
    });
    // "web" (created at 5) serves :1; "api" (created at 9, a name that sorts first) takes the same address.
    const stored = new Map([
      ['web', at('web', 1, 5)],
      ['api', at('api', 1, 9)],
    ]);
    for (const owned of [new Map([['web', validateProfile(prof('web', 1))]]), new Map<string, never>()]) {
      const { change, refused } = decide(stored, owned);
      assert.deepEqual(
        change.upsert.map((p) => p.name),
        owned.size ? [] : ['web'],
      );
      assert.deepEqual(change.remove, []);
      assert.deepEqual(
        refused.map((r) => [r.name, r.code]),
        [['api', 'ECONFLICT']],
      );
      assert.match(
        refused[0]!.message,
        /^source: "127\.100\.0\.1:1"\/tcp already belongs to profile "web", stored first$/,
      );
    }
    // An older profile changed to take a newer one's address gets it on every host; the newer one goes.
    const owned = new Map([
      ['old', validateProfile(prof('old', 2))],
      ['new', validateProfile(prof('new', 3))],
    ]);
    const moved = new Map([
      ['old', at('old', 3, 2)],
      ['new', at('new', 3, 4)],
    ]);
    let d = decide(moved, owned);
    assert.deepEqual(
      d.change.upsert.map((p) => p.name),
      ['old'],
    );
    assert.deepEqual(d.change.remove, ['new']);
    assert.deepEqual(
      d.refused.map((r) => r.name),
      ['new'],
    );
    assert.deepEqual(decide(moved, new Map()).refused, d.refused);
    // A refused new value keeps its old version only where nothing created before it claims what that
    // version does: "b" (created at 7) moves to "c"'s address and is refused; its old address was
    // taken by "a" (created at 3), so "b" goes.
    d = decide(
      new Map([
        ['a', at('a', 10, 3)],
        ['c', at('c', 11, 6)],
        ['b', at('b', 11, 7)],
      ]),
      new Map([
        ['a', validateProfile(prof('a', 12))],
        ['b', validateProfile(prof('b', 10))],
        ['c', validateProfile(prof('c', 11))],
      ]),
    );
    assert.deepEqual(
      d.change.upsert.map((p) => p.name),
      ['a'],
    );
    assert.deepEqual(d.change.remove, ['b']);
    // Without "a" taking it, "b" keeps its old version.
    d = decide(
      new Map([
        ['c', at('c', 11, 6)],
        ['b', at('b', 11, 7)],
      ]),
      new Map([
        ['b', validateProfile(prof('b', 10))],
        ['c', validateProfile(prof('c', 11))],
      ]),
    );
    assert.deepEqual(d.change, { upsert: [], remove: [] });
    assert.deepEqual(
      d.refused.map((r) => r.name),
      ['b'],
    );
  });
  test('an invalid value of the profile stored first still holds its address, on a fresh host too', () => {
    const bad = {
      ...parseStored('web', JSON.stringify({ ...prof('web', 1), destination: ['127.0.0.1:99999'] })),
      createRevision: 5,
    };
    assert.equal(bad.ok, false);
    const stored = new Map([
      ['web', bad],
      ['api', { ...v('api', 1, 9500), createRevision: 9 }],
    ]);
    for (const owned of [new Map([['web', validateProfile(prof('web', 1))]]), new Map<string, never>()]) {
      const { change, refused } = decide(stored, owned);
      assert.deepEqual(change, { upsert: [], remove: [] }, `${owned.size ? 'old' : 'fresh'} host`);
      assert.deepEqual(
        refused.map((r) => [r.name, r.code]),
        [
          ['api', 'ECONFLICT'],
          ['web', 'EINVAL_PROFILE'],
        ],
      );
    }
  });
  test('prefixEnd and endpoints', () => {
    assert.equal(prefixEnd('/iptlb/v1/profiles/'), '/iptlb/v1/profiles0');
    assert.deepEqual(parseEndpoints('http://a:2379, unix:///run/e:1'), ['http://a:2379', 'unix:///run/e:1']);
    assert.throws(
      () => parseEndpoints(''),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'etcd',
    );
    assert.throws(() => parseEndpoints('ftp://x'), /not an endpoint/);
  });
});

describe('fleet: agent against a fake store and the fake nft kernel', () => {
  test('lists at one revision in pages and commits the whole set as one transaction; writes during the list come by the watch', async () => {
    const store = new FakeStore();
    for (let i = 0; i < 25; i++) putProf(store, `p${i}`, 1000 + i);
    const kernel = new FakeNftKernel();
    const a = makeAgent(store, kernel, stateFile(), { pageSize: 7 });
    // A write between two pages must not be in the listed set (all pages at one revision).
    const range = store.range.bind(store);
    let pages = 0;
    store.range = async (s, e, o) => {
      const r = await range(s, e, o);
      if (s.startsWith(`${P}profiles/`) && ++pages === 2) putProf(store, 'late', 2000); // (not the host key's read)
      return r;
    };
    const applied: number[] = [];
    a.on('applied', (x) => applied.push(x.upserted));
    await a.start();
    await a.ready;
    assert.equal(pages, 4, 'four pages of at most 7');
    assert.equal(applied[0], 25, 'the listed set, without the late write, in one change');
    assert.equal(ipCommits(kernel).length, 1, 'one kernel transaction for the listed set');
    await until(async () => (await inKernel(a)).includes('late'), 'late write applied through the watch');
    assert.equal((await inKernel(a)).length, 26);
    await a.stop();
  });

  test('put, change, delete; a burst is carried by few commits (min-sync-ms); host status says the revision', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const a = makeAgent(store, kernel, stateFile(), { minSyncMs: 30 });
    await a.start();
    await a.ready;
    const r1 = putProf(store, 'web', 8080);
    await until(async () => (await inKernel(a)).includes('web'), 'web applied');
    await until(() => a.status().revision >= r1, 'revision advanced');
    await until(
      () => (JSON.parse(store.leased.get(`${P}hosts/h1`) ?? '{}') as HostStatus).revision >= r1,
      'host key written',
    );
    const host = JSON.parse(store.leased.get(`${P}hosts/h1`)!) as HostStatus;
    assert.equal(host.host, 'h1');
    assert.equal(host.watch, 'watching');
    const before = ipCommits(kernel).length;
    for (let i = 0; i < 40; i++) putProf(store, `b${i}`, 3000 + i);
    await until(async () => (await inKernel(a)).length === 41, '40 more applied');
    const burst = ipCommits(kernel).length - before;
    assert.ok(burst >= 1 && burst <= 3, `40 puts in one tick carried by ${burst} commit(s)`);
    putProf(store, 'web', 8080, 9200); // changed destinations
    const rd = store.del(profileKey(P, 'b0'));
    await until(() => a.status().revision >= rd, 'revision of the delete');
    assert.ok(!(await inKernel(a)).includes('b0'), 'b0 removed');
    const state = await a.core.readState();
    assert.deepEqual(state.get('web')!.destination, ['127.0.0.1:9200', '127.0.0.1:9201']);
    const st = a.status();
    assert.equal(st.watch, 'watching');
    assert.equal(st.engine, 'nft');
    assert.equal(st.profiles, 40);
    await a.stop();
  });

  test('an invalid profile is refused alone, reported in the host key; its old rules stay; fixed, it is applied', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const a = makeAgent(store, kernel, stateFile());
    putProf(store, 'good', 1);
    putProf(store, 'old', 2);
    await a.start();
    await a.ready;
    store.put(profileKey(P, 'old'), '{"name":"old","source":"127.100.0.1:2","destination":["not-an-address"]}');
    store.put(profileKey(P, 'bad'), '{"name":"other","source":"127.100.0.1:3","destination":["127.0.0.1:1"]}');
    putProf(store, 'fine', 4);
    await until(async () => (await inKernel(a)).includes('fine'), 'fine applied');
    await until(() => a.status().refused.length === 2, 'two refused');
    assert.deepEqual(
      a.status().refused.map((r) => [r.name, r.code]),
      [
        ['bad', 'EINVAL_PROFILE'],
        ['old', 'EINVAL_PROFILE'],
      ],
    );
    assert.deepEqual(await inKernel(a), ['fine', 'good', 'old'], 'old keeps its previous rules');
    await until(
      () => ((JSON.parse(store.leased.get(`${P}hosts/h1`) ?? '{}') as HostStatus).refused ?? []).length === 2,
      'refusals in the host key',
    );
    const rf = store.put(profileKey(P, 'bad'), JSON.stringify(prof('bad', 3)));
    await until(() => a.status().revision >= rf, 'fix applied');
    assert.ok((await inKernel(a)).includes('bad'), 'bad fixed and applied');
    assert.deepEqual(
      a.status().refused.map((r) => r.name),
      ['old'],
    );
    await a.stop();
  });

  test('a VIP conflict is decided alike on a host that served the older profile and on a fresh one', async () => {
    const store = new FakeStore();
    const k1 = new FakeNftKernel();
    const a1 = makeAgent(store, k1, stateFile());
    putProf(store, 'web', 1);
    await a1.start();
    await a1.ready;
    // Written past `fleet apply`'s check (etcdctl, another tool): a newer profile, a name that sorts first.
    const r = putProf(store, 'api', 1, 9500);
    await until(() => a1.status().revision >= r, 'h1 at the revision');
    const a2 = makeAgent(store, new FakeNftKernel(), stateFile(), { host: 'h2' });
    await a2.start();
    await a2.ready;
    for (const a of [a1, a2]) {
      assert.deepEqual(await inKernel(a), ['web'], `${a.host}: the profile stored first serves`);
      assert.deepEqual(
        a.status().refused.map((x) => [x.name, x.code]),
        [['api', 'ECONFLICT']],
        a.host,
      );
    }
    // Deleted and stored again, "web" is the newer one: both hosts hand the address to "api".
    store.del(profileKey(P, 'web'));
    const r2 = putProf(store, 'web', 1);
    for (const a of [a1, a2]) {
      await until(() => a.status().revision >= r2, `${a.host} at the revision`);
      assert.deepEqual(await inKernel(a), ['api'], a.host);
      assert.deepEqual(
        a.status().refused.map((x) => x.name),
        ['web'],
        a.host,
      );
    }
  });

  test("an address a local state file's profile holds: the agent applies its profile there (a refusal would hold back every later revision)", async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const file = stateFile();
    const other = new Core({ stateFile: path.join(path.dirname(file), 'cli.db'), keepConntrack: true }, kernel);
    await other.transact(() => ({ upsert: [validateProfile(prof('local', 1, 7000))], remove: [] }), { run: true });
    putProf(store, 'a', 1); // the local profile's address
    putProf(store, 'b', 2);
    const a = makeAgent(store, kernel, file);
    await a.start();
    // (Refused, the revision would be retried forever: `ready` never comes.)
    await until(async () => (await inKernel(a)).join() === 'a,b', 'both applied');
    assert.deepEqual(a.status().refused, []);
    // A state-file core (the local CLI) is refused the agent's address instead.
    await assert.rejects(
      other.transact(() => ({ upsert: [validateProfile(prof('local2', 2, 7000))], remove: [] }), { run: true }),
      (e: IptlbError) => e.code === 'ECONFLICT' && e.field === 'source',
    );
    await a.stop();
  });

  test("a name a local state file's profile holds: the agent applies its profile of that name too, as it takes an address (a refusal would hold back every later revision)", async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const file = stateFile();
    const other = new Core({ stateFile: path.join(path.dirname(file), 'cli.db'), keepConntrack: true }, kernel);
    // Logging: a rule carries the name in the table (a state-file core creating "web" is refused it).
    const local = validateProfile({ ...prof('web', 7, 7000), logEnabled: true });
    await other.transact(() => ({ upsert: [local], remove: [] }), { run: true });
    putProf(store, 'web', 1); // another address, the same name
    const a = makeAgent(store, kernel, file);
    await a.start();
    // (Refused, the revision would be retried forever: `ready` never comes.)
    await until(async () => (await inKernel(a)).includes('web'), 'web applied');
    assert.deepEqual(a.status().refused, []);
    await a.stop();
  });

  test('restart: orphans of its own are removed in the same transaction that applies the listed set; profiles it does not own are not touched', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const file = stateFile();
    // A profile of another state file (the local CLI's), on the same kernel.
    const other = new Core({ stateFile: path.join(path.dirname(file), 'cli.db'), keepConntrack: true }, kernel);
    await other.transact(() => ({ upsert: [validateProfile(prof('local', 7000))], remove: [] }), { run: true });
    putProf(store, 'a', 1);
    putProf(store, 'b', 2);
    const a1 = makeAgent(store, kernel, file);
    await a1.start();
    await a1.ready;
    await a1.stop(); // as after SIGKILL the rules and the state file stay
    store.del(profileKey(P, 'b'));
    putProf(store, 'c', 3);
    const before = ipCommits(kernel).length;
    const a2 = makeAgent(store, kernel, file);
    const first: { upserted: number; removed: number }[] = [];
    a2.on('applied', (x) => first.push(x));
    await a2.start();
    await a2.ready;
    assert.deepEqual(first[0], { ...first[0], upserted: 1, removed: 1 });
    assert.equal(ipCommits(kernel).length - before, 1, 'one transaction: c added and b removed together');
    assert.deepEqual(await inKernel(a2), ['a', 'c']);
    assert.deepEqual(await inKernel(other), ['local'], "the CLI's profile is untouched");
    await a2.stop();
  });

  test('compacted start revision / dead watch: re-list at a fresh revision, apply the difference, miss nothing', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const a = makeAgent(store, kernel, stateFile());
    putProf(store, 'a', 1);
    putProf(store, 'b', 2);
    await a.start();
    await a.ready;
    const ranges = store.profileRanges;
    // Partition: the watch dies; meanwhile the store changes and is compacted past the agent's revision.
    store.setDown(true);
    await until(() => a.status().watch === 'unreachable', 'unreachable');
    assert.deepEqual(await inKernel(a), ['a', 'b'], 'the kernel keeps the last applied rules');
    store.down = false; // the store is back for writers, not yet... (writes below happen while the agent backs off)
    store.del(profileKey(P, 'a'));
    putProf(store, 'c', 3);
    store.compact();
    await until(async () => (await inKernel(a)).join() === 'b,c', 're-listed and applied the difference');
    assert.ok(store.profileRanges > ranges, 're-listed');
    // A watch killed (cancel) without an outage: re-list too.
    store.killWatches('watch cancelled: ');
    putProf(store, 'd', 4);
    await until(async () => (await inKernel(a)).join() === 'b,c,d', 'd after the cancel');
    // d may come with the re-list (put before its range) rather than by the new watch: the watch is
    // then created right after that commit, so its state is 'listing' for that moment.
    await until(() => a.status().watch === 'watching', 'watching again');
    // The start revision compacted before the watch is created (etcd: created, then cancelled): re-list.
    const watch = store.watch.bind(store);
    let compactedOnce = false;
    store.watch = async (s, e, from, h) => {
      if (!compactedOnce) {
        compactedOnce = true;
        putProf(store, 'e', 5);
        store.compact();
      }
      return watch(s, e, from, h);
    };
    store.killWatches();
    await until(async () => (await inKernel(a)).join() === 'b,c,d,e', 'e after the compacted watch');
    assert.ok(compactedOnce);
    await a.stop();
  });

  test("a watch whose member went away is opened again from the mirror's revision: nothing missed, nothing re-listed; again and again, or compacted meanwhile: re-list", async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const lines: string[] = [];
    const a = makeAgent(store, kernel, stateFile(), { log: (l) => lines.push(l) });
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    await until(() => store.watching === 1, 'watching');
    const ranges = store.profileRanges;
    // The connection is lost; a put and a delete land before the watch is opened again.
    store.killWatches('watch disconnected: 14 UNAVAILABLE: Connection dropped', true);
    putProf(store, 'b', 2);
    putProf(store, 'c', 3);
    store.del(profileKey(P, 'c'));
    await until(async () => (await inKernel(a)).join() === 'a,b', 'b by the reopened watch');
    putProf(store, 'd', 4);
    await until(async () => (await inKernel(a)).join() === 'a,b,d', 'd by the reopened watch');
    assert.equal(store.profileRanges, ranges, 'no re-list');
    assert.equal(a.status().watch, 'watching');
    assert.ok(
      lines.some((l) => /watch disconnected: .*; watching again from revision \d+, without re-listing/.test(l)),
    );
    assert.ok(!lines.some((l) => /agent: store: /.test(l)), 'no session ended');
    // Lost again and again: after three resumes in a minute the agent re-lists.
    for (let i = 0; i < 2; i++) {
      const before = lines.length;
      store.killWatches('watch disconnected: flapping', true);
      await until(() => lines.slice(before).some((l) => /flapping; watching again/.test(l)), `resume ${i + 2}`);
      await until(() => store.watching === 1, 'the watch opened again');
    }
    const before = lines.length;
    store.killWatches('watch disconnected: flapping', true);
    await until(() => store.profileRanges > ranges, 're-listed after four losses in a minute');
    assert.ok(lines.slice(before).some((l) => /agent: store: watch disconnected: flapping/.test(l)));
    await until(() => a.status().watch === 'watching' && store.watching === 1, 'watching after the re-list');
    // Compacted past the mirror's revision while the connection was lost: the reopened watch is
    // cancelled, and the agent re-lists.
    const listed = store.profileRanges;
    store.killWatches('watch disconnected: again', true);
    putProf(store, 'e', 5);
    store.compact();
    await until(async () => (await inKernel(a)).join() === 'a,b,d,e', 'e by the re-list');
    assert.ok(store.profileRanges > listed, 're-listed');
    await a.stop();
  });

  test('quorum lost: the watch is silent, the linearizable check notices, rules stay; quorum back: re-list applies what was missed', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    // A read past its deadline is a read without answer: it ends the session at once, not after
    // checkTimeoutMs of failing.
    const a = makeAgent(store, kernel, stateFile(), { checkTimeoutMs: 600_000 });
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    await until(() => a.status().watch === 'watching', 'watching');
    store.quorumLost = true;
    putProf(store, 'b', 2); // committed by the majority, never delivered to this member's watch
    await until(() => a.status().watch === 'unreachable', 'silence detected');
    assert.match(a.status().error ?? '', /linearizable read failed|no quorum/);
    assert.deepEqual(await inKernel(a), ['a']);
    store.quorumLost = false;
    await until(async () => (await inKernel(a)).join() === 'a,b', 'b applied after quorum is back');
    await until(() => a.status().watch === 'watching' && a.status().error === undefined, 'watching again');
    await a.stop();
  });

  test('checks that fail with an answer (a leader election) end the session only once they have failed for checkTimeoutMs', async () => {
    const store = new FakeStore();
    const lines: string[] = [];
    const a = makeAgent(store, new FakeNftKernel(), stateFile(), { log: (l) => lines.push(l) });
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    await until(() => store.watching === 1, 'watching');
    const ranges = store.profileRanges;
    // Three checks in a row fail (20 ms apart: 40 ms of failing, less than 200), then they answer again.
    store.revisionFails = 3;
    await until(() => store.revisionFails === 0, 'three failed checks');
    putProf(store, 'b', 2);
    await until(async () => (await inKernel(a)).join() === 'a,b', 'b by the same watch');
    assert.equal(store.profileRanges, ranges, 'no re-list');
    assert.ok(!lines.some((l) => /linearizable read failed/.test(l)), lines.join('\n'));
    // Failing for longer than checkTimeoutMs ends the session (and the agent re-lists).
    store.revisionFails = 1_000_000;
    await until(
      () => lines.some((l) => /linearizable read failed: .*leader changed.*\(failing for \d+ ms\)/.test(l)),
      'session ended',
    );
    store.revisionFails = 0;
    await until(() => store.profileRanges > ranges && a.status().watch === 'watching', 're-listed');
    await a.stop();
  });

  /**
   * An agent (profile a applied) whose store watch delivers nothing by itself: the test sends events and
   * progress notifications through the watch's handlers.
   */
  async function agentWithHeldWatch() {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    let handlers: import('../../src/fleet/store.js').WatchHandlers | undefined;
    const watch = store.watch.bind(store);
    store.watch = async (s, e, from, h) => {
      handlers = h;
      return watch(s, e, from, { events: () => {}, failed: h.failed });
    };
    const a = makeAgent(store, kernel, stateFile());
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    await until(() => handlers !== undefined, 'watch created');
    // (The live handlers: a watch opened again replaces them.)
    const events: import('../../src/fleet/store.js').WatchHandlers['events'] = (...args) => handlers!.events(...args);
    return { store, kernel, a, handlers: { events } };
  }

  test('a watcher catching up sends older events under a newer header revision: none is skipped', async () => {
    const { store, a, handlers } = await agentWithHeldWatch();
    const L = store.rev;
    // The store reaches L + 5, x and y written at L + 1 and L + 3 (as the events below say: the agent's checks
    // verify the newest write it saw) and other keys between: the agent's check takes a store behind its mirror
    // for one restored from a snapshot.
    putProf(store, 'x', 2);
    store.put('/elsewhere/k', '1');
    putProf(store, 'y', 3);
    for (let i = 0; i < 2; i++) store.put('/elsewhere/k', String(i));
    const ev = (name: string, port: number, rev: number) => ({
      type: 'put' as const,
      key: profileKey(P, name),
      value: JSON.stringify(prof(name, port)),
      modRevision: rev,
    });
    handlers.events([ev('x', 2, L + 1)], L + 5);
    handlers.events([ev('y', 3, L + 3)], L + 5);
    handlers.events([ev('x', 2, L + 1)], L + 5); // a duplicate is ignored
    await until(async () => (await inKernel(a)).join() === 'a,x,y', 'x and y applied');
    await until(() => a.status().revision === L + 3, 'the applied revision is the newest event, not the header');
    handlers.events([], L + 5); // a progress notification
    await until(() => a.status().revision === L + 5, 'progress notification advances the applied revision');
    await a.stop();
  });

  test('a progress notification that comes while a commit is under way advances the applied revision once it lands', async () => {
    const { store, kernel, a, handlers } = await agentWithHeldWatch();
    // The kernel holds the next commit until released.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let started = false;
    const commit = kernel.commit.bind(kernel);
    kernel.commit = async (tx) => {
      started = true;
      await held;
      return commit(tx);
    };
    const L = store.rev;
    putProf(store, 'x', 2);
    store.put('/elsewhere/k', '1');
    handlers.events(
      [{ type: 'put', key: profileKey(P, 'x'), value: JSON.stringify(prof('x', 2)), modRevision: L + 1 }],
      L + 1,
    );
    await until(() => started, 'the commit of x under way');
    handlers.events([], L + 2); // a progress notification meanwhile
    release();
    await until(async () => (await inKernel(a)).join() === 'a,x', 'x applied');
    await until(() => a.status().revision === L + 2, 'the applied revision is the notification');
    await a.stop();
  });

  test('the events of one transaction share its revision (fleet apply --file, fleet delete a b): every one is applied', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const a = makeAgent(store, kernel, stateFile());
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    await until(() => a.status().watch === 'watching', 'watching');
    const put = (name: string, port: number) => ({ put: profileKey(P, name), value: JSON.stringify(prof(name, port)) });
    const rev = store.write([put('m1', 2), put('m2', 3), put('m3', 4)]);
    await until(async () => (await inKernel(a)).join() === 'a,m1,m2,m3', 'all three applied');
    await until(() => a.status().revision === rev, 'at the transaction revision');
    store.write([{ delete: profileKey(P, 'm1') }, { delete: profileKey(P, 'm3') }]);
    await until(async () => (await inKernel(a)).join() === 'a,m2', 'both deleted');
    await a.stop();
  });

  test('host key: a failed lease grant is retried with backoff', async () => {
    const store = new FakeStore();
    store.leaseFails = 3;
    const kernel = new FakeNftKernel();
    const lines: string[] = [];
    const a = makeAgent(store, kernel, stateFile(), { log: (l) => lines.push(l) });
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    await until(() => store.leased.has(`${P}hosts/h1`), 'host key written after three failures');
    assert.ok(lines.some((l) => /host status not written/.test(l)));
    await a.stop();
  });

  test('a host key gone with its lease (stopped past its TTL, revoked) is written again by the next check', async () => {
    const store = new FakeStore();
    const lines: string[] = [];
    const a = makeAgent(store, new FakeNftKernel(), stateFile(), { log: (l) => lines.push(l) });
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    const key = `${P}hosts/h1`;
    await until(() => store.leased.has(key), 'host key written');
    store.leased.delete(key); // the lease expired while the process was stopped
    await until(() => store.leased.has(key), 'host key written again, without a profile change');
    assert.ok(lines.some((l) => /host key \/iptlb\/v1\/hosts\/h1 is gone/.test(l)));
    await a.stop();
  });

  test('many refused profiles: the host key lists the first 100 and counts all; the log says 20 and how many more; later, only what changed is logged', async () => {
    const store = new FakeStore();
    const lines: string[] = [];
    for (let i = 0; i < 150; i++) store.put(profileKey(P, `bad${String(i).padStart(3, '0')}`), '{not json');
    putProf(store, 'good', 1);
    const a = makeAgent(store, new FakeNftKernel(), stateFile(), { log: (l) => lines.push(l) });
    await a.start();
    await a.ready;
    const st = a.status();
    assert.equal(st.refused.length, 100);
    assert.equal(st.refusedCount, 150);
    assert.equal(st.refused[0]!.name, 'bad000');
    assert.equal(lines.filter((l) => /refused profile "bad/.test(l)).length, 20);
    assert.ok(lines.some((l) => /and 130 more newly refused profile\(s\) \(150 refused in all/.test(l)));
    // One more refused, one fixed: two lines, not the whole list again.
    lines.length = 0;
    store.put(profileKey(P, 'bad999'), '{not json');
    store.put(profileKey(P, 'bad000'), JSON.stringify(prof('bad000', 2)));
    await until(
      () => a.status().refusedCount === 150 && lines.some((l) => /no longer refused/.test(l)),
      'both changes',
    );
    assert.deepEqual(
      lines.filter((l) => /refused/.test(l)),
      [
        'agent: refused profile "bad999" (EINVAL_PROFILE): value: not JSON (Expected property name or \'}\' in JSON at position 1)',
        'agent: no longer refused: "bad000" (150 refused now)',
      ],
    );
    await a.stop();
  });

  test('kernel drift (flushed table) is repaired by the periodic sync without re-listing', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const a = makeAgent(store, kernel, stateFile());
    putProf(store, 'a', 1);
    putProf(store, 'b', 2);
    await a.start();
    await a.ready;
    kernel.tables.delete('ip'); // someone ran `nft delete table ip iptlb`
    assert.deepEqual(await inKernel(a), []);
    const ranges = store.profileRanges;
    assert.equal(await a.repairDrift(), true);
    assert.deepEqual(await inKernel(a), ['a', 'b']);
    assert.equal(store.profileRanges, ranges, 'no re-list (the periodic host-key reads are not lists)');
    await a.stop();
  });

  test('a drift repair refused the same way at every check (a rule of another tool in a base chain) is said once, again when it changes; the repair once the rule is gone', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const lines: string[] = [];
    const a = makeAgent(store, kernel, stateFile(), { log: (l) => lines.push(l) });
    putProf(store, 'a', 1);
    putProf(store, 'b', 2);
    await a.start();
    await a.ready;
    assert.deepEqual(await inKernel(a), ['a', 'b']);
    const t = kernel.tables.get('ip')!;
    const set = [...t.sets.values()].find((x) => x.size === 2)!;
    const [first, second] = [...set];
    set.delete(first!); // one profile's address gone from its dispatch set: drift
    t.chains.get('output')!.unshift({ kind: 'foreign', text: 'tcp dport 22 counter' }); // and no rebuild
    const count = (re: RegExp): number => lines.filter((l) => re.test(l)).length;
    for (let i = 0; i < 5; i++) assert.equal(await a.repairDrift(), false);
    assert.equal(count(/^agent: drift check: .*did not write in its base chain output/), 1, lines.join('\n'));
    assert.equal(count(/^sync [ab]: modified/), 1, lines.join('\n'));
    // The drift changes: said again, once.
    set.delete(second!);
    for (let i = 0; i < 3; i++) assert.equal(await a.repairDrift(), false);
    assert.equal(count(/^agent: drift check: /), 2, lines.join('\n'));
    assert.equal(count(/^sync [ab]: modified/), 3, lines.join('\n'));
    // The rule is deleted: the repair goes through, its drift said with it.
    t.chains.get('output')!.splice(0, 1);
    lines.length = 0;
    assert.equal(await a.repairDrift(), true);
    assert.deepEqual(await inKernel(a), ['a', 'b']);
    assert.equal(count(/^sync [ab]: modified/), 2, lines.join('\n'));
    assert.equal(count(/^agent: drift repaired: a modified, b modified/), 1, lines.join('\n'));
    await a.stop();
  });

  test('a kernel refusal changes nothing and is retried; the rest of the fleet logic goes on', async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const a = makeAgent(store, kernel, stateFile());
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    let refuse = 2;
    kernel.fail = () => (refuse-- > 0 ? new IptlbError('EKERNEL', 'fake refusal') : undefined);
    putProf(store, 'b', 2);
    await until(async () => (await inKernel(a)).join() === 'a,b', 'b applied after two refusals');
    await a.stop();
  });

  test('bad options are one-line EUSAGE errors naming the field', () => {
    const store = new FakeStore();
    assert.throws(
      () => new Agent({ etcd: store, host: 'bad host' }),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'host',
    );
    assert.throws(
      () => new Agent({ etcd: store, host: 'h', prefix: 'iptlb' }),
      (e: IptlbError) => e.field === 'prefix',
    );
    assert.throws(
      () => new Agent({ etcd: store, host: 'h', minSyncMs: -1 }),
      (e: IptlbError) => e.field === 'minSyncMs',
    );
  });
});

describe('fleet: two agents on one state file', () => {
  test("the second is refused (ELOCK naming state-file, one line) and changes nothing: it would remove the first one's profiles as its own orphans", async () => {
    const file = stateFile();
    const kernel = new FakeNftKernel();
    const store = new FakeStore();
    putProf(store, 'a', 1);
    putProf(store, 'b', 2);
    const first = makeAgent(store, kernel, file);
    await first.start();
    await first.ready;
    // Another store (another --prefix, another etcd) that holds nothing.
    const other = new FakeStore();
    // (allowEmptyStore: its empty list removes what the state file holds, as the orphans it then owns, below.)
    const second = makeAgent(other, kernel, file, { host: 'h2', allowEmptyStore: true });
    const commits = kernel.commits.length;
    const stateBefore = readFileSync(file, 'utf8');
    await assert.rejects(second.start(), (e: IptlbError) => {
      assert.equal(e.code, 'ELOCK');
      assert.equal(e.field, 'state-file');
      assert.match(
        e.message,
        /^state-file: another agent of this process already runs on .*agent\.db \(it holds .*agent\.db\.agent\.lock\); two agents on one state file remove each other's profiles: give each agent its own --state-file$/,
      );
      return true;
    });
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(await inKernel(first), ['a', 'b'], "the first agent's profiles stay");
    assert.equal(kernel.commits.length, commits, 'no kernel commit');
    assert.equal(readFileSync(file, 'utf8'), stateBefore, 'the state file unchanged');
    assert.equal(other.leased.size, 0, 'no host key written');
    // Once the first has stopped, the second runs (and owns what the state file holds).
    await first.stop();
    await second.start();
    await second.ready;
    assert.deepEqual(await inKernel(second), [], 'its store holds nothing: the orphans are its own now');
  });

  test("the CLI's second agent, health checks on, is refused with the agent's own line, not the health checker's", async () => {
    const { runAgentCommand } = await import('../../src/cli/commands/agent.js');
    const { startWatchServices } = await import('../../src/cli/watch-services.js');
    const { EventEmitter } = await import('node:events');
    const file = stateFile();
    const kernel = new FakeNftKernel();
    const store = new FakeStore();
    putProf(store, 'a', 1);
    const proc = new EventEmitter() as InstanceType<typeof EventEmitter> &
      Pick<NodeJS.Process, 'on' | 'removeListener'>;
    const command = async (a: Agent, lines: string[]) => {
      const services = await startWatchServices(a.core, { health: true, log: (l) => lines.push(l), who: 'agent' });
      a.attachments.close = () => services.stop();
      return runAgentCommand(proc, services, a);
    };
    const first = makeAgent(store, kernel, file);
    const firstRuns = command(first, []);
    await first.ready;
    const lines: string[] = [];
    const second = makeAgent(new FakeStore(), kernel, file, { host: 'h2' });
    await assert.rejects(command(second, lines), (e: IptlbError) => {
      assert.equal(e.code, 'ELOCK');
      assert.match(e.message, /^state-file: another agent of this process already runs on .*agent\.db /);
      return true;
    });
    assert.deepEqual(lines, [], 'its health checker never started');
    proc.emit('SIGTERM');
    await firstRuns;
    // The first has stopped: its lock is free, and the refused one held none.
    const third = makeAgent(store, kernel, file, { host: 'h3' });
    await third.lock();
    third.unlock();
    await third.lock();
    third.unlock();
  });
});

/** An agent's state file and the fake kernel holding profiles a and b, applied from another store (agent stopped). */
async function owning(): Promise<{ kernel: FakeNftKernel; file: string }> {
  const kernel = new FakeNftKernel();
  const file = stateFile();
  const before = new FakeStore();
  putProf(before, 'a', 1);
  putProf(before, 'b', 2);
  const a = makeAgent(before, kernel, file);
  await a.start();
  await a.ready;
  await a.stop();
  return { kernel, file };
}

describe('fleet: a list with no profile key while the agent owns profiles (a wrong --prefix, an empty etcd)', () => {
  const HELD =
    /^agent: NOT removing the 2 profile\(s\) this agent owns: the store listed no key under \/iptlb\/v1\/profiles\/ \(revision \d+\); .*wrong --prefix, or an empty or new etcd cluster.*--allow-empty-store$/;
  const hostKeyOf = (store: FakeStore): HostStatus | undefined => {
    const v = store.leased.get(`${P}hosts/h1`);
    return v === undefined ? undefined : (JSON.parse(v) as HostStatus);
  };

  test('kept: no kernel commit, the state file unchanged, the host key says why, one log line; a key put then is applied as usual', async () => {
    const { kernel, file } = await owning();
    const commits = kernel.commits.length;
    const stateBefore = readFileSync(file, 'utf8');
    const store = new FakeStore(); // a new, empty cluster
    const lines: string[] = [];
    const a = makeAgent(store, kernel, file, { log: (l) => lines.push(l) });
    await a.start();
    await until(() => lines.some((l) => HELD.test(l)), 'the empty list held back');
    await until(() => /^empty store: /.test(hostKeyOf(store)?.error ?? ''), 'host key error');
    await until(() => hostKeyOf(store)?.watch === 'watching', 'watching');
    const host = hostKeyOf(store)!;
    assert.match(host.error!, /no key under \/iptlb\/v1\/profiles\/ .*the 2 profile\(s\) this agent owns are kept/);
    assert.equal(host.profiles, 2);
    assert.equal(host.emptyStoreHeld, true, 'said by a field of its own');
    // What `fleet status` reads: the host's row carries the error.
    const fs = await fleetStatus(store, P);
    assert.match(fs.hosts[0]!.status!.error!, /^empty store: /);
    assert.equal(fs.converged, false);
    assert.equal(fs.hosts[0]!.emptyStoreHeld, true);
    const cli = await cliWithStore(store, 'fleet', 'status', '--etcd', '127.0.0.1:1');
    assert.equal(cli.code, 3, cli.err);
    assert.match(
      cli.out,
      /^h1\t0\tnot applied \(keeps its 2 profile\(s\): the store listed no profile key; see ERROR\)\twatching\t.*\tempty store: no key under/m,
    );
    assert.match(cli.out, /NOT converged \(h1\)/);
    // A re-list (SIGHUP) finds the store empty again: still kept, not said again.
    await a.checkNow('SIGHUP');
    await until(() => lines.filter((l) => /^agent: listed 0 profile\(s\)/.test(l)).length === 2, 'listed again');
    await until(() => hostKeyOf(store)?.watch === 'watching', 'watching again');
    assert.equal(lines.filter((l) => HELD.test(l)).length, 1, 'said once');
    assert.equal(kernel.commits.length, commits, 'no kernel commit');
    assert.equal(readFileSync(file, 'utf8'), stateBefore, 'the state file unchanged');
    assert.deepEqual(await inKernel(a), ['a', 'b'], 'the kernel keeps them');
    assert.ok(!lines.some((l) => /removed as one change/.test(l)), lines.join('\n'));
    // A key appears (a watch event): the difference is committed as today, and the error goes.
    const applied: { upserted: number; removed: number }[] = [];
    a.on('applied', (x) => applied.push(x));
    const r = putProf(store, 'c', 3);
    await a.ready;
    await until(() => a.status().revision >= r, 'c applied');
    assert.deepEqual(await inKernel(a), ['c']);
    assert.deepEqual(applied[0], { ...applied[0], upserted: 1, removed: 2 });
    assert.equal(a.status().error, undefined);
    await until(() => hostKeyOf(store)?.error === undefined && hostKeyOf(store)!.revision >= r, 'host key error gone');
    assert.equal(hostKeyOf(store)!.emptyStoreHeld, undefined);
    assert.equal(a.status().emptyStoreHeld, undefined);
    assert.ok(
      lines.some((l) => /a key appeared under \/iptlb\/v1\/profiles\/; the store is no longer held back/.test(l)),
    );
  });

  test('allowEmptyStore: the empty list removes every owned profile, as before', async () => {
    const { kernel, file } = await owning();
    const lines: string[] = [];
    const a = makeAgent(new FakeStore(), kernel, file, { allowEmptyStore: true, log: (l) => lines.push(l) });
    const applied: { upserted: number; removed: number }[] = [];
    a.on('applied', (x) => applied.push(x));
    await a.start();
    await a.ready;
    assert.deepEqual(applied[0], { ...applied[0], upserted: 0, removed: 2 });
    assert.deepEqual(await inKernel(a), []);
    assert.deepEqual([...(await a.core.readState()).keys()], []);
    assert.ok(!lines.some((l) => HELD.test(l)));
    assert.throws(
      () => fastAgent(new FakeStore(), kernel, file, { allowEmptyStore: 'yes' as unknown as boolean }),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'allowEmptyStore',
    );
  });

  test('a store emptied by watch events (fleet delete, one by one) is applied: explicit deletes', async () => {
    const store = new FakeStore();
    putProf(store, 'a', 1);
    putProf(store, 'b', 2);
    putProf(store, 'c', 3);
    const lines: string[] = [];
    const a = makeAgent(store, new FakeNftKernel(), stateFile(), { log: (l) => lines.push(l) });
    await a.start();
    await a.ready;
    store.del(profileKey(P, 'a'));
    await until(async () => !(await inKernel(a)).includes('a'), 'a removed');
    const r = store.write([{ delete: profileKey(P, 'b') }, { delete: profileKey(P, 'c') }]);
    await until(() => a.status().revision >= r, 'the last deletes applied');
    assert.deepEqual(await inKernel(a), []);
    assert.deepEqual([...(await a.core.readState()).keys()], []);
    assert.equal(a.status().error, undefined);
    assert.ok(!lines.some((l) => HELD.test(l)));
  });
});

describe('fleet: what the agent says the kernel keeps', () => {
  test('etcd unreachable at start: the profiles its state file holds from an earlier run, not "revision 0"', async () => {
    const { kernel, file } = await owning();
    const store = new FakeStore();
    store.setDown(true);
    const lines: string[] = [];
    const second = makeAgent(store, kernel, file, { log: (l) => lines.push(l) });
    await second.start();
    await until(() => lines.some((l) => /^agent: store: /.test(l)), 'a store failure logged');
    await second.stop('SIGTERM');
    const said = lines.filter((l) => /kernel keeps/.test(l));
    assert.ok(said.length >= 2, lines.join('\n'));
    for (const l of said) {
      assert.match(
        l,
        /the kernel keeps the 2 profile\(s\) of its state file \(applied before this start; no revision listed yet\)/,
      );
      assert.doesNotMatch(l, /revision 0/);
    }
    assert.deepEqual(await inKernel(second), ['a', 'b']);
  });

  test('SIGTERM during a commit: the commit finishes (all or nothing), then the revision the kernel keeps is said', async () => {
    const kernel = new FakeNftKernel();
    const store = new FakeStore();
    const lines: string[] = [];
    const a = makeAgent(store, kernel, stateFile(), { log: (l) => lines.push(l) });
    putProf(store, 'a', 1);
    await a.start();
    await a.ready;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inCommit = new Promise<void>((r) => (entered = r));
    const commit = kernel.commit.bind(kernel);
    kernel.commit = async (tx) => {
      entered();
      await gate;
      return commit(tx);
    };
    const rb = putProf(store, 'b', 2);
    await inCommit;
    const stopping = a.stop('SIGTERM');
    release();
    await stopping;
    assert.deepEqual(await inKernel(a), ['a', 'b']);
    const said = lines.filter((l) => /SIGTERM/.test(l));
    assert.deepEqual(said, [
      'agent: SIGTERM: stopping once the commit under way is done; the host key goes with its lease',
      `agent: SIGTERM: stopped after the commit under way; the kernel keeps the rules of revision ${rb}`,
    ]);
  });
});

describe('fleet: stop with a stalled store', () => {
  for (const stalled of ['the host key read at start', 'the list', 'the watch cancel'] as const)
    test(`stop() (SIGTERM) does not wait for ${stalled} that a stalled etcd does not answer`, async () => {
      const store = new FakeStore();
      putProf(store, 'a', 1);
      const range = store.range.bind(store);
      let release: (() => void) | undefined;
      let released = false;
      const held = stalled === 'the list' ? `${P}profiles/` : `${P}hosts/`;
      if (stalled === 'the watch cancel') {
        const watch = store.watch.bind(store);
        store.watch = async (s, e, from, h) => {
          const w = await watch(s, e, from, h);
          return {
            cancel: () =>
              new Promise<void>((r) => {
                release = () => {
                  released = true;
                  void w.cancel().then(r);
                };
              }),
          };
        };
      }
      store.range = (s, e, o) =>
        stalled !== 'the watch cancel' && s.startsWith(held)
          ? new Promise((r) => {
              release = () => {
                released = true;
                r(range(s, e, o));
              };
            })
          : range(s, e, o);
      const lines: string[] = [];
      const a = makeAgent(store, new FakeNftKernel(), stateFile(), { log: (l) => lines.push(l) });
      await a.start(); // returns although the host key read is not answered
      if (stalled === 'the watch cancel') await until(() => a.status().watch === 'watching', 'watching');
      else await until(() => release !== undefined, `${stalled} asked`);
      const order: string[] = [];
      const stopping = a.stop('SIGTERM').then(() => order.push('stopped'));
      await until(() => release !== undefined || order.length > 0, 'the stop under way');
      // Every chance to stop on its own (no clock: event-loop turns), then the store answers.
      for (let i = 0; i < 2000 && !order.length; i++) await new Promise((r) => setImmediate(r));
      order.push('answered');
      release!();
      await stopping;
      assert.deepEqual(order, ['stopped', 'answered']);
      assert.equal(released, true);
      await new Promise((r) => setImmediate(r));
      if (stalled !== 'the watch cancel')
        assert.ok(
          !lines.some((l) => /^agent: (listed|revision \d+: )/.test(l)),
          'nothing listed or committed after the stop',
        );
    });
});

describe('fleet: operators side against the fake store', () => {
  test('apply validates as the CLI does, refuses conflicts with stored profiles, one transaction; delete; list; status', async () => {
    const store = new FakeStore();
    const r = await fleetApply(store, P, [prof('a', 1), prof('b', 2)] as never);
    assert.equal(r.revision, store.rev, 'both in one transaction (one revision)');
    await assert.rejects(
      fleetApply(store, P, [prof('c', 1)] as never),
      (e: IptlbError) => e.code === 'ECONFLICT' && e.field === 'source',
    );
    await assert.rejects(
      fleetApply(store, P, [{ name: 'x', source: 'nope', destination: [] }] as never),
      (e: IptlbError) => e.code === 'EINVAL_PROFILE' && e.field === 'source',
    );
    await assert.rejects(
      fleetApply(store, P, Array.from({ length: 129 }, (_, i) => prof(`q${i}`, 100 + i)) as never),
      (e: IptlbError) => e.code === 'EUSAGE' && /128/.test(e.message),
    );
    await assert.rejects(fleetDelete(store, P, ['nope']), (e: IptlbError) => e.code === 'ENOTFOUND');
    const rev = store.rev;
    const d = await fleetDelete(store, P, ['a']);
    assert.equal(d.revision, rev + 1);
    const l = await fleetList(store, P);
    assert.deepEqual(
      l.profiles.map((p) => p.name),
      ['b'],
    );
    // status: a missing host is unknown; a host behind the target is lagging.
    store.leased.clear();
    const fs = await fleetStatus(store, P, { revision: d.revision, expect: ['h1'] });
    assert.equal(fs.converged, false);
    assert.equal(fs.hosts[0]!.status, null);
    const kernel = new FakeNftKernel();
    const a = makeAgent(store, kernel, stateFile());
    await a.start();
    await a.ready;
    // The fake's leased keys are not in its key space: copy the host key there, as etcd would have it.
    await until(() => store.leased.has(`${P}hosts/h1`), 'host key');
    await until(
      () => (JSON.parse(store.leased.get(`${P}hosts/h1`)!) as HostStatus).revision >= d.revision,
      'host key at the revision',
    );
    store.put(`${P}hosts/h1`, store.leased.get(`${P}hosts/h1`)!);
    const ok = await fleetStatus(store, P, { revision: d.revision, expect: ['h1', 'h2'] });
    assert.deepEqual(
      ok.hosts.map((h) => [h.host, h.converged]),
      [
        ['h1', true],
        ['h2', false],
      ],
    );
    assert.equal(ok.converged, false, 'h2 is unknown');
    const only = await fleetStatus(store, P, { revision: d.revision });
    assert.equal(only.converged, true);
    await a.stop();
  });
});

describe('fleet: writers at once', () => {
  test('apply writes only if no profile was stored since its check: a racing conflicting write is seen, a harmless one retried', async () => {
    const store = new FakeStore();
    let races = 1;
    store.beforeTxn = () => {
      if (races-- > 0) store.put(profileKey(P, 'other'), JSON.stringify(prof('other', 1)));
    };
    await assert.rejects(
      fleetApply(store, P, [prof('mine', 1)] as never),
      (e: IptlbError) => e.code === 'ECONFLICT' && /already belongs to profile "other"/.test(e.message),
    );
    assert.deepEqual(
      (await fleetList(store, P)).profiles.map((p) => p.name),
      ['other'],
      'nothing written',
    );
    races = 2;
    let n = 0;
    store.beforeTxn = () => {
      if (races-- > 0) putProf(store, `busy${++n}`, 100 + n);
    };
    const r = await fleetApply(store, P, [prof('mine', 2)] as never);
    assert.equal(r.revision, store.rev);
    races = Infinity;
    await assert.rejects(
      fleetApply(store, P, [prof('late', 3)] as never),
      (e: IptlbError) => e.code === 'ESTORE' && /during each of 5 attempts/.test(e.message),
    );
    assert.ok(!(await fleetList(store, P)).profiles.some((p) => p.name === 'late'), 'nothing written');
  });
  test('the profile that holds an address can still be changed while a conflicting one (written past the check) is refused', async () => {
    const store = new FakeStore();
    putProf(store, 'web', 1);
    putProf(store, 'api', 1); // etcdctl: same address, created later, refused by every agent
    const r = await fleetApply(store, P, [prof('web', 1, 9500)] as never);
    assert.equal(r.revision, store.rev);
    await assert.rejects(
      fleetApply(store, P, [prof('api', 1, 9600)] as never),
      (e: IptlbError) => e.code === 'ECONFLICT' && /already belongs to profile "web"/.test(e.message),
    );
  });
  test('status reads a host key of another version (no refused list) without failing; --expect names must be host names', async () => {
    const store = new FakeStore();
    store.put(`${P}hosts/g`, JSON.stringify({ host: 'g', revision: 5 }));
    const s = await fleetStatus(store, P, { revision: 1 });
    assert.deepEqual(s.hosts[0]!.status!.refused, []);
    const { main } = await import('../../src/cli/main.js');
    let err = '';
    const code = await main(['fleet', 'status', '--etcd', 'unix:///nonexistent/e:1', '--expect', 'a,bad host'], {
      out: () => {},
      err: (x) => (err += x + '\n'),
    });
    assert.equal(code, 2);
    assert.match(err, /^iptlb: error: expect: "bad host" must be/m);
  });
  test('list marks the profiles every agent refuses; status refuses a revision the store has not reached', async () => {
    const store = new FakeStore();
    putProf(store, 'web', 1);
    putProf(store, 'api', 1);
    const l = await fleetList(store, P);
    assert.deepEqual(
      l.profiles.map((p) => [p.name, p.conflict?.code ?? null]),
      [
        ['api', 'ECONFLICT'],
        ['web', null],
      ],
    );
    await assert.rejects(
      fleetStatus(store, P, { revision: store.rev + 1 }),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'revision' && /past the store's revision/.test(e.message),
    );
  });
  test("the agent's profile count is its state file's until the store answers", async () => {
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const file = stateFile();
    putProf(store, 'a', 1);
    putProf(store, 'b', 2);
    const a1 = makeAgent(store, kernel, file);
    await a1.start();
    await a1.ready;
    await a1.stop();
    store.setDown(true);
    const a2 = makeAgent(store, kernel, file);
    await a2.start();
    assert.equal(a2.status().profiles, 2);
  });
});

describe('fleet: CLI bad input (no etcd needed: refused before any call)', () => {
  const run = async (...argv: string[]): Promise<{ code: number; err: string }> => {
    const { main } = await import('../../src/cli/main.js');
    let err = '';
    const code = await main(argv, { out: () => {}, err: (s) => (err += s + '\n') });
    return { code, err };
  };
  test('agent without endpoints, bad numbers, bad prefix; fleet apply of an invalid profile; fleet status --revision', async () => {
    const saved = process.env.IPTLB_ETCD_ENDPOINTS;
    delete process.env.IPTLB_ETCD_ENDPOINTS;
    try {
      let r = await run('agent');
      assert.equal(r.code, 2);
      assert.match(r.err, /^iptlb: error: etcd: no etcd endpoint given/m);
      r = await run('agent', '--etcd', 'unix:///nonexistent/e:1', '--min-sync-ms', '-5');
      assert.equal(r.code, 2);
      assert.match(r.err, /min-sync-ms/);
      r = await run('agent', '--etcd', 'unix:///nonexistent/e:1', '--prefix', 'nope');
      assert.equal(r.code, 2);
      assert.match(r.err, /prefix:/);
      r = await run(
        'fleet',
        'apply',
        '--etcd',
        'unix:///nonexistent/e:1',
        '--profile',
        'a',
        '--src-addr',
        'nonsense',
        '--dest-addr',
        '127.0.0.1:1',
      );
      assert.equal(r.code, 2);
      assert.match(r.err, /^iptlb: error: source:/m);
      assert.doesNotMatch(r.err, /is required/, 'the profile flags reached fleet apply');
      r = await run('fleet', 'list', '--etcd', 'unix:///nonexistent/e:1', '--prefix', 'bad');
      assert.equal(r.code, 2);
      assert.match(r.err, /prefix:/);
      r = await run('fleet', 'status', '--etcd', 'unix:///nonexistent/e:1', '--revision', 'x');
      assert.equal(r.code, 2);
      assert.match(r.err, /revision:/);
    } finally {
      if (saved !== undefined) process.env.IPTLB_ETCD_ENDPOINTS = saved;
    }
  });
});

test("an agent's `applied` or `status` listener that throws changes nothing of its work: thrown again on its own", async () => {
  const { spawnSync } = await import('node:child_process');
  const { pathToFileURL } = await import('node:url');
  const { PROJECT_ROOT } = await import('../harness/env.js');
  const url = (f: string): string => JSON.stringify(pathToFileURL(path.join(PROJECT_ROOT, 'dist', f)).href);
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const thrown = [];
       process.on('uncaughtException', (e) => thrown.push(e.message));
       const { FakeNftKernel } = await import(${url('test/harness/fake-kernel.js')});
       const { FakeStore } = await import(${url('test/harness/fake-store.js')});
       const { fastAgent, putProf, stateFile, until, P } = await import(${url('test/harness/fleet-agents.js')});
       const store = new FakeStore();
       putProf(store, 'web', 8080);
       const a = fastAgent(store, new FakeNftKernel(), stateFile());
       a.on('applied', () => { throw new Error('applied listener'); });
       a.on('status', () => { throw new Error('status listener'); });
       await a.start();
       await a.ready;
       await until(() => store.leased.has(P + 'hosts/h1'), 'host key written');
       const host = JSON.parse(store.leased.get(P + 'hosts/h1'));
       const out = { error: host.error ?? null, status: (await a.core.status()).map((x) => x.name + ' ' + x.status) };
       await a.stop();
       setImmediate(() => process.stdout.write(JSON.stringify({ ...out, thrown: [...new Set(thrown)].sort() })));`,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  // Before, the applied listener's throw was said as the revision not applied (a kernel error on the host key,
  // retried with backoff), and the status listener's kept the host key from being written at all.
  assert.deepEqual(JSON.parse(r.stdout), {
    error: null,
    status: ['web in-sync'],
    thrown: ['applied listener', 'status listener'],
  });
});

describe('fleet: a store whose watch cancel fails (a FleetStore of an embedder)', () => {
  test('stopping the agent leaves no unhandled rejection: the cancel it no longer waits for is still caught', async () => {
    const kernel = new FakeNftKernel();
    const store = new FakeStore();
    putProf(store, 'a', 1);
    // The same store, but its watch handles' cancel rejects (a store of the embedder's own, a member gone).
    const watch = store.watch.bind(store);
    store.watch = async (...args: Parameters<FakeStore['watch']>) => {
      const w = await watch(...args);
      return {
        cancel: async () => {
          await w.cancel();
          throw new Error('cancel failed');
        },
      };
    };
    const unhandled: unknown[] = [];
    const seen = (e: unknown): void => void unhandled.push(e);
    process.on('unhandledRejection', seen);
    try {
      const a = makeAgent(store, kernel, stateFile());
      await a.start();
      await a.ready;
      await until(() => a.status().watch === 'watching', 'watching');
      await a.stop();
      // Past the turns in which a rejection nobody handles is reported.
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
      assert.deepEqual(unhandled, [], 'no unhandled rejection');
    } finally {
      process.off('unhandledRejection', seen);
    }
  });
});
