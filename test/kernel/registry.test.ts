/**
 * The state-file registry across a network namespace's death: the registry is keyed by the inode of
 * /proc/self/ns/net, which the kernel gives to the next namespace once one is gone. A namespace that
 * gets a dead one's inode must not take the dead one's state files (which still exist) as its own
 * other state files: their profiles would hide its leftovers from `status` and keep them from `sync`.
 * Real namespaces (`ip netns add`), one registry shared by them, the real CLI. Which new namespace the
 * kernel gives the inode to is not the test's to decide: when not the test's, the dead one's registry
 * directory is renamed to the new one's inode, which is what the reuse leaves.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
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
  { skip, timeout: 60_000 },
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
      const deadDir = path.join(env.IPTLB_REGISTRY_DIR, String(ino));
      const deadEntries = readdirSync(deadDir).filter((n) => n.endsWith('.path'));
      assert.equal(deadEntries.length, 1, "A's entry");
      // 2. A new namespace of the dead one's inode. The kernel gives the lowest free inode, shared by
      // every kind of namespace on the host, once its cleanup of the dead one has run: with other test
      // files (and their `ip netns exec` mount namespaces) running side by side, which new namespace
      // gets it is not for this test to decide (a loop of 60 tries failed in CI). When the new one got
      // another inode, the dead one's registry directory is moved to the new inode's name: the
      // registry then holds what the kernel's reuse leaves, the dead namespace's entry (of its cookie)
      // in the directory the new namespace reads and writes.
      t = await NetnsTopology.create(['h']);
      const newIno = inode(t);
      if (newIno === ino) ctx.diagnostic(`the kernel gave inode ${ino} again to the new namespace`);
      else {
        renameSync(deadDir, path.join(env.IPTLB_REGISTRY_DIR, String(newIno)));
        ctx.diagnostic(
          `the new namespace got inode ${newIno}, not ${ino}: the dead one's registry directory moved to it`,
        );
      }
      const dir = path.join(env.IPTLB_REGISTRY_DIR, String(newIno));
      const entries = () => readdirSync(dir).filter((n) => n.endsWith('.path'));
      assert.deepEqual(entries(), deadEntries, "the dead namespace's entry, in the new namespace's directory");
      // 3. In it, C applies the same profile, and C's state file is lost: a leftover of no state file.
      ok(await cli(t, C, 'apply', ...profile));
      // C's registration (its first change here) dropped the dead namespace's entry: no status or sync needed.
      assert.deepEqual(
        entries().filter((n) => deadEntries.includes(n)),
        [],
        "the dead namespace's entry is dropped when C registers",
      );
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
