/**
 * Tests that kill one-line mutations no other test noticed: the state file's fsync dropped, any
 * comment counted as iptlb's own in the legacy restore parser, affinity ignoring weights in the nft
 * planner.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { writeState, readState } from '../../src/core/state.js';
import { FileHandle } from '../../src/platform/fsp.js';
import { parseSave } from '../../src/engines/legacy/restore.js';
import { planNftProfile } from '../../src/engines/nft/plan.js';
import { validateProfile } from '../../src/model/profile.js';

test('writeState syncs the new file before it replaces the old one, then the directory', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-fsync-'));
  try {
    // The state code's file handles (platform/fsp.ts).
    const proto = FileHandle.prototype as { sync: () => Promise<void> };
    const file = path.join(dir, 'state.db');
    const seen: string[] = [];
    const real = proto.sync;
    t.mock.method(proto, 'sync', async function (this: unknown) {
      // What the target holds at each sync: nothing yet at the file's own, the new content at the directory's.
      seen.push(await fsp.readFile(file, 'utf8').catch(() => '<absent>'));
      return real.call(this);
    });
    await writeState(file, [
      validateProfile({ name: 'web', source: '127.100.0.10:80', destination: ['127.0.0.1:9001'] }),
    ]);
    assert.equal(seen.length, 2, 'two syncs: the temporary file, then the directory');
    assert.equal(seen[0], '<absent>', 'the file is synced before the rename');
    assert.match(seen[1], /web:/, 'the directory is synced after the rename');
    assert.equal((await readState(file)).size, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the restore parser counts only comments `iptlb:<name>` as iptlb rules', () => {
  const view = parseSave(
    [
      '*nat',
      ':OUTPUT ACCEPT [0:0]',
      ':IPTLB_NAT_WEB - [0:0]',
      '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
      '-A OUTPUT -m comment --comment iptlbx:web -j RETURN',
      '-A OUTPUT -m comment --comment "not iptlb:web" -j RETURN',
      '-A OUTPUT -d 127.100.0.10/32 -p tcp -m comment --comment iptlb:web -m tcp --dport 80 -j IPTLB_NAT_WEB',
      '-A IPTLB_NAT_WEB -j RETURN',
      'COMMIT',
    ].join('\n'),
  );
  assert.deepEqual(
    view.hookRules.map((h) => [h.owner, h.position]),
    [['web', 4]],
  );
  assert.deepEqual(
    view.chains.map((c) => c.name),
    ['IPTLB_NAT_WEB'],
  );
});

test('nft affinity: the balancing cascade follows the weights exactly (drained destinations get no rule)', () => {
  for (const [weights, scheduler] of [
    [[1, 3, 0, 4], undefined],
    [[2, 1, 1], undefined],
    [[1, 2], 'round-robin'],
  ] as const) {
    const dests = weights.map((_, i) => `127.0.0.1:${9001 + i}`);
    const p = validateProfile({
      name: 'aff',
      source: '127.100.0.10:80',
      destination: dests,
      weights: Object.fromEntries(dests.map((d, i) => [d, weights[i]])),
      affinity: 30,
      scheduler,
    });
    const picks = planNftProfile(p)
      .rules.map((r) => r.rule)
      .filter((r) => r.kind === 'aff' && r.pick.mode !== 'hit');
    // The chance each destination is chosen by the cascade: each rule takes its share of what is left.
    const share = new Map<number, number>();
    let left = 1;
    for (const r of picks) {
      if (r.kind !== 'aff') continue;
      const take = r.pick.mode === 'random' ? r.pick.lt / r.pick.mod : r.pick.mode === 'inc' ? 1 / r.pick.mod : 1;
      share.set(r.to.port, (share.get(r.to.port) ?? 0) + left * take);
      left -= left * take;
    }
    const total = weights.reduce<number>((a, b) => a + b, 0);
    weights.forEach((w, i) =>
      assert.ok(
        Math.abs((share.get(9001 + i) ?? 0) - w / total) < 1e-9,
        `${JSON.stringify(weights)} ${scheduler ?? 'random'}: destination ${i} gets ${share.get(9001 + i)}, not ${w / total}`,
      ),
    );
  }
});
