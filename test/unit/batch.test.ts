import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { open, IptlbError, type LegacyExecutor, type Transaction, type KernelView } from '../../src/index.js';

/** An executor that records transactions instead of touching a kernel. */
class FakeExecutor implements LegacyExecutor {
  readonly kind = 'spawn' as const;
  readonly engine = 'legacy' as const;
  txs: Transaction[] = [];
  constructor(private readonly refuse: (tx: Transaction) => boolean = () => false, private readonly delayMs = 5) {}
  async commit(tx: Transaction) {
    await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.refuse(tx)) throw new IptlbError('EKERNEL', 'iptables-restore: line 3 failed');
    this.txs.push(tx);
    return { durationMs: this.delayMs };
  }
  async read(): Promise<KernelView> {
    return { chains: [], hookRules: [] };
  }
  async render(): Promise<string> {
    return '';
  }
}

const stateFile = (): string => path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-batch-')), 'state.db');
const prof = (name: string, port: number, dest = 9000) => ({ name, source: `127.100.0.1:${port}`, destination: [`127.0.0.1:${dest}`] });

test('concurrent calls coalesce into few commits; the last call per profile wins; each call settles alone', async () => {
  const ex = new FakeExecutor();
  const file = stateFile();
  const lb = await open({ stateFile: file }, ex);
  const events: number[] = [];
  lb.on('commit', (e) => events.push(e.calls));
  const calls = [];
  for (let i = 0; i < 100; i++) calls.push(lb.apply(prof(`p${i % 10}`, 1000 + (i % 10), 9000 + i)));
  calls.push(lb.apply(prof('clash', 1001)));
  calls.push(lb.delete('missing'));
  const settled = await Promise.allSettled(calls);
  assert.equal(settled.filter((s) => s.status === 'fulfilled').length, 100);
  const rejected = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected').map((s) => (s.reason as IptlbError).code);
  assert.deepEqual(rejected.sort(), ['ECONFLICT', 'ENOTFOUND']);
  assert.ok(ex.txs.length <= 3, `${ex.txs.length} commits for 100 calls`);
  assert.equal(events.reduce((a, b) => a + b, 0), 100);
  const list = await lb.list();
  assert.deepEqual(list.map((p) => p.destination[0]), Array.from({ length: 10 }, (_, i) => `127.0.0.1:${9090 + i}`));
  assert.match(readFileSync(file, 'utf8'), /p9:\n  destination:\n  - 127\.0\.0\.1:9099\n/);
  await lb.close();
});

test('without coalescing every call is its own commit', async () => {
  const ex = new FakeExecutor(undefined, 1);
  const lb = await open({ stateFile: stateFile(), coalesce: false }, ex);
  await Promise.all(Array.from({ length: 20 }, (_, i) => lb.apply(prof(`p${i}`, 2000 + i))));
  assert.equal(ex.txs.length, 20);
  await lb.close();
});

test('a batch the kernel refuses is bisected: only the culprit fails, the others land', async () => {
  const ex = new FakeExecutor((tx) => tx.chains.some((c) => c.name === 'IPTLB_NAT_POISON'));
  const file = stateFile();
  const lb = await open({ stateFile: file }, ex);
  await lb.apply(prof('first', 3000)); // occupies the queue so the rest coalesce
  const calls = [lb.apply(prof('a', 3001)), lb.apply(prof('poison', 3002)), lb.apply(prof('b', 3003)), lb.apply(prof('c', 3004))];
  const settled = await Promise.allSettled(calls);
  assert.deepEqual(settled.map((s) => s.status), ['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
  assert.equal(((settled[1] as PromiseRejectedResult).reason as IptlbError).code, 'EKERNEL');
  assert.deepEqual((await lb.list()).map((p) => p.name), ['a', 'b', 'c', 'first']);
  await lb.close();
});

test('validation errors reject synchronously-checked calls without reaching the queue', async () => {
  const ex = new FakeExecutor();
  const lb = await open({ stateFile: stateFile() }, ex);
  await assert.rejects(lb.apply({ name: 'x', source: '1.2.3.4:0', destination: ['127.0.0.1:1'] }), (e: IptlbError) => e.code === 'EINVAL_PROFILE' && e.field === 'source');
  await assert.rejects(lb.delete('bad name'), (e: IptlbError) => e.field === 'name');
  assert.equal(ex.txs.length, 0);
  await lb.close();
  await assert.rejects(lb.list(), /closed/);
});

test('stateFile: false keeps profiles in memory: no file, same semantics', async () => {
  const ex = new FakeExecutor(undefined, 0);
  const lb = await open({ stateFile: false }, ex);
  assert.equal(lb.stateFile, null);
  await lb.apply([prof('a', 4001), prof('b', 4002)]);
  await lb.apply(prof('a', 4001, 9999));
  await assert.rejects(lb.apply(prof('c', 4002)), (e: IptlbError) => e.code === 'ECONFLICT');
  await lb.delete('b');
  assert.deepEqual((await lb.list()).map((p) => [p.name, p.destination[0]]), [['a', '127.0.0.1:9999']]);
  assert.equal(ex.txs.length, 3);
  await lb.close();
});
