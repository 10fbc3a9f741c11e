/**
 * The JavaScript side of the health prober (src/health/native-probe.ts), without the addon: the job
 * encoding, the reasons, NativeProber's batching over a fake addon class (one probe() call per
 * flush, results in batches, http on the promise prober), and the choice of prober with the
 * fallback logged once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import {
  NativeProber,
  PromiseProber,
  createProber,
  encodeJob,
  nativeReason,
  resetFallbackLog,
} from '../../src/health/native-probe.js';
import type { LoadResult, NativeHealthProber } from '../../src/platform/addon.js';

test('encodeJob: IPv4 and IPv6 address bytes, port, family; bad input is a reason', () => {
  const v4 = encodeJob('192.0.2.7', 8080) as Buffer;
  assert.equal(v4.length, 28);
  assert.equal(v4.readUInt16LE(8), 8080);
  assert.equal(v4[10], 4);
  assert.deepEqual([...v4.subarray(12, 16)], [192, 0, 2, 7]);
  const v6 = encodeJob('2001:db8::1', 443) as Buffer;
  assert.equal(v6[10], 6);
  assert.equal(v6.subarray(12, 28).toString('hex'), '20010db8000000000000000000000001');
  assert.equal((encodeJob('::1', 1) as Buffer).subarray(12, 28).toString('hex'), '0'.repeat(31) + '1');
  assert.match(encodeJob('192.0.2.256', 80) as string, /not an IPv4 or IPv6 address/);
  assert.match(encodeJob('2001:db8::g', 80) as string, /not an IPv4 or IPv6 address/);
  assert.match(encodeJob('127.0.0.1', 0) as string, /port 0/);
});

test('nativeReason: success, timeout, errno names as the Node prober words them', () => {
  assert.equal(nativeReason(0, 1000), undefined);
  assert.equal(nativeReason(constants.errno.ETIMEDOUT, 1000), 'no connection within 1000 ms');
  assert.equal(nativeReason(constants.errno.ECONNREFUSED, 1000), 'ECONNREFUSED (connect)');
  assert.equal(nativeReason(constants.errno.EHOSTUNREACH, 1000), 'EHOSTUNREACH (connect)');
  assert.equal(nativeReason(99999, 1000), 'errno 99999 (connect)');
});

class FakeNative implements NativeHealthProber {
  static last?: FakeNative;
  batches: Buffer[] = [];
  closed = false;
  constructor(readonly onResults: (r: Int32Array) => void) {
    FakeNative.last = this;
  }
  probe(jobs: Uint8Array): void {
    this.batches.push(Buffer.from(jobs));
  }
  close(): void {
    this.closed = true;
  }
  ids(i: number): number[] {
    const b = this.batches[i]!;
    return Array.from({ length: b.length / 28 }, (_, k) => b.readUInt32LE(k * 28));
  }
}

test('NativeProber: the probes of a tick in one call, results in batches, http on the promise prober, close drops', async () => {
  const http: string[] = [];
  const p = new NativeProber(FakeNative, async (t) => void http.push(`${t.host}:${t.port}`));
  const fake = FakeNative.last!;
  const got: [string, string | undefined][] = [];
  for (let i = 0; i < 100; i++)
    p.start({ kind: 'tcp', host: '192.0.2.1', port: 1000 + i, timeoutMs: 500 }, (e) => got.push([`t${i}`, e]));
  p.start({ kind: 'http', host: '192.0.2.1', port: 80, timeoutMs: 500, path: '/' }, (e) => got.push(['http', e]));
  assert.equal(fake.batches.length, 0, 'nothing handed over before the tick ends');
  p.flush();
  p.flush(); // nothing more queued: no call
  assert.equal(fake.batches.length, 1);
  assert.equal(fake.batches[0]!.length, 100 * 28);
  const ids = fake.ids(0);
  assert.equal(new Set(ids).size, 100);
  assert.equal(fake.batches[0]!.readUInt32LE(4), 500, 'timeout');
  assert.equal(fake.batches[0]!.readUInt16LE(28 * 7 + 8), 1007, 'port');
  // Results come back in two batches, out of order.
  const r1 = new Int32Array(ids.slice(50).flatMap((id, k) => [id, k === 0 ? constants.errno.ECONNREFUSED : 0]));
  fake.onResults(r1.reverse().reverse());
  fake.onResults(new Int32Array(ids.slice(0, 50).flatMap((id) => [id, constants.errno.ETIMEDOUT])));
  fake.onResults(new Int32Array([ids[0]!, 0])); // a duplicate or late id is ignored
  await new Promise((r) => setImmediate(r));
  assert.equal(got.filter(([k]) => k.startsWith('t')).length, 100);
  assert.deepEqual(
    got.find(([k]) => k === 't50'),
    ['t50', 'ECONNREFUSED (connect)'],
  );
  assert.deepEqual(
    got.find(([k]) => k === 't0'),
    ['t0', 'no connection within 500 ms'],
  );
  assert.deepEqual(
    got.find(([k]) => k === 't99'),
    ['t99', undefined],
  );
  assert.deepEqual(http, ['192.0.2.1:80']);
  assert.deepEqual(
    got.find(([k]) => k === 'http'),
    ['http', undefined],
  );
  // A bad address fails that probe, not the batch.
  const bad: (string | undefined)[] = [];
  p.start({ kind: 'tcp', host: '192.0.2.300', port: 80, timeoutMs: 500 }, (e) => bad.push(e));
  p.flush();
  await new Promise((r) => setImmediate(r));
  assert.match(bad[0]!, /not an IPv4 or IPv6 address/);
  assert.equal(fake.batches.length, 1);
  // close: the native side closed, later results dropped.
  let late = 0;
  p.start({ kind: 'tcp', host: '192.0.2.1', port: 9, timeoutMs: 500 }, () => late++);
  p.flush();
  const lastId = fake.ids(1)[0]!;
  p.close();
  fake.onResults(new Int32Array([lastId, 0]));
  assert.equal(late, 0);
  assert.ok(fake.closed);
});

test('createProber: native when the addon loads, else Node sockets with one log line; node and injected probes on request', () => {
  const logs: string[] = [];
  const ok = (() => ({ ok: true, addon: { HealthProber: FakeNative }, path: 'x' })) as unknown as () => LoadResult;
  const missing = (() => ({
    ok: false,
    reason: 'not-built',
    detail: 'build/Release/iptlb_core.node does not exist',
    fix: 'npm run build:addon',
  })) as unknown as () => LoadResult;
  assert.equal(createProber({}, (l) => logs.push(l), ok).kind, 'native');
  assert.equal(createProber({ prober: 'node' }, (l) => logs.push(l), ok).kind, 'node');
  assert.ok(createProber({ probe: async () => {} }, (l) => logs.push(l), ok) instanceof PromiseProber);
  resetFallbackLog();
  assert.equal(createProber({}, (l) => logs.push(l), missing).kind, 'node');
  assert.equal(createProber({ prober: 'auto' }, (l) => logs.push(l), missing).kind, 'node');
  assert.deepEqual(logs, [
    'health: native prober unavailable (not-built: build/Release/iptlb_core.node does not exist); tcp checks use Node sockets (more CPU per probe)',
  ]);
  assert.throws(() => createProber({ prober: 'native' }, () => {}, missing), {
    code: 'ENATIVE',
    field: 'health.prober',
  });
});

test('PromiseProber: many probes in flight at once (more than 10) draw no MaxListenersExceededWarning ("memory leak detected")', async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(`${w.name}: ${w.message}`);
  process.on('warning', onWarning);
  try {
    // As the Node probe does: each probe listens for the abort of the prober's signal until it ends.
    const ends: (() => void)[] = [];
    const p = new PromiseProber(
      (_t, signal) =>
        new Promise<void>((resolve) => {
          const abort = (): void => resolve();
          signal?.addEventListener('abort', abort, { once: true });
          ends.push(() => (signal?.removeEventListener('abort', abort), resolve()));
        }),
    );
    let done = 0;
    for (let i = 0; i < 200; i++)
      p.start({ kind: 'http', host: '192.0.2.1', port: 1000 + i, timeoutMs: 500, path: '/' }, () => done++);
    await new Promise((r) => setImmediate(r));
    for (const end of ends) end();
    await new Promise((r) => setImmediate(r));
    assert.equal(done, 200);
    p.close();
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(
      warnings.filter((w) => /MaxListeners/.test(w)),
      [],
    );
  } finally {
    process.off('warning', onWarning);
  }
});
