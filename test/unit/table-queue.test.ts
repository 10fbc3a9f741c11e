/**
 * TableQueue (src/platform/addon.ts): the addon's table operations of one engine run one at a time, in
 * call order, each started only when the one before it settled, whatever order they would settle in;
 * a start that throws or rejects is that call's rejection and does not stop the queue. No root, no addon.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TableQueue } from '../../src/platform/addon.js';

/** A start function whose promise the test settles by hand. */
function manual(log: string[], name: string) {
  let settle!: (ok: boolean) => void;
  const start = (): Promise<string> => {
    log.push(`start ${name}`);
    return new Promise<string>((resolve, reject) => {
      settle = (ok) => (ok ? resolve(name) : reject(new Error(name)));
    });
  };
  return { start, settle: (ok = true) => settle(ok) };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test('one in flight, started in call order, the next when the previous settled', async () => {
  const q = new TableQueue();
  const log: string[] = [];
  const a = manual(log, 'a');
  const b = manual(log, 'b');
  const c = manual(log, 'c');
  const pa = q.run(a.start);
  const pb = q.run(b.start);
  const pc = q.run(c.start);
  assert.deepEqual(log, ['start a'], 'only the first starts at once');
  assert.equal(q.length, 3);
  a.settle();
  assert.equal(await pa, 'a');
  await tick();
  assert.deepEqual(log, ['start a', 'start b']);
  b.settle(false);
  await assert.rejects(pb, /^Error: b$/);
  await tick();
  assert.deepEqual(log, ['start a', 'start b', 'start c'], 'a rejection does not stop the queue');
  c.settle();
  assert.equal(await pc, 'c');
  await tick();
  assert.equal(q.length, 0);
});

test('a start that throws is that call rejection; the queue goes on; idle again afterwards', async () => {
  const q = new TableQueue();
  const order: number[] = [];
  const boom = q.run(() => {
    throw new TypeError('bad');
  });
  const rest = [1, 2, 3].map((i) => q.run(async () => (order.push(i), i)));
  await assert.rejects(boom, /^TypeError: bad$/);
  assert.deepEqual(await Promise.all(rest), [1, 2, 3]);
  assert.deepEqual(order, [1, 2, 3]);
  await tick();
  assert.equal(q.length, 0);
  const log: string[] = [];
  const d = manual(log, 'd');
  const pd = q.run(d.start);
  assert.deepEqual(log, ['start d'], 'an idle queue starts at once');
  d.settle();
  assert.equal(await pd, 'd');
});
