/** The README's example agent runs, for each executor, in a fresh namespace. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runInFreshNetns } from '../harness/netns.js';
import { EXECUTORS } from './common.js';

const AGENT = new URL('../../examples/agent.js', import.meta.url).pathname;

for (const { name, skip } of EXECUTORS) {
  test(`example agent (${name} executor)`, { skip }, async () => {
    const r = await runInFreshNetns(AGENT, [], { env: { IPTLB_EXECUTOR: name }, timeoutMs: 60_000 });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /agent example: OK/);
    assert.match(r.stdout, /status web: in-sync/);
  });
}
