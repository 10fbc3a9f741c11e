/**
 * The legacy plan's one decoder (JSON text, on the addon's thread) against bad input: truncated,
 * wrong field types, oversized, not JSON. Each is refused (EPLAN, one line, naming the field; a
 * TypeError for text over the limit) and nothing is committed (fixtures/plan-fuzz.ts, in a throwaway
 * namespace).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fixture, kernelSkip, runInNetns } from './netns-child.js';

describe('legacy plan decoder: bad input', { skip: kernelSkip() }, () => {
  test('every prefix, every field of another type, oversized and non-JSON text: refused, nothing committed', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('plan-fuzz'), [], { timeoutMs: 120_000 });
    assert.deepEqual(r.bad, []);
    assert.ok(r.prefixes > 500, `prefixes: ${r.prefixes}`);
    assert.ok(r.replacements > 300, `replacements: ${r.replacements}`);
    assert.equal(r.oversized, 'json');
    assert.equal(r.unchanged, true);
    assert.equal(r.validAfter, true);
  });
});
