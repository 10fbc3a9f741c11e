import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadAddon } from '../../src/platform/addon.js';
import { lockStateFile } from '../../src/platform/lock.js';
import type { IptlbError } from '../../src/model/errors.js';

const skip = loadAddon().ok ? false : 'the native addon is not built';
const dist = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

test(
  'a state-file lock outlives a holder killed while its spawned child (restore, nft -f) still runs',
  { skip },
  async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-lock-'));
    const state = path.join(dir, 'state.db');
    try {
      // The holder: takes the lock, starts a long child through the spawn executors' runner, says
      // which, and waits for it (it is killed before that child ends).
      const holder = spawn(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `const { lockStateFile } = await import(${JSON.stringify(path.join(dist, 'src', 'platform', 'lock.js'))});
         const { run } = await import(${JSON.stringify(path.join(dist, 'src', 'platform', 'spawn.js'))});
         await lockStateFile(${JSON.stringify(state)});
         const done = run('sh', ['-c', 'echo $$ >&2; exec sleep 60']);
         await done;`,
        ],
        { stdio: ['ignore', 'ignore', 'ignore'] },
      );
      // Wait until the holder has the lock and its child runs: our own try fails with ELOCK.
      let busy = false;
      for (let i = 0; i < 100 && !busy; i++) {
        try {
          (await lockStateFile(state, 50)).release();
          await new Promise((r) => setTimeout(r, 50));
        } catch (e) {
          busy = (e as IptlbError).code === 'ELOCK';
        }
      }
      assert.ok(busy, 'the holder took the lock');
      const sleeper = await childOf(holder.pid!);
      holder.kill('SIGKILL');
      await new Promise((r) => holder.once('exit', r));
      await assert.rejects(
        lockStateFile(state, 200),
        (e: IptlbError) => e.code === 'ELOCK',
        'the orphaned child still holds the lock',
      );
      process.kill(sleeper, 'SIGKILL');
      let freed = false;
      for (let i = 0; i < 100 && !freed; i++) {
        try {
          (await lockStateFile(state, 100)).release();
          freed = true;
        } catch {
          /* the child is still being reaped */
        }
      }
      assert.ok(freed, 'the lock is free once the child is gone');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

/**
 * The pid of `pid`'s child (the shell the runner started), once it has exec'd sleep. Before that the
 * shell still writes its pid to the holder's stderr pipe: killing the holder then would end the shell
 * with SIGPIPE, and the lock with it.
 */
async function childOf(pid: number): Promise<number> {
  const { readFileSync } = await import('node:fs');
  for (let i = 0; i < 250; i++) {
    try {
      const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
        .trim()
        .split(/\s+/)
        .filter(Boolean)
        .map(Number);
      if (kids.length && readFileSync(`/proc/${kids[0]}/comm`, 'utf8').trim() === 'sleep') return kids[0];
    } catch {
      /* not yet */
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`process ${pid} started no child that runs sleep`);
}
