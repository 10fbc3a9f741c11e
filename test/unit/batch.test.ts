import { mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readState } from '../../src/core/state.js';
import { Core } from '../../src/core/core.js';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { open, IptlbError, type LegacyExecutor, type Transaction, type KernelView } from '../../src/index.js';

/** An executor that records transactions instead of touching a kernel. */
class FakeExecutor implements LegacyExecutor {
  readonly kind = 'spawn' as const;
  readonly engine = 'legacy' as const;
  txs: Transaction[] = [];
  constructor(
    private readonly refuse: (tx: Transaction) => boolean = () => false,
    private readonly delayMs = 5,
  ) {}
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
const prof = (name: string, port: number, dest = 9000) => ({
  name,
  source: `127.100.0.1:${port}`,
  destination: [`127.0.0.1:${dest}`],
});

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
  const rejected = settled
    .filter((s): s is PromiseRejectedResult => s.status === 'rejected')
    .map((s) => (s.reason as IptlbError).code);
  assert.deepEqual(rejected.sort(), ['ECONFLICT', 'ENOTFOUND']);
  assert.ok(ex.txs.length <= 3, `${ex.txs.length} commits for 100 calls`);
  assert.equal(
    events.reduce((a, b) => a + b, 0),
    100,
  );
  const list = await lb.list();
  assert.deepEqual(
    list.map((p) => p.destination[0]),
    Array.from({ length: 10 }, (_, i) => `127.0.0.1:${9090 + i}`),
  );
  // Journaled (another reader sees it at once); folded into the YAML at close at the latest.
  assert.equal((await readState(file)).get('p9')!.destination[0], '127.0.0.1:9099');
  await lb.close();
  assert.match(readFileSync(file, 'utf8'), /p9:\n  destination:\n  - 127\.0\.0\.1:9099\n/);
  assert.equal(existsSync(`${file}.journal`), false);
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
  const calls = [
    lb.apply(prof('a', 3001)),
    lb.apply(prof('poison', 3002)),
    lb.apply(prof('b', 3003)),
    lb.apply(prof('c', 3004)),
  ];
  const settled = await Promise.allSettled(calls);
  assert.deepEqual(
    settled.map((s) => s.status),
    ['fulfilled', 'rejected', 'fulfilled', 'fulfilled'],
  );
  assert.equal(((settled[1] as PromiseRejectedResult).reason as IptlbError).code, 'EKERNEL');
  assert.deepEqual(
    (await lb.list()).map((p) => p.name),
    ['a', 'b', 'c', 'first'],
  );
  await lb.close();
});

test('validation errors reject synchronously-checked calls without reaching the queue', async () => {
  const ex = new FakeExecutor();
  const lb = await open({ stateFile: stateFile() }, ex);
  await assert.rejects(
    lb.apply({ name: 'x', source: '1.2.3.4:0', destination: ['127.0.0.1:1'] }),
    (e: IptlbError) => e.code === 'EINVAL_PROFILE' && e.field === 'source',
  );
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
  assert.deepEqual(
    (await lb.list()).map((p) => [p.name, p.destination[0]]),
    [['a', '127.0.0.1:9999']],
  );
  assert.equal(ex.txs.length, 3);
  await lb.close();
});

test('a coalesced batch accepts and refuses exactly what the calls one at a time would (conflict index)', async () => {
  const { checkConflicts, validateProfile } = await import('../../src/model/profile.js');
  type Call = { kind: 'apply'; profiles: ReturnType<typeof prof>[] } | { kind: 'delete'; names: string[] };
  const names = ['a', 'A', 'b', 'c-d', 'c_d', 'e'];
  const op = fc.oneof(
    fc
      .uniqueArray(
        fc.record({
          name: fc.constantFrom(...names),
          port: fc.integer({ min: 5000, max: 5003 }),
          // The same source with another protocol is another pair; a profile may change its protocol.
          protocol: fc.constantFrom('tcp', 'udp'),
        }),
        { minLength: 1, maxLength: 3, selector: (x) => x.name },
      )
      .map((ps): Call => ({
        kind: 'apply',
        profiles: ps.map((x) => ({ ...prof(x.name, x.port), protocol: x.protocol })),
      })),
    fc.constantFrom(...names).map((n): Call => ({ kind: 'delete', names: [n] })),
  );
  await fc.assert(
    fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (calls) => {
      // The reference: each call checked alone against the profiles before it, by checkConflicts.
      const model = new Map<string, ReturnType<typeof validateProfile>>();
      const expected = calls.map((c) => {
        try {
          if (c.kind === 'apply') {
            const ps = c.profiles.map((p) => validateProfile(p));
            const own = new Set(ps.map((p) => p.name));
            const others = [...model.values()].filter((o) => !own.has(o.name));
            ps.forEach((p, i) => checkConflicts(p, [...others, ...ps.slice(0, i)]));
            for (const p of ps) model.set(p.name, p);
          } else {
            if (!model.has(c.names[0])) throw new IptlbError('ENOTFOUND', 'x');
            model.delete(c.names[0]);
          }
          return 'ok';
        } catch (e) {
          return `${(e as IptlbError).code} ${(e as IptlbError).code === 'ECONFLICT' ? (e as IptlbError).message : ''}`;
        }
      });
      const lb = await open({ stateFile: false }, new FakeExecutor(undefined, 0));
      const settled = await Promise.allSettled(
        calls.map((c) => (c.kind === 'apply' ? lb.apply(c.profiles) : lb.delete(c.names))),
      );
      const got = settled.map((s) =>
        s.status === 'fulfilled'
          ? 'ok'
          : `${(s.reason as IptlbError).code} ${(s.reason as IptlbError).code === 'ECONFLICT' ? (s.reason as IptlbError).message : ''}`,
      );
      assert.deepEqual(got, expected);
      assert.deepEqual(
        (await lb.list()).map((p) => `${p.name} ${p.source} ${p.protocol}`),
        [...model.values()]
          .sort((x, y) => (x.name < y.name ? -1 : 1))
          .map((p) => `${p.name} ${p.source} ${p.protocol}`),
      );
      await lb.close();
    }),
    { numRuns: 200 },
  );
});

test('drift: status() and the periodic check emit the reports that are not in sync', async () => {
  const ex = new FakeExecutor();
  const file = stateFile();
  const lb = await open({ stateFile: file, driftCheckMs: 20 }, ex); // the fake kernel never holds anything
  await lb.apply(prof('web', 80));
  const alive = setTimeout(() => {}, 5000); // the check's timer is unref'd: keep this test's loop alive
  const seen = new Promise<string[]>((resolve) =>
    lb.once('drift', (reports) => resolve(reports.map((r) => `${r.name}:${r.status}`))),
  );
  assert.deepEqual(await seen, ['web:missing']);
  clearTimeout(alive);
  await lb.close();
  // status() emits too: on an instance whose periodic check does not run meanwhile.
  const quiet = await open({ stateFile: file, driftCheckMs: 600_000 }, ex);
  let viaStatus: string[] = [];
  quiet.once('drift', (reports) => (viaStatus = reports.map((r) => r.name)));
  await quiet.status();
  assert.deepEqual(viaStatus, ['web']);
  await quiet.close();
  await assert.rejects(open({ stateFile: stateFile(), driftCheckMs: 0 }, ex), /driftCheckMs/);
});

test('under churn the queue prefetches the next legacy commit, and gives what it prepared back when the drain ends', async () => {
  class PrefetchingExecutor extends FakeExecutor {
    held = 0;
    prefetches = 0;
    releases = 0;
    committedHeld = 0;
    prefetch(): void {
      this.prefetches++;
      this.held = 1;
    }
    releasePrefetch(): Promise<void> {
      this.releases++;
      this.held = 0;
      return Promise.resolve();
    }
    override async commit(tx: Transaction) {
      this.committedHeld += this.held;
      this.held = 0; // the commit uses what was prepared
      return super.commit(tx);
    }
  }
  const ex = new PrefetchingExecutor(() => false, 2);
  const lb = await open({ stateFile: false }, ex);
  let issued = 0;
  const worker = async (): Promise<void> => {
    while (issued < 400) {
      const i = issued++;
      await lb.apply(prof(`p${i % 20}`, 1000 + (i % 20), 9000 + i));
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  await new Promise((r) => setTimeout(r, 20));
  assert.ok(ex.prefetches > 0, 'batches of several calls prefetch');
  assert.ok(ex.committedHeld > 0, 'commits used what was prepared');
  assert.equal(ex.held, 0, 'nothing stays prepared once the queue is idle');
  assert.ok(ex.releases >= 1);
  // A lone call neither prefetches nor needs a release.
  const before = { p: ex.prefetches, r: ex.releases };
  await lb.apply(prof('lone', 2000));
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual({ p: ex.prefetches, r: ex.releases }, before);
  await lb.close();
});

test('an unknown name to delete: ENOTFOUND naming name, said of the state file or of an in-memory handle', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-batch-'));
  for (const [stateFile, where] of [
    [false, "among this handle's profiles"],
    [path.join(dir, 'state.db'), 'in the state file'],
  ] as const) {
    const lb = await open({ stateFile, stateRegistry: false }, new FakeExecutor(undefined, 0));
    await assert.rejects(lb.delete('missing'), {
      code: 'ENOTFOUND',
      field: 'name',
      message: `name: profile "missing" does not exist ${where}`,
    });
    await lb.close();
  }
});

test('commit events: one per kernel transaction, none for a batch that reached no kernel', async () => {
  const ex = new FakeExecutor(undefined, 0);
  const lb = await open({ stateFile: false }, ex);
  const events: { calls: number; engine: string | null; executor: string | null }[] = [];
  lb.on('commit', (e) => events.push({ calls: e.calls, engine: e.engine, executor: e.executor }));
  await lb.apply(prof('a', 4000));
  await lb.delete([]);
  await assert.rejects(lb.delete('missing'), (e: IptlbError) => e.code === 'ENOTFOUND');
  await assert.rejects(lb.apply(prof('clash', 4000)), (e: IptlbError) => e.code === 'ECONFLICT');
  assert.deepEqual(events, [{ calls: 1, engine: 'legacy', executor: 'spawn' }]);
  assert.equal(ex.txs.length, 1);
  await lb.close();
});

test('a commit listener that throws: the call still settles, the queue goes on, the throw is uncaught', async () => {
  // In a process of its own: the listener's throw is meant to reach `uncaughtException`.
  const { spawnSync } = await import('node:child_process');
  const index = new URL('../../src/index.js', import.meta.url).pathname;
  const script = `
    const { open } = await import(${JSON.stringify(index)});
    const ex = { kind: 'spawn', engine: 'legacy', async commit() { return { durationMs: 0 }; },
      async read() { return { chains: [], hookRules: [] }; }, async render() { return ''; } };
    const uncaught = [];
    process.on('uncaughtException', (e) => uncaught.push(e.message));
    const lb = await open({ stateFile: false }, ex);
    lb.on('commit', () => { throw new Error('listener bug'); });
    const r = await lb.apply({ name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9000'] });
    const r2 = await lb.apply({ name: 'b', source: '127.100.0.1:81', destination: ['127.0.0.1:9000'] });
    await new Promise((r) => setTimeout(r, 10));
    console.log(JSON.stringify({ a: r.applied[0].name, b: r2.applied[0].name, uncaught }));
    await lb.close();`;
  const out = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(out.status, 0, out.stderr);
  assert.deepEqual(JSON.parse(out.stdout), { a: 'a', b: 'b', uncaught: ['listener bug', 'listener bug'] });
});

test('kernel(family) takes ipv4 or ipv6 only: anything else is EUSAGE naming family', async () => {
  const lb = await open({ stateFile: false }, new FakeExecutor(undefined, 0));
  for (const bad of ['IPV6', 'ipx', 42, null])
    await assert.rejects(
      lb.kernel(bad as never),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'family' && /is not one of ipv4, ipv6/.test(e.message),
    );
  assert.deepEqual(await lb.kernel('ipv6'), { chains: [], hookRules: [] });
  await lb.close();
});

test("open()'s second argument is an Executor object: a string or number is EUSAGE naming executor, not a TypeError", async () => {
  for (const bad of ['native', 'spawn', 42, true, [new FakeExecutor(undefined, 0)]])
    await assert.rejects(
      open({ stateFile: false }, bad as never),
      (e: IptlbError) =>
        e instanceof IptlbError &&
        e.code === 'EUSAGE' &&
        e.field === 'executor' &&
        /^executor: the second argument must be an Executor object, got .* \(to choose one: options\.executor\)$/.test(
          e.message,
        ),
      String(bad),
    );
});

test('engine and executor left out come from IPTLB_ENGINE / IPTLB_EXECUTOR, and a bad value names the variable', async () => {
  const saved = { e: process.env.IPTLB_ENGINE, x: process.env.IPTLB_EXECUTOR };
  try {
    process.env.IPTLB_ENGINE = 'bogus';
    await assert.rejects(
      open({ stateFile: false }),
      (e: IptlbError) =>
        e.code === 'EUSAGE' && e.field === 'IPTLB_ENGINE' && /^IPTLB_ENGINE: "bogus" is not one of/.test(e.message),
    );
    delete process.env.IPTLB_ENGINE;
    process.env.IPTLB_EXECUTOR = 'fork';
    await assert.rejects(
      open({ stateFile: false }),
      (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'IPTLB_EXECUTOR',
    );
    // An option given wins over the variable.
    process.env.IPTLB_ENGINE = 'bogus';
    await assert.rejects(open({ stateFile: false, engine: 'bogus' as never }), (e: IptlbError) => e.field === 'engine');
  } finally {
    for (const [k, v] of [
      ['IPTLB_ENGINE', saved.e],
      ['IPTLB_EXECUTOR', saved.x],
    ] as const)
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
  }
});

test('IPTLB_REGISTRY_DIR must be absolute, as the stateRegistry option: a relative one is EUSAGE naming the variable, nothing made', async () => {
  // Relative, it named another directory in each working directory: two agents started from different directories
  // did not see each other's state files, and each one's sync() removed the other's profiles as orphans.
  const saved = process.env.IPTLB_REGISTRY_DIR;
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-regenv-'));
  try {
    process.env.IPTLB_REGISTRY_DIR = 'run/iptlb';
    await assert.rejects(
      open({ stateFile: path.join(dir, 'sub', 'state.db'), executor: 'spawn' }),
      (e: IptlbError) =>
        e.code === 'EUSAGE' &&
        e.field === 'IPTLB_REGISTRY_DIR' &&
        e.message === 'IPTLB_REGISTRY_DIR: must be an absolute directory path, got "run/iptlb"',
    );
    assert.equal(existsSync(path.join(dir, 'sub')), false, 'nothing made');
    assert.equal(existsSync(path.join(process.cwd(), 'run')), false, 'no registry made under the working directory');
    // Not asked where no registry is used (no state file), nor when the option says where it is.
    assert.doesNotThrow(() => new Core({ stateFile: false }));
    assert.doesNotThrow(() => new Core({ stateFile: path.join(dir, 'state.db'), stateRegistry: path.join(dir, 'r') }));
    await assert.rejects(
      open({ stateFile: path.join(dir, 'state.db'), stateRegistry: 'run/iptlb' as never }),
      (e: IptlbError) => e.field === 'stateRegistry',
    );
  } finally {
    if (saved === undefined) delete process.env.IPTLB_REGISTRY_DIR;
    else process.env.IPTLB_REGISTRY_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('close() waits for the drain to end without polling a clock: under mocked timers it still resolves', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  t.after(() => mock.timers.reset());
  // Commits that finish on real I/O (a setImmediate), not on the mocked clock.
  const ex = new (class extends FakeExecutor {
    override async commit(tx: Transaction) {
      await new Promise((r) => setImmediate(r));
      this.txs.push(tx);
      return { durationMs: 0 };
    }
  })();
  const lb = await open({ stateFile: false }, ex);
  const calls = [lb.apply(prof('a', 1001)), lb.apply(prof('b', 1002))];
  await Promise.all(calls);
  await lb.close();
  assert.equal(ex.txs.length >= 1, true);
});
