/**
 * Two fleet defects: keys under the profiles prefix that are no profile keys (`profiles/a/b`, a name
 * iptlb refuses) could only be removed with etcdctl; `fleet status --revision N` never converged when N
 * was reached by writes that are not profile events (hosts' own keys). Fake store and fake nft kernel;
 * no root, no timing assumptions (polling with a bound only).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { HostStatus } from '../../src/fleet/agent.js';
import { profileKey, refusalName } from '../../src/fleet/reconcile.js';
import { fleetDelete, fleetList, fleetStatus } from '../../src/fleet/fleet.js';
import { IptlbError } from '../../src/model/errors.js';
import { FakeStore } from '../harness/fake-store.js';
import { P, prof, putProf, until, cliWithStore, agentsStoppedAfterEach, putHostKey } from '../harness/fleet-agents.js';

const makeAgent = agentsStoppedAfterEach();

const cli = cliWithStore;

const hostKeyOf = (store: FakeStore, host = 'h1'): HostStatus | undefined => {
  const v = store.leased.get(`${P}hosts/${host}`);
  return v === undefined ? undefined : (JSON.parse(v) as HostStatus);
};
const keysOf = async (store: FakeStore): Promise<string[]> => (await fleetList(store, P)).profiles.map((p) => p.name);

/** A key's last part as EtcdStore reads it: etcd keys are bytes, read as latin1 (so "café" in UTF-8 is "cafÃ©"). */
const asStored = (utf8: string): string => Buffer.from(utf8, 'utf8').toString('latin1');
const LONG = 'z'.repeat(100);

/** A store with one valid profile and five keys under profiles/ that are no profile keys. */
function oddStore(): FakeStore {
  const store = new FakeStore();
  putProf(store, 'web', 1);
  store.put(profileKey(P, 'a/b'), JSON.stringify(prof('b', 2)));
  store.put(profileKey(P, 'web.1'), JSON.stringify(prof('web1', 3)));
  store.put(profileKey(P, 'x\ny'), '{}');
  store.put(profileKey(P, LONG), JSON.stringify(prof('z', 4)));
  store.put(profileKey(P, asStored('café')), JSON.stringify(prof('cafe', 5)));
  return store;
}

describe('keys under profiles/ that are no profile keys', () => {
  test('are refused by every agent and reported by fleet status and list, each under one name', async () => {
    const store = oddStore();
    const a = makeAgent(store);
    await a.start();
    await a.ready;
    await until(() => hostKeyOf(store)?.refusedCount === 5, 'five refusals in the host key');
    const listed = ['a/b', 'cafÃ©', 'web.1', 'x\\ny', `${'z'.repeat(77)}...`];
    assert.deepEqual(
      hostKeyOf(store)!.refused.map((r) => [r.name, r.code]),
      listed.map((n) => [n, 'EINVAL_PROFILE']),
    );
    assert.equal(hostKeyOf(store)!.profiles, 1, 'web alone is applied');
    const s = await fleetStatus(store, P);
    assert.equal(s.converged, false);
    assert.deepEqual(
      s.refused.map((r) => r.name),
      listed,
    );
    const l = await fleetList(store, P);
    assert.deepEqual(l.profiles.map((p) => refusalName(p.name)).sort(), [...listed, 'web'].sort());
    const r = await cli(store, 'fleet', 'status', '--etcd', '127.0.0.1:1');
    assert.equal(r.code, 3);
    assert.match(r.out, /REFUSED: applied on all 1 host\(s\)/);
  });

  test('fleet delete removes them by the name as listed (host key, fleet list), the exact last part, the typed UTF-8 name or the whole key, in one transaction', async () => {
    const store = oddStore();
    const a = makeAgent(store);
    await a.start();
    await a.ready;
    await until(() => hostKeyOf(store)?.refusedCount === 5, 'five refusals');
    const rev = store.rev;
    const d = await fleetDelete(store, P, [
      'a/b', // as listed, and its exact last part
      'x\\ny', // as listed: the newline escaped
      `${'z'.repeat(77)}...`, // as listed: cut
      'café', // as typed (UTF-8), listed as "cafÃ©"
      `${P}profiles/web.1`, // the whole key
    ]);
    assert.equal(d.revision, rev + 1, 'one transaction');
    assert.deepEqual(d.deleted, ['a/b', 'x\ny', LONG, asStored('café'), 'web.1']);
    assert.deepEqual(await keysOf(store), ['web']);
    await until(
      () => hostKeyOf(store)?.refusedCount === 0 && hostKeyOf(store)!.revision >= d.revision,
      'refusals gone',
    );
    const s = await fleetStatus(store, P, { revision: d.revision });
    assert.equal(s.converged, true);
    // The exact last part and the form fleet list shows work as well.
    store.put(profileKey(P, 'x\ny'), '{}');
    store.put(profileKey(P, asStored('café')), '{}');
    assert.deepEqual((await fleetDelete(store, P, ['x\ny', 'cafÃ©'])).deleted, ['x\ny', asStored('café')]);
    assert.deepEqual(await keysOf(store), ['web']);
  });

  test('input that matches no key is one line naming the field, ENOTFOUND, and nothing is deleted', async () => {
    const store = oddStore();
    const before = await keysOf(store);
    const rev = store.rev;
    for (const names of [['no/such'], ['web', 'no/such'], ['a/b', 'web.2'], ['A/B'], ['']]) {
      await assert.rejects(
        fleetDelete(store, P, names),
        (e: IptlbError) =>
          e.code === 'ENOTFOUND' &&
          e.field === 'name' &&
          /^name: /.test(e.message) &&
          !e.message.includes('\n') &&
          /nothing deleted/.test(e.message),
        names.join(' '),
      );
      assert.equal(store.rev, rev, `${names.join(' ')}: nothing written`);
      assert.deepEqual(await keysOf(store), before);
    }
    // A normal name that is not stored: as before.
    await assert.rejects(
      fleetDelete(store, P, ['nope']),
      (e: IptlbError) =>
        e.code === 'ENOTFOUND' &&
        e.field === 'name' &&
        e.message === `name: profile "nope" does not exist in the store (${P}profiles/nope)`,
    );
    // Two keys listed under one cut name: which one is meant cannot be told.
    store.put(profileKey(P, `${'z'.repeat(99)}y`), '{}');
    await assert.rejects(
      fleetDelete(store, P, [`${'z'.repeat(77)}...`]),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'name' && /2 keys/.test(e.message),
    );
    assert.equal(store.rev, rev + 1, 'nothing deleted');
    assert.deepEqual((await fleetDelete(store, P, [LONG])).deleted, [LONG], 'the exact last part');
  });

  test('the CLI: deleted as listed, exit 0; no match: one line, exit 1, nothing deleted; normal names as before', async () => {
    const store = oddStore();
    let r = await cli(store, 'fleet', 'delete', 'a/b', 'x\ny', '--etcd', '127.0.0.1:1');
    assert.equal(r.code, 0, r.err);
    assert.equal(r.err, `iptlb: fleet: deleted a/b, x\\ny at revision ${store.rev}\n`);
    const rev = store.rev;
    r = await cli(store, 'fleet', 'delete', 'web.1', 'no/such', '--etcd', '127.0.0.1:1');
    assert.equal(r.code, 1);
    assert.match(r.err, /^iptlb: error: name: "no\/such" [^\n]*nothing deleted\n$/);
    assert.equal(store.rev, rev);
    r = await cli(store, 'fleet', 'delete', 'web', '--etcd', '127.0.0.1:1', '--json');
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(JSON.parse(r.out), { revision: store.rev, deleted: ['web'] });
  });
});

describe('fleet status --revision N reached by writes that are not profile events', () => {
  test("a host whose applied revision holds N's profiles (no profile changed between) has N; an agent says how many keys it holds", async () => {
    const store = new FakeStore();
    putProf(store, 'web', 1);
    store.put(profileKey(P, 'a/b'), '{}'); // refused, yet a key the host's revision holds
    const a = makeAgent(store);
    await a.start();
    await a.ready;
    const r1 = putProf(store, 'api', 2);
    await until(() => (hostKeyOf(store)?.revision ?? 0) >= r1, 'api applied');
    assert.equal(hostKeyOf(store)!.profileKeys, 3, 'every key under profiles/, refused or not');
    // Writes that are no profile events (in etcd, the hosts' own keys are such writes).
    store.put('/elsewhere/x', '1');
    const n = store.put(`${P}other`, '2');
    assert.ok(n > r1);
    const s = await fleetStatus(store, P, { revision: n });
    assert.deepEqual(
      s.hosts.map((h) => [h.host, h.converged, h.lag]),
      [['h1', true, 0]],
    );
    assert.equal(s.target, n);
    const refused = s.refused.map((x) => x.name);
    assert.deepEqual(refused, ['a/b'], 'its refusals count: it has the target');
    await fleetDelete(store, P, ['a/b']);
    const rd = store.rev;
    await until(() => (hostKeyOf(store)?.revision ?? 0) >= rd, 'delete applied');
    const n2 = store.put('/elsewhere/x', '3');
    const ok = await fleetStatus(store, P, { revision: n2 });
    assert.equal(ok.converged, true);
    const r = await cli(store, 'fleet', 'status', '--etcd', '127.0.0.1:1', '--revision', String(n2));
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, new RegExp(`^h1\\t${rd}\\tcurrent \\(no profile change after ${rd}\\)\\t`, 'm'));
    assert.match(r.out, new RegExp(`^revision ${n2} \\(store at ${n2}\\): converged on all 1 host\\(s\\)$`, 'm'));
  });

  test("a profile put, changed or deleted after the host's revision (up to N) keeps it lagging; older agents (no count) as before", async () => {
    const store = new FakeStore();
    const host = (name: string, revision: number, profileKeys?: number): void =>
      putHostKey(store, name, revision, profileKeys);
    putProf(store, 'a', 1);
    const r2 = putProf(store, 'b', 2);
    const n1 = store.put('/elsewhere/x', '1');
    host('holds', r2, 2);
    host('old', r2); // an agent of before: no profileKeys
    host('wrong', r2, 3); // a count that does not match: not the same set
    const at = async (revision: number): Promise<Record<string, boolean>> =>
      Object.fromEntries((await fleetStatus(store, P, { revision })).hosts.map((h) => [h.host, h.converged]));
    assert.deepEqual(await at(n1), { holds: true, old: false, wrong: false });
    assert.deepEqual(await at(r2), { holds: true, old: true, wrong: true });
    const rd = store.del(profileKey(P, 'a'));
    const n2 = store.put('/elsewhere/x', '2');
    assert.deepEqual(await at(n1), { holds: true, old: false, wrong: false }, 'N before the delete');
    assert.deepEqual(await at(n2), { holds: false, old: false, wrong: false }, 'a deleted after r2');
    const lagging = (await fleetStatus(store, P, { revision: n2 })).hosts.find((h) => h.host === 'holds')!;
    assert.equal(lagging.lag, n2 - r2);
    host('afterDelete', rd, 1);
    const rc = putProf(store, 'b', 2, 9500); // b changed
    assert.equal((await at(n2)).afterDelete, true);
    assert.equal((await at(rc)).afterDelete, false, 'b changed after its revision');
    host('afterChange', rc, 1);
    const rn = putProf(store, 'c', 3); // a new key
    const n3 = store.put('/elsewhere/x', '3');
    assert.equal((await at(n3)).afterChange, false, 'c put after its revision');
    host('fresh', rn, 2);
    assert.equal((await at(n3)).fresh, true);
    // Deleted and stored again after the host's revision: a new key (its modification revision says so).
    store.del(profileKey(P, 'c'));
    putProf(store, 'c', 3);
    const n4 = store.put('/elsewhere/x', '4');
    assert.equal((await at(n4)).fresh, false);
  });

  test('N compacted while a host is below it: said in one line naming the field (whether a profile changed cannot be read)', async () => {
    const store = new FakeStore();
    const r1 = putProf(store, 'a', 1);
    const n = store.put('/elsewhere/x', '1');
    const st = {
      host: 'h',
      revision: r1,
      profiles: 1,
      refused: [],
      refusedCount: 0,
      watch: 'watching',
      profileKeys: 1,
    };
    store.leased.set(`${P}hosts/h`, JSON.stringify(st));
    store.put('/elsewhere/x', '2');
    store.compact(store.rev);
    await assert.rejects(
      fleetStatus(store, P, { revision: n }),
      (e: IptlbError) =>
        e.code === 'EUSAGE' && e.field === 'revision' && /compacted/.test(e.message) && !e.message.includes('\n'),
    );
    // A host at N or past it needs no read at N.
    store.leased.set(`${P}hosts/h`, JSON.stringify({ ...st, revision: n }));
    assert.equal((await fleetStatus(store, P, { revision: n })).converged, true);
  });
});

describe('fleet status without --revision after a deletion (the newest stored key is older than the deletion)', () => {
  test('a host at the target whose revision held more profile keys than the store holds now has not applied a deletion: lagging, exit 3; once it has, converged', async () => {
    const store = new FakeStore();
    const host = (name: string, revision: number, profileKeys?: number): void =>
      putHostKey(store, name, revision, profileKeys);
    putProf(store, 'a', 1);
    const r2 = putProf(store, 'b', 2);
    host('h1', r2, 2);
    host('old', r2); // an agent of before: no count, judged by its revision as before
    assert.equal((await fleetStatus(store, P)).converged, true);
    const rd = store.del(profileKey(P, 'a'));
    const s = await fleetStatus(store, P);
    assert.equal(s.target, r2, 'the newest stored key');
    const rows = Object.fromEntries(s.hosts.map((h) => [h.host, [h.converged, h.lag, h.deletionPending ?? false]]));
    assert.deepEqual(rows, { h1: [false, null, true], old: [true, 0, false] });
    assert.equal(s.converged, false);
    let r = await cli(store, 'fleet', 'status', '--etcd', '127.0.0.1:1');
    assert.equal(r.code, 3, r.out + r.err);
    assert.match(r.out, /^h1\t\d+\tlagging \(holds 2 profile key\(s\), the store fewer: a deletion not applied\)\t/m);
    host('h1', rd, 1);
    assert.equal((await fleetStatus(store, P)).converged, true);
    r = await cli(store, 'fleet', 'status', '--etcd', '127.0.0.1:1');
    assert.equal(r.code, 0, r.out + r.err);
  });
});

describe('fleet status over host keys another tool or version wrote', () => {
  test('a refused entry that is not an object with a string name, or a revision that is no whole number, is one row, not an internal error', async () => {
    const store = new FakeStore();
    const r1 = putProf(store, 'a', 1);
    const st = { revision: r1, profiles: 1, watch: 'watching', engine: 'nft', executor: 'native' };
    store.leased.set(`${P}hosts/n1`, JSON.stringify({ ...st, refused: [null, { name: 5 }, 'x'], refusedCount: 3 }));
    store.leased.set(`${P}hosts/n2`, JSON.stringify({ ...st, revision: 1e20, refused: [] }));
    store.leased.set(`${P}hosts/n3`, JSON.stringify({ ...st, revision: -1, refused: [] }));
    const r = await cli(store, 'fleet', 'status', '--etcd', '127.0.0.1:1');
    assert.equal(r.code, 3, r.out + r.err);
    assert.doesNotMatch(r.err, /internal error/);
    // n1 applied the target; the entries it lists cannot be read, but it counts 3 refused profiles.
    assert.match(r.out, /^n1\t\d+\tcurrent\twatching\tnft\/native\t1\t… 3 more\t-$/m);
    for (const h of ['n2', 'n3'])
      assert.match(
        r.out,
        new RegExp(`^${h}\\t-\\tunknown\\t.*unreadable host key \\(revision: must be a whole number`, 'm'),
      );
    assert.match(r.out, /NOT converged \(n2, n3\)/);
  });
});
