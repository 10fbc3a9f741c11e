/**
 * Group commit with a state file (issue 18): a run of commits keeps the state-file lock between its
 * commits (the lock window), gives it to another process that waits for it, prefetches under it and
 * gives what it prepared back first; the journal record is written while the kernel commits, and a
 * change the kernel refuses is taken back out of the journal. No root: injected executors, and a
 * waiter that is util-linux flock(1) taking the queue lock and then the lock, as lockStateFile does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { open, IptlbError, type LegacyExecutor, type Transaction, type KernelView } from '../../src/index.js';
import type { Core } from '../../src/core/core.js';
import { readStateFull } from '../../src/core/state.js';
import { decodeJournal, journalPath } from '../../src/core/journal.js';
import { loadAddon } from '../../src/platform/addon.js';

/** Records transactions; each commit waits `delayMs` on a timer; prefetch as the native executor has it. */
class Fake implements LegacyExecutor {
  readonly kind = 'native' as const;
  readonly engine = 'legacy' as const;
  txs: Transaction[] = [];
  held = 0;
  prefetches = 0;
  committedHeld = 0;
  constructor(
    private readonly refuse: (tx: Transaction) => boolean = () => false,
    private readonly delayMs = 2,
  ) {}
  async commit(tx: Transaction) {
    this.committedHeld += this.held;
    this.held = 0;
    await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.refuse(tx)) throw new IptlbError('EKERNEL', 'iptables-restore: line 3 failed');
    this.txs.push(tx);
    return { durationMs: this.delayMs };
  }
  prefetch(): void {
    this.prefetches++;
    this.held = 1;
  }
  releasePrefetch(): Promise<void> {
    this.held = 0;
    return Promise.resolve();
  }
  async read(): Promise<KernelView> {
    return { chains: [], hookRules: [] };
  }
  async render(): Promise<string> {
    return '';
  }
}

const stateFile = (): string => path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-window-')), 'state.db');
const prof = (name: string, port: number, dest = 9000) => ({
  name,
  source: `127.100.0.1:${port}`,
  destination: [`127.0.0.1:${dest}`],
});
const coreOf = (lb: unknown): Core => (lb as { core: Core }).core;
const native = loadAddon('core');
const canSeeWaiters = native.ok && typeof native.addon.flockBusy === 'function';

test(
  'flockBusy: false for a free or missing file, true while another open file holds the lock',
  { skip: !canSeeWaiters },
  async () => {
    if (!native.ok || !native.addon.flockBusy) throw new Error('unreachable');
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-window-'));
    const f = path.join(dir, 'x.lock');
    assert.equal(native.addon.flockBusy(f), false, 'missing');
    const held = await native.addon.flock(f, 0);
    assert.equal(native.addon.flockBusy(f), true, 'held by another descriptor of this process');
    held.release();
    assert.equal(native.addon.flockBusy(f), false, 'released');
    assert.throws(() => native.addon.flockBusy!(''), /path/);
  },
);

test(
  'a run of commits with a state file keeps its lock between commits, prefetches under it, and gives it to a process that waits',
  { skip: !canSeeWaiters },
  async () => {
    const file = stateFile();
    const ex = new Fake();
    const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, ex); // no journal fold during the final checks
    const core = coreOf(lb);
    let commits = 0;
    let windowed = 0;
    lb.on('commit', () => {
      commits++;
      if ((core as unknown as { window?: unknown }).window) windowed++;
    });
    // The waiter: the queue lock, then the lock under it (lockStateFile's protocol), at most 10 s.
    let waiterDone = false;
    let appliedWhenWaiterGotIt = -1;
    let applied = 0;
    let waiter: Promise<number | null> | undefined;
    const startWaiter = (): Promise<number | null> =>
      new Promise((resolve) => {
        const c = spawn('flock', ['-w', '10', `${file}.lock.queue`, 'flock', '-w', '10', `${file}.lock`, 'true'], {
          stdio: 'ignore',
        });
        c.on('exit', (code) => {
          waiterDone = true;
          appliedWhenWaiterGotIt = applied;
          resolve(code);
        });
      });
    const last = new Map<string, number>();
    let i = 0;
    const worker = async (): Promise<void> => {
      // Churn until the waiter got its turn and 200 more calls went through.
      while (!waiterDone || applied < appliedWhenWaiterGotIt + 200) {
        const n = i++;
        const name = `p${n % 20}`;
        last.set(name, 9000 + n);
        await lb.apply(prof(name, 1000 + (n % 20), 9000 + n));
        applied++;
        if (applied === 100) waiter = startWaiter();
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    assert.equal(await waiter, 0, 'the waiter got the lock while the churn went on');
    assert.ok(appliedWhenWaiterGotIt < applied, 'calls went through after the waiter had its turn');
    assert.ok(windowed > commits / 2, `most commits ran under a kept lock (${windowed} of ${commits})`);
    assert.ok(ex.committedHeld > 0, 'commits used what was prefetched under the kept lock');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(ex.held, 0, 'nothing stays prefetched once the queue is idle');
    assert.equal((core as unknown as { window?: unknown }).window, undefined, 'the lock is given back at the end');
    assert.equal(native.ok && native.addon.flockBusy!(`${file}.lock`), false, 'nobody holds the lock');
    // The state file holds the last call of every profile.
    const state = (await readStateFull(file)).profiles;
    for (const [name, dest] of last) assert.equal(state.get(name)?.destination[0], `127.0.0.1:${dest}`, name);
    await lb.close();
  },
);

test('the kernel refuses a change: the journal never holds it (its record is written only once the kernel accepted a change)', async () => {
  const file = stateFile();
  const ex = new Fake((tx) => JSON.stringify(tx).includes('127.0.0.1:6666'));
  const lb = await open({ stateFile: file, stateFoldMs: 60_000 }, ex);
  await lb.apply(prof('a', 1001));
  const journalBefore = readFileSync(journalPath(file), 'utf8');
  await assert.rejects(lb.apply(prof('a', 1001, 6666)), /line 3 failed/);
  assert.equal(readFileSync(journalPath(file), 'utf8'), journalBefore, 'the journal is as it was');
  assert.equal((await lb.list()).find((p) => p.name === 'a')?.destination[0], '127.0.0.1:9000');
  // The next change appends after the good records; a fresh reader sees it and not the refused one.
  await lb.apply(prof('b', 1002, 9002));
  const read = (await readStateFull(file)).profiles;
  assert.deepEqual(
    [...read.values()].map((p) => `${p.name} ${p.destination[0]}`),
    ['a 127.0.0.1:9000', 'b 127.0.0.1:9002'],
  );
  // Every change the kernel accepted is in the journal, synced, when its call returns.
  const text = readFileSync(journalPath(file), 'utf8');
  const base = text.slice('iptlb-journal 1 base='.length, text.indexOf('\n'));
  assert.equal(decodeJournal(text, base).records.length, 2);
  // Under churn, a refused call among accepted ones (the last of its profile, so its batch carries it):
  // the batch is split, the others land, the file agrees.
  const calls = Array.from({ length: 40 }, (_, n) =>
    lb.apply(prof(`c${n % 8}`, 2000 + (n % 8), n === 39 ? 6666 : 7000 + n)).then(
      () => true,
      () => false,
    ),
  );
  const ok = await Promise.all(calls);
  assert.deepEqual(
    ok.map((x, n) => (x ? '' : n)).filter((x) => x !== ''),
    [39],
  );
  const after = (await readStateFull(file)).profiles;
  for (let k = 0; k < 8; k++) {
    const lastOk = [...Array(40).keys()].filter((n) => n % 8 === k && n !== 39).pop()!;
    assert.equal(after.get(`c${k}`)?.destination[0], `127.0.0.1:${7000 + lastOk}`, `c${k}`);
  }
  await lb.close();
});
