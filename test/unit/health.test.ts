/**
 * Health checks without a kernel: the state machine (rise/fall), the all-down policy, jitter, one
 * probe in flight per destination, transitions batched into one transaction, and the effective
 * profiles the kernel gets — with node:test's mock timers and an injected probe.
 */
import { test, mock, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import {
  IptlbError,
  parseState,
  serializeState,
  validateProfile,
  type KernelView,
  type LegacyExecutor,
  type Transaction,
} from '../../src/index.js';
import { Core } from '../../src/core/core.js';
import { FakeLegacyKernel } from '../harness/fake-kernel.js';
import { HealthChecker, coreHost, heldHost } from '../../src/health/checker.js';
import { effectiveProfile } from '../../src/health/effective.js';
import { ProcessStats, parseListenAddress } from '../../src/metrics/server.js';
import type { ProbeTarget } from '../../src/health/probe.js';
import type { DestinationCounters } from '../../src/model/report.js';

/** Records transactions; commits resolve at once (no timers), or when `hold` is released. */
class FakeExecutor implements LegacyExecutor {
  readonly kind = 'spawn' as const;
  readonly engine = 'legacy' as const;
  txs: Transaction[] = [];
  hold?: Promise<void>;
  async commit(tx: Transaction) {
    if (this.hold) await this.hold;
    this.txs.push(tx);
    return { durationMs: 1 };
  }
  async read(): Promise<KernelView> {
    return { chains: [], hookRules: [] };
  }
  async render(): Promise<string> {
    return '';
  }
}

/** DNAT destinations of profile `name` in a transaction (null: the profile is not in it). */
function dnats(tx: Transaction, name: string): string[] | null {
  const c = tx.chains.find((x) => x.name === `IPTLB_NAT_${name.toUpperCase()}`);
  if (!c) return null;
  return c.rules.flatMap((r) => (r.target.name === 'DNAT' ? [r.target.toDestination] : []));
}

const D = ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'];

/** A directory of its own and a live process (the checker a health file names), for `fn`; both go after it. */
async function withLiveWriter(fn: (dir: string, pid: number) => Promise<void>): Promise<void> {
  const { spawn } = await import('node:child_process');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-hf-'));
  const other = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  try {
    await fn(dir, other.pid!);
  } finally {
    other.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Writes a health file as the checker of the live process `pid` publishes it (its pid and the pid's start time). */
async function publishAs(
  file: string,
  pid: number,
  fields: { updatedAt: number; staleAfterMs?: number; profiles: object },
) {
  const { pidIdentity } = await import('../../src/platform/pid.js');
  const { writeFileSync } = await import('node:fs');
  writeFileSync(file, JSON.stringify({ version: 1, pid, pidStart: pidIdentity(pid), ...fields }));
}
const health = { kind: 'tcp', intervalMs: 100, timeoutMs: 50, rise: 2, fall: 3 };

/**
 * Waits 20 ms of real time (the mocked clock does not move): a follower tells a file written again by its stat (inode,
 * mtime, size), and the kernel's file times move in ticks of a few ms, so a file rewritten within one tick at the same
 * size (and inode) looks unchanged. A checker writes its file publishMs (10 ms at least) apart; a test's writes are
 * not.
 */
function nextFileTimeTick(): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
}

/** Probe outcomes by destination (`ip:port`): true ok, false fail, 'hang' never settles until released. */
class Probes {
  outcome = new Map<string, boolean | 'hang'>();
  calls: { at: number; key: string }[] = [];
  hanging: (() => void)[] = [];
  probe = (t: ProbeTarget): Promise<void> => {
    const key = `${t.host}:${t.port}`;
    this.calls.push({ at: Date.now(), key });
    const o = this.outcome.get(key) ?? true;
    if (o === 'hang') return new Promise((r) => this.hanging.push(r));
    return o ? Promise.resolve() : Promise.reject(new Error('ECONNREFUSED (connect)'));
  };
}

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}
/**
 * Lets promises and the thread pool's I/O settle until `done()` holds: a hang guard of 60 s of real time (the
 * mocked clock does not move), not a measure. A bound in turns of the loop failed under load (the state file's
 * lock and read go through the thread pool, which can take longer than any fixed number of turns).
 */
async function settleUntil(done: () => boolean): Promise<void> {
  const t0 = performance.now();
  while (!done() && performance.now() - t0 < 60_000) await new Promise((r) => setImmediate(r));
}
/** Advances the mocked clock by `ms` in `step` ms steps, letting promises settle after each. */
async function advance(ms: number, step = 10): Promise<void> {
  for (let t = 0; t < ms; t += step) {
    mock.timers.tick(step);
    await settle();
  }
}

async function setup(t: TestContext, profiles: object[], opts: { random?: () => number } = {}) {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  t.after(() => mock.timers.reset());
  const ex = new FakeExecutor();
  const core = new Core({ stateFile: false }, ex);
  await core.transact(() => ({ upsert: profiles.map((p) => validateProfile(p)), remove: [] }), { run: true });
  ex.txs.length = 0;
  const probes = new Probes();
  const log: string[] = [];
  const checker = new HealthChecker(coreHost(core), {
    probe: probes.probe,
    random: opts.random ?? (() => 0.5),
    log: (l) => log.push(l),
    restoreOnStop: true,
  });
  const events: string[] = [];
  checker.on('health', (e) => events.push(`${e.profile} ${e.destination} ${e.previous}->${e.state}`));
  await checker.start();
  return { ex, core, probes, checker, log, events };
}

test('fall failures drain a destination in one commit; rise successes bring it back; the configured profile never changes', async (t) => {
  const { ex, core, probes, checker, log, events } = await setup(t, [
    { name: 'web', source: '127.100.0.10:80', destination: D, health },
  ]);
  await advance(100);
  assert.deepEqual(
    checker.states().map((s) => s.state),
    ['up', 'up', 'up'],
  );
  assert.equal(ex.txs.length, 0, 'unchecked -> up changes nothing in the kernel');
  probes.outcome.set(D[1], false);
  // Two failures: still up.
  await advance(200);
  assert.equal(checker.states()[1].state, 'up');
  assert.equal(checker.states()[1].lastError, 'ECONNREFUSED (connect)');
  await advance(100);
  assert.equal(checker.states()[1].state, 'down');
  assert.equal(ex.txs.length, 1, 'one commit for the drain');
  assert.deepEqual(dnats(ex.txs[0], 'web'), [D[0], D[2]]);
  assert.ok(checker.states()[1].drained);
  assert.match(
    log.join('\n'),
    /health web 127\.0\.0\.1:9002: down after 3 failed check\(s\), last: ECONNREFUSED \(connect\); drained/,
  );
  assert.equal((await core.readState()).get('web')!.weights, undefined, 'configured weights untouched');
  // Recovery: one success is not enough (rise 2).
  probes.outcome.set(D[1], true);
  await advance(100);
  assert.equal(checker.states()[1].state, 'down');
  await advance(100);
  assert.equal(checker.states()[1].state, 'up');
  assert.equal(ex.txs.length, 2);
  assert.deepEqual(dnats(ex.txs[1], 'web'), D);
  assert.deepEqual(
    events.filter((e) => e.includes('9002')),
    ['web 127.0.0.1:9002 unchecked->up', 'web 127.0.0.1:9002 up->down', 'web 127.0.0.1:9002 down->up'],
  );
  await checker.stop();
});

test('a destination that fails from the start goes unchecked -> down after fall failures', async (t) => {
  mock.timers.reset();
  const { ex, probes, checker } = await (async () => {
    const s = await setup(t, [
      { name: 'web', source: '127.100.0.10:80', destination: D, health: { ...health, fall: 2 } },
    ]);
    return s;
  })();
  probes.outcome.set(D[0], false);
  // The first probes were scheduled at start; outcome set before they ran.
  await advance(250);
  assert.equal(checker.states()[0].state, 'down');
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), [D[1], D[2]]);
  await checker.stop();
});

test('allDown: keep, destinations failing one after the other: the first is drained, the last down restores both', async (t) => {
  const { ex, probes, checker, log } = await setup(t, [
    { name: 'keep', source: '127.100.0.10:80', destination: D.slice(0, 2), health },
  ]);
  probes.outcome.set(D[0], false);
  await advance(400);
  assert.deepEqual(
    checker.states().map((s) => s.state),
    ['down', 'up'],
  );
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'keep'), [D[1]], 'the first down is drained');
  const n = ex.txs.length;
  probes.outcome.set(D[1], false);
  await advance(400);
  assert.ok(checker.states().every((s) => s.state === 'down'));
  assert.ok(ex.txs.length > n);
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'keep'), D.slice(0, 2), 'every destination down: both again, never none');
  assert.ok(
    ex.txs.every((x) => dnats(x, 'keep')?.length !== 0),
    'never an empty profile',
  );
  assert.match(log.join('\n'), /every destination is down: keeping all of them \(health\.allDown: keep\)/);
  await checker.stop();
});

test('a destination configured at weight 0 that fails: said as such, not as every destination down', async (t) => {
  const { ex, probes, checker, log } = await setup(t, [
    { name: 'w0', source: '127.100.0.10:80', destination: [D[0], `${D[1]}*0`], health: { ...health, fall: 2 } },
  ]);
  probes.outcome.set(D[1], false);
  await advance(300);
  assert.equal(checker.states()[1].state, 'down');
  assert.match(
    log.join('\n'),
    /health w0 127\.0\.0\.1:9002: down after .*; its configured weight is 0: nothing to drain/,
  );
  assert.doesNotMatch(log.join('\n'), /every destination is down/);
  assert.equal(ex.txs.length, 0, 'nothing to commit');
  await checker.stop();
});

test('all destinations down: kept by default (allDown: keep), removed with allDown: drain', async (t) => {
  const { ex, probes, checker, log } = await setup(t, [
    { name: 'keep', source: '127.100.0.10:80', destination: D.slice(0, 2), health },
    { name: 'drain', source: '127.100.0.11:80', destination: D.slice(0, 2), health: { ...health, allDown: 'drain' } },
  ]);
  probes.outcome.set(D[0], false);
  probes.outcome.set(D[1], false);
  await advance(400);
  assert.ok(checker.states().every((s) => s.state === 'down'));
  const last = ex.txs.at(-1)!;
  assert.ok(last.owners.includes('drain'), 'drain profile removed');
  assert.equal(dnats(last, 'drain'), null);
  // Both failed in the same tick: the keep profile never lost a destination, so it was never committed.
  assert.ok(ex.txs.length > 0);
  assert.ok(
    ex.txs.every((x) => !x.owners.includes('keep')),
    'the keep profile is in no transaction',
  );
  assert.match(log.join('\n'), /every destination is down: keeping all of them \(health\.allDown: keep\)/);
  assert.match(log.join('\n'), /every destination is down: profile drained \(health\.allDown: drain\)/);
  // One comes back: drain profile returns with it alone.
  probes.outcome.set(D[1], true);
  await advance(200);
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'drain'), [D[1]]);
  await checker.stop();
});

test('at most one probe in flight per destination, however long it hangs', async (t) => {
  const { probes, checker } = await setup(t, [{ name: 'web', source: '127.100.0.10:80', destination: [D[0]], health }]);
  probes.outcome.set(D[0], 'hang');
  await advance(60);
  const before = probes.calls.length;
  await advance(1000);
  assert.equal(probes.calls.length, before, 'no second probe while the first hangs');
  probes.outcome.set(D[0], true);
  probes.hanging.splice(0).forEach((r) => r());
  await settle();
  await advance(200);
  assert.ok(probes.calls.length > before, 'checks resume once it settles');
  await checker.stop();
});

test('stop does not wait for a probe in flight (its timeout may be an hour): it is aborted, and a late answer is ignored', async (t) => {
  const { probes, checker, events } = await setup(
    t,
    [
      {
        name: 'web',
        source: '127.100.0.10:80',
        destination: [D[0]],
        health: { ...health, intervalMs: 3_600_000, timeoutMs: 3_600_000 },
      },
    ],
    { random: () => 0 },
  );
  const signals: AbortSignal[] = [];
  const inner = probes.probe;
  (checker as unknown as { prober: { fn: unknown } }).prober.fn = (x: ProbeTarget, signal?: AbortSignal) => {
    if (signal) signals.push(signal);
    return inner(x);
  };
  probes.outcome.set(D[0], 'hang');
  await advance(200);
  assert.equal(probes.hanging.length, 1, 'one probe hangs');
  const seen = events.length;
  await checker.stop(); // before: waited for the hanging probe, forever here
  assert.equal(signals.at(-1)!.aborted, true, "the probe's socket and timer are aborted");
  probes.hanging.splice(0).forEach((r) => r());
  await settle();
  assert.equal(events.length, seen, 'a late answer to a stopped run changes nothing');
});

test('a state file that cannot be read is said once while it lasts (the refresh runs every second), and when it can be read again', async (t) => {
  const { core, log } = await setup(t, [{ name: 'web', source: '127.100.0.10:80', destination: [D[0]], health }]);
  const readState = core.readState.bind(core);
  core.readState = async () => {
    throw new IptlbError('ESTATE', 'state file f: profile "x": health.timeoutMs: 3000 is above health.intervalMs');
  };
  await advance(3500, 50);
  assert.equal(log.filter((l) => /cannot read the profiles/.test(l)).length, 1, log.join('\n'));
  core.readState = readState;
  await advance(1500, 50);
  assert.equal(log.filter((l) => /can be read again/.test(l)).length, 1, log.join('\n'));
});

test('without a profile that has checks, an unreadable state file is not said by health (watch mode says it)', async (t) => {
  const { core, log } = await setup(t, [{ name: 'web', source: '127.100.0.10:80', destination: [D[0]] }]);
  const readState = core.readState.bind(core);
  core.readState = async () => {
    throw new IptlbError('ESTATE', 'state file f: is not valid YAML');
  };
  await advance(2500, 50);
  core.readState = readState;
  await advance(1500, 50);
  assert.deepEqual(
    log.filter((l) => /cannot read the profiles|can be read again/.test(l)),
    [],
    log.join('\n'),
  );
});

test('jitter: first checks spread over the first interval, then one interval ±10 % apart', async (t) => {
  let seed = 42;
  const random = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const dests = Array.from({ length: 400 }, (_, i) => `127.0.0.1:${10000 + i}`);
  const { probes, checker } = await setup(
    t,
    [
      {
        name: 'many',
        source: '127.100.0.10:80',
        destination: dests,
        health: { ...health, intervalMs: 1000, timeoutMs: 100 },
      },
    ],
    { random },
  );
  const t0 = Date.now();
  await advance(3000, 10);
  const first = new Map<string, number>();
  const gaps: number[] = [];
  const last = new Map<string, number>();
  for (const c of probes.calls) {
    if (!first.has(c.key)) first.set(c.key, c.at - t0);
    const l = last.get(c.key);
    if (l !== undefined) gaps.push(c.at - l);
    last.set(c.key, c.at);
  }
  assert.equal(first.size, 400);
  const buckets = Array.from({ length: 10 }, () => 0);
  for (const at of first.values()) buckets[Math.min(9, Math.floor(at / 100))]++;
  assert.ok(Math.max(...buckets) < 80, `first checks bunched: ${buckets}`);
  assert.ok(Math.min(...buckets) > 15, `first checks bunched: ${buckets}`);
  assert.ok(gaps.length > 400);
  assert.ok(
    gaps.every((g) => g >= 890 && g <= 1110),
    `gaps ${Math.min(...gaps)}..${Math.max(...gaps)}`,
  );
  assert.ok(new Set(gaps).size > 5, 'gaps vary');
  await checker.stop();
});

test('transitions of many destinations decided together are one transaction; later ones wait for the commit in flight and go together', async (t) => {
  const profiles = Array.from({ length: 5 }, (_, i) => ({
    name: `p${i}`,
    source: `127.100.0.${10 + i}:80`,
    destination: D,
    health,
  }));
  const { ex, probes, checker } = await setup(t, profiles, { random: () => 0 });
  await advance(20);
  for (const d of D.slice(0, 1)) probes.outcome.set(d, false);
  await advance(300);
  assert.ok(
    checker
      .states()
      .filter((s) => s.destination === D[0])
      .every((s) => s.state === 'down'),
  );
  assert.equal(ex.txs.length, 1, `${ex.txs.length} transactions for 5 profiles`);
  for (let i = 0; i < 5; i++) assert.deepEqual(dnats(ex.txs[0], `p${i}`), [D[1], D[2]]);
  // While a commit hangs, more transitions pile up and go in the next one.
  let release!: () => void;
  ex.hold = new Promise((r) => (release = r));
  probes.outcome.set(D[0], true);
  probes.outcome.set(D[1], false);
  await advance(300);
  release();
  ex.hold = undefined;
  await advance(50);
  assert.ok(ex.txs.length <= 3, `${ex.txs.length} transactions`);
  for (let i = 0; i < 5; i++) assert.deepEqual(dnats(ex.txs.at(-1)!, `p${i}`), [D[0], D[2]]);
  await checker.stop();
});

/** A seeded pseudo-random source (so jittered schedules are the same on every run). */
function lcg(seed: number): () => number {
  let x = seed >>> 0;
  return () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

for (const windows of [true, false]) {
  test(`1,000 destinations failing within one interval: ${windows ? 'one commit (commit window, the default)' : 'many commits without commit windows'}; a lone transition commits at once`, async (t) => {
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
    t.after(() => mock.timers.reset());
    const ex = new FakeExecutor();
    const commitsAt: number[] = [];
    const commit = ex.commit.bind(ex);
    ex.commit = async (tx: Transaction) => (commitsAt.push(Date.now()), commit(tx));
    const core = new Core({ stateFile: false }, ex);
    const dests = Array.from({ length: 1001 }, (_, i) => `127.0.0.1:${10000 + i}`);
    await core.transact(
      () => ({
        upsert: [validateProfile({ name: 'big', source: '127.100.0.10:80', destination: dests, health })],
        remove: [],
      }),
      { run: true },
    );
    ex.txs.length = 0;
    commitsAt.length = 0;
    const probes = new Probes();
    const events: { at: number; d: string; state: string }[] = [];
    const checker = new HealthChecker(coreHost(core), {
      probe: probes.probe,
      random: lcg(7),
      ...(windows ? {} : { windows: false }),
    });
    checker.on('health', (e) => events.push({ at: e.at, d: e.destination, state: e.state }));
    await checker.start();
    await advance(250);
    assert.equal(ex.txs.length, 0);
    // 1,000 of the 1,001 fail from now on; their checks are spread over the interval (jitter).
    for (const d of dests.slice(0, 1000)) probes.outcome.set(d, false);
    await advance(700);
    const down = checker.states().filter((s) => s.state === 'down').length;
    assert.equal(down, 1000);
    if (windows) {
      assert.equal(ex.txs.length, 1, `${ex.txs.length} commits for 1,000 transitions`);
      assert.deepEqual(dnats(ex.txs[0]!, 'big'), [dests[1000]]);
      // Bounded: the commit comes at most (fall - 1) intervals (+ jitter, + timeout) after the first transition.
      const first = Math.min(...events.filter((e) => e.state === 'down').map((e) => e.at));
      assert.ok(commitsAt[0]! - first <= 2 * 110 + 50 + 20, `commit ${commitsAt[0]! - first} ms after the first`);
    } else {
      assert.ok(ex.txs.length > 5, `${ex.txs.length} commits`);
    }
    // They come back; then one destination alone fails: its drain is committed in the tick it is decided.
    for (const d of dests.slice(0, 1000)) probes.outcome.delete(d);
    await advance(700);
    assert.equal(checker.states().filter((s) => s.state === 'down').length, 0);
    const before = ex.txs.length;
    probes.outcome.set(dests[5]!, false);
    await advance(500);
    const ev = events.filter((e) => e.d === dests[5] && e.state === 'down').at(-1)!;
    assert.ok(ev);
    assert.equal(ex.txs.length, before + 1);
    assert.ok(commitsAt.at(-1)! - ev.at <= 10, `lone transition committed ${commitsAt.at(-1)! - ev.at} ms after`);
    await checker.stop();
  });
}

test('stop gives the kernel back the configured weights in one commit', async (t) => {
  const { ex, probes, checker } = await setup(t, [{ name: 'web', source: '127.100.0.10:80', destination: D, health }]);
  probes.outcome.set(D[2], false);
  await advance(400);
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), D.slice(0, 2));
  const n = ex.txs.length;
  const stopping = checker.stop();
  await advance(20);
  await stopping;
  assert.equal(ex.txs.length, n + 1);
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), D);
});

test('profiles added, changed or deleted while running are followed; a removed check forgets its drains', async (t) => {
  const { ex, core, probes, checker } = await setup(t, [
    { name: 'web', source: '127.100.0.10:80', destination: D, health },
  ]);
  // Both counters are there from the start, at 0.
  assert.deepEqual([checker.counters.checks.get('web'), checker.counters.failures.get('web')], [0, 0]);
  probes.outcome.set(D[0], false);
  await advance(400);
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), D.slice(1));
  // An apply of the same profile keeps the drain (the kernel gets the effective profile).
  await core.transact(
    () => ({
      upsert: [validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D, health, logEnabled: true })],
      remove: [],
    }),
    { run: true },
  );
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), D.slice(1));
  // The check removed: the destination is back at once.
  await core.transact(
    () => ({ upsert: [validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D })], remove: [] }),
    { run: true },
  );
  await advance(1100);
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), D);
  assert.equal(checker.states().length, 0);
  assert.equal(core.health.active, false);
  assert.deepEqual([checker.counters.checks.has('web'), checker.counters.failures.has('web')], [false, false]);
  await checker.stop();
});

test('effectiveProfile: down destinations at weight 0, configured weight-0 ones ignored, all down per allDown', () => {
  const p = validateProfile({
    name: 'w',
    source: '127.100.0.10:80',
    destination: [`${D[0]}*2`, D[1], `${D[2]}*0`],
    health,
  });
  assert.deepEqual(effectiveProfile(p, new Set([D[1]]))!.weights, { [D[0]]: 2, [D[1]]: 0, [D[2]]: 0 });
  assert.equal(effectiveProfile(p, new Set([D[2]])), p, 'a configured drain is no change');
  assert.equal(effectiveProfile(p, new Set([D[0], D[1]])), p, 'all down: keep');
  const d = validateProfile({
    name: 'w',
    source: '127.100.0.10:80',
    destination: D.slice(0, 2),
    health: { ...health, allDown: 'drain' },
  });
  assert.equal(effectiveProfile(d, new Set(D.slice(0, 2))), null);
  const none = validateProfile({ name: 'w', source: '127.100.0.10:80', destination: D.slice(0, 2) });
  assert.equal(effectiveProfile(none, new Set([D[0]])), none, 'no check: never changed');
});

test('health config: defaults, state file round trip, files without it byte-identical, one-line errors naming health.<key>', async () => {
  const plain = validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D });
  assert.equal(serializeState([plain]).includes('health'), false);
  const h = validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D, health: { kind: 'http' } });
  assert.deepEqual(h.health, {
    kind: 'http',
    intervalMs: 2000,
    timeoutMs: 1000,
    rise: 2,
    fall: 3,
    path: '/',
    expect: '200-399',
  });
  const text = serializeState([h]);
  assert.match(
    text,
    /  health:\n    expect: 200-399\n    fall: 3\n    intervalMs: 2000\n    kind: http\n    path: "\/"\n    rise: 2\n    timeoutMs: 1000\n  logEnabled/,
  );
  assert.deepEqual((await parseState(text)).get('web'), h);
  assert.equal(
    validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D, health: { kind: 'http', expect: 204 } })
      .health?.expect,
    '204',
  );
  assert.equal(
    validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D, health: { kind: 'none' } }).health,
    undefined,
  );
  const v6 = validateProfile({
    name: 'v6',
    source: '[2001:db8::1]:80',
    destination: ['[::1]:9001'],
    health: { address: '0::1', port: '81' },
  });
  assert.deepEqual(v6.health, {
    kind: 'tcp',
    intervalMs: 2000,
    timeoutMs: 1000,
    rise: 2,
    fall: 3,
    port: 81,
    address: '::1',
  });
  assert.deepEqual((await parseState(serializeState([v6]))).get('v6'), v6);
  // In brackets, as IPv6 is written everywhere else: the same address, stored once, without them.
  for (const address of ['[::1]', '[0:0::1]', '[2001:DB8::1]'])
    assert.equal(
      validateProfile({ ...v6, health: { ...v6.health, address } }).health!.address,
      address === '[2001:DB8::1]' ? '2001:db8::1' : '::1',
    );
  assert.deepEqual(validateProfile({ ...v6, health: { ...v6.health, address: '[0::1]' } }).health, v6.health);
  for (const address of ['[::1]:81', '[::1', '[]', '[fe80::1%lo]'])
    assert.throws(
      () => validateProfile({ ...v6, health: { ...v6.health, address } }),
      /^IptlbError: health\.address: .* is not an IPv6 address \(the profile is IPv6\)$/,
    );
  const bad: [object, RegExp][] = [
    [{ kind: 'udp' }, /^health\.kind: "udp" must be tcp, http or none$/],
    [{ intervalMs: 5 }, /^health\.intervalMs: /],
    [{ intervalMs: 100, timeoutMs: 200 }, /^health\.timeoutMs: 200 must be .* from 1 to 100$/],
    [{ rise: 0 }, /^health\.rise: /],
    [{ fall: 'x' }, /^health\.fall: /],
    [{ port: 70000 }, /^health\.port: /],
    [{ address: '::1' }, /^health\.address: .*IPv4/],
    [{ address: '0.0.0.0' }, /^health\.address: "0\.0\.0\.0" is not a unicast address$/],
    [{ address: '255.255.255.255' }, /^health\.address: .* is not a unicast address$/],
    [{ kind: 'tcp', path: '/x' }, /^health\.path: only applies/],
    [{ kind: 'http', path: 'x' }, /^health\.path: /],
    [{ kind: 'http', expect: '399-200' }, /^health\.expect: /],
    // Not a string made of whatever String() makes of it: an array, an object.
    [{ kind: 'http', expect: [200] }, /^health\.expect: \[200\] must be a status code/],
    [{ kind: 'http', expect: ['200-399'] }, /^health\.expect: \["200-399"\] must be/],
    [{ kind: 'http', expect: { toString: () => '200' } }, /^health\.expect: \{\} must be/],
    [{ allDown: 'never' }, /^health\.allDown: /],
    [{ kind: 'none', fall: 2 }, /^health\.fall: is set but health\.kind is "none"/],
    [{ colour: 1 }, /^health\.colour: is not a health field/],
  ];
  for (const [input, re] of bad) {
    assert.throws(
      () => validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D, health: input }),
      (e: IptlbError) =>
        e.code === 'EINVAL_PROFILE' && re.test(e.message) && !e.message.includes('\n') && e.field!.startsWith('health'),
      JSON.stringify(input),
    );
  }
  await assert.rejects(
    parseState('web:\n  destination:\n  - 127.0.0.1:9001\n  health: tcp\n  source: 127.100.0.10:80\n'),
    /health must be a mapping/,
  );
});

test("an http check's path with a ':' and a quote is written as YAML reads it: the state file stays readable", async () => {
  // Quoted as it was (`path: '/a:'b'`), one such profile made every later read of the file fail (ESTATE).
  for (const p of ["/a:'b", "/a:''", "/:'", "/x?q='1:2'"]) {
    const h = validateProfile({
      name: 'web',
      source: '127.100.0.10:80',
      destination: D,
      health: { kind: 'http', path: p },
    });
    assert.deepEqual((await parseState(serializeState([h]))).get('web'), h, p);
  }
  const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const { open } = await import('../../src/index.js');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-hq-'));
  try {
    const stateFile = path.join(dir, 'state.db');
    const lb = await open({ stateFile }, new FakeLegacyKernel());
    await lb.apply({ name: 'api', source: '127.100.0.11:80', destination: D });
    await lb.apply({ name: 'web', source: '127.100.0.10:80', destination: D, health: { kind: 'http', path: "/a:'b" } });
    await lb.close();
    assert.match(readFileSync(stateFile, 'utf8'), /^    path: '\/a:''b'$/m);
    const again = await open({ stateFile }, new FakeLegacyKernel());
    const list = await again.list();
    await again.close();
    assert.deepEqual(
      list.map((x) => [x.name, x.health?.path]),
      [
        ['api', undefined],
        ['web', "/a:'b"],
      ],
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('metrics helpers: listen address parsing, commit histogram and sync counters', () => {
  assert.deepEqual(parseListenAddress('127.0.0.1:9469'), { host: '127.0.0.1', port: 9469 });
  assert.deepEqual(parseListenAddress('[::1]:0'), { host: '::1', port: 0 });
  for (const bad of [
    '9469',
    'host',
    '127.0.0.1:99999',
    'example.com:80',
    '0:0',
    '127.1:0',
    '2130706433:80',
    '999.1.1.1:80',
    '[1.2.3.4]:80',
  ])
    assert.throws(() => parseListenAddress(bad), /^IptlbError: metrics-address: /);
  const s = new ProcessStats();
  s.observeCommit(3);
  s.observeSync({ drifted: 2, committed: true, commitMs: 30 });
  s.observeSync(new Error('EKERNEL'));
  assert.equal(s.commits, 2);
  assert.deepEqual(s.commitBuckets.slice(0, 5), [0, 0, 1, 1, 1]);
  assert.equal(s.driftDetected, 2);
  assert.equal(s.driftRepaired, 2);
  assert.equal(s.syncFailures, 1);
  assert.equal(s.lastSync?.ok, false);
});

test('real probes: tcp connect and refusal, http status range, timeout (local sockets, no root)', async () => {
  const { probe } = await import('../../src/health/probe.js');
  const net = await import('node:net');
  const http = await import('node:http');
  const tcp = net.createServer((c) => c.end());
  await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', () => r()));
  const tcpPort = (tcp.address() as { port: number }).port;
  const silent = net.createServer(() => {}); // accepts, never answers
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
  const silentPort = (silent.address() as { port: number }).port;
  let code = 200;
  const web = http.createServer((req, res) => res.writeHead(req.url === '/healthz' ? code : 404).end());
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', () => r()));
  const webPort = (web.address() as { port: number }).port;
  const lf = net.createServer((c) => c.on('error', () => {}).end('HTTP/1.1 200 OK\nContent-Length: 2\n\nok'));
  await new Promise<void>((r) => lf.listen(0, '127.0.0.1', () => r()));
  const lfPort = (lf.address() as { port: number }).port;
  try {
    await probe({ kind: 'tcp', host: '127.0.0.1', port: tcpPort, timeoutMs: 2000 });
    await tcpClosedPort(tcpPort);
    await probe({
      kind: 'http',
      host: '127.0.0.1',
      port: webPort,
      timeoutMs: 2000,
      path: '/healthz',
      expect: '200-399',
    });
    code = 500;
    await assert.rejects(
      probe({ kind: 'http', host: '127.0.0.1', port: webPort, timeoutMs: 2000, path: '/healthz', expect: '200-399' }),
      /^Error: HTTP 500 \(expected 200-399\)$/,
    );
    await assert.rejects(
      probe({ kind: 'http', host: '127.0.0.1', port: webPort, timeoutMs: 2000, path: '/other', expect: '200' }),
      /HTTP 404/,
    );
    await assert.rejects(
      probe({ kind: 'http', host: '127.0.0.1', port: silentPort, timeoutMs: 50, path: '/' }),
      /^Error: no answer within 50 ms$/,
    );
    // A status line ending in a bare LF (curl accepts it) is read as one.
    await probe({ kind: 'http', host: '127.0.0.1', port: lfPort, timeoutMs: 2000, path: '/', expect: '200' });
  } finally {
    tcp.close();
    silent.close();
    web.close();
    lf.close();
  }
  async function tcpClosedPort(open: number): Promise<void> {
    // A port nobody listens on: take one, close it, probe it.
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    const port = (s.address() as { port: number }).port;
    await new Promise((r) => s.close(r));
    assert.notEqual(port, open);
    await assert.rejects(
      probe({ kind: 'tcp', host: '127.0.0.1', port, timeoutMs: 2000 }),
      /^Error: ECONNREFUSED \(connect\)$/,
    );
  }
});

test('open({ health }) attaches a checker: health events, the drain goes through the group commit, close restores', async () => {
  const { open } = await import('../../src/index.js');
  const net = await import('node:net');
  // The native prober closes a connected check with an RST: the accepted socket sees ECONNRESET.
  const up = net.createServer((c) => c.on('error', () => {}).end());
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', () => r()));
  const upPort = (up.address() as { port: number }).port;
  const gone = net.createServer();
  await new Promise<void>((r) => gone.listen(0, '127.0.0.1', () => r()));
  const gonePort = (gone.address() as { port: number }).port;
  await new Promise((r) => gone.close(r));
  const ex = new FakeExecutor();
  const lb = await open({ stateFile: false, health: { refreshMs: 20 } }, ex);
  const events: string[] = [];
  const commits: number[] = [];
  lb.on('health', (e) => events.push(`${e.destination} ${e.state}`));
  lb.on('commit', (e) => commits.push(e.calls));
  await lb.apply({
    name: 'web',
    source: '127.100.0.10:80',
    destination: [`127.0.0.1:${upPort}`, `127.0.0.1:${gonePort}`],
    health: { intervalMs: 20, timeoutMs: 20, fall: 2 },
  });
  const deadline = Date.now() + 10_000;
  while (!events.includes(`127.0.0.1:${gonePort} down`) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 10));
  while (ex.txs.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.ok(events.includes(`127.0.0.1:${gonePort} down`), events.join());
  assert.deepEqual(dnats(ex.txs[1], 'web'), [`127.0.0.1:${upPort}`]);
  assert.equal(lb.healthChecker!.states().find((s) => s.destination.endsWith(`:${gonePort}`))!.drained, true);
  const st = await lb.status();
  const d = st[0].destinations.find((x) => x.destination.endsWith(`:${gonePort}`))!;
  assert.equal(d.health, 'down');
  assert.equal(d.effectiveWeight, 0);
  assert.equal(d.weight, undefined);
  await lb.close();
  assert.deepEqual(
    dnats(ex.txs.at(-1)!, 'web'),
    [`127.0.0.1:${upPort}`, `127.0.0.1:${gonePort}`],
    'close gives back the configured weights',
  );
  assert.ok(commits.length >= 3);
  up.close();
});

test('an endpoint several profiles share with the same check is probed once per interval; each profile keeps its own rise/fall', async (t) => {
  const { ex, probes, checker } = await setup(t, [
    { name: 'a', source: '127.100.0.10:80', destination: D, health: { ...health, fall: 1 } },
    { name: 'b', source: '127.100.0.11:80', destination: D, health: { ...health, fall: 3 } },
    { name: 'c', source: '127.100.0.12:80', destination: D, health: { ...health, port: 9999 } },
  ]);
  await advance(1000);
  const per = (key: string): number => probes.calls.filter((c) => c.key === key).length;
  // a and b share 9001..9003 (fall differs, the probe does not); c probes port 9999 once per interval.
  assert.ok(per(D[0]) >= 9 && per(D[0]) <= 12, `${per(D[0])} probes of ${D[0]} in 1 s at 100 ms`);
  assert.ok(
    per('127.0.0.1:9999') >= 9 && per('127.0.0.1:9999') <= 12,
    `${per('127.0.0.1:9999')} probes of the check port`,
  );
  assert.equal(probes.calls.length, per(D[0]) + per(D[1]) + per(D[2]) + per('127.0.0.1:9999'));
  probes.outcome.set(D[0], false);
  await advance(100);
  const st = (p: string): string | undefined =>
    checker.states().find((s) => s.profile === p && s.destination === D[0])?.state;
  assert.equal(st('a'), 'down', 'fall 1');
  assert.equal(st('b'), 'up', 'fall 3: not yet');
  await advance(250);
  assert.equal(st('b'), 'down');
  assert.equal(st('c'), 'up', 'c checks another port');
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'b'), D.slice(1));
  await checker.stop();
});

test('metrics text and /healthz from a core: families, labels escaped, 503 with a JSON reason on drift or a failed sync', async () => {
  const { renderMetrics, healthz, startMetricsServer } = await import('../../src/metrics/server.js');
  let reports: any[] = [
    {
      name: 'web',
      status: 'in-sync',
      packets: 5,
      bytes: 300,
      destinations: [
        { destination: '127.0.0.1:9001', packets: 3, bytes: 180, health: 'up' },
        { destination: '127.0.0.1:9002', packets: 2, bytes: 120, weight: 2, effectiveWeight: 0, health: 'down' },
      ],
    },
    { name: 'x"y', status: 'orphaned', packets: 0, bytes: 0, destinations: [] },
    // The same orphan in the other address family's table: one series all the same.
    { name: 'x"y', status: 'orphaned', packets: 0, bytes: 0, destinations: [] },
  ];
  let split: string | undefined;
  const core = { statusReport: async () => ({ inSync: false, profiles: reports, split }) } as unknown as Core;
  const stats = new ProcessStats();
  stats.observeSync({ drifted: 0, committed: false, commitMs: 0 });
  const text = await renderMetrics({
    core,
    stats,
    extra: () => '# HELP agent_revision r\n# TYPE agent_revision gauge\nagent_revision 7',
  });
  assert.match(text, /^iptlb_destination_packets_total\{profile="web",destination="127\.0\.0\.1:9002"\} 2$/m);
  assert.match(text, /^iptlb_destination_weight\{profile="web",destination="127\.0\.0\.1:9002"\} 2$/m);
  assert.match(text, /^iptlb_destination_effective_weight\{profile="web",destination="127\.0\.0\.1:9002"\} 0$/m);
  assert.match(text, /^iptlb_destination_health\{profile="web",destination="127\.0\.0\.1:9002",state="down"\} 1$/m);
  assert.match(text, /^iptlb_destination_health\{profile="web",destination="127\.0\.0\.1:9002",state="up"\} 0$/m);
  assert.match(text, /^iptlb_profile_in_sync\{profile="",orphan="x\\"y"\} 0$/m);
  assert.match(text, /^iptlb_profiles 1$/m);
  assert.match(text, /^iptlb_commit_duration_seconds_bucket\{le="\+Inf"\} 0$/m);
  assert.match(text, /^agent_revision 7\n$/m);
  const series = new Set<string>();
  for (const line of text.trimEnd().split('\n')) {
    assert.match(line, /^(# (HELP|TYPE) [a-z_]+ .+|[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+)$/, line);
    const key = line.startsWith('#') ? line : line.slice(0, line.lastIndexOf(' '));
    assert.ok(!series.has(key), `one series or comment once (Prometheus refuses a scrape otherwise): ${key}`);
    series.add(key);
  }
  assert.deepEqual(await healthz({ core, stats }), {
    ok: false,
    reason: 'kernel does not match the state file: 1 profile(s) x"y orphaned',
    profiles: ['x"y'],
  });
  reports = reports.slice(0, 1);
  assert.equal((await healthz({ core, stats })).ok, true);
  assert.match(text, /^iptlb_engines_split 0$/m);
  // iptlb's rules in both engines (status says split, exits 3): 503 with the split line, and the gauge at 1.
  split = "iptlb's rules are in both engines (…): run `iptlb migrate --to nft` …";
  assert.deepEqual(await healthz({ core, stats }), { ok: false, reason: split });
  assert.match(await renderMetrics({ core, stats }), /^iptlb_engines_split 1$/m);
  split = undefined;
  // A state file that cannot be read is said to be that, not a kernel that cannot be read.
  const unreadable = {
    statusReport: async () => {
      throw new IptlbError('ESTATE', 'state file f: not valid YAML');
    },
  } as unknown as Core;
  const bad = await renderMetrics({ core: unreadable });
  assert.match(bad, /^iptlb_state_read_success 0$/m);
  assert.match(bad, /^iptlb_kernel_read_success 0$/m);
  assert.deepEqual(await healthz({ core: unreadable }), {
    ok: false,
    reason: 'cannot read the state file: state file f: not valid YAML',
  });
  assert.match(text, /^iptlb_state_read_success 1$/m);
  stats.observeSync(new Error('EKERNEL: refused'));
  assert.deepEqual(await healthz({ core, stats }), { ok: false, reason: 'last sync failed: EKERNEL: refused' });
  // Served over HTTP on a free loopback port.
  const server = await startMetricsServer({ address: '127.0.0.1:0', core, stats });
  try {
    const h = await fetch(`http://127.0.0.1:${server.port}/healthz`);
    assert.equal(h.status, 503);
    assert.equal(((await h.json()) as { reason: string }).reason, 'last sync failed: EKERNEL: refused');
    const m = await fetch(`http://127.0.0.1:${server.port}/metrics`);
    assert.equal(m.status, 200);
    assert.match(m.headers.get('content-type')!, /^text\/plain; version=0\.0\.4/);
    assert.equal((await fetch(`http://127.0.0.1:${server.port}/other`)).status, 404);
  } finally {
    await server.close();
  }
  await assert.rejects(startMetricsServer({ address: '127.0.0.1:x', core }), /metrics-address: /);
  // Its options are checked as open()'s: an object of known keys, each of its kind (a TypeError, or ignored, before).
  const badOptions: [unknown, string, RegExp][] = [
    [null, 'options', /^options: startMetricsServer takes an object, got null$/],
    [{ address: '127.0.0.1:0', core, checkr: undefined }, 'checkr', /^checkr: unknown option \(known: address, /],
    [{ address: '127.0.0.1:0', iptlb: {} }, 'iptlb', /^iptlb: must be a handle of open\(\)$/],
    [{ address: '127.0.0.1:0', core, stats: {} }, 'stats', /^stats: must be a ProcessStats$/],
    [{ address: '127.0.0.1:0', core, checker: {} }, 'checker', /^checker: must be a HealthChecker$/],
    [{ address: '127.0.0.1:0', core, extra: 'x' }, 'extra', /^extra: must be a function/],
  ];
  for (const [o, field, re] of badOptions)
    await assert.rejects(
      startMetricsServer(o as never),
      (e: IptlbError) => e instanceof IptlbError && e.code === 'EUSAGE' && e.field === field && re.test(e.message),
      field,
    );
});

test('/healthz and /metrics of a core whose rules are in both engines: 503 with the split line, iptlb_engines_split 1', async (t) => {
  const { renderMetrics, healthz } = await import('../../src/metrics/server.js');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const { FakeNftKernel } = await import('../harness/fake-kernel.js');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-split-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const kernels = { legacy: new FakeLegacyKernel(), nft: new FakeNftKernel() };
  const web = (n: number) => validateProfile({ name: `web${n}`, source: `127.100.0.${n}:80`, destination: [D[0]] });
  const a = path.join(dir, 'a.db');
  const onBoth = new Core({ stateFile: a, engine: 'legacy' }, kernels as never);
  await onBoth.transact(() => ({ upsert: [web(1)], remove: [] }), { run: true });
  const stats = new ProcessStats();
  stats.observeSync({ drifted: 0, committed: false, commitMs: 0 });
  assert.deepEqual(await healthz({ core: onBoth, stats }), { ok: true, reason: 'kernel matches the state file' });
  assert.match(await renderMetrics({ core: onBoth, stats }), /^iptlb_engines_split 0$/m);
  // Another state file's writer over the nft executor alone (an older iptlb): the rules are in both engines.
  const other = new Core({ stateFile: path.join(dir, 'b.db') }, kernels.nft);
  await other.transact(() => ({ upsert: [web(2)], remove: [] }), { run: true });
  const split = await onBoth.engineSplit();
  assert.match(split ?? '', /^iptlb's rules are in both engines/);
  assert.deepEqual(await healthz({ core: onBoth, stats }), { ok: false, reason: split });
  const text = await renderMetrics({ core: onBoth, stats });
  assert.match(text, /^iptlb_engines_split 1$/m);
  assert.match(text, /^iptlb_profile_in_sync\{profile="web1"\} 1$/m, 'the profile itself is in step');
});

test('watch services: a metrics address that cannot be listened on fails before the checks start; no health file is left', async () => {
  const { startWatchServices } = await import('../../src/cli/watch-services.js');
  const net = await import('node:net');
  const { mkdtempSync, readdirSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-ws-'));
  const core = new Core({ stateFile: path.join(dir, 'state.db'), engine: 'legacy' }, new FakeLegacyKernel());
  const taken = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => taken.once('listening', r));
  try {
    const port = (taken.address() as { port: number }).port;
    const lines: string[] = [];
    const services = await startWatchServices(core, {
      metricsAddress: `127.0.0.1:${port}`,
      health: true,
      log: (l) => lines.push(l),
    });
    await assert.rejects(
      services.start(),
      /^IptlbError: metrics-address: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)$/,
    );
    await services.stop();
    assert.deepEqual(readdirSync(dir), [], 'no health file');
    assert.deepEqual(lines, [], 'nothing started, nothing said');
  } finally {
    taken.close();
  }
});

test('a health file is followed only while its writer runs: a pid given to another process is not that writer', async () => {
  const { HealthOverlay } = await import('../../src/health/effective.js');
  const { pidIdentity } = await import('../../src/platform/pid.js');
  const { writeFileSync } = await import('node:fs');
  const path = await import('node:path');
  await withLiveWriter(async (dir, pid) => {
    const file = path.join(dir, 'state.db.health');
    const write = (pidStart?: string) =>
      writeFileSync(
        file,
        JSON.stringify({
          version: 1,
          pid,
          ...(pidStart !== undefined ? { pidStart } : {}),
          updatedAt: 0,
          profiles: { web: { drained: [D[0]], destinations: {} } },
        }),
      );
    const follow = () => {
      const o = new HealthOverlay();
      o.follow(file);
      o.refresh();
      return [...(o.committedDown('web') ?? [])];
    };
    const own = pidIdentity(pid);
    assert.ok(own, 'the running process has an identity');
    write(own);
    assert.deepEqual(follow(), [D[0]], 'its writer runs: followed');
    write(`${own}0`); // the pid alive, but started at another time: a reused pid
    assert.deepEqual(follow(), [], 'not its writer: ignored, the configured weights hold');
    write(); // a file of an older version, without the start time: the pid alone decides
    assert.deepEqual(follow(), [D[0]]);
    assert.match(JSON.stringify(new HealthOverlay().snapshot()), /"pidStart":"[0-9a-f-]+:[0-9]+"/);
  });
});

test("a library handle follows another process's published health: its apply keeps the drain, its status shows it", async () => {
  const { open } = await import('../../src/index.js');
  const { pidIdentity } = await import('../../src/platform/pid.js');
  const { writeFileSync } = await import('node:fs');
  const path = await import('node:path');
  // The process that checks the state file (watch, an agent, a handle opened with `health`), as its file says.
  await withLiveWriter(async (dir, pid) => {
    const stateFile = path.join(dir, 'state.db');
    const pidStart = pidIdentity(pid);
    assert.ok(pidStart, 'the running process has an identity');
    writeFileSync(
      `${stateFile}.health.json`,
      JSON.stringify({ version: 1, pid, pidStart, updatedAt: 0, profiles: { web: { drained: [D[1]] } } }),
    );
    const k = new FakeLegacyKernel();
    const lb = await open({ stateFile, stateRegistry: false }, k);
    await lb.apply({ name: 'web', source: '127.100.0.1:80', destination: [D[0], D[1]], health });
    const dnat = ((await lb.kernel()) as KernelView).chains.flatMap((c) =>
      c.rules.flatMap((r) => (r.rule.target.name === 'DNAT' ? [r.rule.target.toDestination] : [])),
    );
    assert.deepEqual(dnat, [D[0]], 'the drained destination is not put back');
    const [web] = await lb.status();
    assert.equal(web!.status, 'in-sync');
    assert.deepEqual(
      web!.destinations.map((d) => [d.destination, d.effectiveWeight]),
      [
        [D[0], undefined],
        [D[1], 0],
      ],
    );
    await lb.close();
  });
});

test("a second handle in the checker's own process follows its drains: its sync and apply keep them; a file of this process no checker publishes is ignored", async (t) => {
  const { open } = await import('../../src/index.js');
  const { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  t.after(() => mock.timers.reset());
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-hf-own-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const stateFile = path.join(dir, 'state.db');
  const kernel = new FakeLegacyKernel();
  const web = { name: 'web', source: '127.100.0.1:80', destination: [D[0], D[1]], health };
  const first = new Core({ stateFile, stateRegistry: false, engine: 'legacy' }, kernel);
  await first.transact(() => ({ upsert: [validateProfile(web)], remove: [] }), { run: true });
  const probes = new Probes();
  const checker = new HealthChecker(coreHost(first), { probe: probes.probe, random: () => 0.5, publishMs: 10 });
  await checker.start();
  probes.outcome.set(D[1], false);
  const file = `${stateFile}.health.json`;
  const published = () => existsSync(file) && /"drained":\["127\.0\.0\.1:9002"\]/.test(readFileSync(file, 'utf8'));
  // The drain (three failed checks 100 ms apart), then its file: written through the thread pool, which
  // the mocked clock does not wait for.
  await advance(600);
  for (let i = 0; i < 1000 && !published(); i++) await advance(10);
  const dnat = async () =>
    (await kernel.read()).chains.flatMap((c) =>
      c.rules.flatMap((r) => (r.rule.target.name === 'DNAT' ? [r.rule.target.toDestination] : [])),
    );
  assert.deepEqual(await dnat(), [D[0]], 'drained by the checker');
  assert.ok(published(), 'published');
  // Another handle of this process on the same state file, as an agent's request handler may open.
  const second = await open({ stateFile, stateRegistry: false }, kernel);
  const synced = await second.sync();
  assert.deepEqual(await dnat(), [D[0]], "its sync keeps the checker's drain");
  assert.equal(synced.committed, false, 'nothing taken for drift');
  await second.apply({ ...web, destination: [D[1], D[0]] });
  assert.deepEqual(await dnat(), [D[0]], "its apply keeps the checker's drain");
  const [st] = await second.status();
  assert.equal(st!.status, 'in-sync');
  await checker.stop();
  assert.ok(!existsSync(file), 'the file goes with the checker');
  // A file naming this process that no checker of it publishes (one a checker could not remove).
  writeFileSync(
    file,
    JSON.stringify({ version: 1, pid: process.pid, updatedAt: 0, profiles: { web: { drained: [D[0]] } } }),
  );
  await second.sync();
  assert.deepEqual(await dnat(), [D[1], D[0]], 'not followed: the configured weights hold');
  await second.close();
});

test('a health file whose writer died but was not reaped yet (a zombie) is not followed', async () => {
  const { HealthOverlay } = await import('../../src/health/effective.js');
  const { pidAlive } = await import('../../src/platform/pid.js');
  const { spawn } = await import('node:child_process');
  const { mkdtempSync, writeFileSync, rmSync, readFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-hz-'));
  // A parent that forks a child which exits at once, prints its pid and never waits for it: the
  // writer stays a zombie while the parent lives. (A shell's background job could be reaped by the
  // shell before its exec under load: /proc/<pid> gone, ENOENT, now and then.)
  const parent = spawn(
    'python3',
    ['-c', 'import os, sys, time\npid = os.fork()\nif pid == 0: os._exit(0)\nprint(pid, flush=True)\ntime.sleep(30)'],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  try {
    const pid = Number(
      await new Promise<string>((resolve) => parent.stdout!.once('data', (b: Buffer) => resolve(b.toString()))),
    );
    assert.ok(pid > 0);
    for (let i = 0; i < 500 && !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'latin1')); i++)
      await new Promise((r) => setTimeout(r, 10));
    assert.match(readFileSync(`/proc/${pid}/stat`, 'latin1'), /\) Z /, 'the writer is a zombie');
    assert.equal(pidAlive(pid), false, 'a zombie does not run');
    assert.equal(pidAlive(parent.pid!), true, 'its parent does');
    const file = path.join(dir, 'state.db.health');
    const write = (p: number) =>
      writeFileSync(
        file,
        JSON.stringify({ version: 1, pid: p, updatedAt: 0, profiles: { web: { drained: [D[0]], destinations: {} } } }),
      );
    const follow = () => {
      const o = new HealthOverlay();
      o.follow(file);
      o.refresh();
      return [...(o.committedDown('web') ?? [])];
    };
    write(parent.pid!);
    assert.deepEqual(follow(), [D[0]], 'a running writer: followed');
    write(pid);
    assert.deepEqual(follow(), [], 'a zombie writer: ignored, the configured weights hold');
  } finally {
    parent.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a health file its running writer stopped writing (SIGSTOP, a frozen cgroup, a hung loop) is followed for its staleAfterMs only; files without one by the pid alone', async (t) => {
  const { HealthOverlay } = await import('../../src/health/effective.js');
  const { pidIdentity } = await import('../../src/platform/pid.js');
  const { writeFileSync } = await import('node:fs');
  const path = await import('node:path');
  await withLiveWriter(async (dir, pid) => {
    mock.timers.enable({ apis: ['Date'], now: 5_000_000 });
    t.after(() => mock.timers.reset());
    const file = path.join(dir, 'state.db.health.json');
    const pidStart = pidIdentity(pid);
    const write = (extra: object) =>
      writeFileSync(
        file,
        JSON.stringify({
          version: 1,
          pid,
          pidStart,
          profiles: { web: { drained: [D[0]], destinations: {} } },
          ...extra,
        }),
      );
    const lines: string[] = [];
    const o = new HealthOverlay();
    o.log = (l) => lines.push(l);
    o.follow(file);
    const down = () => (o.refresh(), [...(o.committedDown('web') ?? [])]);
    write({ updatedAt: Date.now(), staleAfterMs: 10_000 });
    assert.deepEqual(down(), [D[0]], 'written now: followed');
    mock.timers.setTime(5_010_000);
    assert.deepEqual(down(), [D[0]], 'as old as its writer allows: still followed');
    mock.timers.setTime(5_010_001);
    assert.deepEqual(
      down(),
      [],
      'older: its writer runs but does not write it; not followed, the configured weights hold',
    );
    assert.equal(lines.length, 1);
    assert.match(
      lines[0]!,
      /^health: not following \S+state\.db\.health\.json: process \d+ runs but has not written it for 10\.0 s \(it writes it again within 10\.0 s while it checks: stopped, frozen or hung\); nobody checks the destinations, the configured weights hold$/,
    );
    assert.deepEqual(down(), [], 'the same file again: still not followed');
    assert.equal(lines.length, 1, 'said once per version of the file');
    nextFileTimeTick();
    write({ updatedAt: Date.now(), staleAfterMs: 10_000 });
    assert.deepEqual(down(), [D[0]], 'its writer wrote it again: followed again');
    write({ updatedAt: Date.now() + 10_001, staleAfterMs: 10_000 });
    assert.deepEqual(down(), [], 'written in the future by more than the bound (a clock set back since): not followed');
    assert.match(lines.at(-1)!, /process \d+ wrote it 10\.0 s ahead of this clock \(the clock was set back since/);
    // What writers before 2026-12-07 wrote: no staleAfterMs, written only when a check changed something.
    write({ updatedAt: 0 });
    assert.deepEqual(down(), [D[0]], 'a file without staleAfterMs: followed while its writer runs, as before');
    for (const bad of [0, -1, 1.5, '10000', null])
      assert.deepEqual(
        (write({ updatedAt: 0, staleAfterMs: bad }), down()),
        [D[0]],
        `staleAfterMs ${JSON.stringify(bad)}: not a bound, the pid alone decides`,
      );
  });
});

test('status and /metrics say whether the health file is followed: stale (its writer stopped writing it) or its writer gone, with the drains that no longer count; not drift by itself', async (t) => {
  const { spawn } = await import('node:child_process');
  const { healthFileOf } = await import('../../src/health/effective.js');
  const { renderMetrics } = await import('../../src/metrics/server.js');
  const { healthFileLine } = await import('../../src/cli/commands/status.js');
  const { rmSync } = await import('node:fs');
  const path = await import('node:path');
  await withLiveWriter(async (dir, pid) => {
    mock.timers.enable({ apis: ['Date'], now: 5_000_000 });
    t.after(() => mock.timers.reset());
    const stateFile = path.join(dir, 'state.db');
    const file = healthFileOf(stateFile);
    const write = (writer: number, drained: string[]) =>
      publishAs(file, writer, {
        updatedAt: Date.now(),
        staleAfterMs: 10_000,
        profiles: { web: { drained, destinations: {} } },
      });
    const core = new Core({ stateFile, stateRegistry: false, engine: 'legacy' }, new FakeLegacyKernel());
    core.health.follow(file);
    const web = validateProfile({ name: 'web', source: '127.100.0.1:80', destination: [D[0], D[1]], health });
    await core.transact(() => ({ upsert: [web], remove: [] }), { run: true });
    const gauges = async () => {
      const text = await renderMetrics({ core });
      const v = (n: string) => new RegExp(`^${n} (\\S+)$`, 'm').exec(text)?.[1];
      return { followed: v('iptlb_health_file_followed'), age: v('iptlb_health_file_age_seconds') };
    };

    // No health file: nothing said.
    let r = await core.statusReport({ original: false });
    assert.equal(r.healthFile, undefined);
    assert.deepEqual(await gauges(), { followed: undefined, age: undefined });

    // Written now by a running checker that drained D[1]: followed (the kernel has the drain after a sync).
    await write(pid, [D[1]]);
    await core.sync();
    mock.timers.setTime(5_002_000);
    r = await core.statusReport({ original: false });
    assert.deepEqual(r.healthFile, {
      file,
      state: 'followed',
      pid,
      updatedAt: new Date(5_000_000).toISOString(),
      ageMs: 2_000,
      staleAfterMs: 10_000,
    });
    assert.equal(r.inSync, true);
    assert.equal(healthFileLine(r.healthFile), undefined, 'followed: no line');
    assert.deepEqual(await gauges(), { followed: '1', age: '2' });

    // Not written again for longer than it promised: stale; its drain no longer counts (the kernel still has it).
    mock.timers.setTime(5_010_001);
    r = await core.statusReport({ original: false });
    assert.deepEqual(r.healthFile, {
      file,
      state: 'stale',
      pid,
      updatedAt: new Date(5_000_000).toISOString(),
      ageMs: 10_001,
      staleAfterMs: 10_000,
      drained: { web: [D[1]] },
    });
    assert.equal(r.profiles[0]!.status, 'modified', 'the drain the kernel kept is drift, as before');
    assert.equal(
      healthFileLine(r.healthFile),
      `health: not following ${file}: process ${pid} runs but has not written it for 10.0 s (it writes it within 10.0 s while it checks: stopped, frozen or hung); nobody checks the destinations, the configured weights hold; its drains no longer count: web ${D[1]}`,
    );
    assert.deepEqual(await gauges(), { followed: '0', age: '10.001' });
    // Stale with nothing drained in the kernel: said, but no drift (inSync, status exit 0).
    await core.sync();
    r = await core.statusReport({ original: false });
    assert.equal(r.healthFile?.state, 'stale');
    assert.equal(r.inSync, true, 'a file not followed is not drift by itself');

    // A stale file whose writer has died since: not-running (the same version of the file).
    const other = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    try {
      await new Promise((res) => other.once('spawn', res));
      nextFileTimeTick();
      await write(other.pid!, [D[0]]);
      mock.timers.setTime(5_030_000);
      assert.equal((await core.statusReport({ original: false })).healthFile?.state, 'stale');
    } finally {
      other.kill('SIGKILL');
      await new Promise((res) => other.once('exit', res));
    }
    r = await core.statusReport({ original: false });
    assert.equal(r.healthFile?.state, 'not-running');
    assert.deepEqual(r.healthFile?.drained, { web: [D[0]] });
    assert.match(
      healthFileLine(r.healthFile)!,
      /^health: not following \S+: process \d+, which wrote it, does not run \(its checks ended without removing it\); nobody checks the destinations, the configured weights hold; its drains no longer count: web 127\.0\.0\.1:9001$/,
    );
    // Written ahead of this clock by more than the bound (a clock set back): stale, a negative age.
    await write(pid, []);
    mock.timers.setTime(5_030_000 - 10_001);
    r = await core.statusReport({ original: false });
    assert.equal(r.healthFile?.state, 'stale');
    assert.equal(r.healthFile?.ageMs, -10_001);
    assert.equal(r.healthFile?.drained, undefined);
    assert.match(healthFileLine(r.healthFile)!, /wrote it 10\.0 s ahead of this clock \(a clock set back\)/);
    rmSync(file);
    assert.equal((await core.statusReport({ original: false })).healthFile, undefined, 'removed: nothing said');
  });
});

/** A checker of `profiles` on a state file of its own, under mocked timers; its file, and how to wait for a write. */
async function publishingChecker(t: TestContext, profiles: object[], log: string[]) {
  const { existsSync, mkdtempSync, readFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-hf-stale-'));
  const stateFile = path.join(dir, 'state.db');
  const core = new Core({ stateFile, stateRegistry: false, engine: 'legacy' }, new FakeLegacyKernel());
  await core.transact(() => ({ upsert: profiles.map((p) => validateProfile(p)), remove: [] }), { run: true });
  const probes = new Probes();
  const checker = new HealthChecker(coreHost(core), {
    probe: probes.probe,
    random: () => 0.5,
    publishMs: 1000,
    log: (l) => log.push(l),
  });
  // In this order: a write of the checker under way lands before the directory goes.
  t.after(async () => {
    await checker.stop();
    rmSync(dir, { recursive: true, force: true });
    mock.timers.reset();
  });
  const file = `${stateFile}.health.json`;
  const read = () => (existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>) : {});
  /** Lets the checker's write (through the thread pool, which the mocked clock does not wait for) land. */
  const written = async (ok: () => boolean) => {
    for (let i = 0; i < 100_000 && !ok(); i++) await new Promise((r) => setImmediate(r));
    assert.ok(ok(), 'written');
  };
  return { checker, probes, file, read, written };
}

test('a checker writes its health file every publishMs with its staleAfterMs, also when no check ran since', async (t) => {
  const idle = {
    name: 'idle',
    source: '127.100.0.2:80',
    destination: [D[2]],
    health: { kind: 'tcp', intervalMs: 3_600_000 },
  };
  const { checker, probes, read, written } = await publishingChecker(t, [idle], []);
  assert.equal(checker.staleAfterMs, 10_000, 'five publish periods, at least 10 s');
  await checker.start();
  await written(() => read().updatedAt !== undefined);
  assert.equal(read().staleAfterMs, 10_000);
  const first = read().updatedAt as number;
  for (let i = 0; i < 30; i++) await advance(1000, 100);
  await written(() => (read().updatedAt as number) >= first + 29_000);
  assert.equal(
    probes.calls.length,
    0,
    'checked once an hour: no check in these 30 s, nothing new to write but the time',
  );
});

test('a checker that stops running (no timer of it runs, as under SIGSTOP) is let go by its followers after staleAfterMs; running again it says so and is followed again', async (t) => {
  const { HealthOverlay } = await import('../../src/health/effective.js');
  const log: string[] = [];
  const web = { name: 'web', source: '127.100.0.1:80', destination: [D[0], D[1]], health };
  const { checker, probes, file, read, written } = await publishingChecker(t, [web], log);
  await checker.start();
  probes.outcome.set(D[1], false);
  await advance(600);
  await written(() => JSON.stringify(read().profiles ?? {}).includes(`"drained":["${D[1]}"]`));
  const lines: string[] = [];
  const follower = new HealthOverlay();
  follower.log = (l) => lines.push(l);
  follower.follow(file);
  const down = () => (follower.refresh(), [...(follower.committedDown('web') ?? [])]);
  assert.deepEqual(down(), [D[1]], 'followed');
  await advance(3000, 100);
  // Its writes under way land first (through the thread pool, which the mocked clock does not wait for): one landing
  // after the stop would be a new version of the file, as old.
  const priv = checker as unknown as { publishing?: Promise<void> };
  while (priv.publishing) await priv.publishing;
  assert.deepEqual(down(), [D[1]], 'followed while it runs');
  // SIGSTOP: the clock moves on, no timer of the checker runs.
  mock.timers.setTime(Date.now() + 10_500);
  const resumedAt = Date.now();
  assert.deepEqual(down(), [], 'stale: let go, the configured weights hold');
  assert.equal(lines.length, 1, lines.join('\n'));
  assert.match(lines[0]!, /runs but has not written it for 1\d\.\d s/);
  // SIGCONT: the publish timer runs late, says so, and writes the file again.
  nextFileTimeTick();
  await advance(10, 10);
  assert.ok(
    log.some((l) =>
      /^health: this process did not run for 1\d\.\d s \(stopped, frozen or hung\): its health file was stale and other processes did not follow it meanwhile/.test(
        l,
      ),
    ),
    log.join('\n'),
  );
  await written(() => (read().updatedAt as number) >= resumedAt);
  assert.deepEqual(down(), [D[1]], 'followed again');
  assert.equal(lines.length, 1, 'nothing more said');
});

test("a handle's checker that runs again after a pause longer than staleAfterMs syncs the kernel: a drain another process's sync undid meanwhile is back at once", async (t) => {
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const { open } = await import('../../src/index.js');
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-hf-resync-'));
  const stateFile = path.join(dir, 'state.db');
  const kernel = new FakeLegacyKernel();
  const lb = await open({ stateFile, stateRegistry: false, engine: 'legacy', stateFoldMs: 0 }, kernel);
  const log: string[] = [];
  const probes = new Probes();
  const checker = new HealthChecker(lb, {
    probe: probes.probe,
    random: () => 0.5,
    publishMs: 1000,
    log: (l) => log.push(l),
  });
  t.after(async () => {
    await checker.stop();
    await lb.close();
    rmSync(dir, { recursive: true, force: true });
    mock.timers.reset();
  });
  const web = { name: 'web', source: '127.100.0.1:80', destination: [D[0], D[1]], health };
  await lb.apply(web);
  const inKernel = (): string[] | null => dnats(kernel.commits.at(-1)!, 'web');
  await checker.start();
  probes.outcome.set(D[1], false);
  await advance(600);
  assert.deepEqual(inKernel(), [D[0]], 'drained');
  // SIGSTOP: the clock moves past staleAfterMs; another process (a Core of the same state file) no longer follows
  // the stale file, and its sync gives the kernel back the configured weights.
  mock.timers.setTime(Date.now() + 10_500);
  const other = new Core({ stateFile, stateRegistry: false, engine: 'legacy' }, kernel);
  await other.sync();
  assert.deepEqual(inKernel(), [D[0], D[1]], "the other process's sync undid the drain");
  const commits = kernel.commits.length;
  // SIGCONT: the publish timer runs late; the checker syncs through its handle.
  nextFileTimeTick();
  await advance(10, 10);
  await settleUntil(() => kernel.commits.length !== commits);
  assert.deepEqual(inKernel(), [D[0]], 'drained again, without waiting for a drift check');
  await settleUntil(() => log.some((l) => l.includes('in step with the checks again')));
  assert.ok(
    log.some((l) => /did not run for 1\d\.\d s .*: syncing the kernel$/.test(l)),
    log.join('\n'),
  );
  assert.ok(log.includes('health: kernel in step with the checks again after the pause'), log.join('\n'));
});

test('stop() during a commit waits for that commit, not for a clock (under mocked timers it resolves once the commit does)', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  t.after(() => mock.timers.reset());
  const ex = new FakeExecutor();
  const core = new Core({ stateFile: false }, ex);
  await core.transact(
    () => ({
      upsert: [validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D, health })],
      remove: [],
    }),
    { run: true },
  );
  // The host's commit finishes on real I/O (a setImmediate here), after stop() was called.
  let started = 0;
  let release!: () => void;
  const host = coreHost(core);
  const slow = {
    ...host,
    commit: async () => {
      started++;
      await new Promise<void>((r) => (release = r));
      await new Promise((r) => setImmediate(r));
      return host.commit();
    },
  };
  const probes = new Probes();
  const checker = new HealthChecker(slow, {
    probe: probes.probe,
    random: () => 0.5,
    log: () => {},
    restoreOnStop: false,
  });
  await checker.start();
  probes.outcome.set(D[1], false);
  await advance(400);
  assert.equal(started, 1, 'the drain is being committed');
  let stopped = false;
  const stopping = checker.stop().then(() => (stopped = true));
  await settle();
  assert.equal(stopped, false, 'stop() waits for the commit under way');
  release();
  await stopping;
  assert.ok(stopped);
  assert.equal(ex.txs.length, 2, 'the commit under way landed before stop() returned');
});

test('watch mode (heldHost): checks and drains follow the version applied; a state file ahead of it is not carried into the kernel', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  t.after(() => mock.timers.reset());
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-held-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const ex = new FakeExecutor();
  const core = new Core({ stateFile: path.join(dir, 'state.db') }, ex);
  const web = (dest: string[]) =>
    validateProfile({ name: 'web', source: '127.100.0.10:80', destination: dest, health });
  // v1 applied (what the watch last brought the kernel in step with)…
  await core.transact(() => ({ upsert: [web([D[0], D[1]])], remove: [] }), { run: true });
  const held = new Map(await core.readState());
  // …then the file moves ahead without -run (a version the watch has not applied: not settled yet).
  const extra = validateProfile({ name: 'extra', source: '127.100.0.11:80', destination: [D[0]] });
  await core.transact(() => ({ upsert: [web([D[0], D[2]]), extra], remove: [] }), { run: false });
  ex.txs.length = 0;
  const probes = new Probes();
  const checker = new HealthChecker(
    heldHost(core, () => held),
    {
      probe: probes.probe,
      random: () => 0.5,
      log: () => {},
      restoreOnStop: false,
    },
  );
  await checker.start();
  probes.outcome.set(D[1], false);
  await advance(400);
  assert.ok(
    probes.calls.some((c) => c.key === D[1]),
    "the applied version's destination is checked",
  );
  assert.ok(!probes.calls.some((c) => c.key === D[2]), "the file's newer destination is not (not applied yet)");
  assert.equal(checker.states()[1].state, 'down');
  // The commit takes the state file's lock (real file I/O beside the mocked clock): waited for over
  // up to a million turns of the event loop, seconds (2,000 were too few once in CI, on a host loaded
  // by the kernel tests); the mocked clock moves 100 ms at most, as before.
  for (let i = 0; ex.txs.length < 1 && i < 1_000_000; i++) {
    await new Promise((r) => setImmediate(r));
    if (i % 20 === 19 && i < 2_000) await advance(1, 1);
  }
  assert.equal(ex.txs.length, 1, 'one commit for the drain');
  assert.deepEqual(dnats(ex.txs[0], 'web'), [D[0]], 'v1 without the drained destination; not the file version');
  assert.equal(dnats(ex.txs[0], 'extra'), null, 'a profile only the file holds is not committed');
  const { readState } = await import('../../src/core/state.js');
  const file = await readState(path.join(dir, 'state.db'));
  assert.deepEqual(file.get('web')!.destination, [D[0], D[2]], 'the state file is left as it is');
  assert.ok(file.has('extra'));
  await checker.stop();
});

for (const engine of ['legacy', 'nft'] as const)
  test(`watch mode (heldHost, ${engine}): a change a one-shot command committed since the watch applied its version is not undone by a drain; one only in the file is not carried in`, async (t) => {
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
    t.after(() => mock.timers.reset());
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const { FakeNftKernel } = await import('../harness/fake-kernel.js');
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-held-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'state.db');
    const kernel = engine === 'legacy' ? new FakeLegacyKernel() : new FakeNftKernel();
    const log: string[] = [];
    // The watch's core, and a one-shot command's (another process: the same file and kernel).
    const core = new Core({ stateFile: file, log: (l) => log.push(l) }, kernel);
    const oneShot = new Core({ stateFile: file }, kernel);
    const web = (dest: string[]) =>
      validateProfile({ name: 'web', source: '127.100.0.10:80', destination: dest, health: { ...health, fall: 2 } });
    const other = (n: number) => validateProfile({ name: `p${n}`, source: `127.100.0.2${n}:80`, destination: [D[0]] });
    // The version the watch applied…
    await core.transact(() => ({ upsert: [web([D[0], D[1]]), other(1), other(2)], remove: [] }), { run: true });
    const held = new Map(await core.readState());
    // …then `iptlb apply` (with -run) adds a destination to web and a profile, and deletes one: kernel and file.
    await oneShot.transact(() => ({ upsert: [web([D[0], D[1], D[2]]), other(3)], remove: ['p2'] }), { run: true });
    // …and a change only in the file (written without -run): the kernel has p1 as held.
    await oneShot.transact(() => ({ upsert: [validateProfile({ ...other(1), destination: [D[1]] })], remove: [] }), {
      run: false,
    });
    const probes = new Probes();
    const checker = new HealthChecker(
      heldHost(core, () => held),
      { probe: probes.probe, random: () => 0.5, log: () => {}, restoreOnStop: false, publish: false },
    );
    await checker.start();
    probes.outcome.set(D[1], false);
    await advance(300);
    assert.equal(checker.states()[1].state, 'down');
    // The commit takes the state file's lock (real file I/O beside the mocked clock): see the test above.
    const c = checker.counters;
    for (let i = 0; c.commits + c.commitFailures === 0 && i < 1_000_000; i++) {
      await new Promise((r) => setImmediate(r));
      if (i % 20 === 19 && i < 2_000) await advance(1, 1);
    }
    assert.deepEqual([c.commits, c.commitFailures], [1, 0], 'the drain committed');
    assert.doesNotMatch(
      log.join('\n'),
      /is not as the state says|replacing it/,
      'planned against what the kernel holds',
    );
    // Compared with what the kernel should hold: the one-shot change kept, D[1] drained, p1 as held.
    const expected = new Map([
      ['web', validateProfile({ ...web([D[0], D[1], D[2]]), weights: { [D[1]]: 0 } })],
      ['p1', other(1)],
      ['p3', other(3)],
    ]);
    const memory = new Core({ stateFile: false }, kernel);
    await memory.transact(() => ({ upsert: [...expected.values()], remove: [] }), { run: false });
    const reports = await memory.status();
    assert.deepEqual(
      reports.map((r) => `${r.name} ${r.status}`).sort(),
      ['p1 in-sync', 'p3 in-sync', 'web in-sync'],
      JSON.stringify(reports),
    );
    await checker.stop();
  });

test('watch mode (heldHost): while the state file does not parse, a drain is committed against the version applied (docs/health.md, known limits); health says nothing of the file', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  t.after(() => mock.timers.reset());
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-held-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'state.db');
  const kernel = new FakeLegacyKernel();
  const core = new Core({ stateFile: file }, kernel);
  const web = validateProfile({
    name: 'web',
    source: '127.100.0.10:80',
    destination: D,
    health: { ...health, fall: 2 },
  });
  await core.transact(() => ({ upsert: [web], remove: [] }), { run: true });
  const held = new Map(await core.readState());
  writeFileSync(file, 'web: [half written\n');
  await assert.rejects(core.readState());
  const log: string[] = [];
  const probes = new Probes();
  const checker = new HealthChecker(
    heldHost(core, () => held),
    { probe: probes.probe, random: () => 0.5, log: (l) => log.push(l), restoreOnStop: false, publish: false },
  );
  await checker.start();
  probes.outcome.set(D[1], false);
  await advance(300);
  const c = checker.counters;
  for (let i = 0; c.commits + c.commitFailures === 0 && i < 1_000_000; i++) {
    await new Promise((r) => setImmediate(r));
    if (i % 20 === 19 && i < 2_000) await advance(1, 1);
  }
  assert.deepEqual([c.commits, c.commitFailures], [1, 0], log.join('\n'));
  assert.deepEqual(dnats(kernel.commits.at(-1)!, 'web'), [D[0], D[2]], 'the applied version, D[1] drained');
  assert.doesNotMatch(log.join('\n'), /cannot read the profiles|commit failed/);
  await checker.stop();
});

test('one checker per state file: a second one, of this process or another, refuses to start (ELOCK) and changes nothing; it starts once the first stopped', async () => {
  const { mkdtempSync, readFileSync, rmSync, existsSync } = await import('node:fs');
  const { spawn } = await import('node:child_process');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-checkers-'));
  const file = path.join(dir, 'state.db');
  const kernel = new FakeLegacyKernel();
  const web = validateProfile({ name: 'web', source: '127.0.0.10:80', destination: ['127.0.0.1:9001'], health: {} });
  const first = new Core({ stateFile: file, engine: 'legacy' }, kernel);
  await first.transact(() => ({ upsert: [web], remove: [] }), { run: true });
  const second = new Core({ stateFile: file, engine: 'legacy' }, kernel);
  const probes = new Probes();
  const checker = (core: Core, log: string[]) =>
    new HealthChecker(coreHost(core), { probe: probes.probe, random: () => 0.5, log: (l) => log.push(l) });
  const a = checker(first, []);
  const bLog: string[] = [];
  const b = checker(second, bLog);
  try {
    await a.start();
    const published = readFileSync(`${file}.health.json`, 'utf8');
    const lock = `${file}.health.lock`;
    await assert.rejects(b.start(), (e: IptlbError) => {
      assert.equal(e.code, 'ELOCK');
      assert.equal(
        e.message,
        `health checks: another checker of this process (${process.pid}) already checks the destinations of ${file} (it holds ${lock}); one process checks a state file, two would undo each other's drains: stop that one, or run this one without health checks`,
      );
      return true;
    });
    assert.equal(b.probing, undefined, 'the refused checker sends no probe');
    assert.deepEqual(bLog, []);
    assert.equal(readFileSync(`${file}.health.json`, 'utf8'), published, "the first checker's file is untouched");
    await a.stop();
    await b.start();
    assert.ok(existsSync(`${file}.health.json`), 'the second checker publishes once it runs');
    await b.stop();
    // Another process holding the lock (flock(1)): refused too, without a pid to name.
    // (-o: the command does not hold it, flock(1) does, so killing the group frees it.)
    const holder = spawn('flock', ['--exclusive', '-o', lock, 'sh', '-c', 'echo locked; exec sleep 60'], {
      stdio: ['ignore', 'pipe', 'ignore'],
      detached: true,
    });
    await new Promise((r) => holder.stdout.once('data', r));
    try {
      await assert.rejects(b.start(), /^IptlbError: health checks: another process already checks the destinations/);
    } finally {
      const exited = new Promise((r) => holder.once('exit', r));
      process.kill(-holder.pid!, 'SIGKILL');
      await exited;
    }
    await b.start();
    await b.stop();
  } finally {
    await a.stop();
    await b.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a checker of a state file whose directory does not exist yet creates it (as the state file's lock does), takes its lock there and publishes: nothing said", async () => {
  const { mkdtempSync, rmSync, existsSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-checker-dir-'));
  const file = path.join(dir, 'local', 'state.db');
  const log: string[] = [];
  const c = new HealthChecker(coreHost(new Core({ stateFile: file, engine: 'legacy' }, new FakeLegacyKernel())), {
    probe: new Probes().probe,
    log: (l) => log.push(l),
  });
  try {
    await c.start();
    assert.ok(existsSync(`${file}.health.lock`) && existsSync(`${file}.health.json`));
    await c.stop();
    assert.deepEqual(log, []);
  } finally {
    await c.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('errors name their field: open({ health }) refused because another process checks the state file (ELOCK, field health); a call on a closed handle (EUSAGE, field handle)', async () => {
  const { open } = await import('../../src/index.js');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-fields-'));
  const file = path.join(dir, 'state.db');
  const a = await open({ stateFile: file, stateRegistry: false, health: true }, new FakeExecutor());
  try {
    await assert.rejects(
      open({ stateFile: file, stateRegistry: false, health: true }, new FakeExecutor()),
      (e: IptlbError) =>
        e.code === 'ELOCK' && e.field === 'health' && /^health checks: another checker of this process/.test(e.message),
    );
  } finally {
    await a.close();
  }
  for (const call of [() => a.list(), () => a.apply([]), () => a.delete('web'), () => a.status(), () => a.sync()])
    await assert.rejects(
      call(),
      (e: IptlbError) =>
        e.code === 'EUSAGE' && e.field === 'handle' && e.message === 'handle: this iptlb handle is closed',
    );
  rmSync(dir, { recursive: true, force: true });
});

test('new HealthChecker(target, options): a target that is not a handle, or an option that is not a number, is EUSAGE naming it as given', () => {
  for (const target of [null, 'web', 42, {}])
    assert.throws(
      () => new HealthChecker(target as never),
      (e: IptlbError) =>
        e instanceof IptlbError &&
        e.code === 'EUSAGE' &&
        e.field === 'iptlb' &&
        /^iptlb: HealthChecker takes a handle of open\(\), got /.test(e.message),
      String(target),
    );
  const host = coreHost(new Core({ stateFile: false }, new FakeLegacyKernel()));
  for (const [k, v, got] of [
    ['batchMs', NaN, 'NaN'],
    ['tickMs', Infinity, 'Infinity'],
  ] as const)
    assert.throws(
      () => new HealthChecker(host, { [k]: v }),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === k && e.message.endsWith(`, got ${got}`),
      k,
    );
});

test("close() whose health checker's stop() throws still ends the calls, folds the journal and releases the checker's lock, then rejects with that error", async () => {
  const { open } = await import('../../src/index.js');
  const { mkdtempSync, rmSync, existsSync, readFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-close-stop-'));
  const file = path.join(dir, 'state.db');
  try {
    for (const how of ['prober', 'stop'] as const) {
      const lb = await open({ stateFile: file, stateRegistry: false, health: true }, new FakeExecutor());
      const checker = lb.healthChecker!;
      const boom = new Error(`${how} failed`);
      if (how === 'prober')
        // Inside stop(): its prober's close throws.
        (checker as unknown as { prober: { close(): void } }).prober.close = () => {
          throw boom;
        };
      else checker.stop = () => Promise.reject(boom); // stop() itself
      const applied = lb.apply({
        name: `web-${how}`,
        source: `127.100.0.10:${how === 'prober' ? 80 : 81}`,
        destination: ['127.0.0.1:9001'],
      });
      await applied;
      assert.ok(existsSync(`${file}.journal`), 'the change is in the journal, not yet folded');
      await assert.rejects(lb.close(), (e) => e === boom);
      await assert.rejects(lb.close(), (e) => e === boom, 'called again: the same settlement');
      assert.equal(existsSync(`${file}.journal`), false, 'the journal was folded');
      assert.match(readFileSync(file, 'utf8'), new RegExp(`^web-${how}:`, 'm'));
      await assert.rejects(lb.list(), (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'handle');
      if (how === 'stop') {
        await HealthChecker.prototype.stop.call(checker); // the real stop, which never ran
        continue;
      }
      // The lock and the published file went with the failed stop: another checker of the file starts.
      assert.equal(existsSync(`${file}.health.json`), false);
      const next = await open({ stateFile: file, stateRegistry: false, health: true }, new FakeExecutor());
      await next.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(
  'metrics server close() ends the connections still open (one without a request, one part way through its request): a stop of watch waited for their clients, delaying the return of drained weights',
  {
    timeout: 30_000,
  },
  async () => {
    const { startMetricsServer } = await import('../../src/metrics/server.js');
    const net = await import('node:net');
    const server = await startMetricsServer({ address: '127.0.0.1:0', core: {} as never });
    const open = async (first?: string) => {
      const s = net.connect(server.port, '127.0.0.1');
      s.on('error', () => {});
      await new Promise((r) => s.once('connect', r));
      if (first) s.write(first);
      return { closed: new Promise<void>((r) => s.once('close', () => r())) };
    };
    const closed = [(await open()).closed, (await open('GET /metrics HTTP/1.1\r\nHost: x\r\n')).closed];
    await new Promise((r) => setImmediate(r));
    await server.close();
    await Promise.all(closed);
  },
);

test("a commit window is bounded by the transition's own check: a profile checked every 10 s, part way through a streak, does not hold back for seconds the drain of one checked every 100 ms", async (t) => {
  const slowDest = '127.0.0.1:9101';
  const { ex, probes, checker, events } = await setup(t, [
    { name: 'fast', source: '127.100.0.10:80', destination: D, health: { ...health, fall: 2 } },
    {
      name: 'slow',
      source: '127.100.0.11:80',
      destination: [slowDest, '127.0.0.1:9102'],
      health: { ...health, intervalMs: 10_000 },
    },
  ]);
  // slow's first check (at 5 s, random 0.5) fails once: 1 of its fall 3, part way; its next check is 10 s later.
  probes.outcome.set(slowDest, false);
  await advance(5100, 50);
  assert.equal(checker.states().find((s) => s.destination === slowDest)?.failures, 1);
  probes.outcome.delete(slowDest);
  const before = ex.txs.length;
  probes.outcome.set(D[0], false);
  await advance(400);
  assert.ok(events.includes(`fast ${D[0]} up->down`), events.join(', '));
  // Bounded by fast's own (fall - 1) intervals ×1.1 plus its timeout, not by slow's next check 10 s later.
  assert.equal(ex.txs.length, before + 1, 'the drain is committed within fast intervals');
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'fast'), D.slice(1));
  await checker.stop();
});

test('a health file of a live writer with a malformed body (hand-edited, another version): the bad parts are ignored, not a crash of every command', async () => {
  const { HealthOverlay } = await import('../../src/health/effective.js');
  const { writeFileSync } = await import('node:fs');
  const path = await import('node:path');
  await withLiveWriter(async (dir, pid) => {
    const file = path.join(dir, 'state.db.health.json');
    const web = validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D, health });
    const state = new Map([['web', web]]);
    const follow = (profiles: unknown) => {
      writeFileSync(file, JSON.stringify({ version: 1, pid, updatedAt: 0, profiles }));
      const o = new HealthOverlay();
      o.follow(file);
      o.refresh();
      const destinations: DestinationCounters[] = D.map((d) => ({ destination: d, packets: 0, bytes: 0 }));
      const report = { name: 'web', destinations };
      const [r] = o.annotate([report], state, o.kernelState(state), () => report);
      return { drained: [...(o.committedDown('web') ?? [])], health: r!.destinations.map((d) => d.health) };
    };
    for (const profiles of [null, [], 'x', { web: null }, { web: 'x' }, { web: { drained: 'x', destinations: 5 } }])
      assert.deepEqual(follow(profiles), { drained: [], health: ['unchecked', 'unchecked', 'unchecked'] });
    // The valid parts are kept; a destination's info of a wrong shape is dropped.
    assert.deepEqual(
      follow({
        web: {
          drained: [D[0], 5, null],
          destinations: {
            [D[0]]: { state: 'down', lastCheck: 'yesterday', since: 1e300, lastError: 7 },
            [D[1]]: null,
            [D[2]]: { state: 'sideways' },
          },
        },
      }),
      { drained: [D[0]], health: ['down', 'unchecked', 'unchecked'] },
    );
  });
});

test('stop() while start() still reads the profiles: start then neither publishes a health file after the stop nor leaves timers', async () => {
  const { mkdtempSync, rmSync, existsSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-checker-race-'));
  const file = path.join(dir, 'state.db');
  const core = new Core({ stateFile: file, engine: 'legacy' }, new FakeLegacyKernel());
  const web = validateProfile({ name: 'web', source: '127.0.0.10:80', destination: ['127.0.0.1:9001'], health: {} });
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const probes = new Probes();
  const c = new HealthChecker(
    {
      core,
      commit: () => core.transact(() => ({ upsert: [], remove: [] }), { run: true }),
      profiles: async () => (await gate, new Map([['web', web]])),
    },
    { probe: probes.probe, random: () => 0 },
  );
  try {
    const starting = c.start();
    await settle();
    await c.stop();
    assert.ok(!existsSync(`${file}.health.json`), 'stopped: no file');
    release();
    await starting;
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(!existsSync(`${file}.health.json`), 'the start that ends after the stop publishes nothing');
    assert.equal(probes.calls.length, 0, 'and probes nothing');
    assert.equal(c.probing, undefined);
  } finally {
    await c.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * A state file in a new temporary directory (`prefix`) and a core on the fake legacy kernel that has applied
 * `web`, a profile with a health check: what a checker that publishes its health file needs.
 */
async function publishingCore(prefix: string): Promise<{ dir: string; file: string; core: Core }> {
  const { mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  const file = path.join(dir, 'state.db');
  const core = new Core({ stateFile: file, engine: 'legacy' }, new FakeLegacyKernel());
  const web = validateProfile({ name: 'web', source: '127.0.0.10:80', destination: ['127.0.0.1:9001'], health: {} });
  await core.transact(() => ({ upsert: [web], remove: [] }), { run: true });
  return { dir, file, core };
}

test('stop() while the health file is being refreshed: the refresh does not land after the stop removed the file', async () => {
  const { rmSync, existsSync } = await import('node:fs');
  const { dir, file, core } = await publishingCore('iptlb-checker-pub-');
  const c = new HealthChecker(coreHost(core), { probe: new Probes().probe, random: () => 0, publishMs: 10 });
  try {
    await c.start();
    assert.ok(existsSync(`${file}.health.json`));
    // The next refresh of the file hangs part way (a slow disk) until released.
    const publish = core.health.publish.bind(core.health);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inPublish = new Promise<void>((r) => (entered = r));
    core.health.publish = async (f: string) => {
      entered();
      await gate;
      return publish(f);
    };
    await inPublish;
    const stopping = c.stop();
    await new Promise((r) => setTimeout(r, 20));
    release();
    await stopping;
    await new Promise((r) => setTimeout(r, 20));
    assert.ok(!existsSync(`${file}.health.json`), 'no health file once stopped');
  } finally {
    await c.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a health file that cannot be written (a read-only state directory: a ConfigMap volume) is said once, not at every refresh (every 2 s, forever); again after a write that succeeded', async () => {
  const { rmSync } = await import('node:fs');
  const { dir, core } = await publishingCore('iptlb-checker-erofs-');
  const log: string[] = [];
  const c = new HealthChecker(coreHost(core), {
    probe: new Probes().probe,
    random: () => 0,
    publishMs: 86_400_000,
    log: (l) => log.push(l),
  });
  const publish = core.health.publish.bind(core.health);
  let readOnly = true;
  core.health.publish = async (f: string) => {
    if (readOnly) throw new Error(`EROFS: read-only file system, open '${f}.tmp'`);
    return publish(f);
  };
  const refresh = (c as unknown as { publishNow(): Promise<void> }).publishNow.bind(c);
  const said = (): number => log.filter((l) => /health: cannot write/.test(l)).length;
  try {
    await c.start();
    for (let i = 0; i < 5; i++) await refresh();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(said(), 1, log.join('\n'));
    readOnly = false;
    await refresh();
    readOnly = true;
    await refresh();
    await refresh();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(said(), 2, log.join('\n'));
  } finally {
    await c.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the wall clock set back (an NTP step, date -s) does not stop the checks: they go on one interval apart', async (t) => {
  // Timers are monotonic, Date is the wall clock: mocked apart (the mocked Date moves its timers with it).
  mock.timers.enable({ apis: ['setTimeout'] });
  t.after(() => mock.timers.reset());
  let wall = 50_000_000;
  t.mock.method(Date, 'now', () => wall);
  const step = async (ms: number): Promise<void> => {
    for (let i = 0; i < ms; i += 10) {
      wall += 10;
      mock.timers.tick(10);
      await settle();
    }
  };
  const ex = new FakeExecutor();
  const core = new Core({ stateFile: false }, ex);
  const p = validateProfile({ name: 'web', source: '127.100.0.10:80', destination: D, health });
  await core.transact(() => ({ upsert: [p], remove: [] }), { run: true });
  const probes = new Probes();
  const checker = new HealthChecker(coreHost(core), { probe: probes.probe, random: () => 0.5 });
  await checker.start();
  await step(300);
  assert.ok(probes.calls.length >= 6, `checks ran: ${probes.calls.length}`);
  wall -= 3_600_000; // an hour back
  probes.calls.length = 0;
  await step(500);
  assert.ok(probes.calls.length >= 3 * 4, `checks every 100 ms after the step: ${probes.calls.length}`);
  probes.outcome.set(D[1], false);
  await step(400);
  assert.equal(checker.states()[1].state, 'down', 'a destination dead after the step is still found down');
  assert.ok(ex.txs.length >= 2, 'and drained');
  // Forward an hour: one round of checks, not a burst of every check the hour would have held.
  probes.calls.length = 0;
  wall += 3_600_000;
  await step(200);
  assert.ok(probes.calls.length <= 3 * 3, `no burst after a step forward: ${probes.calls.length}`);
  await checker.stop();
});

test('a checker stopped and started again checks every destination again and drains a dead one again', async (t) => {
  const { ex, probes, checker } = await setup(t, [{ name: 'web', source: '127.100.0.10:80', destination: D, health }]);
  probes.outcome.set(D[2], false);
  // A probe that hangs is in flight when the checker stops.
  probes.outcome.set(D[0], 'hang');
  await advance(400);
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), D.slice(0, 2));
  const stopping = checker.stop();
  await advance(20);
  await stopping;
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), D, 'stop gave the weights back');
  probes.outcome.set(D[0], true);
  await checker.start();
  probes.calls.length = 0;
  await advance(500);
  const checked = new Set(probes.calls.map((c) => c.key));
  assert.deepEqual([...checked].sort(), [...D].sort(), 'every destination checked after the start');
  assert.deepEqual(
    checker.states().map((s) => [s.state, s.drained]),
    [
      ['up', false],
      ['up', false],
      ['down', true],
    ],
  );
  assert.deepEqual(dnats(ex.txs.at(-1)!, 'web'), D.slice(0, 2), 'the dead destination drained again');
  await checker.stop();
});

test('an http check reads the status code whole: a status line of 4 digits (HTTP/1.1 2000) is not taken for 200', async () => {
  const { probe } = await import('../../src/health/probe.js');
  const net = await import('node:net');
  const answers = ['HTTP/1.1 2000 OK\r\n\r\n', 'HTTP/1.1 200OK\r\n\r\n', 'HTTP/1.1 200\r\n\r\n'];
  let next = 0;
  const srv = net.createServer((c) => c.on('error', () => {}).end(answers[next++]));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  const at = { kind: 'http' as const, host: '127.0.0.1', port, timeoutMs: 2000, path: '/', expect: '200-399' };
  try {
    await assert.rejects(probe(at), /^Error: answer is not HTTP$/);
    await assert.rejects(probe(at), /^Error: answer is not HTTP$/);
    await probe(at); // a status line without a reason phrase (nor the space before it) is one
  } finally {
    srv.close();
  }
});

test("a handle whose checker stopped follows another process's published health again: its apply keeps that drain", async () => {
  const { open } = await import('../../src/index.js');
  const path = await import('node:path');
  await withLiveWriter(async (dir, pid) => {
    const stateFile = path.join(dir, 'state.db');
    const k = new FakeLegacyKernel();
    const lb = await open({ stateFile, stateRegistry: false }, k);
    // A checker of this handle runs for a while (nothing down), then stops: this process checks nothing any more.
    const checker = new HealthChecker(lb, { probe: new Probes().probe, random: () => 0 });
    await checker.start();
    await checker.stop();
    // Another process (a watch started since) checks the state file and has drained D[1].
    await publishAs(`${stateFile}.health.json`, pid, { updatedAt: 0, profiles: { web: { drained: [D[1]] } } });
    await lb.apply({ name: 'web', source: '127.100.0.1:80', destination: [D[0], D[1]], health });
    const dnat = ((await lb.kernel()) as KernelView).chains.flatMap((c) =>
      c.rules.flatMap((r) => (r.rule.target.name === 'DNAT' ? [r.rule.target.toDestination] : [])),
    );
    assert.deepEqual(dnat, [D[0]], "the other process's drain is kept");
    await lb.close();
  });
});

test('a health file not followed lists as drains that no longer count only the destinations its drains took out: not those every-destination-down kept, nor those configured at weight 0', async (t) => {
  const { healthFileOf } = await import('../../src/health/effective.js');
  const { healthFileLine } = await import('../../src/cli/commands/status.js');
  const path = await import('node:path');
  await withLiveWriter(async (dir, pid) => {
    mock.timers.enable({ apis: ['Date'], now: 5_000_000 });
    t.after(() => mock.timers.reset());
    const stateFile = path.join(dir, 'state.db');
    const file = healthFileOf(stateFile);
    const core = new Core({ stateFile, stateRegistry: false, engine: 'legacy' }, new FakeLegacyKernel());
    core.health.follow(file);
    const kept = validateProfile({ name: 'kept', source: '127.100.0.1:80', destination: [D[0], D[1]], health });
    const w0 = validateProfile({
      name: 'w0',
      source: '127.100.0.2:80',
      destination: D,
      weights: { [D[1]]: 0 },
      health,
    });
    await core.transact(() => ({ upsert: [kept, w0], remove: [] }), { run: true });
    // As a checker writes it: its down sets, whatever allDown and the configured weights made of them in the kernel.
    // Written by a running checker 12 s ago: stale.
    await publishAs(file, pid, {
      updatedAt: Date.now() - 12_000,
      staleAfterMs: 10_000,
      profiles: {
        kept: { drained: [D[0], D[1]], destinations: {} },
        w0: { drained: [D[1], D[2]], destinations: {} },
      },
    });
    const r = await core.statusReport({ original: false });
    assert.equal(r.healthFile?.state, 'stale');
    assert.deepEqual(r.healthFile?.drained, { w0: [D[2]] });
    assert.match(healthFileLine(r.healthFile)!, /its drains no longer count: w0 127\.0\.0\.1:9003$/);
    assert.ok(r.inSync, 'nothing was drained in the kernel: in step');
  });
});
