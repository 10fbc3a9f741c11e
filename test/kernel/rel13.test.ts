/**
 * Issue 13 ("Reliability, round two"): the points that need the kernel, each in a fresh namespace,
 * on every engine × executor pair.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { PAIRS } from './common.js';

const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;

for (const pair of PAIRS) {
  describe(`issue 13 over ${pair.name}`, { skip: pair.skip }, () => {
    test('7: an API instance doing 200+ applies without pause beside 50 CLI -run invocations: all 50 succeed, kernel in step', async () => {
      const r = (await runJsonInFreshNetns(fixture('fair.js'), [pair.name, '200', '50'], { timeoutMs: 300_000 })) as {
        applies: number;
        apiErrors: string[];
        failed: number;
        failures: string[];
        cliMaxMs: number;
        inSync: boolean;
        profiles: number;
      };
      assert.deepEqual(r.apiErrors, []);
      assert.equal(r.failed, 0, r.failures.join('\n'));
      assert.ok(r.applies >= 200);
      assert.equal(r.inSync, true);
      assert.equal(r.profiles, 70);
    });
  });
}
