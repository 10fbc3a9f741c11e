/**
 * Keys under the profiles prefix that are no profile keys (`profiles/a/b`, a name iptlb refuses) could
 * only be removed with etcdctl. Fake store and fake nft kernel; no root, no timing assumptions (polling
 * with a bound only).
 */
import { afterEach, describe, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, type AgentOptions, type HostStatus } from '../../src/fleet/agent.js';
import { profileKey, refusalName } from '../../src/fleet/reconcile.js';
import { fleetDelete, fleetList, fleetStatus } from '../../src/fleet/fleet.js';
import { EtcdStore } from '../../src/fleet/store.js';
import { IptlbError } from '../../src/model/errors.js';
import { FakeNftKernel } from '../harness/fake-kernel.js';
import { FakeStore } from '../harness/fake-store.js';
import { P, fastAgent, prof, putProf, stateFile, until } from '../harness/fleet-agents.js';

const agents: Agent[] = [];
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop();
});

function makeAgent(store: FakeStore, extra: Partial<AgentOptions> = {}): Agent {
  const a = fastAgent(store, new FakeNftKernel(), stateFile(), extra);
  agents.push(a);
  return a;
}

/** `iptlb <argv>` with EtcdStore.connect handing out `store` (no etcd). */
async function cli(store: FakeStore, ...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const { main } = await import('../../src/cli/main.js');
  const connect = mock.method(EtcdStore, 'connect', async () => store);
  let out = '';
  let err = '';
  try {
    const code = await main(argv, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n') });
    return { code, out, err };
  } finally {
    connect.mock.restore();
  }
}

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
