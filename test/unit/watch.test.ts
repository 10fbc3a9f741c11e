/**
 * Watch mode against a fake core (mock timers): a state file that is absent or does not parse is not
 * applied, and the kernel is held to the last version applied (drift repaired toward it); a new
 * version is synced with the previous one, for the conntrack cleanup of removed destinations.
 */
import { test } from 'node:test';
import { EventEmitter } from 'node:events';
import assert from 'node:assert/strict';
import { validateProfile } from '../../src/index.js';
import type { Profile } from '../../src/model/types.js';
import type { ProfileReport } from '../../src/model/report.js';
import { ProcessStats } from '../../src/metrics/server.js';
import { advance as advanceClock, flush } from '../harness/mock-clock.js';

type SyncOpts = {
  profiles?: ReadonlyMap<string, Profile>;
  previous?: ReadonlyMap<string, Profile>;
  guard?: () => Promise<boolean>;
};

const prof = (dest: string): Profile =>
  validateProfile({ name: 'web', source: '127.100.0.10:80', destination: [dest] }) as Profile;

test('watch: an absent or unparsable file is not applied; the kernel is held to the last version applied; a new version is synced with the previous one (mock timers)', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const { startWatch } = await import('../../src/core/watch.js');
  // The file: absent (null), or a version with its profiles, or one that does not parse.
  let file: { v: string; profiles?: Map<string, Profile>; error?: string } | null = null;
  const syncs: SyncOpts[] = [];
  const logs: string[] = [];
  const core = {
    statePath: '/nonexistent-iptlb-dir/state.db',
    async readState() {
      if (file === null) return new Map(); // as the core reads an absent file: no profiles
      if (!file.profiles) throw new Error(file.error ?? 'state file x: is not valid YAML');
      return file.profiles;
    },
    async sync(o: SyncOpts = {}) {
      syncs.push(o);
      if (o.guard && !(await o.guard())) return { before: [], committed: false, commitMs: 0, skipped: true };
      const state = o.profiles ?? (await core.readState());
      return { before: [], committed: true, commitMs: 1, state };
    },
  };
  const advance = (ms: number): Promise<void> => advanceClock(t, ms);
  const w = startWatch(core as never, {
    intervalMs: 300,
    settleMs: 100,
    log: (l) => logs.push(l),
    version: async () => file?.v ?? null,
  });
  await flush();
  // Absent at start (a wrong path, a file not copied in yet): nothing synced, said once.
  await advance(1000);
  assert.equal(syncs.length, 0, 'an absent file is not "no profiles"');
  assert.equal(logs.filter((l) => /is not applied: it does not exist/.test(l)).length, 1, logs.join('\n'));
  assert.match(logs.join('\n'), /the kernel is left as it is/);
  // It appears: applied, without a previous version (none was applied).
  const v1 = new Map([['web', prof('127.0.0.1:9001')]]);
  file = { v: 'v1', profiles: v1 };
  w.changed();
  await advance(300);
  assert.ok(syncs.length >= 1);
  assert.equal(syncs[0]!.profiles, v1, 'the version read once, handed to sync');
  assert.ok(syncs[0]!.guard, 'with a guard that it is still the file');
  assert.equal(syncs[0]!.previous, undefined);
  // A new version: synced with v1 as the previous one.
  const v2 = new Map([['web', prof('127.0.0.1:9002')]]);
  file = { v: 'v2', profiles: v2 };
  w.changed();
  await advance(300);
  const toV2 = syncs.find((o) => o.guard !== undefined && o.profiles === v2);
  assert.equal(toV2?.previous, v1, 'the previous version, for the conntrack cleanup');
  // Removed (rm before a copy): not applied; the periodic check holds the kernel to v2.
  file = null;
  w.changed();
  const n = syncs.length;
  await advance(1000);
  assert.ok(syncs.length > n, 'the periodic check still runs');
  assert.ok(
    syncs.slice(n).every((o) => o.profiles === v2 && o.guard === undefined && o.previous === undefined),
    'held to the last version applied, never to "no profiles"',
  );
  assert.match(logs.join('\n'), /is not applied: it does not exist .*; the kernel keeps the last version applied/);
  // Does not parse: the same (drift repaired toward v2), said once for that version.
  file = { v: 'broken' };
  w.changed();
  const m = syncs.length;
  await advance(1000);
  assert.ok(syncs.length > m);
  assert.ok(syncs.slice(m).every((o) => o.profiles === v2 && o.guard === undefined));
  assert.equal(logs.filter((l) => /is not applied: state file x: is not valid YAML/.test(l)).length, 1);
  assert.match(logs.join('\n'), /is not valid YAML \(write a temporary file and rename it over the state file\)/);
  // Refused whatever it holds (its mode): said without the advice to writers, which does not fit it.
  const modeError = 'state file x is writable by group (mode 0664); refusing to use it (chmod go-w x)';
  file = { v: 'mode', error: modeError };
  w.changed();
  await advance(1000);
  const said = logs.filter((l) => l.includes(modeError));
  assert.equal(said.length, 1, logs.join('\n'));
  assert.doesNotMatch(said[0]!, /write a temporary file/);
  // Fixed: applied, with v2 as the previous version.
  const v3 = new Map([['web', prof('127.0.0.1:9003')]]);
  file = { v: 'v3', profiles: v3 };
  w.changed();
  await advance(300);
  const toV3 = syncs.slice(m).find((o) => o.guard !== undefined && o.profiles === v3);
  assert.equal(toV3?.previous, v2);
  // The file is read once per check: every sync is handed the profiles read, never reads them again.
  assert.ok(syncs.every((o) => o.profiles !== undefined));
  await w.stop();
});

test('watch: a sync refused the same way at every check is said once; a new refusal is said, and again after a sync that succeeded (mock timers)', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const { startWatch } = await import('../../src/core/watch.js');
  const v1 = new Map([['web', prof('127.0.0.1:9001')]]);
  let refusal: string | null = 'name: profile web: another state file, /a.db, holds a profile of this name';
  let syncs = 0;
  const logs: string[] = [];
  const core = {
    statePath: '/nonexistent-iptlb-dir/state.db',
    async readState() {
      return v1;
    },
    async sync(o: SyncOpts = {}) {
      syncs++;
      if (refusal !== null) throw new Error(refusal);
      return { before: [], committed: false, commitMs: 0, state: o.profiles ?? v1 };
    },
  };
  const w = startWatch(core as never, {
    intervalMs: 300,
    settleMs: 100,
    log: (l) => logs.push(l),
    version: async () => 'v1',
  });
  await flush();
  await advanceClock(t, 3000);
  const said = (re: RegExp) => logs.filter((l) => re.test(l)).length;
  assert.ok(syncs >= 5, `checks ran: ${syncs}`);
  assert.equal(said(/another state file, \/a\.db/), 1, logs.join('\n'));
  refusal = 'another refusal';
  await advanceClock(t, 1000);
  assert.equal(said(/another refusal/), 1, logs.join('\n'));
  refusal = null;
  await advanceClock(t, 1000);
  refusal = 'another refusal';
  await advanceClock(t, 1000);
  assert.equal(said(/another refusal/), 2, 'said again once a sync succeeded in between');
  await w.stop();
});

for (const engine of ['legacy', 'nft'] as const)
  test(`watch (${engine}, fake kernel): a change of the state file only counts each profile it changed or deleted once as drift`, async (t) => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const { Core } = await import('../../src/core/core.js');
    const { FakeLegacyKernel, FakeNftKernel } = await import('../harness/fake-kernel.js');
    const { startWatch } = await import('../../src/core/watch.js');
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-drift-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'state.db');
    const kernel = engine === 'legacy' ? new FakeLegacyKernel() : new FakeNftKernel();
    const p = (name: string, n: number, dest: string[]) =>
      validateProfile({ name, source: `127.100.0.${n}:80`, destination: dest }) as Profile;
    const D = ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'];
    const core = new Core({ stateFile: file }, kernel);
    await core.transact(
      () => ({ upsert: [p('plain', 12, D.slice(0, 2)), p('gone', 13, [D[0]]), p('kept', 14, D)], remove: [] }),
      {
        run: true,
      },
    );
    const syncs: { drifted: number; committed: boolean }[] = [];
    const w = startWatch(core, {
      intervalMs: 600_000,
      settleMs: 0,
      log: () => {},
      onSync: (r) => {
        assert.ok(!(r instanceof Error), String(r));
        syncs.push(r);
      },
    });
    t.after(() => w.stop());
    await w.check('start');
    assert.equal(
      syncs.reduce((n, s) => n + s.drifted, 0),
      0,
      'in step at start',
    );
    // The state file only (no -run): plain gets a destination more, gone is deleted.
    const oneShot = new Core({ stateFile: file }, kernel);
    await oneShot.transact(() => ({ upsert: [p('plain', 12, D)], remove: ['gone'] }), { run: false });
    await w.check('SIGHUP');
    await new Promise((r) => setTimeout(r, 100)); // a sync the directory's file event started, if any
    await w.check('SIGHUP');
    assert.equal(
      syncs.reduce((n, s) => n + s.drifted, 0),
      2,
      JSON.stringify(syncs),
    );
    assert.equal(syncs.filter((s) => s.drifted > 0 && s.committed).length, 1, 'repaired by one sync');
    assert.deepEqual(
      (await core.status()).map((r) => `${r.name} ${r.status}`),
      ['kept in-sync', 'plain in-sync'],
    );
  });

test('driftedProfiles: an orphan of a profile of the version synced or the one before counts with it; others once each', async () => {
  const { driftedProfiles } = await import('../../src/core/watch.js');
  const web = new Map([
    ['web', validateProfile({ name: 'web', source: '[::1]:80', destination: ['[::1]:9001'] }) as Profile],
  ]);
  const old = new Map([
    ['old', validateProfile({ name: 'old', source: '127.100.0.9:80', destination: ['127.0.0.1:1'] }) as Profile],
  ]);
  const r = (name: string, status: 'in-sync' | 'modified' | 'missing' | 'orphaned') => ({ name, status });
  assert.equal(driftedProfiles([r('web', 'modified'), r('[::1]:80', 'orphaned')], web), 1);
  assert.equal(driftedProfiles([r('127.100.0.9:80', 'orphaned'), r('rule:old', 'orphaned')], web, old), 1);
  assert.equal(driftedProfiles([r('127.100.0.9:80', 'orphaned'), r('127.100.0.9:80', 'orphaned')], web), 1);
  assert.equal(driftedProfiles([r('web', 'in-sync'), r('set:aff_1', 'orphaned'), r('other', 'orphaned')], web), 2);
});

test('watch: a sync that keeps failing the same way over the same drift (a rule of another tool in an nft base chain refuses every repair) logs its drift lines and error once; again when either changes; its drift with a repair that succeeds (mock timers)', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const { startWatch } = await import('../../src/core/watch.js');
  const v1 = new Map([['web', prof('127.0.0.1:9001')]]);
  const logs: string[] = [];
  // What each sync finds out of step, and whether it fails: set by the test between checks.
  let drift = ['sync web: modified (its address is missing from set out_tcp_1)', 'sync foreign:output:x: orphaned'];
  let refusal: string | undefined = 'table ip iptlb holds rules iptlb did not write in its base chain output';
  let syncs = 0;
  const core = {
    statePath: '/nonexistent-iptlb-dir/state.db',
    async readState() {
      return v1;
    },
    async sync(
      o: SyncOpts & {
        driftLog?: (l: string) => void;
        onDrift?: (r: { name: string; status: ProfileReport['status'] }) => void;
      } = {},
    ) {
      syncs++;
      const found = drift.map((l) => {
        const [, name, status] = /^sync (.*): ([a-z-]+)/.exec(l)!;
        return { name: name!, status: status as ProfileReport['status'] };
      });
      for (const [i, l] of drift.entries()) {
        o.onDrift?.(found[i]!);
        (o.driftLog ?? ((x: string) => logs.push(`core: ${x}`)))(l);
      }
      if (refusal) throw new Error(refusal);
      return { before: found, committed: drift.length > 0, commitMs: 1, state: o.profiles ?? v1 };
    },
  };
  // The metrics' counters, fed as iptlb watch feeds them.
  const stats = new ProcessStats();
  const w = startWatch(core as never, {
    intervalMs: 200,
    settleMs: 0,
    log: (l) => logs.push(l),
    version: async () => 'v1',
    onSync: (r, drifted) => stats.observeSync(r, drifted),
  });
  await flush();
  await advanceClock(t, 2000);
  assert.ok(syncs >= 5, `${syncs} checks`);
  const count = (re: RegExp): number => logs.filter((l) => re.test(l)).length;
  assert.equal(count(/^sync web: modified/), 1, logs.join('\n'));
  assert.equal(count(/^sync foreign:output:x/), 1, logs.join('\n'));
  assert.equal(count(/did not write in its base chain/), 1, logs.join('\n'));
  assert.equal(count(/^core: /), 0, 'the drift lines go through the watch, not the core');
  // Every failed sync found the drift (web modified, one leftover): iptlb_drift_detected_total counts it
  // each time (it stayed 0 while the repairs failed), none repaired.
  assert.equal(stats.syncFailures, syncs);
  assert.equal(stats.driftDetected, 2 * syncs);
  assert.equal(stats.driftRepaired, 0);
  // The drift changes (another profile out of step too): said again, once.
  drift = [...drift, 'sync api: missing'];
  await advanceClock(t, 1000);
  assert.equal(count(/^sync api: missing/), 1, logs.join('\n'));
  assert.equal(count(/did not write in its base chain/), 2, logs.join('\n'));
  // The rule is deleted: the repair goes through, its drift logged with it; then nothing more.
  refusal = undefined;
  await advanceClock(t, 200);
  drift = [];
  const after = logs.length;
  await advanceClock(t, 1000);
  assert.equal(count(/^sync web: modified/), 3, logs.join('\n'));
  assert.equal(count(/kernel brought in step/), 1, logs.join('\n'));
  assert.deepEqual(logs.slice(after), []);
  await w.stop();
});

test('watch command: SIGHUP, SIGTERM and SIGINT have a listener while the health checks and the metrics server start and while they stop (a SIGHUP there killed it, exit 129, which systemd does not restart); SIGTERM while they start stops them, the watcher not started', async () => {
  const { runWatch } = await import('../../src/cli/commands/watch.js');
  // A real process with no listener for a signal dies of it; emit() says whether one took it.
  const proc = new EventEmitter() as EventEmitter & Pick<NodeJS.Process, 'on' | 'removeListener'>;
  const gate = () => {
    let open!: () => void;
    const p = new Promise<void>((r) => (open = r));
    return { p, open };
  };
  const signals = ['SIGHUP', 'SIGTERM', 'SIGINT'];

  // 1. SIGHUP, then SIGTERM while the services start.
  let starting = gate();
  const calls: string[] = [];
  const services = {
    start: async () => {
      calls.push('start');
      await starting.p;
    },
    stop: async () => void calls.push('stop'),
  };
  let done = runWatch(proc, services, () => {
    calls.push('watch');
    return { stop: async () => {}, done: new Promise<void>(() => {}) };
  });
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(calls, ['start']);
  assert.ok(proc.emit('SIGHUP'), 'SIGHUP while the services start');
  assert.ok(proc.emit('SIGTERM'), 'SIGTERM while the services start');
  starting.open();
  await done;
  assert.deepEqual(calls, ['start', 'stop'], 'stopped once started; the watcher not started');
  for (const s of signals) assert.equal(proc.listenerCount(s), 0, `${s} listener removed`);

  // 2. Running; SIGTERM; SIGHUP while the services stop (the checker restores weights).
  calls.length = 0;
  starting = gate();
  starting.open();
  const stopping = gate();
  let endWatch!: () => void;
  services.stop = async () => {
    calls.push('stop');
    await stopping.p;
  };
  done = runWatch(proc, services, () => {
    calls.push('watch');
    return { stop: async () => endWatch(), done: new Promise<void>((r) => (endWatch = r)) };
  });
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(calls, ['start', 'watch']);
  assert.ok(proc.emit('SIGTERM'));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(calls, ['start', 'watch', 'stop']);
  assert.ok(proc.emit('SIGHUP'), 'SIGHUP while the services stop');
  assert.ok(proc.emit('SIGINT'), 'SIGINT while the services stop');
  stopping.open();
  await done;
  assert.deepEqual(calls, ['start', 'watch', 'stop']);
  for (const s of signals) assert.equal(proc.listenerCount(s), 0, `${s} listener removed`);
});

test('watch: a check asked for while a sync runs (SIGHUP, the periodic check) runs after it under its own name in the log, not the name of the sync it waited for', async () => {
  const { startWatch } = await import('../../src/core/watch.js');
  const v1 = new Map([['web', prof('127.0.0.1:9001')]]);
  const logs: string[] = [];
  let release!: () => void;
  const first = new Promise<void>((r) => (release = r));
  let syncs = 0;
  let synced!: () => void;
  const twice = new Promise<void>((r) => (synced = r));
  const core = {
    statePath: '/nonexistent-iptlb-dir/state.db',
    readState: async () => v1,
    async sync(o: SyncOpts = {}) {
      if (++syncs === 1) await first;
      if (syncs === 2) synced();
      return { before: [], committed: true, commitMs: 1, state: o.profiles ?? v1 };
    },
  };
  const w = startWatch(core as never, {
    intervalMs: 86_400_000,
    settleMs: 0,
    log: (l) => logs.push(l),
    version: async () => 'v1',
  });
  while (syncs === 0) await new Promise((r) => setImmediate(r));
  const hup = w.check('SIGHUP'); // the start's sync is under way
  release();
  await twice;
  await hup;
  await w.stop();
  const steps = logs.filter((l) => /kernel brought/.test(l)).map((l) => l.split(':')[1]!.trim());
  assert.deepEqual(steps, ['start', 'SIGHUP'], logs.join('\n'));
});

test("watch's /healthz: 503 while its state file does not exist (at start, a wrong path: it was 200, the absent file read as no profiles while nothing was applied), 200 once applied, 503 again when it is removed", async () => {
  const { startWatch } = await import('../../src/core/watch.js');
  const { startWatchServices } = await import('../../src/cli/watch-services.js');
  const v1 = new Map([['web', prof('127.0.0.1:9001')]]);
  let exists = false;
  let synced = 0;
  const core = {
    statePath: '/nonexistent-iptlb-dir/state.db',
    readState: async () => (exists ? v1 : new Map()), // as the core reads an absent file: no profiles
    async sync(o: SyncOpts = {}) {
      synced++;
      return { before: [], committed: false, commitMs: 0, state: o.profiles ?? v1 };
    },
    // The kernel holds what the file says, or nothing while it is absent: in step either way.
    statusReport: async () => ({ profiles: exists ? [{ name: 'web', status: 'in-sync', destinations: [] }] : [] }),
  };
  const logs: string[] = [];
  const started: { watch?: ReturnType<typeof startWatch> } = {};
  const services = await startWatchServices(core as never, {
    metricsAddress: '127.0.0.1:0',
    health: false,
    log: (l) => logs.push(l),
    held: () => started.watch?.applied(),
    stateMissing: () => started.watch?.missing(),
  });
  await services.start();
  const w = startWatch(core as never, {
    intervalMs: 86_400_000,
    settleMs: 0,
    log: (l) => logs.push(l),
    onSync: services.onSync,
    version: async () => (exists ? 'v1' : null),
  });
  started.watch = w;
  try {
    const healthz = healthzOf(logs);
    await w.check('start');
    assert.equal(synced, 0, 'an absent file is not applied');
    let h = await healthz();
    assert.equal(h.code, 503, JSON.stringify(h.body));
    assert.match(
      h.body.reason,
      /state file \/nonexistent-iptlb-dir\/state\.db is not applied: it does not exist .*the kernel is left as it is/,
    );
    exists = true;
    await w.check('SIGHUP');
    h = await healthz();
    assert.deepEqual(h, { code: 200, body: { ok: true, reason: 'kernel matches the state file' } });
    exists = false;
    await w.check('SIGHUP');
    h = await healthz();
    assert.equal(h.code, 503);
    assert.match(h.body.reason, /is not applied: it does not exist .*the kernel keeps the last version applied/);
  } finally {
    await w.stop();
    await services.stop();
  }
});

test("watch's /healthz and /metrics while its state file settles (--settle): compare the kernel with the version applied, not with the file changed since or half written; with the file once it has settled", async (t) => {
  const { startWatch } = await import('../../src/core/watch.js');
  const { startWatchServices } = await import('../../src/cli/watch-services.js');
  const { Core } = await import('../../src/core/core.js');
  const { FakeLegacyKernel } = await import('../harness/fake-kernel.js');
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  // Date only: the settle time passes on it; the server, the file and the fake kernel run on real timers and I/O.
  t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-hz-settle-'));
  const stateFile = path.join(dir, 'state.db');
  const core = new Core({ stateFile, stateRegistry: false, engine: 'legacy' }, new FakeLegacyKernel());
  await core.transact(() => ({ upsert: [prof('127.0.0.1:9001')], remove: [] }), { run: true });
  // The file's version as the watch sees it (its stat): set by the test as it writes the file; `looks` counts them.
  let version = 'v1';
  let looks = 0;
  const logs: string[] = [];
  const started: { watch?: ReturnType<typeof startWatch> } = {};
  const services = await startWatchServices(core, {
    metricsAddress: '127.0.0.1:0',
    health: false,
    log: (l) => logs.push(l),
    held: () => started.watch?.applied(),
    stateMissing: () => started.watch?.missing(),
    settling: () => started.watch?.unsettled() ?? Promise.resolve(undefined),
  });
  await services.start();
  const w = startWatch(core, {
    intervalMs: 86_400_000,
    settleMs: 60_000,
    debounceMs: 1,
    log: (l) => logs.push(l),
    onSync: services.onSync,
    version: async () => (looks++, version),
  });
  started.watch = w;
  /** A file event, and the watch's look at the file that follows it (after its debounce, on real timers). */
  const looked = async () => {
    const before = looks;
    w.changed();
    while (looks === before) await new Promise((r) => setTimeout(r, 1));
    await flush();
  };
  try {
    const healthz = healthzOf(logs);
    const metrics = metricsOf(logs);
    await w.check('SIGHUP');
    assert.ok(w.applied()?.has('web'), 'v1 applied');
    await looked();
    t.mock.timers.setTime(Date.now() + 60_000);
    assert.deepEqual(await healthz(), { code: 200, body: { ok: true, reason: 'kernel matches the state file' } });
    // What /metrics says of the state file and web: the version applied (9001) is the one the kernel holds.
    const applied = {
      state: '1',
      kernel: '1',
      profiles: '1',
      web: '1',
      weight9001: '1',
      weight9002: undefined,
    };
    assert.deepEqual(await metrics(), applied, 'settled: the file');
    const settling = {
      code: 200,
      body: {
        ok: true,
        reason: 'kernel matches the version of the state file applied (the file changed since and has not settled)',
      },
    };
    // A new version written (the kernel holds v1 until it has settled).
    await core.transact(() => ({ upsert: [prof('127.0.0.1:9002')], remove: [] }), { run: false });
    version = 'v2';
    assert.deepEqual(await healthz(), settling, 'changed, not looked at yet by the watch');
    assert.deepEqual(await metrics(), applied, 'changed, not looked at yet by the watch: the version applied');
    await looked();
    t.mock.timers.setTime(Date.now() + 59_000);
    assert.deepEqual(await healthz(), settling, 'looked at, within its settle time');
    assert.deepEqual(await metrics(), applied, 'within its settle time: the version applied');
    // Half written (an editor that truncates and writes in place).
    writeFileSync(stateFile, 'web:\n  destination:\n  - 127.0');
    version = 'v3';
    assert.deepEqual(await healthz(), settling, 'a half-written file is not read');
    assert.deepEqual(await metrics(), applied, 'a half-written file is not read by /metrics either');
    // Left so for the settle time: the watch does not apply it (it does not parse), and /healthz says so.
    await looked();
    t.mock.timers.setTime(Date.now() + 60_000);
    const h = await healthz();
    assert.equal(h.code, 503, JSON.stringify(h.body));
    assert.match(h.body.reason, /^cannot read the state file: /);
    // And /metrics: a file that stays unreadable once settled is a read failure (nothing else is read).
    assert.deepEqual(
      await metrics(),
      { state: '0', kernel: '0', profiles: '0', web: undefined, weight9001: undefined, weight9002: undefined },
      'settled and unreadable',
    );
  } finally {
    await w.stop();
    await services.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('watch -q prints no log line: its "watch: watching FILE" line was printed with -q too (a state file that does not exist: nothing is read of the kernel)', async () => {
  const { main } = await import('../../src/cli/main.js');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-watch-q-'));
  try {
    for (const quiet of [true, false]) {
      const err: string[] = [];
      const io = { out: () => {}, err: (l: string) => err.push(l) };
      const args = [
        'watch',
        '--no-health-checks',
        '--state-file',
        path.join(dir, 'absent.db'),
        ...(quiet ? ['-q'] : []),
      ];
      const run = main(args, io);
      while (!quiet && !err.some((l) => /is not applied/.test(l))) await new Promise((r) => setTimeout(r, 10));
      if (quiet) await new Promise((r) => setTimeout(r, 300));
      process.emit('SIGTERM');
      assert.equal(await run, 0, err.join('\n'));
      if (quiet) assert.deepEqual(err, []);
      else assert.match(err.join('\n'), /watch: watching .*absent\.db/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('watch on a state file that is a symbolic link (a Kubernetes ConfigMap volume: state.db -> ..data/state.db) is refused at start, exit 1, one line naming the file to give; it ran on applying nothing', async () => {
  const { main } = await import('../../src/cli/main.js');
  const { mkdtempSync, mkdirSync, copyFileSync, rmSync, symlinkSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-watch-link-'));
  try {
    mkdirSync(path.join(dir, '..2026_12_07_01'), { mode: 0o755 });
    writeFileSync(path.join(dir, 'v'), 'web:\n  destination:\n  - 127.0.0.1:9001\n  source: 127.100.0.10:80\n');
    copyFileSync(path.join(dir, 'v'), path.join(dir, '..2026_12_07_01', 'state.db'));
    symlinkSync('..2026_12_07_01', path.join(dir, '..data'));
    symlinkSync('..data/state.db', path.join(dir, 'state.db'));
    const err: string[] = [];
    const run = main(['watch', '--no-health-checks', '--state-file', path.join(dir, 'state.db')], {
      out: () => {},
      err: (l: string) => err.push(l),
    });
    const outcome = await Promise.race([run, new Promise((r) => setTimeout(() => r('still running'), 3000))]);
    if (outcome === 'still running') {
      process.emit('SIGTERM');
      await run;
    }
    assert.equal(outcome, 1, err.join('\n'));
    assert.equal(err.length, 1, err.join('\n'));
    assert.match(
      err[0]!,
      /state file .*state\.db is a symbolic link \(to \.\.data\/state\.db\), which iptlb never follows/,
    );
    assert.match(err[0]!, /-state-file=.*iptlb-watch-link-[^/]*\/\.\.data\/state\.db/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('watch: a state directory removed and made again (config management), or swapped under a symbolic link (a ConfigMap volume), is watched again: a version written there is applied on its file event, not only by the periodic check (mock timers)', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const { startWatch } = await import('../../src/core/watch.js');
  const fs = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const root = fs.mkdtempSync(path.join(tmpdir(), 'iptlb-watch-dir-'));
  const write = (dir: string, dest: string): void => {
    fs.writeFileSync(path.join(dir, '.tmp'), dest);
    fs.renameSync(path.join(dir, '.tmp'), path.join(dir, 'state.db'));
  };
  const applied: string[] = [];
  const core = {
    statePath: '',
    async readState() {
      return new Map([['web', prof(fs.readFileSync(core.statePath, 'utf8'))]]);
    },
    async sync(o: SyncOpts = {}) {
      if (o.guard && !(await o.guard())) return { before: [], committed: false, commitMs: 0, skipped: true };
      const state = o.profiles ?? (await core.readState());
      if (o.guard) applied.push(state.get('web')!.destination[0]!);
      return { before: [], committed: true, commitMs: 1, state };
    },
  };
  // Real file events arrive on their own; the mocked debounce and settle timers are advanced meanwhile.
  const until = async (done: () => boolean): Promise<void> => {
    for (let i = 0; i < 200 && !done(); i++) {
      await advanceClock(t, 25);
      await fs.promises.stat(root);
    }
  };
  for (const layout of ['directory', 'symlink'] as const) {
    const top = path.join(root, layout);
    fs.mkdirSync(top);
    // directory: <top>/d/state.db; symlink: <top>/..data/state.db, ..data -> ..v1
    const dirOf = (n: number): string => path.join(top, layout === 'directory' ? 'd' : `..v${n}`);
    const make = (n: number): void => {
      fs.mkdirSync(dirOf(n));
      if (layout === 'symlink') {
        fs.symlinkSync(`..v${n}`, path.join(top, '..data_tmp'));
        fs.renameSync(path.join(top, '..data_tmp'), path.join(top, '..data'));
      }
    };
    make(1);
    write(dirOf(1), '127.0.0.1:9001');
    core.statePath = path.join(top, layout === 'directory' ? 'd' : '..data', 'state.db');
    applied.length = 0;
    const w = startWatch(core as never, { intervalMs: 86_400_000, settleMs: 0, log: () => {} });
    try {
      await until(() => applied.length === 1);
      assert.deepEqual(applied, ['127.0.0.1:9001'], layout);
      // The directory goes: its file is absent (seen on the event of the removal), and a new one is made.
      if (layout === 'directory') {
        fs.rmSync(dirOf(1), { recursive: true });
        await until(() => w.missing() !== undefined);
        assert.ok(w.missing(), `${layout}: the removal was seen`);
        make(2);
      } else {
        make(2);
        fs.rmSync(dirOf(1), { recursive: true });
        await until(() => w.missing() !== undefined);
        assert.ok(w.missing(), `${layout}: the removal was seen`);
      }
      write(dirOf(2), '127.0.0.1:9002');
      await until(() => applied.length === 2);
      assert.deepEqual(applied, ['127.0.0.1:9001', '127.0.0.1:9002'], `${layout}: applied on its file event`);
      write(dirOf(2), '127.0.0.1:9003');
      await until(() => applied.length === 3);
      assert.deepEqual(applied.slice(2), ['127.0.0.1:9003'], layout);
    } finally {
      await w.stop();
    }
  }
  fs.rmSync(root, { recursive: true, force: true });
});

test('watch (fake kernel): while its state directory is gone (removed before config management makes it again), the kernel is held to the last version applied and the directory is not made again by the watch (its lock made it, 0700, with lock files)', async (t) => {
  const fs = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const { Core } = await import('../../src/core/core.js');
  const { FakeNftKernel } = await import('../harness/fake-kernel.js');
  const { startWatch } = await import('../../src/core/watch.js');
  const root = fs.mkdtempSync(path.join(tmpdir(), 'iptlb-gone-'));
  t.after(() => fs.rmSync(root, { recursive: true, force: true }));
  const dir = path.join(root, 'd');
  const file = path.join(dir, 'state.db');
  const kernel = new FakeNftKernel();
  const core = new Core({ stateFile: file }, kernel);
  await core.transact(() => ({ upsert: [prof('127.0.0.1:9001')], remove: [] }), { run: true });
  const logs: string[] = [];
  const w = startWatch(core, { intervalMs: 600_000, settleMs: 0, log: (l) => logs.push(l) });
  t.after(() => w.stop());
  await w.check('start');
  assert.equal(w.applied()?.get('web')?.destination[0], '127.0.0.1:9001');
  fs.rmSync(dir, { recursive: true });
  await w.check('SIGHUP');
  await w.check('periodic check');
  assert.match(logs.join('\n'), /is not applied: it does not exist .*the kernel keeps the last version applied/);
  assert.equal(fs.existsSync(dir), false, `the watch made ${dir} again: ${fs.readdirSync(root).join(', ')}`);
  // Made again with a new version: applied.
  fs.mkdirSync(dir, { mode: 0o700 });
  fs.writeFileSync(file, '{}\n', { mode: 0o600 });
  await w.check('SIGHUP');
  assert.equal(w.applied()?.size, 0, 'the new version (no profiles) applied');
});

/** GET /healthz of the watch services whose start line is in `logs`: its status code and JSON body. */
/** A scrape of watch's /metrics: the state-file and kernel read gauges, and web's series. */
function metricsOf(logs: string[]): () => Promise<Record<string, string | undefined>> {
  const port = /serving \/metrics and \/healthz on 127\.0\.0\.1:(\d+)/.exec(logs.join('\n'))?.[1];
  assert.ok(port, logs.join('\n'));
  return async () => {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const value = (series: string): string | undefined =>
      text
        .split('\n')
        .find((l) => l.startsWith(`${series} `))
        ?.slice(series.length + 1);
    const weight = (d: string): string | undefined =>
      value(`iptlb_destination_weight{profile="web",destination="${d}"}`);
    return {
      state: value('iptlb_state_read_success'),
      kernel: value('iptlb_kernel_read_success'),
      profiles: value('iptlb_profiles'),
      web: value('iptlb_profile_in_sync{profile="web"}'),
      weight9001: weight('127.0.0.1:9001'),
      weight9002: weight('127.0.0.1:9002'),
    };
  };
}

function healthzOf(logs: string[]): () => Promise<{ code: number; body: { ok: boolean; reason: string } }> {
  const port = /serving \/metrics and \/healthz on 127\.0\.0\.1:(\d+)/.exec(logs.join('\n'))?.[1];
  assert.ok(port, logs.join('\n'));
  return async () => {
    const r = await fetch(`http://127.0.0.1:${port}/healthz`);
    return { code: r.status, body: (await r.json()) as { ok: boolean; reason: string } };
  };
}
