/**
 * The state journal under SIGKILL (issue 18): a library process killed at random moments of its
 * appends and folds, on every engine × executor pair. See fixtures/journal-crash.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { describePairs } from './common.js';

const SOAK = !!process.env.IPTLB_SOAK;
const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;

describePairs('state journal', ({ name: pair }) => {
  test('SIGKILL during appends and folds: every returned change is in the state, the YAML alone always parses and is never newer, the CLI folds the rest', async () => {
    const kills = SOAK ? 150 : 30;
    const r = (await runJsonInFreshNetns(fixture('journal-crash.js'), [pair, String(kills)], {
      timeoutMs: 600_000,
    })) as { killed: number; acked: number; withJournal: number; problems: string[]; problemCount: number };
    assert.equal(r.problemCount, 0, r.problems.join('\n'));
    assert.ok(r.killed > kills / 2, `only ${r.killed} of ${kills} runs were killed`);
    // Slow pairs under load return fewer changes per run; at least one per two runs shows the kills hit appends.
    assert.ok(r.acked >= kills / 2, `only ${r.acked} changes returned before the kills`);
    assert.ok(r.withJournal > 0, 'no kill left a journal behind: the appends were never hit');
  });
});
