/**
 * `close()` of a library handle (docs/api.md): it waits for the calls made before it, so that once it
 * resolves the handle touches the kernel no more; called again (also while the first is running) it
 * settles with the first, after its work. And the outcome of a call is its own: neither close() nor a
 * listener that throws changes it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { open, type LegacyExecutor, type Transaction, type Family } from '../../src/index.js';
import { FakeLegacyKernel } from '../harness/fake-kernel.js';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { PROJECT_ROOT } from '../harness/env.js';

/** A fake kernel whose reads wait for `open()` of the gate: a call held in flight without a clock. */
class GatedKernel implements LegacyExecutor {
  readonly kind = 'native' as const;
  readonly engine = 'legacy' as const;
  readonly k = new FakeLegacyKernel();
  readonly log: string[] = [];
  private gate: Promise<void> = Promise.resolve();
  private release = (): void => {};
  hold(): void {
    this.gate = new Promise((r) => (this.release = r));
  }
  open(): void {
    this.release();
  }
  async commit(tx: Transaction) {
    const r = await this.k.commit(tx);
    this.log.push('commit');
    return r;
  }
  async read(family: Family) {
    await this.gate;
    this.log.push('read');
    return this.k.read(family);
  }
  async render(): Promise<string> {
    return '';
  }
}

/** Lets everything that does not wait for the gate run (file system calls included). */
const settle = async (): Promise<void> => {
  for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
};

const prof = { name: 'a', source: '127.100.0.1:1000', destination: ['127.0.0.1:9000'] };

test('close() waits for a sync() (and status, kernel) in flight: nothing reaches the kernel after it resolved', async () => {
  const ex = new GatedKernel();
  const lb = await open({ stateFile: false, stateRegistry: false }, ex);
  await lb.apply(prof);
  ex.k.tables.clear(); // drift: sync() has something to repair
  ex.hold();
  const order: string[] = [];
  const calls = [
    lb.sync().then((r) => order.push(`sync ${r.committed}`)),
    lb.status().then(() => order.push('status')),
    lb.kernel().then(() => order.push('kernel')),
  ];
  const closed = lb.close().then(() => order.push('close'));
  await settle();
  ex.open();
  await Promise.all([...calls, closed]);
  assert.equal(order.at(-1), 'close', order.join(', '));
  assert.ok(order.includes('sync true'), order.join(', '));
  const after = ex.log.length;
  await settle();
  assert.equal(ex.log.length, after);
});

test('close() twice at once: the second settles with the first, after its work; the handle is closed at once', async () => {
  const ex = new GatedKernel();
  const lb = await open({ stateFile: false, stateRegistry: false }, ex);
  await lb.apply(prof);
  ex.hold();
  const order: string[] = [];
  const st = lb.status().then(() => order.push('status'));
  const c1 = lb.close().then(() => order.push('close 1'));
  const c2 = lb.close().then(() => order.push('close 2'));
  await assert.rejects(lb.list(), (e: { code?: string }) => e.code === 'EUSAGE');
  await settle();
  ex.open();
  await Promise.all([st, c1, c2]);
  assert.deepEqual(order, ['status', 'close 1', 'close 2']);
  await lb.close(); // a third, later: settles too
});

test('open(), list(), status() and close() of a state file not yet created leave the disk as it was', async () => {
  const dir = path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-close-')), 'not', 'yet');
  const lb = await open({ stateFile: path.join(dir, 'state.db'), stateRegistry: false }, new FakeLegacyKernel());
  assert.deepEqual(await lb.list(), []);
  assert.deepEqual(await lb.status(), []);
  await lb.close();
  assert.equal(existsSync(path.dirname(dir)), false);
});

test('the drift check of a state file not yet created leaves the disk as it was, as status() does', async (t) => {
  const dir = path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-close-')), 'not', 'yet');
  t.mock.timers.enable({ apis: ['setInterval'] });
  const k = new FakeLegacyKernel();
  let reads = 0;
  const read = k.read.bind(k);
  k.read = (f) => (reads++, read(f));
  const lb = await open({ stateFile: path.join(dir, 'state.db'), stateRegistry: false, driftCheckMs: 10 }, k);
  t.mock.timers.tick(10); // one check, in flight: close() waits for it
  await lb.close();
  assert.ok(reads > 0, 'the drift check ran');
  assert.equal(existsSync(path.dirname(dir)), false);
});

test('a call whose rejection nobody handles is still an unhandled rejection (close() waits for it without handling it)', () => {
  const r = inChild(
    `const seen = [];
       process.on('unhandledRejection', (e) => seen.push(e.code));
       const lb = await open({ stateFile: false, stateRegistry: false }, new FakeLegacyKernel());
       lb.apply({ name: 'x' });
       lb.delete('missing');
       await lb.close();
       setImmediate(() => process.stdout.write(JSON.stringify(seen.sort())));`,
  );
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), ['EINVAL_PROFILE', 'ENOTFOUND']);
});

test("a `drift`, `error` or `health` listener's throw does not change the call's outcome: it is thrown again on its own", () => {
  const r = inChild(
    `const thrown = [];
       process.on('uncaughtException', (e) => thrown.push(e.message));
       const k = new FakeLegacyKernel();
       const lb = await open({ stateFile: false, stateRegistry: false }, k);
       await lb.apply({ name: 'a', source: '127.100.0.1:1000', destination: ['127.0.0.1:9000'] });
       lb.on('drift', () => { throw new Error('drift listener'); });
       lb.on('error', () => { throw new Error('error listener'); });
       lb.on('health', () => { throw new Error('health listener'); });
       k.tables.clear();
       const out = {};
       // What an attached checker calls for a destination's change (it must not throw into the checker).
       try { lb.healthHost().emit({ profile: 'a', destination: '127.0.0.1:9000', state: 'down' }); out.health = 'returned'; }
       catch (e) { out.health = e.message; }
       out.sync = await lb.sync().then((r) => r.committed, (e) => e.message);
       out.delete = await lb.delete('missing').then(() => 'resolved', (e) => e.code);
       await lb.close();
       setImmediate(() => process.stdout.write(JSON.stringify({ ...out, thrown: thrown.sort() })));`,
  );
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), {
    health: 'returned',
    sync: true,
    delete: 'ENOTFOUND',
    thrown: ['drift listener', 'error listener', 'health listener'],
  });
});

test("a `log` option that throws does not change a call's outcome either: the apply is committed and recorded, the throw is thrown again on its own", () => {
  const r = inChild(
    `const thrown = [];
       process.on('uncaughtException', (e) => thrown.push(e.message));
       const { mkdtempSync, rmSync } = await import('node:fs');
       const { tmpdir } = await import('node:os');
       const dir = mkdtempSync(tmpdir() + '/iptlb-log-');
       const k = new FakeLegacyKernel();
       const log = (l) => { if (/^committed/.test(l)) throw new Error('log: ' + l.slice(0, 9)); };
       const lb = await open({ stateFile: dir + '/state.db', stateRegistry: false, log }, k);
       const out = {};
       out.apply = await lb.apply({ name: 'a', source: '127.100.0.1:1000', destination: ['127.0.0.1:9000'] })
         .then((r) => [r.committed, r.stateWritten], (e) => e.message);
       await lb.close();
       const again = await open({ stateFile: dir + '/state.db', stateRegistry: false }, k);
       out.status = (await again.status()).map((x) => x.name + ' ' + x.status);
       await again.close();
       rmSync(dir, { recursive: true, force: true });
       setImmediate(() => process.stdout.write(JSON.stringify({ ...out, thrown })));`,
  );
  assert.equal(r.status, 0, r.stderr);
  // Before, the apply rejected with the log's error after its kernel commit, before its state write: an orphan.
  assert.deepEqual(JSON.parse(r.stdout), { apply: [true, true], status: ['a in-sync'], thrown: ['log: committed'] });
});

test("a HealthChecker's own `health` listener that throws does not stop the checks: the drains are still committed, the throw is thrown again on its own", () => {
  const r = inChild(
    `const thrown = [];
       process.on('uncaughtException', (e) => thrown.push(e.message));
       const { HealthChecker } = await import(${JSON.stringify(pathToFileURL(PROJECT_ROOT + '/dist/src/index.js').href)});
       const k = new FakeLegacyKernel();
       const lb = await open({ stateFile: false }, k);
       const health = { kind: 'tcp', intervalMs: 10, timeoutMs: 5, rise: 1, fall: 1 };
       await lb.apply({ name: 'a', source: '127.100.0.1:1000', destination: ['127.0.0.1:9000', '127.0.0.1:9001'], health });
       const down = new Set();
       const c = new HealthChecker(lb, { publish: false, probe: (t) => down.has(t.port) ? Promise.reject(new Error('refused')) : Promise.resolve() });
       c.on('health', (e) => { throw new Error('listener ' + e.state); });
       await c.start();
       for (let i = 0; i < 200 && !thrown.includes('listener up'); i++) await new Promise((r) => setTimeout(r, 5));
       down.add(9000);
       const drained = () => k.commits.length > 1;
       for (let i = 0; i < 200 && !drained(); i++) await new Promise((r) => setTimeout(r, 5));
       const out = { drained: drained(), weight: (await lb.status())[0].destinations[0].effectiveWeight };
       await c.stop();
       await lb.close();
       setImmediate(() => process.stdout.write(JSON.stringify({ ...out, thrown: [...new Set(thrown)].sort() })));`,
    60_000,
  );
  assert.equal(r.status, 0, r.stderr);
  // Before, the first throw (at the first check) left every later transition undecided: nothing was drained.
  assert.deepEqual(JSON.parse(r.stdout), { drained: true, weight: 0, thrown: ['listener down', 'listener up'] });
});

test('after close() nothing of the handle keeps the process alive: drift check, health checker, state file', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-close-'));
  const r = inChild(
    `const lb = await open(
         { stateFile: ${JSON.stringify(path.join(dir, 'state.db'))}, stateRegistry: false, driftCheckMs: 10, health: true },
         new FakeLegacyKernel(),
       );
       await lb.apply({ name: 'a', source: '127.100.0.1:1000', destination: ['127.0.0.1:9'], health: { kind: 'tcp' } });
       await lb.status();
       await lb.close();
       const left = process.getActiveResourcesInfo().filter((x) => x !== 'FSReqCallback' && x !== 'Immediate');
       process.stdout.write(JSON.stringify(left));`,
    60_000, // (a guard against a hang, not a measure)
  );
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), []);
});

test('open({ health: { prober: native } }) without the addon: ENATIVE naming health.prober; the checker lock is given back', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-close-'));
  const r = inChild(
    `const o = { stateFile: ${JSON.stringify(path.join(dir, 'state.db'))}, stateRegistry: false };
       const out = {};
       out.native = await open({ ...o, health: { prober: 'native' } }, new FakeLegacyKernel()).then(
         () => 'opened',
         (e) => [e.code, e.field],
       );
       // The refused checker's lock is not kept: a checker of this state file starts, and closes. (Without the
       // addon a lock is a flock child, gone a moment after its release: tried again while refused, a while.)
       let lb;
       for (let i = 0; i < 500; i++) {
         lb = await open({ ...o, health: true }, new FakeLegacyKernel()).catch((e) => e);
         if (lb.code !== 'ELOCK') break;
         await new Promise((r) => setTimeout(r, 10));
       }
       out.second = lb.code ?? 'opened';
       if (!lb.code) await lb.close();
       process.stdout.write(JSON.stringify(out));`,
    60_000, // (a guard against a hang: without the addon the lock is a flock child, which kept the process alive)
    { IPTLB_NO_NATIVE: '1' },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { native: ['ENATIVE', 'health.prober'], second: 'opened' });
});

test('a health checker of a closed handle: made after close() it is refused (as a metrics server); made before and left running, it commits nothing once close() resolved', async (t) => {
  const { HealthChecker, startMetricsServer, IptlbError } = await import('../../src/index.js');
  const k = new FakeLegacyKernel();
  const lb = await open({ stateFile: false }, k);
  const health = { kind: 'tcp', intervalMs: 10, timeoutMs: 5, rise: 1, fall: 1 };
  await lb.apply({ ...prof, destination: ['127.0.0.1:9000', '127.0.0.1:9001'], health });
  const down = new Set<string>();
  const log: string[] = [];
  const early = new HealthChecker(lb, {
    probe: (t) => (down.has(`${t.host}:${t.port}`) ? Promise.reject(new Error('ECONNREFUSED')) : Promise.resolve()),
    publish: false,
    log: (l) => log.push(l),
  });
  await early.start();
  t.after(() => early.stop()); // (its timers keep the process alive: stopped whatever fails)
  await lb.close();
  const closed = (e: unknown): boolean => e instanceof IptlbError && e.code === 'EUSAGE' && e.field === 'handle';
  assert.throws(() => new HealthChecker(lb), closed);
  await assert.rejects(startMetricsServer({ address: '127.0.0.1:0', iptlb: lb }), closed);
  // The checker left running decides a drain: before, it was committed through the closed handle.
  const commits = k.commits.length;
  down.add('127.0.0.1:9000');
  for (let i = 0; i < 100 && !log.some((l) => /commit failed/.test(l)); i++)
    await new Promise((r) => setTimeout(r, 10));
  await early.stop();
  assert.equal(k.commits.length, commits, 'no commit after close() resolved');
  assert.ok(
    log.some((l) => /health: commit failed \(handle: this iptlb handle is closed\)/.test(l)),
    log.join('\n'),
  );
});

/**
 * Runs `body` as an ES module in a child Node, `open` and `FakeLegacyKernel` imported (from the built
 * tree); `timeoutMs` only guards against a hang.
 */
function inChild(body: string, timeoutMs?: number, env?: Record<string, string>): SpawnSyncReturns<string> {
  const root = pathToFileURL(PROJECT_ROOT + '/').href;
  return spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { open } = await import(${JSON.stringify(root + 'dist/src/index.js')});
       const { FakeLegacyKernel } = await import(${JSON.stringify(root + 'dist/test/harness/fake-kernel.js')});
       ${body}`,
    ],
    {
      encoding: 'utf8',
      ...(timeoutMs ? { timeout: timeoutMs } : {}),
      ...(env ? { env: { ...process.env, ...env } } : {}),
    },
  );
}

test('a metrics server started before close() and left open reads nothing through the closed handle: /metrics and /healthz answer 503 saying so', async () => {
  const { startMetricsServer } = await import('../../src/index.js');
  const { FakeNftKernel } = await import('../harness/fake-kernel.js');
  const k = new FakeNftKernel();
  const lb = await open({ stateFile: false }, k);
  await lb.apply(prof);
  const server = await startMetricsServer({ address: '127.0.0.1:0', iptlb: lb });
  try {
    const get = async (p: string): Promise<[number, string]> => {
      const r = await fetch(`http://127.0.0.1:${server.port}${p}`);
      return [r.status, await r.text()];
    };
    assert.equal((await get('/healthz'))[0], 200);
    assert.match((await get('/metrics'))[1], /^iptlb_profiles 1$/m);
    await lb.close();
    const reads = k.asked.reads;
    const [hs, hb] = await get('/healthz');
    assert.equal(hs, 503);
    assert.match(JSON.parse(hb).reason, /handle this server reports on is closed/);
    const [ms, mb] = await get('/metrics');
    assert.equal(ms, 503);
    assert.match(mb, /^iptlb: the iptlb handle this server reports on is closed/);
    assert.equal(k.asked.reads, reads, 'no kernel read after close()');
  } finally {
    await server.close();
  }
});
