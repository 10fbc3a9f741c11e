/**
 * The state-file registry across a network namespace's death: the registry is keyed by the inode of
 * /proc/self/ns/net, which the kernel gives to the next namespace once one is gone. A namespace that
 * gets a dead one's inode must not take the dead one's state files (which still exist) as its own
 * other state files: their profiles would hide its leftovers from `status` and keep them from `sync`.
 * Real namespaces (`ip netns add`), one registry shared by them, the real CLI.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { KERNEL_SKIP, PAIRS, VIP, ok, pairFlags } from './common.js';
import { NetnsTopology } from '../harness/netns.js';
import { CLI_PATH } from '../harness/env.js';
import { netnsCookie } from '../../src/platform/addon.js';

// One native pair (the cookie comes through the addon; which engine does not matter here).
const pair = PAIRS.find((p) => p.name === 'nft/native' && !p.skip) ?? PAIRS.find((p) => p.name === 'legacy/native');
const skip =
  KERNEL_SKIP ||
  pair!.skip ||
  (netnsCookie() === null
    ? 'no network namespace cookie here (Linux before 5.14, or an addon built before netnsCookie): a dead namespace of the same inode cannot be told apart'
    : false);

test(
  "a namespace given a dead namespace's inode does not take the dead one's state files as its own: its leftover is orphaned and removed",
  { skip, timeout: 240_000 },
  async (ctx) => {
    const work = mkdtempSync(path.join(tmpdir(), 'iptlb-reuse-'));
    // One registry base for every namespace here (the harness gives each topology its own).
    const env = { IPTLB_REGISTRY_DIR: path.join(work, 'registry') };
    const A = path.join(work, 'a.db'); // the dead namespace's state file, which stays
    const B = path.join(work, 'b.db');
    writeFileSync(B, '{}\n'); // a state file of no profiles (a sync needs one that exists)
    const C = path.join(work, 'c', 'c.db'); // a state file that is lost after its change
    const profile = ['-profile=web', `-src-addr=${VIP}:80`, '-dest-addr=127.0.0.1:9001,127.0.0.1:9002'];
    const cli = (t: NetnsTopology, state: string, ...args: string[]) =>
      t.exec('h', [process.execPath, CLI_PATH, ...pairFlags(pair!), `-state-file=${state}`, ...args], {
        env,
        allowFail: true,
      });
    const inode = (t: NetnsTopology) => statSync(`/run/netns/${t.ns('h')}`).ino;
    let t: NetnsTopology | undefined;
    try {
      // 1. A namespace where A's profile web is applied, then deleted (A's file and entry stay).
      const dead = await NetnsTopology.create(['h']);
      let ino: number;
      try {
        ok(await cli(dead, A, 'apply', ...profile));
        ino = inode(dead);
      } finally {
        await dead.destroy();
      }
      const dir = path.join(env.IPTLB_REGISTRY_DIR, String(ino));
      const entries = () => readdirSync(dir).filter((n) => n.endsWith('.path'));
      const deadEntries = entries();
      assert.equal(deadEntries.length, 1, "A's entry");
      // 2. New namespaces until one gets that inode: the kernel gives the lowest free one, once its
      // cleanup of the dead namespace has run. A new namespace of a lower inode (one freed meanwhile:
      // a namespace of an earlier test still being cleaned up when the dead one was made) is kept
      // until then, so that the next gets the next inode; one of a higher inode is deleted and tried
      // again a moment later.
      // Test files run side by side: another file's new namespace may get the inode first and keep it
      // for its test's length. While a namespace under /run/netns has it, this waits (up to 150 s of
      // the test's 240, a kernel test's namespaces seldom live longer) instead of trying.
      const heldElsewhere = (): boolean =>
        readdirSync('/run/netns').some((n) => {
          try {
            return statSync(path.join('/run/netns', n)).ino === ino;
          } catch {
            return false;
          }
        });
      const got: number[] = [];
      const lower: NetnsTopology[] = [];
      const deadline = Date.now() + 150_000;
      try {
        for (let i = 0; i < 60 && !t && Date.now() < deadline;) {
          if (heldElsewhere()) {
            await sleep(500);
            continue;
          }
          i++;
          const c = await NetnsTopology.create(['h']);
          const n = inode(c);
          if (n === ino) t = c;
          else {
            got.push(n);
            if (n < ino && lower.length < 20) lower.push(c);
            else {
              await c.destroy();
              await sleep(250);
            }
          }
        }
      } finally {
        for (const c of lower) await c.destroy();
      }
      assert.ok(
        t,
        `no new namespace got the inode ${ino} of the deleted one in ${got.length} tries (got ${[...new Set(got)].join(', ')}): another process on this host took it?`,
      );
      ctx.diagnostic(
        `inode ${ino} given again to new namespace ${got.length + 1}${got.length ? ` (before: ${got.join(', ')})` : ''}`,
      );
      // 3. In it, C applies the same profile, and C's state file is lost: a leftover of no state file.
      ok(await cli(t, C, 'apply', ...profile));
      rmSync(path.dirname(C), { recursive: true, force: true });
      // 4. B's status: web is orphaned (exit 3); A, the dead namespace's, is not named.
      const st = await cli(t, B, 'status', '--json');
      const report = JSON.parse(st.stdout) as {
        profiles: { name: string; status: string }[];
        otherStateFiles?: { stateFile: string }[];
      };
      assert.equal(report.otherStateFiles, undefined, st.stdout);
      assert.ok(
        report.profiles.some((p) => p.status === 'orphaned' && /web|127\.100\.0\.10/.test(p.name)),
        st.stdout,
      );
      assert.equal(st.code, 3, st.stderr);
      assert.deepEqual(
        entries().filter((n) => deadEntries.includes(n)),
        [],
        "the dead namespace's entry is dropped",
      );
      // 5. B's sync removes the leftover.
      ok(await cli(t, B, 'sync'));
      const after = await cli(t, B, 'status', '--json');
      assert.equal(after.code, 0, after.stdout + after.stderr);
      assert.deepEqual((JSON.parse(after.stdout) as { profiles: unknown[] }).profiles, [], after.stdout);
      assert.deepEqual(
        entries().map((n) => readFileSync(path.join(dir, n), 'utf8')),
        [`${B}\n`],
        "B's entry (its sync changed the kernel), and no more C's, whose file is gone",
      );
    } finally {
      await t?.destroy();
      rmSync(work, { recursive: true, force: true });
    }
  },
);
