/** The README's example agent runs, for each engine × executor pair, in a fresh namespace. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runInFreshNetns } from '../harness/netns.js';
import { PAIRS } from './common.js';

const AGENT = new URL('../../examples/agent.js', import.meta.url).pathname;

for (const { name, engine, executor, skip } of PAIRS) {
  test(`example agent (${name})`, { skip }, async () => {
    const r = await runInFreshNetns(AGENT, [], {
      env: { IPTLB_ENGINE: engine, IPTLB_EXECUTOR: executor },
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /agent example: OK/);
    assert.match(r.stdout, /status web: in-sync/);
  });
}
