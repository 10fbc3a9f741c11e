/**
 * IPv6 in the legacy engine against the kernel: the native addon through libip6tc and the spawn
 * executor through ip6tables-legacy-restore/-save. Every case runs in a child process in a fresh
 * network namespace (see netns-child.ts). Skipped, with the reason, when not root or the addon is not built.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { EQUIVALENCE_SETS, checkEquivalence, fixture, kernelSkip, runInNetns } from './netns-child.js';

const SKIP = kernelSkip();

describe('legacy IPv6 (ip6tables nat table) in fresh network namespaces', { skip: SKIP }, () => {
  test(`${EQUIVALENCE_SETS} random IPv6 profile sets: ip6tables-legacy-save identical after a native commit and after ip6tables-legacy-restore of the same plan; read() decodes both`, async () => {
    await checkEquivalence('ipv6');
  });

  test('native: round trip, plan checks, refusals, IPv4 and IPv6 in flight in call order, IPv6 commit under an IPv4 prefetch', async () => {
    const r = await runInNetns<Record<string, Record<string, unknown>>>(fixture('legacy6'), [], { timeoutMs: 180_000 });
    assert.deepEqual(r.roundTrip, {
      chainsRead: true,
      hooksRead: true,
      ipv4Untouched: true,
      inIp6tables: true,
      deleted: true,
    });
    assert.deepEqual(r.checks, {
      v4AddressInV6: 'transaction.chains[0].rules[0].dst',
      v4AddressInV6Json: 'EPLAN',
      badFamily: 'family: must be "ipv4" or "ipv6"',
      refused: { ok: false, code: 'EKERNEL', errnoIsNumber: true, unchanged: true },
    });
    // Every read saw its table as the commits called before it left it.
    assert.deepEqual(r.inflight, { rejected: [], wrong: [], reads: 86, finalPorts: [true, true] });
    // Without reusing the held lock the IPv6 commit would wait for our own prefetch and fail with ELOCK.
    assert.deepEqual(r.prefetch, {
      freeAtStart: true,
      prefetched: true,
      v6DuringPrefetch: 'ok',
      stillHeld: true,
      v4UsedPrefetch: true,
      bothLanded: true,
      v6CommitObject: true,
      releasedAfterV6: true,
      freeAtEnd: true,
    });
  });

  test('spawn executor: install, in sync, same save text as native, replace, delete; IPv4 untouched', async () => {
    const r = await runInNetns<Record<string, unknown>>(fixture('spawn6'), [], { timeoutMs: 60_000 });
    assert.deepEqual(r, {
      render: '*nat',
      installed: ['cl:in-sync', 'px:in-sync'],
      ipv4Untouched: true,
      sameAsNative: true,
      replaced: ['cl:in-sync', 'px:in-sync'],
      hookRules: 4,
      deleted: true,
    });
  });
});
