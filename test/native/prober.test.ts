/**
 * The health checks' native prober (native/health/prober.h) against real listeners in a fresh
 * network namespace (fixtures/prober.ts under `unshare -n`): up, refused and blackholed (timeout)
 * endpoints over IPv4 and IPv6, a batch of 500 probes in fewer callbacks, no TIME_WAIT left, the
 * checker's NativeProber reasons, close() with probes in flight; and the argument checks.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { loadAddon } from '../../src/platform/addon.js';
import { fixture, kernelSkip, runInNetns } from './netns-child.js';

const loaded = loadAddon('core');
const NO_ADDON = loaded.ok ? false : `native addon unavailable: ${loaded.reason}: ${loaded.detail}`;

describe('HealthProber input checking', { skip: NO_ADDON }, () => {
  const A = loaded.ok ? loaded.addon : (null as never);
  test('one-line TypeErrors naming the field', () => {
    assert.throws(() => new A.HealthProber(1 as never), /^TypeError: onResults: must be a function$/);
    const p = new A.HealthProber(() => {});
    try {
      assert.throws(() => p.probe('x' as never), /^TypeError: jobs: must be a Uint8Array$/);
      assert.throws(() => p.probe(new Uint8Array(27)), /^TypeError: jobs: length must be a multiple of 28$/);
      const j = Buffer.alloc(56);
      j.writeUInt32LE(1000, 4);
      j.writeUInt16LE(80, 8);
      j[10] = 4;
      j.copy(j, 28, 0, 28);
      j[38] = 5;
      assert.throws(() => p.probe(j), /^TypeError: jobs\[1\]\.family: must be 4 or 6$/);
      j[38] = 6;
      j.writeUInt32LE(0, 4);
      assert.throws(() => p.probe(j), /^TypeError: jobs\[0\]\.timeoutMs: must be from 1 to 3600000$/);
      j.writeUInt32LE(1000, 4);
      j.writeUInt16LE(0, 36);
      assert.throws(() => p.probe(j), /^TypeError: jobs\[1\]\.port: must be from 1 to 65535$/);
      p.probe(new Uint8Array(0)); // nothing to do
    } finally {
      p.close();
    }
    assert.throws(() => p.probe(new Uint8Array(0)), /health prober: closed/);
    p.close(); // idempotent
  });
});

describe('HealthProber against real listeners', { skip: kernelSkip() }, () => {
  test('up, refused, blackholed over IPv4 and IPv6; 500 in one call; RST close; NativeProber reasons; close in flight', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('prober'), [], { timeoutMs: 60_000 });
    for (const fam of ['ipv4', 'ipv6']) {
      assert.equal(r[fam].up, 0, `${fam} listener: success`);
      assert.equal(r[fam].refused, 111, `${fam} closed port: ECONNREFUSED`);
      assert.equal(r[fam].blackhole, 110, `${fam} blackholed: ETIMEDOUT (the prober's timeout)`);
      assert.ok(r[fam].ms >= 290, `${fam}: the batch ends with the 300 ms timeout (${r[fam].ms} ms)`);
      assert.equal(r[fam].resets, 1, `${fam}: the accepted check connection was reset (SO_LINGER 0)`);
      assert.equal(r[`${fam}Many`].ok, 500);
      assert.ok(r[`${fam}Many`].calls < 500, `${r[`${fam}Many`].calls} callbacks for 500 probes`);
      assert.equal(r[`${fam}Many`].timeWaits, 0, 'no TIME_WAIT');
    }
    assert.deepEqual(r.reasons, ['ok', 'ECONNREFUSED (connect)', 'no connection within 200 ms']);
    assert.equal(r.lateCallbacks, 0);
  });
});
