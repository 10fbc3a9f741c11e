/**
 * The library's answers to bad input and misuse, as an agent embedding it sees them (docs/api.md): typed errors
 * whose message says where the fault is, and nothing changed.
 */
import { mock, test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import {
  open,
  IptlbError,
  HealthChecker,
  startMetricsServer,
  type Profile,
  type ProfileInput,
} from '../../src/index.js';
import { FakeLegacyKernel, FakeNftKernel } from '../harness/fake-kernel.js';
import { Core } from '../../src/core/core.js';
import type { Executor } from '../../src/engines/engine.js';

const good = { name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9000'] };

test('apply() of a list: a bad profile is named by its index (and its name) in the list, nothing is committed', async () => {
  const k = new FakeLegacyKernel();
  const lb = await open({ stateFile: false, stateRegistry: false }, k);
  try {
    const bad = { name: 'b', source: '127.100.0.2:80', destination: ['127.0.0.1:9000'], protocol: 'icmp' };
    await assert.rejects(lb.apply([good, bad]), (e: IptlbError) => {
      assert.ok(e instanceof IptlbError);
      assert.equal(e.code, 'EINVAL_PROFILE');
      assert.equal(e.field, 'protocol');
      assert.equal(e.message, 'protocol: "icmp" is not one of tcp, udp, sctp (profile [1] of the list, "b")');
      return true;
    });
    // A typo'd key, a hole of a sparse array, a name that is no string: the index alone where there is no name.
    await assert.rejects(lb.apply([good, { ...good, name: 'c', destinations: [] } as never]), {
      message: /^destinations: is not a profile field \(known: .*\) \(profile \[1\] of the list, "c"\)$/,
    });
    // eslint-disable-next-line no-sparse-arrays
    await assert.rejects(lb.apply([good, , good] as never), {
      field: 'profile',
      message: 'profile: must be an object, got undefined (profile [1] of the list)',
    });
    await assert.rejects(lb.apply([{ ...good, name: 7 as never }, good]), {
      field: 'name',
      message: 'name: must be a string, got 7 (profile [0] of the list)',
    });
    // The name is taken only from a plain data property: the error's formatting calls no getter of the caller's.
    const getter = Object.defineProperty({ source: 'x', destination: good.destination }, 'name', {
      enumerable: true,
      get: () => 'g',
    });
    await assert.rejects(lb.apply([good, getter as never]), {
      field: 'source',
      message: 'source: "x" is not an ipv4:port address (no port) (profile [1] of the list)',
    });
    // One profile, alone or in a list of one, keeps the message as it was.
    await assert.rejects(lb.apply({ ...good, protocol: 'icmp' }), {
      message: 'protocol: "icmp" is not one of tcp, udp, sctp',
    });
    await assert.rejects(lb.apply([{ ...good, protocol: 'icmp' }]), {
      message: 'protocol: "icmp" is not one of tcp, udp, sctp',
    });
    assert.equal(k.commits.length, 0, 'nothing reached the kernel');
    assert.deepEqual(await lb.list(), []);
  } finally {
    await lb.close();
  }
});

test('an IptlbError has `field` and `errno` only when it has one (no own property holding undefined)', async () => {
  const bare = new IptlbError('EUSAGE', 'x: y');
  assert.equal(Object.hasOwn(bare, 'field'), false);
  assert.equal(Object.hasOwn(bare, 'errno'), false);
  assert.deepEqual(Object.keys(new IptlbError('EKERNEL', 'refused', { errno: 22 })).sort(), [
    'code',
    'errno',
    'exitCode',
    'name',
  ]);
  const lb = await open({ stateFile: false, stateRegistry: false }, new FakeLegacyKernel());
  await lb.close();
  const closed = await lb.list().catch((e: IptlbError) => e);
  assert.ok(closed instanceof IptlbError);
  assert.equal(closed.field, 'handle');
  assert.equal('errno' in closed, false, 'no errno: the kernel gave none');
});

test('group commit: a refusal that is not a kernel one (here EPERM) rejects every call of its batch, EKERNEL only the culprit', async () => {
  const k = new FakeLegacyKernel();
  const lb = await open({ stateFile: false, stateRegistry: false }, k);
  try {
    const chains = (tx: unknown): string => JSON.stringify(tx);
    k.fail = (tx) =>
      chains(tx).includes('IPTLB_NAT_B')
        ? new IptlbError('EPERM', 'kernel: operation not permitted')
        : chains(tx).includes('IPTLB_NAT_D')
          ? new IptlbError('EKERNEL', 'kernel: refused (errno 22)', { errno: 22 })
          : undefined;
    const p = (name: string, n: number) => ({ ...good, name, source: `127.100.0.${n}:80` });
    // The first call commits alone, at once; the calls made in the same tick behind it are one batch.
    const outcome = (c: Promise<unknown>) =>
      c.then(
        () => 'ok',
        (e: IptlbError) => e.code,
      );
    const first = [outcome(lb.apply(p('a', 1))), outcome(lb.apply(p('b', 2))), outcome(lb.apply(p('c', 3)))];
    assert.deepEqual(await Promise.all(first), ['ok', 'EPERM', 'EPERM'], 'c is refused with b');
    const second = [outcome(lb.apply(p('x', 4))), outcome(lb.apply(p('d', 5))), outcome(lb.apply(p('e', 6)))];
    assert.deepEqual(await Promise.all(second), ['ok', 'EKERNEL', 'ok'], 'e lands without d');
    assert.deepEqual(
      (await lb.list()).map((q) => q.name),
      ['a', 'e', 'x'],
    );
  } finally {
    await lb.close();
  }
});

test("group commit: a batch refused because iptlb's rules are in the other engine (ECONFLICT naming engine) is one transaction, not split call by call", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-engine-'));
  const kernels = { legacy: new FakeLegacyKernel(), nft: new FakeNftKernel() } as unknown as Executor;
  const file = path.join(dir, 'state.db');
  const transact = mock.method(Core.prototype, 'transact');
  try {
    const legacy = await open({ stateFile: file, engine: 'legacy', stateRegistry: false }, kernels);
    await legacy.apply(good);
    await legacy.close();
    const lb = await open({ stateFile: file, engine: 'nft', stateRegistry: false }, kernels);
    try {
      transact.mock.resetCalls();
      const p = (i: number) => ({ ...good, name: `p${i}`, source: `127.100.1.${i}:80` });
      // The first call commits alone, at once; the seven made in the same tick behind it are one batch.
      const calls = Array.from({ length: 8 }, (_, i) => lb.apply(p(i)).catch((e: IptlbError) => e));
      for (const e of await Promise.all(calls)) {
        assert.ok(e instanceof IptlbError);
        assert.equal(e.code, 'ECONFLICT');
        assert.equal(e.field, 'engine');
        assert.match(e.message, /^engine: nft was asked for .*but iptlb's rules are in the legacy engine/);
      }
      // Split in halves down to single calls, the batch of seven was 13 transactions (each taking the lock and
      // asking the engines again) to give every call the error the first gave them all.
      assert.equal(transact.mock.callCount(), 2, 'the lone first call and the batch: one transaction each');
      assert.deepEqual(
        (await lb.list()).map((q) => q.name),
        ['a'],
      );
    } finally {
      await lb.close();
    }
  } finally {
    transact.mock.restore();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("only an object's own properties count: a field inherited from its prototype (a class's, or a polluted Object.prototype) is refused naming it, nothing changed", async (t) => {
  const k = new FakeLegacyKernel();
  const lb = await open({ stateFile: false, stateRegistry: false }, k);
  t.after(() => lb.close());
  const refused = (field: string) => ({
    field,
    message: new RegExp(`^${field.replace('.', '\\.')}: is inherited \\(`),
  });
  // a profile whose fields come from its prototype, plain-looking (the fast path) and with a field of the full path
  await assert.rejects(lb.apply(Object.create(good)), refused('name'));
  await assert.rejects(lb.apply(Object.assign(Object.create({ affinity: 600 }), good)), refused('affinity'));
  await assert.rejects(lb.apply(Object.assign(Object.create({ protocol: 'udp' }), good)), refused('protocol'));
  await assert.rejects(
    lb.apply({ ...good, health: Object.assign(Object.create({ port: 1234 }), { kind: 'tcp' }) }),
    refused('health.port'),
  );
  await assert.rejects(open(Object.create({ engine: 'nft' }), k), {
    code: 'EUSAGE',
    ...refused('engine'),
  });
  assert.throws(() => new HealthChecker(lb, Object.create({ publishMs: 50 })), refused('publishMs'));
  await assert.rejects(
    async () => startMetricsServer(Object.assign(Object.create({ maxConnections: 1 }), { iptlb: lb })),
    refused('maxConnections'),
  );
  assert.deepEqual(await lb.list(), [], 'nothing applied');
  // Object.prototype polluted (as a merge of untrusted JSON with "__proto__" does): every object of the process
  // inherits the field; a profile must not silently get it
  const proto = Object.prototype as Record<string, unknown>;
  for (const [key, value, field] of [
    ['affinity', 600, 'affinity'],
    ['masquerade', true, 'masquerade'],
    ['protocol', 'udp', 'protocol'],
  ] as const) {
    proto[key] = value;
    try {
      await assert.rejects(lb.apply({ ...good }), refused(field));
    } finally {
      delete proto[key];
    }
  }
  proto.port = 1234;
  try {
    await assert.rejects(lb.apply({ ...good, health: { kind: 'tcp' } }), refused('health.port'));
  } finally {
    delete proto.port;
  }
  assert.deepEqual(await lb.list(), [], 'nothing applied');
  assert.equal(k.commits.length, 0, 'nothing committed');
  // not polluted any more: the same profiles apply
  await lb.apply({ ...good, health: { kind: 'tcp' } });
  assert.equal((await lb.list()).length, 1);
});

test('apply() and delete() take readonly lists (a frozen list() result, a `readonly string[]`): typed so in the .d.ts', async () => {
  // Typed `ProfileInput[]` and `string[]`, these calls did not compile against the shipped declarations, while the
  // profiles iptlb returns are frozen and typed readonly: an agent re-applying what list() gave had to copy or cast.
  const lb = await open({ stateFile: false, stateRegistry: false }, new FakeLegacyKernel());
  try {
    const profiles: readonly ProfileInput[] = Object.freeze([good, { ...good, name: 'b', source: '127.100.0.2:80' }]);
    assert.deepEqual(
      (await lb.apply(profiles)).applied.map((p) => p.name),
      ['a', 'b'],
    );
    const listed: readonly Profile[] = Object.freeze(await lb.list());
    assert.equal((await lb.apply(listed)).applied.length, 2);
    const names: readonly string[] = Object.freeze(['a', 'b']);
    assert.deepEqual((await lb.delete(names)).deleted, ['a', 'b']);
    assert.deepEqual(await lb.list(), []);
  } finally {
    await lb.close();
  }
});

test("statusReport() of a handle without a state file: the orphans it lists (others' profiles) do not make inSync false, its own drift does", async () => {
  // They are not its to repair: its sync() leaves them and no drift event names them. inSync stayed false beside any
  // other iptlb user of the host, and an agent calling sync() while !inSync called it for ever.
  for (const kernel of [new FakeLegacyKernel(), new FakeNftKernel()]) {
    const mine = await open({ stateFile: false, stateRegistry: false }, kernel as unknown as Executor);
    const other = await open({ stateFile: false, stateRegistry: false }, kernel as unknown as Executor);
    try {
      const drift: string[] = [];
      mine.on('drift', (reports) => drift.push(...reports.map((r) => r.name)));
      await mine.apply(good);
      await other.apply({ ...good, name: 'b', source: '127.100.0.2:80' });
      const report = await mine.statusReport();
      assert.deepEqual(
        report.profiles.map((r) => r.status),
        ['in-sync', 'orphaned'],
        "the other handle's profile is listed, orphaned",
      );
      assert.equal(report.inSync, true, `${kernel.constructor.name}: ${JSON.stringify(report)}`);
      assert.equal((await mine.sync()).committed, false, 'nothing for its sync() to repair');
      assert.deepEqual(drift, []);
      // Its own profile gone from the kernel (someone flushed the table): that is drift, not in sync.
      kernel.tables.clear();
      const flushed = await mine.statusReport();
      assert.deepEqual(
        flushed.profiles.map((r) => `${r.name}:${r.status}`),
        ['a:missing'],
      );
      assert.equal(flushed.inSync, false);
    } finally {
      await mine.close();
      await other.close();
    }
  }
});
