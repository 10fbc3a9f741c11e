/**
 * Fleet agent faults a probe found: a store revision that goes back (etcd restored from a snapshot),
 * lists over gRPC's receive limit, unbounded durations, a kernel refusal retried without a growing
 * backoff. Fake store and fake nft kernel, node:test's mock timers (time moves only when the test
 * ticks it); no root.
 */
import { afterEach, describe, mock, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { Agent, AgentOptions, HostStatus } from '../../src/fleet/agent.js';
import { profileKey } from '../../src/fleet/reconcile.js';
import { fleetStatus, listPrefix } from '../../src/fleet/fleet.js';
import { EtcdStore, fetchPageHalving, watchCompacted } from '../../src/fleet/store.js';
import { FakeNftKernel } from '../harness/fake-kernel.js';
import { FakeStore } from '../harness/fake-store.js';
import { IptlbError } from '../../src/model/errors.js';
import { P, fastAgent, prof, putProf, stateFile } from '../harness/fleet-agents.js';

const agents: Agent[] = [];
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop();
  mock.timers.reset();
});

function makeAgent(store: FakeStore, extra: Partial<AgentOptions> = {}, kernel = new FakeNftKernel()): Agent {
  const a = fastAgent(store, kernel, stateFile(), extra);
  agents.push(a);
  return a;
}

function mockTimers(t: TestContext): void {
  mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
  t.after(() => mock.timers.reset());
}

/** Lets promises and I/O (the state file) settle without moving the mocked clock. */
async function settle(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}

/**
 * Moves the mocked clock 1 ms at a time (see {@link tick}), letting promises and I/O settle after each, until
 * `cond` holds once no agent is in a commit; fails after `maxMs` of mocked time. Returns the mocked ms it took.
 * (A commit ends after the kernel took it: the state file is read again and the agent's status set after.)
 */
async function until(cond: () => boolean | Promise<boolean>, what: string, maxMs = 10_000): Promise<number> {
  for (let ms = 0; ; ms++) {
    await quiet();
    if (await cond()) return ms;
    if (ms >= maxMs) throw new Error(`not within ${maxMs} mocked ms: ${what}`);
    await tick(1);
  }
}

/** Whether an agent of this test is in a commit (the state file's I/O and lock: real time, beside the mocked clock). */
const committing = (): boolean =>
  agents.some((a) => (a as unknown as { committing?: Promise<void> }).committing !== undefined);

/** Waits, without moving the mocked clock, until no agent is in a commit. */
async function quiet(): Promise<void> {
  await unmoved(() => !committing(), 'the commits in flight done');
}

/**
 * Moves the mocked clock `ms`, once no agent is in a commit, and lets promises settle. A commit's I/O can take
 * thousands of event-loop turns on a loaded machine: had the clock moved meanwhile, those ms would have been
 * counted against the backoffs and intervals the tests check (CI: 'retried within 100 ms').
 */
async function tick(ms: number): Promise<void> {
  await quiet();
  mock.timers.tick(ms);
  await settle();
}

/**
 * Waits for `cond` without moving the mocked clock: only promises and I/O (the state file, the lock) run.
 * The real-time bound only stops a test that would otherwise hang; nothing is asserted about it.
 */
async function unmoved(cond: () => boolean, what: string): Promise<void> {
  const end = performance.now() + 30_000;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`never, with the mocked clock still: ${what}`);
    await settle(1);
  }
}

/** Moves the mocked clock `ms` in `step` ms steps (see {@link tick}). */
async function advance(ms: number, step = 10): Promise<void> {
  for (let t = 0; t < ms; t += step) await tick(step);
}

async function inKernel(a: Agent): Promise<string> {
  return (await a.core.status())
    .filter((r) => r.status === 'in-sync')
    .map((r) => r.name)
    .sort()
    .join();
}

const hostStatus = (store: FakeStore): HostStatus | undefined => {
  const v = store.leased.get(`${P}hosts/h1`);
  return v === undefined ? undefined : (JSON.parse(v) as HostStatus);
};

/** Mocked timers, a fake store holding profile `a`, and a started agent whose log lines are kept. */
async function startedWithA(t: TestContext): Promise<{ store: FakeStore; lines: string[]; a: Agent }> {
  mockTimers(t);
  const store = new FakeStore();
  const lines: string[] = [];
  const a = makeAgent(store, { log: (l) => lines.push(l) });
  putProf(store, 'a', 1);
  await a.start();
  return { store, lines, a };
}

describe('fleet agent: etcd restored from a snapshot (its revision goes back)', () => {
  for (const how of ['resuming the watch', 'linearizable check'] as const)
    test(`noticed ${how === 'resuming the watch' ? 'when the watch is resumed' : 'by the periodic check'}: the agent re-lists, applies what the store holds and writes its host key again`, async (t) => {
      const { store, lines, a } = await startedWithA(t);
      await until(async () => (await inKernel(a)) === 'a' && hostStatus(store)?.watch === 'watching', 'a applied');
      const snapshot = store.rev;
      const snapshotLeased = new Map(store.leased); // the host key as the snapshot holds it
      for (const [n, port] of [
        ['b', 2],
        ['c', 3],
        ['x', 4],
      ] as const)
        putProf(store, n, port);
      store.del(profileKey(P, 'x'));
      const newest = store.rev;
      await until(async () => (await inKernel(a)) === 'a,b,c' && hostStatus(store)?.revision === newest, 'b, c');
      const ranges = store.profileRanges;
      // Restored: b and c are gone, and d is written at a revision below the one the agent has seen.
      store.restore(snapshot, snapshotLeased, how === 'linearizable check');
      const d = putProf(store, 'd', 5);
      assert.ok(d < newest);
      await until(async () => (await inKernel(a)) === 'a,d', 'the store as it is now, d included');
      assert.ok(store.profileRanges > ranges, 're-listed');
      assert.ok(
        lines.some((l) =>
          new RegExp(`store revision \\d+ is below revision ${newest} .*\\(${how}\\).*re-listing`).test(l),
        ),
        lines.join('\n'),
      );
      await until(() => hostStatus(store)?.revision === d && hostStatus(store)?.watch === 'watching', 'host key');
      // And the watch follows the store from there.
      putProf(store, 'e', 6);
      await until(async () => (await inKernel(a)) === 'a,d,e', 'e by the watch');
    });

  test('the re-list after a restore applies what the store holds now, also a key the new history wrote at a revision the agent saw with another value', async (t) => {
    const { store, lines, a } = await startedWithA(t);
    await until(async () => (await inKernel(a)) === 'a' && hostStatus(store)?.watch === 'watching', 'a applied');
    const snapshot = store.rev;
    const b = putProf(store, 'b', 2, 9000);
    const c = putProf(store, 'c', 3);
    await until(async () => (await inKernel(a)) === 'a,b,c' && hostStatus(store)?.revision === c, 'b, c');
    // Restored; the first write of the new history is b, at the revision b had, with other destinations.
    store.restore(snapshot);
    assert.equal(putProf(store, 'b', 2, 9100), b);
    await until(() => lines.some((l) => /re-listing/.test(l)) && hostStatus(store)?.watch === 'watching', 're-listed');
    await until(async () => (await inKernel(a)) === 'a,b', 'c gone');
    assert.deepEqual((await a.core.readState()).get('b')?.destination, ['127.0.0.1:9100', '127.0.0.1:9101']);
  });

  // Restored, then written past every revision the agent saw before it looks: the store's revision does not go
  // back, but its history no longer holds the newest write the agent saw.
  for (const leasedRevisions of [true, false])
    for (const how of ['resuming the watch', 'periodic check'] as const)
      test(`restored and written past the revisions the agent saw before it looks: noticed ${how === 'resuming the watch' ? 'when the watch is resumed' : 'by the periodic check (a watch that stays open)'}, by ${leasedRevisions ? 'its own host key put (a write of its own, as in etcd)' : 'the newest profile write (a store whose host key puts say no revision)'}; the agent re-lists and serves what the store holds`, async (t) => {
        mockTimers(t);
        const store = new FakeStore({ leasedRevisions });
        const lines: string[] = [];
        const a = makeAgent(store, { log: (l) => lines.push(l) });
        putProf(store, 'a', 1);
        await a.start();
        await until(async () => (await inKernel(a)) === 'a' && hostStatus(store)?.watch === 'watching', 'a applied');
        const snapshot = store.rev;
        putProf(store, 'b', 2);
        const c = putProf(store, 'c', 3);
        await until(async () => (await inKernel(a)) === 'a,b,c' && hostStatus(store)?.revision === c, 'b, c');
        // The periodic check verifies the newest write as the check before it began: a few checks go by.
        await advance(100);
        const newest = store.rev; // c's, or the host key's put after it
        const ranges = store.profileRanges;
        // Restored: b and c are gone; d, e and other keys are written past every revision the agent saw.
        store.restore(snapshot, undefined, how === 'periodic check');
        const d = putProf(store, 'd', 4);
        assert.ok(d <= c);
        while (store.rev <= newest) store.put('/elsewhere/k', String(store.rev));
        const e = putProf(store, 'e', 5);
        assert.ok(e > newest);
        await until(async () => (await inKernel(a)) === 'a,d,e', 'the store as it is now: d included, b and c gone');
        assert.ok(store.profileRanges > ranges, 're-listed');
        const key = leasedRevisions ? `${P}hosts/h1` : profileKey(P, 'c');
        assert.ok(
          lines.some(
            (l) =>
              l ===
              `agent: the store no longer holds the write of ${key} at revision ${newest} this agent saw (${how}): etcd was restored from a snapshot or replaced; re-listing`,
          ),
          lines.join('\n'),
        );
        assert.ok(!lines.some((l) => /is below revision/.test(l)), 'the revision did not go back');
        await until(
          () => (hostStatus(store)?.revision ?? 0) >= e && hostStatus(store)?.watch === 'watching',
          'host key',
        );
        // And the watch follows the store from there, without re-listing again.
        const listed = store.profileRanges;
        putProf(store, 'f', 6);
        await until(async () => (await inKernel(a)) === 'a,d,e,f', 'f by the watch');
        await advance(200);
        assert.equal(store.profileRanges, listed, 'listed once');
        assert.equal(lines.filter((l) => /restored from a snapshot or replaced/.test(l)).length, 1);
      });

  test('not taken for a restore: the host key gone with its lease or written by another instance, a lost watch resumed, a profile deleted and written again, the revisions seen compacted', async (t) => {
    mockTimers(t);
    const store = new FakeStore({ leasedRevisions: true });
    const lines: string[] = [];
    const a = makeAgent(store, { log: (l) => lines.push(l) });
    putProf(store, 'a', 1);
    await a.start();
    await until(async () => (await inKernel(a)) === 'a' && hostStatus(store)?.watch === 'watching', 'a applied');
    await advance(100);
    const ranges = store.profileRanges;
    const key = `${P}hosts/h1`;
    store.expire(key);
    await until(() => store.leased.has(key), 'the host key written again');
    assert.ok(lines.some((l) => l === `agent: host key ${key} is gone (its lease lost); writing it again`));
    await advance(200);
    store.killWatches('watch disconnected: 14 UNAVAILABLE (fake)', true);
    await until(() => lines.some((l) => /watching again from revision/.test(l)) && store.watching === 1, 'resumed');
    const b = putProf(store, 'b', 2);
    await until(async () => (await inKernel(a)) === 'a,b' && hostStatus(store)?.revision === b, 'b');
    await advance(200);
    const other = JSON.stringify({ ...hostStatus(store), instance: '1-00000000' });
    await store.putLeased(key, other);
    await until(() => lines.some((l) => /WARNING: another live agent runs with --host h1/.test(l)), 'warned');
    await advance(200);
    store.del(profileKey(P, 'b'));
    await until(async () => (await inKernel(a)) === 'a', 'b deleted');
    await advance(200);
    const b2 = putProf(store, 'b', 3);
    await until(async () => (await inKernel(a)) === 'a,b' && hostStatus(store)?.revision === b2, 'b again');
    store.compact();
    await advance(200);
    const c = putProf(store, 'c', 4);
    store.del(profileKey(P, 'c'));
    store.compact();
    await until(async () => (await inKernel(a)) === 'a,b' && (hostStatus(store)?.revision ?? 0) > c, 'c and gone');
    store.compact();
    await advance(200);
    assert.equal(store.profileRanges, ranges, 'no re-list');
    assert.ok(!lines.some((l) => /restored from a snapshot or replaced/.test(l)), lines.join('\n'));
  });

  test("a host key holding another status of this agent than its last write is written again by the next check (not only a missing one); another instance's is not fought over", async (t) => {
    const { store, lines } = await startedWithA(t);
    const key = `${P}hosts/h1`;
    await until(() => hostStatus(store)?.watch === 'watching' && hostStatus(store)?.revision === store.rev, 'written');
    const stale = JSON.stringify({ ...hostStatus(store), revision: 1, watch: 'listing' });
    store.leased.set(key, stale);
    await until(() => store.leased.get(key) !== stale && hostStatus(store)?.revision === store.rev, 'written again');
    assert.ok(lines.some((l) => /host key \/iptlb\/v1\/hosts\/h1 does not hold this agent's last status/.test(l)));
    // Another agent with this --host: warned about, not overwritten at every check.
    const other = JSON.stringify({ ...hostStatus(store), instance: '1-00000000' });
    store.leased.set(key, other);
    await until(() => lines.some((l) => /WARNING: another live agent runs with --host h1/.test(l)), 'warned');
    mock.timers.tick(200);
    await settle(50);
    assert.equal(store.leased.get(key), other);
  });
});

describe('lists over the 4 MiB gRPC receive limit', () => {
  /**
   * An etcd3 client whose kv.range answers from `store` and fails as grpc-js does when the response would be
   * over 4 MiB, each key weighing `bytes` (250 profiles of 1,024 destinations: about 20 KB each).
   */
  function bigClient(store: FakeStore, bytes: number) {
    const calls: number[] = [];
    const client = {
      kv: {
        range: async (req: { key: Buffer; range_end: Buffer; limit: number; revision?: number }) => {
          calls.push(req.limit);
          const r = await store.range(req.key.toString('latin1'), req.range_end.toString('latin1'), {
            limit: req.limit,
            ...(req.revision ? { revision: req.revision } : {}),
          });
          const size = r.kvs.length * bytes;
          if (size > 4194304)
            throw new Error(`8 RESOURCE_EXHAUSTED: Received message larger than max (${size} vs 4194304)`);
          return {
            kvs: r.kvs.map((kv) => ({
              key: Buffer.from(kv.key, 'latin1'),
              value: Buffer.from(kv.value),
              mod_revision: String(kv.modRevision),
              create_revision: String(kv.createRevision),
            })),
            more: r.more,
            header: { revision: String(r.revision) },
          };
        },
      },
      close: () => {},
    };
    const Ctor = EtcdStore as unknown as new (client: unknown, timeout: number) => EtcdStore;
    return { etcd: new Ctor(client, 5000), calls };
  }

  test('a page over the limit is fetched again with half the limit (down to one key); the rest of that list asks for no more', async () => {
    const store = new FakeStore();
    for (let i = 0; i < 250; i++) putProf(store, `p${String(i).padStart(3, '0')}`, 1000 + i);
    const { etcd, calls } = bigClient(store, 20_000);
    const { kvs, revision } = await listPrefix(etcd, `${P}profiles/`);
    assert.equal(kvs.length, 250);
    assert.equal(new Set(kvs.map((k) => k.key)).size, 250);
    assert.equal(revision, store.rev);
    // 1000 and 500 and 250 are over 4 MiB at 20 KB a key, 125 fits: the second page asks for 125 at once.
    assert.deepEqual(calls, [1000, 500, 250, 125, 125]);
    // The next list learns again (the profiles may have shrunk), and the agent lists through the same call.
    calls.length = 0;
    await listPrefix(etcd, `${P}profiles/`);
    assert.deepEqual(calls, [1000, 500, 250, 125, 125]);
    // A key that is alone over the limit is an error (etcd's request limit makes one impossible): no loop.
    const huge = bigClient(store, 5_000_000);
    await assert.rejects(listPrefix(huge.etcd, `${P}profiles/`), /RESOURCE_EXHAUSTED/);
    assert.equal(huge.calls.at(-1), 1);
    assert.deepEqual(huge.calls, [1000, 500, 250, 125, 62, 31, 15, 7, 3, 1]);
  });

  test('the agent lists 250 profiles of 20 KB each over the receive limit and applies them all', async (t) => {
    mockTimers(t);
    const store = new FakeStore();
    for (let i = 0; i < 250; i++) putProf(store, `p${String(i).padStart(3, '0')}`, 1000 + i);
    const { etcd } = bigClient(store, 20_000);
    const watch = store.watch.bind(store);
    Object.assign(etcd, {
      watch: watch,
      revision: store.revision.bind(store),
      putLeased: store.putLeased.bind(store),
      close: async () => {},
    });
    const a = fastAgent(etcd as never, new FakeNftKernel(), stateFile());
    agents.push(a);
    await a.start();
    await until(() => a.status().profiles === 250 && a.status().revision === store.rev, 'all 250 applied');
  });

  test('fetchPageHalving passes other errors on at once', async () => {
    const limits: number[] = [];
    await assert.rejects(
      fetchPageHalving(async (l) => {
        limits.push(l);
        throw new Error('14 UNAVAILABLE: connect ECONNREFUSED');
      }, 1000),
      /UNAVAILABLE/,
    );
    assert.deepEqual(limits, [1000]);
    assert.deepEqual(await fetchPageHalving(async (l) => l, 7), { page: 7, limit: 7 });
  });
});

describe('agent duration options are bounded (etcd refuses a lease TTL that large; Node turns a timer past 2^31-1 ms into 1 ms), and its page size (a page is one gRPC message of at most 4 MiB)', () => {
  async function cli(...argv: string[]): Promise<{ code: number; err: string; connects: number }> {
    const { main } = await import('../../src/cli/main.js');
    const connect = mock.method(EtcdStore, 'connect', async () => {
      throw new Error('connect must not be reached');
    });
    let err = '';
    try {
      const code = await main(argv, { out: () => {}, err: (s) => (err += s + '\n') });
      return { code, err, connects: connect.mock.callCount() };
    } finally {
      connect.mock.restore();
    }
  }
  const etcd = ['--etcd', 'unix:///nonexistent/e:1', '--state-file', '/nonexistent/iptlb-agent.db'];

  for (const [flag, value, range] of [
    ['lease-ttl', '99999999999', 'from 2 to 86400'],
    ['lease-ttl', '86401', 'from 2 to 86400'],
    ['check-ms', '2147483648', 'from 10 to 3600000'],
    ['sync-ms', '3600001', 'from 0 to 3600000'],
    ['min-sync-ms', '2147483648', 'from 0 to 3600000'],
    ['backoff-max-ms', '99999999999', 'from 1 to 3600000'],
    ['etcd-timeout-ms', '2147483648', 'from 10 to 3600000'],
    ['page-size', '1000000000000', 'from 1 to 100000'],
    ['page-size', '1e12', 'from 1 to 100000'],
    ['page-size', '100001', 'from 1 to 100000'],
    ['page-size', '0', 'from 1 to 100000'],
  ] as const)
    test(`agent --${flag} ${value}: one-line EUSAGE naming ${flag}, exit 2, no connection`, async () => {
      const r = await cli('agent', ...etcd, `--${flag}`, value);
      assert.equal(r.code, 2);
      assert.equal(r.connects, 0);
      const unit = flag === 'lease-ttl' ? 'seconds' : flag === 'page-size' ? 'keys' : 'ms';
      assert.equal(r.err, `iptlb: error: ${flag}: "${value}" must be a whole number of ${unit} ${range}\n`);
    });

  test('the library refuses the same (leaseTtlSec, checkMs, syncMs, minSyncMs, backoffMs, backoffMaxMs, checkTimeoutMs, pageSize, callTimeoutMs)', async () => {
    const store = new FakeStore();
    const { Agent } = await import('../../src/fleet/agent.js');
    for (const [field, v] of [
      ['leaseTtlSec', 86_401],
      ['checkMs', 2 ** 31],
      ['syncMs', 3_600_001],
      ['minSyncMs', 3_600_001],
      ['backoffMs', 3_600_001],
      ['backoffMaxMs', 2 ** 31],
      ['checkTimeoutMs', 2 ** 31],
      ['pageSize', 1e12],
      ['pageSize', 100_001],
    ] as const)
      assert.throws(
        () => new Agent({ etcd: store, host: 'h', [field]: v }),
        (e: Error & { code?: string; field?: string }) =>
          e.code === 'EUSAGE' && e.field === field && /must be a whole number, from \d+ to \d+$/.test(e.message),
        field,
      );
    // The bounds themselves are accepted.
    new Agent({
      etcd: store,
      host: 'h',
      leaseTtlSec: 86_400,
      checkMs: 3_600_000,
      backoffMaxMs: 3_600_000,
      pageSize: 100_000,
    });
    await assert.rejects(
      EtcdStore.connect({ endpoints: ['unix:///nonexistent/e:1'], callTimeoutMs: 2 ** 31 }),
      (e: Error & { field?: string }) => e.field === 'etcd-timeout-ms',
    );
  });
});

describe('a kernel refusal that persists', () => {
  test('is retried with the growing backoff of the store path (doubling to backoffMaxMs) and said once per run of identical failures', async (t) => {
    mockTimers(t);
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    const lines: string[] = [];
    const a = makeAgent(store, { log: (l) => lines.push(l), backoffMs: 100, backoffMaxMs: 10_000 }, kernel);
    putProf(store, 'a', 1);
    await a.start();
    await until(async () => (await inKernel(a)) === 'a' && a.status().watch === 'watching', 'a applied');
    let attempts = 0;
    let message = 'fake refusal';
    kernel.fail = () => (attempts++, new IptlbError('EKERNEL', message));
    lines.length = 0;
    putProf(store, 'b', 2);
    await advance(60_000);
    // Backoff 100, 200, ... 6,400 ms, then 10,000 (each jittered to between half and all of it): about 7
    // attempts in the first 13 s, then one every 5-10 s. A fixed 400-800 ms made 75-150 in a minute.
    assert.ok(attempts >= 8 && attempts <= 22, `${attempts} attempts in 60 s`);
    const said = (): string[] => lines.filter((l) => /agent: revision \d+ not applied: /.test(l));
    assert.equal(said().length, 1, lines.join('\n'));
    assert.match(said()[0]!, /not applied: fake refusal; the kernel keeps revision \d+; retrying with backoff/);
    assert.match(a.status().error ?? '', /^kernel: fake refusal/);
    // Another failure: said again.
    message = 'another refusal';
    await advance(20_000);
    assert.equal(said().length, 2);
    assert.match(said()[1]!, /not applied: another refusal/);
    // The kernel takes it: applied, and the backoff starts again.
    kernel.fail = undefined;
    await until(async () => (await inKernel(a)) === 'a,b', 'b applied', 20_000);
    assert.ok(lines.some((l) => /agent: revision \d+ applied after \d+ failed attempt\(s\)/.test(l)));
    assert.equal(a.status().error, undefined);
    // The first failure again, after a success: said again, and retried after 50-100 ms, not the cap.
    attempts = 0;
    kernel.fail = () => (attempts++, new IptlbError('EKERNEL', 'another refusal'));
    putProf(store, 'c', 3);
    await until(() => attempts === 1, 'c refused');
    // The refusal handled (said, retry timer set) before the clock moves again: on a loaded machine its I/O
    // can take many event-loop turns, and the mocked ms ticked meanwhile are not the backoff's.
    await unmoved(() => said().length === 3, 'the refusal of c said');
    await settle();
    await advance(100, 1);
    await unmoved(() => attempts === 2, 'retried within 100 mocked ms');
    assert.equal(said().length, 3);
  });

  test("the listed set refused at a session's start: the host key says kernel: … once the watch is open, not no error", async (t) => {
    mockTimers(t);
    const store = new FakeStore();
    const kernel = new FakeNftKernel();
    kernel.fail = () => new IptlbError('EKERNEL', 'fake refusal');
    const a = makeAgent(store, { backoffMs: 5_000, backoffMaxMs: 10_000 }, kernel);
    putProf(store, 'a', 1);
    await a.start();
    await until(() => a.status().watch === 'watching' && hostStatus(store)?.watch === 'watching', 'watching', 2_000);
    // The retry (2.5-5 s away) has not run yet: the refusal still holds.
    assert.equal(await inKernel(a), '');
    assert.match(a.status().error ?? '', /^kernel: fake refusal/);
    assert.match(hostStatus(store)?.error ?? '', /^kernel: fake refusal/);
  });
});

test('"host status not written" says the store error as the other store errors do: its first line, without the client\'s empty "Resolution note:"', async (t) => {
  mockTimers(t);
  const store = new FakeStore();
  const lines: string[] = [];
  let fails = 2;
  const put = store.putLeased.bind(store);
  store.putLeased = async (key: string, value: string) => {
    if (fails-- > 0)
      throw new Error('14 UNAVAILABLE: No connection established. Last error: connect ENOENT. Resolution note: \nmore');
    return put(key, value);
  };
  const a = makeAgent(store, { log: (l) => lines.push(l) });
  putProf(store, 'a', 1);
  await a.start();
  await until(() => hostStatus(store) !== undefined, 'host key written after two failures');
  assert.deepEqual(
    lines.filter((l) => /host status not written/.test(l)),
    [
      'agent: host status not written: 14 UNAVAILABLE: No connection established. Last error: connect ENOENT.; retrying with backoff',
    ],
  );
});

describe('fleet apply --file with profile flags', () => {
  async function cli(...argv: string[]): Promise<{ code: number; err: string; connects: number; written: boolean }> {
    const { main } = await import('../../src/cli/main.js');
    const store = new FakeStore();
    const connect = mock.method(EtcdStore, 'connect', async () => store);
    let err = '';
    try {
      const code = await main(argv, { out: () => {}, err: (s) => (err += s + '\n') });
      return { code, err, connects: connect.mock.callCount(), written: store.rev > 1 };
    } finally {
      connect.mock.restore();
    }
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-fleet-file-'));
  const file = path.join(dir, 'f.yaml');
  writeFileSync(file, 'web:\n  source: 127.100.0.9:80\n  destination: ["127.0.0.1:9001"]\n');
  const apply = ['fleet', 'apply', '--etcd', 'unix:///nonexistent/e:1', '--file', file];

  test('every profile flag is refused, one line naming each given, exit 2, nothing written', async () => {
    let r = await cli(...apply, '--profile', 'zz', '--protocol', 'udp');
    assert.equal(r.code, 2);
    assert.equal(r.connects, 0);
    assert.equal(
      r.err,
      'iptlb: error: profile: cannot be combined with --file (the file gives every field of its profiles; also given: protocol)\n',
    );
    for (const flag of [
      ['--scheduler', 'round-robin'],
      ['--affinity', '30'],
      ['--rules-backend', 'proxy'],
      ['--log-custom-chain'],
      ['--log-level', '4'],
      ['--masquerade'],
      ['--health-interval', '1000'],
      ['--src-addr', '127.100.0.1:80'],
      ['--dest-addr', '127.0.0.1:1'],
      ['-protocol', 'udp'], // the single-dash spelling of the older CLI
    ]) {
      r = await cli(...apply, ...flag);
      assert.equal(r.code, 2, flag.join(' '));
      assert.equal(r.connects, 0);
      const name = flag[0]!.replace(/^-+/, '');
      assert.match(
        r.err,
        new RegExp(
          `^iptlb: error: ${name}: cannot be combined with --file \\(the file gives every field of its profiles\\)$`,
          'm',
        ),
      );
      assert.equal(r.err.split('\n').length, 2, 'one line');
      assert.ok(!r.written);
    }
    // Without them the file is written.
    r = await cli(...apply);
    assert.equal(r.code, 0, r.err);
    assert.ok(r.written);
  });
});

test('fleet status says which hosts kept the previous version of a profile whose new value they refuse, and where it is not served', async (t) => {
  mockTimers(t);
  const store = new FakeStore();
  putProf(store, 'web', 1);
  putProf(store, 'm1', 2);
  const a = makeAgent(store);
  await a.start();
  await until(async () => (await inKernel(a)) === 'm1,web' && hostStatus(store)?.revision === store.rev, 'h1 serves');
  // m1's new value is invalid: h1 keeps the version it serves; h2, fresh, has none to keep.
  store.put(profileKey(P, 'm1'), JSON.stringify({ ...prof('m1', 2), destination: ['127.0.0.1:99999'] }));
  await until(() => hostStatus(store)?.revision === store.rev, 'h1 applied the target');
  assert.deepEqual(
    hostStatus(store)!.refused.map((r) => [r.name, r.code, r.kept]),
    [['m1', 'EINVAL_PROFILE', true]],
  );
  assert.equal(await inKernel(a), 'm1,web', 'h1 still serves the previous m1');
  const all = await fleetStatus(store, P);
  assert.deepEqual(all.refused, [{ name: 'm1', code: 'EINVAL_PROFILE', hosts: ['h1'], kept: ['h1'] }]);
  assert.equal(all.converged, false, 'the stored value is served nowhere');
  const { main } = await import('../../src/cli/main.js');
  const status = async (): Promise<{ code: number; out: string }> => {
    const connect = mock.method(EtcdStore, 'connect', async () => store);
    let out = '';
    try {
      const code = await main(['fleet', 'status', '--etcd', '127.0.0.1:1'], {
        out: (s) => (out += s + '\n'),
        err: () => {},
      });
      return { code, out };
    } finally {
      connect.mock.restore();
    }
  };
  let r = await status();
  assert.equal(r.code, 3);
  assert.match(r.out, /^h1\t\d+\tcurrent\twatching\t.*\tm1:EINVAL_PROFILE\(previous version kept\)\t/m);
  assert.match(
    r.out,
    /REFUSED: applied on all 1 host\(s\), but profiles are refused \(m1:EINVAL_PROFILE on every host: each kept the previous version\); `iptlb fleet list` says why$/m,
  );
  const b = makeAgent(store, { host: 'h2' });
  await b.start();
  await until(
    () =>
      store.leased.has(`${P}hosts/h2`) &&
      /"revision":(\d+)/.exec(store.leased.get(`${P}hosts/h2`)!)?.[1] === String(store.rev),
    'h2',
  );
  assert.equal(await inKernel(b), 'web', 'a fresh host serves no m1');
  r = await status();
  assert.equal(r.code, 3);
  assert.match(
    r.out,
    /profiles are refused \(m1:EINVAL_PROFILE on every host: h1 kept the previous version, not served on h2\);/m,
  );
});

describe('a TLS failure or refused credentials that persist', () => {
  /** grpc-js's words for a TLS failure (what store.ts's storeErrorMessage turns into one line). */
  const UNAVAILABLE = '14 UNAVAILABLE: No connection established. Last error: Error: ';
  const WRONG_CA = `${UNAVAILABLE}unable to verify the first certificate. Resolution note: `;
  const NO_CLIENT_CERT = `${UNAVAILABLE.replace('Error: ', '')}80CC8196BB7F0000:error:0A000412:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1601:SSL alert number 42`;

  test('are said once (again when the reason changes), retried quietly with backoff, and their end said once', async (t) => {
    mockTimers(t);
    const store = new FakeStore();
    const lines: string[] = [];
    putProf(store, 'a', 1);
    let calls = 0;
    const range = store.range.bind(store);
    store.range = (...args) => (calls++, range(...args));
    store.downError = WRONG_CA;
    store.down = true;
    const a = makeAgent(store, { log: (l) => lines.push(l), backoffMs: 100, backoffMaxMs: 1000 });
    await a.start();
    await advance(10_000);
    assert.match(lines[0]!, /^agent h1: /);
    assert.ok(calls >= 10, `${calls} attempts in 10 s`);
    // One line, saying what to check and that it keeps retrying; nothing at each retry.
    assert.deepEqual(lines.slice(1), [
      "agent: TLS: etcd's server certificate is not accepted (unable to verify the first certificate): check --etcd-ca (the CA certificate that signed etcd's server certificate); the kernel holds no profile of this agent (its state file holds none; no revision listed yet); retrying with backoff until the TLS connection succeeds (not logged again unless the failure changes)",
    ]);
    // The host status (as the metrics and `fleet status` read it) says the same as for refused credentials.
    assert.equal(a.status().watch, 'unreachable');
    assert.match(a.status().error ?? '', /^TLS: etcd's server certificate is not accepted/);
    // Another reason: said again, once.
    lines.length = 0;
    store.downError = NO_CLIENT_CERT;
    await advance(5_000);
    assert.equal(lines.length, 1, lines.join('\n'));
    assert.match(
      lines[0]!,
      /^agent: TLS: etcd refused the client certificate \(alert "bad certificate"\): .*; retrying/,
    );
    // It recovers: said once, and the host status is clear.
    lines.length = 0;
    store.down = false;
    await until(() => a.status().watch === 'watching', 'watching', 5_000);
    await advance(2_000);
    const recovered = lines.filter((l) => /accepted/.test(l));
    assert.equal(recovered.length, 1, lines.join('\n'));
    assert.match(
      recovered[0]!,
      /^agent: etcd accepted the TLS connection after \d+ failed attempt\(s\); watching from/,
    );
    assert.equal(a.status().error, undefined);
    assert.ok(!lines.some((l) => /TLS: /.test(l)));
    // Unreachable is not a refusal: logged at each retry, as before.
    lines.length = 0;
    store.downError = '14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 127.0.0.1:2379.';
    store.setDown(true);
    await advance(3_000);
    assert.ok(lines.filter((l) => /^agent: store: .*ECONNREFUSED.*retrying in \d+ ms/.test(l)).length >= 3);
    // Then refused credentials: said once, quietly retried, their end said once.
    lines.length = 0;
    store.downError = '3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password';
    await advance(10_000);
    assert.equal(lines.length, 1, lines.join('\n'));
    assert.match(
      lines[0]!,
      /^agent: etcd refused this agent's credentials \(3 INVALID_ARGUMENT: .*IPTLB_ETCD_PASSWORD/,
    );
    assert.equal(a.status().watch, 'unreachable');
    assert.match(a.status().error ?? '', /authentication failed/);
    lines.length = 0;
    store.down = false;
    await until(() => a.status().watch === 'watching', 'watching', 5_000);
    await advance(2_000);
    assert.equal(lines.filter((l) => /accepted/.test(l)).length, 1, lines.join('\n'));
    assert.match(
      lines.find((l) => /accepted/.test(l))!,
      /^agent: etcd accepted this agent's credentials after \d+/,
    );
    // Refused again later: said again.
    lines.length = 0;
    store.setDown(true);
    await advance(3_000);
    assert.equal(lines.filter((l) => /refused this agent's credentials/.test(l)).length, 1, lines.join('\n'));
  });
});

describe('a watch response over the client receive limit (a watch catching up on large values)', () => {
  /** An EtcdStore over a client whose one watcher the test drives as etcd3 would. */
  function storeWithWatcher(): { etcd: EtcdStore; watcher: EventEmitter } {
    const watcher = Object.assign(new EventEmitter(), { cancel: async () => {} });
    const builder = { inRange: () => builder, startRevision: () => builder, watcher: () => watcher };
    const client = { namespace: () => ({ watch: () => builder }), close: () => {} };
    const Ctor = EtcdStore as unknown as new (client: unknown, timeout: number) => EtcdStore;
    return { etcd: new Ctor(client, 5000), watcher };
  }

  test('ends the watch as not resumable (the agent re-lists in pages), not as a lost connection opened again alike', async () => {
    const { etcd, watcher } = storeWithWatcher();
    const failed: [string, boolean | undefined][] = [];
    const created = etcd.watch(`${P}profiles/`, `${P}profiles0`, 10, {
      events: () => {},
      failed: (why, resumable) => failed.push([why, resumable]),
    });
    watcher.emit('connected');
    await created;
    watcher.emit(
      'disconnected',
      new Error('8 RESOURCE_EXHAUSTED: Received message larger than max (8400305 vs 4194304)'),
    );
    assert.equal(failed.length, 1);
    assert.match(failed[0]![0], /^watch response too large: 8 RESOURCE_EXHAUSTED: .*\(re-listing in pages\)$/);
    assert.ok(!failed[0]![1], 'not resumable');
    // A lost connection still is.
    const other = storeWithWatcher();
    const lost: [string, boolean | undefined][] = [];
    const w2 = other.etcd.watch(`${P}profiles/`, `${P}profiles0`, 10, {
      events: () => {},
      failed: (why, resumable) => lost.push([why, resumable]),
    });
    other.watcher.emit('connected');
    await w2;
    other.watcher.emit('disconnected', new Error('14 UNAVAILABLE: Connection dropped'));
    assert.deepEqual(lost, [['watch disconnected: 14 UNAVAILABLE: Connection dropped', true]]);
  });
});

describe('a watch whose start revision etcd compacted (the agent away, or its watch lagging, while etcd compacts)', () => {
  test('EtcdStore says it from etcd\'s answer (canceled, compact_revision), which etcd3 reports as "Watcher canceled: "', async () => {
    /** A client whose watch manager and watcher the test drives as etcd3 1.1.2 does with such an answer. */
    const watcher = Object.assign(new EventEmitter(), { cancel: async () => {} });
    const cancel = (res: { cancel_reason?: string }): void =>
      void watcher.emit('error', new Error(`Watcher canceled: ${res.cancel_reason ?? ''}`));
    const wm = { handleError: () => {}, handleCreatedResponse: cancel, handleResponse: cancel };
    const builder = { inRange: () => builder, startRevision: () => builder, watcher: () => watcher };
    const client = { namespace: () => ({ watch: () => builder, watchManager: wm }), close: () => {} };
    const Ctor = EtcdStore as unknown as new (client: unknown, timeout: number) => EtcdStore;
    const etcd = new Ctor(client, 5000);
    const handlers = { events: () => {}, failed: () => {} };
    // Refused at creation (etcd 3.4 answers created and canceled at once).
    const refused = etcd.watch(`${P}profiles/`, `${P}profiles0`, 15, handlers);
    wm.handleCreatedResponse({ created: true, canceled: true, compact_revision: '17', cancel_reason: '' } as never);
    await assert.rejects(refused, (e: Error) => {
      assert.equal(e.message, 'watch from revision 15 compacted: etcd keeps revisions from 17 on');
      return true;
    });
    // Cancelled later (a watcher that lagged behind a compaction).
    const failed: [string, boolean | undefined][] = [];
    const later = etcd.watch(`${P}profiles/`, `${P}profiles0`, 20, {
      events: () => {},
      failed: (why, resumable) => failed.push([why, resumable]),
    });
    watcher.emit('connected');
    await later;
    wm.handleResponse({ canceled: true, compact_revision: '30', cancel_reason: '' } as never);
    assert.deepEqual(failed, [['watch from revision 20 compacted: etcd keeps revisions from 30 on', false]]);
  });

  for (const when of ['at the watch opened again', 'after the watch was created'] as const)
    test(`${when}: the agent says so and re-lists at once (no store failure, no backoff, never unreachable)`, async (t) => {
      mockTimers(t);
      const store = new FakeStore();
      const lines: string[] = [];
      // A backoff of a minute: a re-list after one would not come within the bound below.
      const a = makeAgent(store, { log: (l) => lines.push(l), backoffMs: 60_000, backoffMaxMs: 60_000 });
      const states = new Set<string>();
      a.on('status', (st) => states.add(st.watch));
      putProf(store, 'a', 1);
      await a.start();
      await until(async () => (await inKernel(a)) === 'a' && a.status().watch === 'watching', 'a applied');
      states.clear();
      const ranges = store.profileRanges;
      const from = store.rev + 1;
      if (when === 'at the watch opened again') {
        // The connection is lost; meanwhile b is written and the store compacted past the agent's revision.
        store.killWatches('watch disconnected: 14 UNAVAILABLE: Connection dropped', true);
        putProf(store, 'b', 2);
        store.compact();
      } else {
        putProf(store, 'b', 2);
        store.compact();
        store.killWatches(watchCompacted(from, store.rev));
      }
      await until(async () => (await inKernel(a)) === 'a,b', 'b by the re-list', 1_000);
      assert.ok(store.profileRanges > ranges, 're-listed');
      assert.ok(
        lines.some((l) =>
          /^agent: watch from revision \d+ compacted: etcd keeps revisions from \d+ on: re-listing now \(the kernel keeps the rules of revision \d+ meanwhile\)$/.test(
            l,
          ),
        ),
        lines.join('\n'),
      );
      assert.ok(!lines.some((l) => /^agent: store: /.test(l)), lines.join('\n'));
      assert.ok(!states.has('unreachable'), [...states].join());
      await until(() => a.status().watch === 'watching', 'watching again');
      assert.equal(a.status().error, undefined);
    });
});
