/**
 * Fleet agent faults a probe found: a store revision that goes back (etcd restored from a snapshot),
 * lists over gRPC's receive limit, unbounded durations, a kernel refusal retried without a growing
 * backoff. Fake store and fake nft kernel, node:test's mock timers (time moves only when the test
 * ticks it); no root.
 */
import { afterEach, describe, mock, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { Agent, AgentOptions, HostStatus } from '../../src/fleet/agent.js';
import { profileKey } from '../../src/fleet/reconcile.js';
import { FakeNftKernel } from '../harness/fake-kernel.js';
import { FakeStore } from '../harness/fake-store.js';
import { P, fastAgent, putProf, stateFile } from '../harness/fleet-agents.js';

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
 * Moves the mocked clock 1 ms at a time, letting promises and I/O settle after each, until `cond` holds;
 * fails after `maxMs` of mocked time. Returns the mocked ms it took.
 */
async function until(cond: () => boolean | Promise<boolean>, what: string, maxMs = 10_000): Promise<number> {
  for (let ms = 0; ; ms++) {
    if (await cond()) return ms;
    if (ms >= maxMs) throw new Error(`not within ${maxMs} mocked ms: ${what}`);
    mock.timers.tick(1);
    await settle();
  }
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

describe('fleet agent: etcd restored from a snapshot (its revision goes back)', () => {
  for (const how of ['resuming the watch', 'linearizable check'] as const)
    test(`noticed ${how === 'resuming the watch' ? 'when the watch is resumed' : 'by the periodic check'}: the agent re-lists, applies what the store holds and writes its host key again`, async (t) => {
      mockTimers(t);
      const store = new FakeStore();
      const lines: string[] = [];
      const a = makeAgent(store, { log: (l) => lines.push(l) });
      putProf(store, 'a', 1);
      await a.start();
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

  test("a host key holding another status of this agent than its last write is written again by the next check (not only a missing one); another instance's is not fought over", async (t) => {
    mockTimers(t);
    const store = new FakeStore();
    const lines: string[] = [];
    const a = makeAgent(store, { log: (l) => lines.push(l) });
    putProf(store, 'a', 1);
    await a.start();
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
