/**
 * The core over each engine's stateful fake kernel (no root): apply, status, sync after tampering,
 * the nft replacement when the table is not as the state says, undo of a failed second family,
 * migrate between the engines, group commit with a batch the kernel refuses, and `plan` giving
 * exactly what `apply` commits.
 */
import { describe, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Core, upsertChange, deleteChange } from '../../src/core/core.js';
import { IptlbError, open, serializeState } from '../../src/index.js';
import { validateProfile } from '../../src/model/profile.js';
import { FakeLegacyKernel, FakeNftKernel, kernelError, type FakeNatTable } from '../harness/fake-kernel.js';
import { lockStateFile } from '../../src/platform/lock.js';
import { otherStateFiles, registerStateFile } from '../../src/core/registry.js';
import type { EngineName, ProfileInput } from '../../src/model/types.js';
import type { Executor } from '../../src/engines/engine.js';
import { NftEngine } from '../../src/engines/nft/index.js';
import { planNftChange, planNftProfile } from '../../src/engines/nft/plan.js';
import { FileHandle } from '../../src/platform/fsp.js';
import { nftMoveMarkerOf, nftMoveMarkerText } from '../../src/core/engine-record.js';

const web = (n: number, dests = 3, source = `127.100.0.${10 + n}:80`): ProfileInput => ({
  name: `web${n}`,
  source,
  destination: Array.from({ length: dests }, (_, i) => `127.0.0.1:${9001 + i}`),
});

function tmpState(): { file: string; done: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-fake-'));
  return { file: path.join(dir, 'state.db'), done: () => rmSync(dir, { recursive: true, force: true }) };
}

function fakes(): { legacy: FakeLegacyKernel; nft: FakeNftKernel } {
  return { legacy: new FakeLegacyKernel(), nft: new FakeNftKernel() };
}

/** How a refusal names the table of a family on `engine`. */
function tableOf(engine: EngineName, v6: boolean): string {
  return engine === 'legacy' ? `the ${v6 ? 'ip6tables ' : ''}nat table` : `table ${v6 ? 'ip6' : 'ip'} iptlb`;
}

/** A core over both fakes, on engine `engine`, with a state file in a fresh directory (and `opts`). */
function coreOn(engine: EngineName, kernels = fakes(), lines: string[] = [], opts: { stateRegistry?: string } = {}) {
  const s = tmpState();
  const core = new Core(
    { stateFile: s.file, engine, log: (l) => lines.push(l), ...opts },
    kernels as unknown as Record<EngineName, Executor>,
  );
  return { core, kernels, lines, done: s.done, file: s.file };
}

const apply = (core: Core, ...inputs: ProfileInput[]) =>
  core.transact((state) => upsertChange(state, inputs), { run: true });
const statuses = async (core: Core) => Object.fromEntries((await core.status()).map((r) => [r.name, r.status]));

test('API: a sparse list of profiles or names is refused with the field named, nothing changed', async () => {
  const kernels = fakes();
  const lb = await open({ stateFile: false }, kernels.nft as Executor);
  try {
    await assert.rejects(
      lb.apply(new Array(1)),
      (e: IptlbError) => e.code === 'EINVAL_PROFILE' && e.field === 'profile',
    );
    await assert.rejects(lb.delete(new Array(1)), (e: IptlbError) => e.code === 'EINVAL_PROFILE' && e.field === 'name');
    assert.equal(kernels.nft.commits.length, 0);
  } finally {
    await lb.close();
  }
});

test('nft: with the table gone (a process killed after deleting the last profile, before its state write), the next change creates every profile of the state, not only its own', async () => {
  const { core, kernels, done } = coreOn('nft');
  try {
    await apply(core, {
      name: 'a',
      source: '127.100.0.1:80',
      destination: ['127.0.0.1:9046'],
      scheduler: 'round-robin',
    });
    // The delete of the last profile removed the table; its state write never happened.
    kernels.nft.tables.delete('ip');
    assert.deepEqual(await statuses(core), { a: 'missing' });
    await apply(core, { name: 'c', source: '127.100.0.3:80', destination: ['127.0.0.1:9036'] });
    // Before: a's round-robin rule came back in the base chain without its backend element.
    assert.deepEqual(await statuses(core), { a: 'in-sync', c: 'in-sync' });
  } finally {
    done();
  }
});

test('nft: a delete after a move interrupted between its two steps, or after its kernel commit, leaves nothing of the profile in the kernel (CLI path and library handle)', async () => {
  const d = (n: number): string[] => Array.from({ length: n }, (_, i) => `127.0.0.1:${9001 + i}`);
  const A = { name: 'a', source: '127.100.0.1:80' };
  // Each a two-step move (planNftChange gives two transactions): a slot-count change, scheduler and mode switches.
  const moves: [string, ProfileInput, ProfileInput][] = [
    ['slot count 2 -> 3', { ...A, destination: d(2) }, { ...A, destination: d(3) }],
    ['random -> round-robin', { ...A, destination: d(2) }, { ...A, destination: d(2), scheduler: 'round-robin' }],
    ['round-robin -> random', { ...A, destination: d(2), scheduler: 'round-robin' }, { ...A, destination: d(2) }],
    [
      'round-robin 2 -> 3',
      { ...A, destination: d(2), scheduler: 'round-robin' },
      { ...A, destination: d(3), scheduler: 'round-robin' },
    ],
    [
      'round-robin -> affinity',
      { ...A, destination: d(2), scheduler: 'round-robin' },
      { ...A, destination: d(2), affinity: 3 },
    ],
    ['random -> affinity', { ...A, destination: d(2) }, { ...A, destination: d(2), affinity: 3 }],
    ['affinity -> random', { ...A, destination: d(2), affinity: 3 }, { ...A, destination: d(2) }],
    ['client -> server', { ...A, destination: d(2) }, { ...A, destination: d(2), rulesBackend: 'server' }],
  ];
  // Another profile: in the old version's dispatch set, in the new one's, or none (the table goes with a).
  const others: ProfileInput[][] = [
    [],
    [{ name: 'b', source: '127.100.0.2:80', destination: d(2) }],
    [{ name: 'b', source: '127.100.0.2:80', destination: d(3) }],
  ];
  for (const [label, from, to] of moves) {
    const steps = planNftChange(new Map([['a', validateProfile(from)]]), new Map([['a', validateProfile(to)]]), ['a']);
    assert.equal(steps.length, 2, `${label}: a two-step move`);
    for (const other of others) {
      for (const when of ['between the steps', 'after the kernel commit'] as const) {
        for (const via of ['core', 'library'] as const) {
          const what = `${label}, ${when}, with ${other.length ? other[0]!.destination.length : 'no'} other, via ${via}`;
          const { core, kernels, done, file } = coreOn('nft');
          try {
            await apply(core, from, ...other);
            if (when === 'between the steps') {
              // The process was killed after the first step: the kernel holds both versions, the state file the old,
              // and the nft move marker it wrote before is there.
              await killedAfterFirstStep(kernels, file, to);
            } else {
              // Both steps committed, the state write never happened: the marker written before them is left.
              const bytes = readFileSync(file);
              await apply(core, to);
              writeFileSync(file, bytes);
              rmSync(`${file}.journal`, { force: true });
              writeFileSync(nftMoveMarkerOf(file), nftMoveMarkerText([validateProfile(to)]));
            }
            if (via === 'core') await core.transact((state) => deleteChange(state, ['a']), { run: true });
            else {
              const lb = await open({ stateFile: file, engine: 'nft' }, kernels.nft as Executor);
              try {
                await lb.delete('a');
              } finally {
                await lb.close();
              }
            }
            const t = kernels.nft.tables.get('ip');
            const vip = '127.100.0.1 . 80';
            const left = t
              ? [
                  ...[...t.sets].flatMap(([n, els]) => (els.has(vip) ? [`element of ${n}`] : [])),
                  ...[...t.maps].flatMap(([n, m]) =>
                    [...m.keys()].filter((k) => k.startsWith(`${vip} . `)).map((k) => `${n} ${k}`),
                  ),
                  ...[...t.chains].flatMap(([c, rules]) =>
                    rules
                      .filter((r) => r.kind !== 'foreign' && r.kind !== 'dispatch' && r.owner === 'a')
                      .map((r) => `${r.kind} rule in ${c}`),
                  ),
                  ...[...t.affinitySets.keys()].map((n) => `affinity set ${n}`),
                ]
              : [];
            assert.deepEqual(left, [], `${what}: left in the kernel`);
            assert.equal(t !== undefined, other.length > 0, `${what}: the table stays only with another profile`);
            assert.deepEqual(await statuses(core), other.length ? { b: 'in-sync' } : {}, what);
            assert.ok(!(await core.readState()).has('a'), `${what}: the state file holds a`);
          } finally {
            done();
          }
        }
      }
    }
  }
});

/**
 * A core over the same fakes whose nft executor commits the first transaction of a two-step change and then "dies":
 * its change throws, the state file is not written, the lock is let go, and the marker it wrote stays (a process
 * killed between the two transactions of a move leaves exactly this).
 */
async function killedAfterFirstStep(
  kernels: ReturnType<typeof fakes>,
  file: string,
  ...inputs: ProfileInput[]
): Promise<void> {
  await killedAtCommit(kernels, file, 2, ...inputs);
}

/** As {@link killedAfterFirstStep}, the process dying at its `at`-th kernel transaction (the ones before committed). */
async function killedAtCommit(
  kernels: ReturnType<typeof fakes>,
  file: string,
  at: number,
  ...inputs: ProfileInput[]
): Promise<void> {
  let commits = 0;
  let marker: string | null | undefined;
  const dying = new Proxy(kernels.nft, {
    get(t, k) {
      if (k === 'commit')
        return async (tx: Parameters<FakeNftKernel['commit']>[0]) => {
          // Dead from then on: nothing after it reaches the kernel (not even an undo of an earlier family), and the
          // marker stays as it was then (see below).
          if (++commits === at)
            marker = existsSync(`${file}.nft-move`) ? readFileSync(`${file}.nft-move`, 'utf8') : null;
          if (commits >= at) throw new Error('killed');
          return t.commit(tx);
        };
      const v = Reflect.get(t, k) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  const dead = new Core({ stateFile: file, engine: 'nft', log: () => {} }, {
    legacy: kernels.legacy,
    nft: dying,
  } as unknown as Record<EngineName, Executor>);
  await assert.rejects(apply(dead, ...inputs), /killed/);
  assert.ok(commits >= at, `killed at transaction ${at}`);
  // What the killed process left (the code after the kill here, an undo, may have written it again).
  if (marker === null) rmSync(`${file}.nft-move`, { force: true });
  else writeFileSync(`${file}.nft-move`, marker!);
}

/** What table `<nf> iptlb` of the fake holds at `vip` (`ip . port`): dispatch elements, backends, rules of profiles. */
function heldAt(kernels: ReturnType<typeof fakes>, vip: string, nf: 'ip' | 'ip6' = 'ip'): string[] {
  const t = kernels.nft.tables.get(nf);
  if (!t) return [];
  return [
    ...[...t.sets].flatMap(([n, els]) => (els.has(vip) ? [`element of ${n}`] : [])),
    ...[...t.maps].flatMap(([n, m]) => [...m.keys()].filter((k) => k.startsWith(`${vip} . `)).map((k) => `${n} ${k}`)),
    ...[...t.chains].flatMap(([c, rules]) =>
      rules.flatMap((r) =>
        r.kind !== 'foreign' && r.kind !== 'dispatch' && `${r.vip.ip} . ${r.vip.port}` === vip
          ? [`${r.kind} rule of ${r.owner} in ${c}`]
          : [],
      ),
    ),
  ];
}

test('nft: a reset after a move interrupted between its two steps leaves one version of the profile, in sync (CLI path and library handle, IPv4 and IPv6)', async () => {
  for (const v6 of [false, true]) {
    const d = (n: number, base = 9001): string[] =>
      Array.from({ length: n }, (_, i) => (v6 ? `[2001:db8::1]:${base + i}` : `127.0.0.1:${base + i}`));
    const A = { name: 'a', source: v6 ? '[2001:db8::a]:80' : '127.100.0.1:80' };
    const vip = v6 ? '2001:db8::a . 80' : '127.100.0.1 . 80';
    const nf = v6 ? 'ip6' : 'ip';
    // The moves of the delete test above: a slot-count change, scheduler and mode switches.
    const moves: [string, ProfileInput, ProfileInput][] = [
      ['slot count 2 -> 3', { ...A, destination: d(2) }, { ...A, destination: d(3) }],
      ['random -> round-robin', { ...A, destination: d(2) }, { ...A, destination: d(2), scheduler: 'round-robin' }],
      ['round-robin -> random', { ...A, destination: d(2), scheduler: 'round-robin' }, { ...A, destination: d(2) }],
      ['random -> affinity', { ...A, destination: d(2) }, { ...A, destination: d(2), affinity: 3 }],
      ['affinity -> random', { ...A, destination: d(2), affinity: 3 }, { ...A, destination: d(2) }],
      ['client -> server', { ...A, destination: d(2) }, { ...A, destination: d(2), rulesBackend: 'server' }],
    ];
    const other: ProfileInput = {
      name: 'b',
      source: v6 ? '[2001:db8::b]:80' : '127.100.0.2:80',
      destination: d(2),
    };
    for (const [label, from, to] of moves) {
      // The reset: the old version's shape with other destinations, or the new version's.
      for (const [shape, reset] of [
        ['as the old version', { ...from, destination: d(from.destination.length, 9101) }],
        ['as the new version', { ...to, destination: d(to.destination.length, 9101) }],
      ] as const) {
        for (const via of ['core', 'library'] as const) {
          const what = `${v6 ? 'IPv6' : 'IPv4'}, ${label}, reset ${shape}, via ${via}`;
          const { core, kernels, done, file } = coreOn('nft');
          try {
            await apply(core, from, other);
            await killedAfterFirstStep(kernels, file, to);
            if (via === 'core') await apply(core, reset);
            else {
              const lb = await open({ stateFile: file, engine: 'nft' }, kernels.nft as Executor);
              try {
                await lb.apply(reset);
              } finally {
                await lb.close();
              }
            }
            assert.deepEqual(await statuses(core), { a: 'in-sync', b: 'in-sync' }, what);
            // Exactly one version: the address in one dispatch set or one rule, and the reset's backends only.
            const held = heldAt(kernels, vip, nf);
            const plan = planNftProfile(validateProfile(reset));
            const count = (what: (h: string) => boolean) => held.filter(what).length;
            const all = `${what}: ${held.join(', ')}`;
            assert.equal(
              count((h) => h.startsWith('element of')),
              plan.set ? 1 : 0,
              all,
            );
            assert.equal(
              count((h) => h.includes(' rule of ')),
              plan.rules.length,
              all,
            );
            assert.equal(
              count((h) => h.startsWith('be_')),
              plan.backends.length,
              all,
            );
            assert.ok(!existsSync(`${file}.nft-move`), `${what}: the marker is removed`);
          } finally {
            done();
          }
        }
      }
    }
  }
});

test('nft: plan after a move interrupted between its two steps gives what the next change commits (the table replaced, also for a change of the other family), names the marker, and changes nothing', async () => {
  const d4 = (n: number, base = 9001): string[] => Array.from({ length: n }, (_, i) => `127.0.0.1:${base + i}`);
  const a = (dests: string[]): ProfileInput => ({ name: 'a', source: '127.100.0.1:80', destination: dests });
  const b: ProfileInput = { name: 'b', source: '127.100.0.2:80', destination: d4(2) };
  const e: ProfileInput = { name: 'e', source: '[2001:db8::e]:80', destination: ['[2001:db8::1]:9001'] };
  const changes: [string, ProfileInput][] = [
    ['a reset of a', a(d4(2, 9101))],
    ['a change of the other family only', { ...e, destination: ['[2001:db8::1]:9002'] }],
  ];
  for (const [what, change] of changes) {
    const { core, kernels, done, file } = coreOn('nft');
    try {
      await apply(core, a(d4(2)), b, e);
      await killedAfterFirstStep(kernels, file, a(d4(3)));
      const marker = readFileSync(`${file}.nft-move`, 'utf8');
      const bytes = readFileSync(file);
      const tables = JSON.stringify(
        [...kernels.nft.tables.keys()].map((nf) => heldAt(kernels, '127.100.0.1 . 80', nf)),
      );
      const n = kernels.nft.commits.length;
      const planned = await core.plan((state) => upsertChange(state, [change]));
      // Read-only: the kernel, the state file and the marker as they were.
      assert.equal(kernels.nft.commits.length, n, `${what}: plan committed`);
      assert.equal(readFileSync(`${file}.nft-move`, 'utf8'), marker, `${what}: the marker is kept`);
      assert.deepEqual(readFileSync(file), bytes, `${what}: the state file is unchanged`);
      assert.equal(
        JSON.stringify([...kernels.nft.tables.keys()].map((nf) => heldAt(kernels, '127.100.0.1 . 80', nf))),
        tables,
      );
      await apply(core, change);
      assert.deepEqual(
        kernels.nft.commits.slice(n),
        planned.plans.flatMap((p) => p.steps),
        `${what}: plan gives what the change commits`,
      );
      const ip = planned.plans.find((p) => p.family === 'ipv4');
      assert.match(ip?.note ?? '', /holds more of profile a than the state file does/, what);
      assert.deepEqual(planned.marker, { file: `${file}.nft-move`, profiles: ['a'] }, what);
      assert.deepEqual(await statuses(core), { a: 'in-sync', b: 'in-sync', e: 'in-sync' }, what);
      assert.ok(!existsSync(`${file}.nft-move`), `${what}: the change removes the marker`);
      // With no marker, plan names none.
      assert.equal((await core.plan((state) => upsertChange(state, [b]))).marker, undefined);
    } finally {
      done();
    }
  }
});

test("nft: plan's line for a move marker says the table is read only when the change reads it (a marker naming no profile: the change reads nothing for it)", async () => {
  const { moveMarkerNote } = await import('../../src/cli/commands/plan.js');
  const b: ProfileInput = { name: 'b', source: '127.100.0.2:80', destination: ['127.0.0.1:9001'] };
  const markers: [string, string][] = [
    ['a torn line', '{"name":"b","sou\n'],
    [
      'a version of b',
      nftMoveMarkerText([validateProfile({ ...b, destination: ['127.0.0.1:9001', '127.0.0.1:9003'] })]),
    ],
  ];
  for (const [what, text] of markers) {
    const { core, kernels, done, file } = coreOn('nft');
    try {
      await apply(core, b);
      writeFileSync(nftMoveMarkerOf(file), text);
      const change = { ...b, destination: ['127.0.0.1:9002'] };
      const planned = await core.plan((state) => upsertChange(state, [change]));
      assert.ok(planned.marker, what);
      const note = moveMarkerNote(
        planned.marker,
        planned.plans.some((p) => p.steps.length > 0),
      );
      const reads = kernels.nft.asked.reads;
      await apply(core, change);
      const read = kernels.nft.asked.reads > reads;
      assert.equal(
        /reads the table/.test(note),
        read,
        `${what}: the change ${read ? 'read' : 'did not read'} the table: ${note}`,
      );
      assert.equal(/reads nothing for it/.test(note), !read, `${what}: ${note}`);
      assert.ok(!existsSync(nftMoveMarkerOf(file)), `${what}: the change removes the marker`);
    } finally {
      done();
    }
  }
});

test('nft: a sync after a move interrupted between its two steps removes the move marker once the kernel matches (the next change reads no table), and keeps it when its commit fails', async () => {
  const d4 = (n: number, base = 9001): string[] => Array.from({ length: n }, (_, i) => `127.0.0.1:${base + i}`);
  const a = (dests: string[]): ProfileInput => ({ name: 'a', source: '127.100.0.1:80', destination: dests });
  const b: ProfileInput = { name: 'b', source: '127.100.0.2:80', destination: d4(2) };
  for (const to of ['the same address', 'another address'] as const) {
    const moved = to === 'the same address' ? a(d4(3)) : { ...a(d4(2)), source: '127.100.0.5:80' };
    const { core, kernels, lines, done, file } = coreOn('nft');
    try {
      await apply(core, a(d4(2)), b);
      await killedAfterFirstStep(kernels, file, moved);
      assert.ok(existsSync(`${file}.nft-move`), `${to}: the marker is left`);
      assert.notDeepEqual(
        (await core.status()).filter((r) => r.status !== 'in-sync').map((r) => r.status),
        [],
        `${to}: status finds the leftover`,
      );
      // A sync the kernel refuses has not made the kernel match: the marker stays.
      kernels.nft.fail = () => kernelError(1, 'refused');
      await assert.rejects(core.sync());
      kernels.nft.fail = undefined;
      assert.ok(existsSync(`${file}.nft-move`), `${to}: a failed sync keeps the marker`);
      await core.sync();
      assert.deepEqual(await statuses(core), { a: 'in-sync', b: 'in-sync' }, to);
      assert.ok(!existsSync(`${file}.nft-move`), `${to}: the sync removes the marker`);
      assert.ok(
        lines.some((l) => l.startsWith(`removed the nft move marker ${file}.nft-move`)),
        `${to}: said: ${lines.join('\n')}`,
      );
      // The next change (one step, elements only) reads no table: nothing to look for.
      const reads = kernels.nft.asked.reads;
      await apply(core, { ...b, destination: d4(2, 9101) });
      assert.equal(kernels.nft.asked.reads, reads, `${to}: the change after the sync read the table`);
      // A sync with nothing to do and no marker says nothing of one.
      lines.length = 0;
      await core.sync();
      assert.ok(!lines.some((l) => l.includes('move marker')), lines.join('\n'));
    } finally {
      done();
    }
  }
});

test('nft: a move to another address interrupted between its two steps leaves nothing at the new address after a delete or a reset (a profile without rules of its own, and one with)', async () => {
  const d = (n: number, base = 9001): string[] => Array.from({ length: n }, (_, i) => `127.0.0.1:${base + i}`);
  const X = '127.100.0.1:80';
  const Y = '127.100.0.5:80';
  const other: ProfileInput = { name: 'b', source: '127.100.0.2:80', destination: d(2) };
  const moves: [string, ProfileInput, ProfileInput][] = [
    ['same set', { name: 'a', source: X, destination: d(2) }, { name: 'a', source: Y, destination: d(2, 9101) }],
    ['another set', { name: 'a', source: X, destination: d(2) }, { name: 'a', source: Y, destination: d(3) }],
    [
      'round-robin',
      { name: 'a', source: X, destination: d(2), scheduler: 'round-robin' },
      { name: 'a', source: Y, destination: d(2), scheduler: 'round-robin' },
    ],
  ];
  for (const [label, from, to] of moves) {
    for (const then of ['delete', 'reset at the old address', 'reset at the new address'] as const) {
      for (const others of [[other], []]) {
        const what = `${label}, then ${then}, ${others.length ? 'with' : 'without'} another profile`;
        const { core, kernels, done, file } = coreOn('nft');
        try {
          await apply(core, from, ...others);
          await killedAfterFirstStep(kernels, file, to);
          assert.ok(heldAt(kernels, '127.100.0.5 . 80').length > 0, `${what}: the first step put a at Y`);
          if (then === 'delete') await core.transact((state) => deleteChange(state, ['a']), { run: true });
          else await apply(core, { ...(then === 'reset at the old address' ? from : to), destination: d(2, 9201) });
          const expect: Record<string, string> = others.length ? { b: 'in-sync' } : {};
          if (then !== 'delete') expect.a = 'in-sync';
          assert.deepEqual(await statuses(core), expect, what);
          if (then !== 'reset at the new address')
            assert.deepEqual(heldAt(kernels, '127.100.0.5 . 80'), [], `${what}: left at the new address`);
          if (then !== 'reset at the old address')
            assert.deepEqual(heldAt(kernels, '127.100.0.1 . 80'), [], `${what}: left at the old address`);
          assert.ok(!existsSync(`${file}.nft-move`), `${what}: the marker is removed`);
        } finally {
          done();
        }
      }
    }
  }
});

test('nft: a change committed in two transactions writes the move marker before the first and removes it once recorded; a change in one writes none', async () => {
  const { core, kernels, done, file } = coreOn('nft');
  try {
    const seen: boolean[] = [];
    const commit = kernels.nft.commit.bind(kernels.nft);
    kernels.nft.commit = async (tx) => {
      seen.push(existsSync(`${file}.nft-move`));
      return commit(tx);
    };
    await apply(core, { name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] });
    await apply(core, { name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9003'] });
    assert.deepEqual(seen, [false, false], 'one-step changes: no marker');
    await apply(core, {
      name: 'a',
      source: '127.100.0.1:80',
      destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
    });
    assert.deepEqual(seen.slice(2), [true, true], 'the move: marked during both transactions');
    assert.ok(!existsSync(`${file}.nft-move`), 'removed once recorded');
  } finally {
    done();
  }
});

test('nft: a change moving a profile to another address in each family, killed in the second family, leaves the marker naming both: a delete then leaves nothing at either new address', async () => {
  const d4 = (...ports: number[]) => ports.map((p) => `127.0.0.1:${p}`);
  const d6 = (...ports: number[]) => ports.map((p) => `[2001:db8::1]:${p}`);
  const a = (source: string): ProfileInput => ({ name: 'a', source, destination: d4(9001, 9002) });
  const e = (source: string): ProfileInput => ({ name: 'e', source, destination: d6(9001, 9002) });
  const other: ProfileInput = { name: 'b', source: '127.100.0.2:80', destination: d4(9001, 9002) };
  const { core, kernels, done, file } = coreOn('nft');
  try {
    await apply(core, a('127.100.0.1:80'), e('[2001:db8::a]:80'), other);
    // Both moves are two-step: table ip's two transactions, then table ip6's first; killed at ip6's second.
    await killedAtCommit(kernels, file, 4, a('127.100.0.5:80'), e('[2001:db8::e]:80'));
    assert.notDeepEqual(heldAt(kernels, '127.100.0.5 . 80'), [], 'the IPv4 move went through');
    const marker = readFileSync(`${file}.nft-move`, 'utf8');
    assert.match(marker, /"127\.100\.0\.5:80"/, `the marker names the IPv4 move too: ${marker}`);
    await core.transact((state) => deleteChange(state, ['a', 'e']), { run: true });
    assert.deepEqual(heldAt(kernels, '127.100.0.5 . 80'), [], 'left at the IPv4 new address');
    assert.deepEqual(heldAt(kernels, '2001:db8::e . 80', 'ip6'), [], 'left at the IPv6 new address');
    assert.deepEqual(await statuses(core), { b: 'in-sync' });
    assert.ok(!existsSync(`${file}.nft-move`), 'the marker is removed');
  } finally {
    done();
  }
});

test("nft: a move marker naming an address another state file's profile holds now (the move never reached the kernel) does not make the next change drop that profile", async () => {
  const kernels = fakes();
  const reg = mkdtempSync(path.join(tmpdir(), 'iptlb-reg-'));
  const A = coreOn('nft', kernels, [], { stateRegistry: reg });
  const B = coreOn('nft', kernels, [], { stateRegistry: reg });
  try {
    await apply(A.core, { name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] });
    // A's process killed after writing the marker of a move of a to 127.100.0.5, before its first transaction (or
    // refused by the kernel there, or a sync since): the kernel never held that version.
    const moved = validateProfile({
      name: 'a',
      source: '127.100.0.5:80',
      destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
    });
    writeFileSync(`${A.file}.nft-move`, JSON.stringify(moved) + '\n');
    // Another state file takes that address, then A changes anything.
    await apply(B.core, { name: 'z', source: '127.100.0.5:80', destination: ['127.0.0.1:9005'] });
    await apply(A.core, { name: 'c', source: '127.100.0.3:80', destination: ['127.0.0.1:9003'] });
    assert.deepEqual(await statuses(B.core), { z: 'in-sync' }, "B's profile is still in the kernel");
    assert.notDeepEqual(heldAt(kernels, '127.100.0.5 . 80'), [], 'z still served');
    assert.deepEqual(await statuses(A.core), { a: 'in-sync', c: 'in-sync' });
    assert.ok(!existsSync(`${A.file}.nft-move`), 'the marker is removed');
  } finally {
    A.done();
    B.done();
    rmSync(reg, { recursive: true, force: true });
  }
});

test('nft: a change that replaces both tables ip and ip6 (profiles with rules of their own the tables lack) commits both: the second table is not refused for the generation the first one moved', async () => {
  const { core, kernels, done } = coreOn('nft');
  try {
    const r4: ProfileInput = {
      name: 'r4',
      source: '127.100.0.3:80',
      destination: ['127.0.0.1:9003', '127.0.0.1:9004'],
      scheduler: 'round-robin',
    };
    const r6: ProfileInput = {
      name: 'r6',
      source: '[2001:db8::3]:80',
      destination: ['[2001:db8::1]:9003', '[2001:db8::1]:9004'],
      scheduler: 'round-robin',
    };
    await apply(
      core,
      { name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] },
      { name: 'b', source: '[2001:db8::1]:80', destination: ['[2001:db8::1]:9001'] },
    );
    // Written without -run: both tables exist, without them.
    await core.transact((state) => upsertChange(state, [r4, r6]), { run: false });
    assert.deepEqual(await statuses(core), { a: 'in-sync', b: 'in-sync', r4: 'missing', r6: 'missing' });
    const before = kernels.nft.commits.length;
    await apply(core, r4, r6);
    assert.deepEqual(await statuses(core), { a: 'in-sync', b: 'in-sync', r4: 'in-sync', r6: 'in-sync' });
    assert.ok(kernels.nft.commits.length >= before + 2);
  } finally {
    done();
  }
});

test('nft: profiles written to the state file without -run are committed when applied unchanged with -run (a table without them, or none)', async () => {
  for (const tableFirst of [false, true]) {
    const { core, done, lines } = coreOn('nft');
    try {
      if (tableFirst) await apply(core, { name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] });
      const stateOnly: ProfileInput[] = [
        { name: 'p', source: '127.100.0.2:80', destination: ['127.0.0.1:9002'] },
        {
          name: 'r',
          source: '127.100.0.3:80',
          destination: ['127.0.0.1:9003', '127.0.0.1:9004'],
          scheduler: 'round-robin',
        },
        { name: 'l', source: '127.100.0.4:80', destination: ['127.0.0.1:9005'], logEnabled: true },
      ];
      await core.transact((state) => upsertChange(state, stateOnly), { run: false });
      assert.deepEqual(await statuses(core), {
        ...(tableFirst ? { a: 'in-sync' } : {}),
        p: 'missing',
        r: 'missing',
        l: 'missing',
      });
      // The same profiles again, now with -run: before, an empty plan was committed and reported.
      lines.length = 0;
      await apply(core, stateOnly[0]);
      assert.equal((await statuses(core)).p, 'in-sync', `p, with a table first: ${tableFirst}`);
      // With the table and p's dispatch set there, p's elements were added again in place (no read,
      // no replacement); without a table the batch failed on its first element and the table was made.
      const replaced = lines.filter((l) => /replacing it/.test(l));
      if (tableFirst) assert.deepEqual(replaced, []);
      else {
        // No table at all (a boot re-applying the state file): said as such, not as drift.
        const created = lines.filter((l) => /creating it/.test(l));
        assert.match(
          created.join('\n'),
          /^table ip iptlb does not exist yet \(after a reboot, or deleted\); creating it/,
        );
        assert.doesNotMatch(lines.join('\n'), /not as the state says/);
      }
      await apply(core, ...stateOnly);
      assert.deepEqual(await statuses(core), {
        ...(tableFirst ? { a: 'in-sync' } : {}),
        p: 'in-sync',
        r: 'in-sync',
        l: 'in-sync',
      });
    } finally {
      done();
    }
  }
  // A profile with rules of its own (logging here), alone in the state without -run beside one that
  // is in the kernel: it is looked up in a read of the table, and the table replaced.
  const { core, done } = coreOn('nft');
  try {
    await apply(core, { name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] });
    const l: ProfileInput = { name: 'l', source: '127.100.0.4:80', destination: ['127.0.0.1:9005'], logEnabled: true };
    await core.transact((state) => upsertChange(state, [l]), { run: false });
    await apply(core, l);
    assert.deepEqual(await statuses(core), { a: 'in-sync', l: 'in-sync' });
  } finally {
    done();
  }
});

test("legacy: chains named IPTLB_ that are not a profile's (IPTLB_NAT_ and its suffix) are someone else's: never orphans, never removed", async () => {
  const { core, kernels, done } = coreOn('legacy');
  try {
    await apply(core, { name: 'web', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] });
    const t = kernels.legacy.tables.get('ipv4')!;
    const rule = t.chains.get('IPTLB_NAT_WEB')![0];
    // Another tool's chains with the same prefix, and the chain of a profile whose process died
    // before its state write (an orphan: iptlb's by its name).
    for (const name of ['IPTLB_X', 'IPTLB_OUTPUT2', 'IPTLB_nat_lower', 'IPTLB_NAT_OLD']) t.chains.set(name, [rule]);
    assert.deepEqual(await statuses(core), { web: 'in-sync', IPTLB_NAT_OLD: 'orphaned' });
    await core.sync();
    const after = kernels.legacy.tables.get('ipv4')!;
    assert.deepEqual(
      [...after.chains.keys()].sort(),
      ['IPTLB_NAT_WEB', 'IPTLB_OUTPUT2', 'IPTLB_X', 'IPTLB_nat_lower'],
      'sync removed the orphan only',
    );
    assert.deepEqual(await statuses(core), { web: 'in-sync' });
  } finally {
    done();
  }
});

test("nft: another tool's sets, maps and chains in table ip/ip6 iptlb survive sync after drift, the rebuild of a change, migrate --to nft and the last delete; status lists them apart, not as drift", async () => {
  const kernels = fakes();
  const lines: string[] = [];
  const { core: before, done, file } = coreOn('legacy', kernels, lines);
  // After the move, the engine the record beside the state file names (auto).
  const core = new Core(
    { stateFile: file, log: (l) => lines.push(l) },
    kernels as unknown as Record<EngineName, Executor>,
  );
  const theirs = ['their_set', 'their_map', 'their_chain'];
  try {
    await apply(before, web(1), { name: 'v6', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:9001'] });
    // The other tool made its objects in the nft tables before iptlb moved there.
    await kernels.nft.commit({ family: 'ip', table: 'iptlb', ops: [{ op: 'addTable' }] });
    await kernels.nft.commit({ family: 'ip6', table: 'iptlb', ops: [{ op: 'addTable' }] });
    kernels.nft.tables.get('ip')!.foreign.push(...theirs);
    kernels.nft.tables.get('ip6')!.foreign.push('their6');
    await before.migrate('nft');
    assert.deepEqual(kernels.nft.tables.get('ip')!.foreign, theirs, 'migrate --to nft kept them');
    assert.deepEqual(kernels.nft.tables.get('ip6')!.foreign, ['their6']);
    assert.ok(
      kernels.nft.commits.every((tx) => !tx.ops.some((o) => o.op === 'deleteTable')),
      'no table deleted',
    );
    // Not drift, not orphans: listed apart.
    const report = await core.statusReport();
    assert.equal(report.inSync, true);
    assert.deepEqual(
      report.profiles.map((r) => [r.name, r.status]),
      [
        ['web1', 'in-sync'],
        ['v6', 'in-sync'],
      ],
    );
    assert.deepEqual(report.foreignObjects, [
      { where: 'table ip iptlb', objects: theirs },
      { where: 'table ip6 iptlb', objects: ['their6'] },
    ]);
    // In step with them there: a sync changes nothing.
    const commits = kernels.nft.commits.length;
    assert.equal((await core.sync()).committed, false);
    assert.equal(kernels.nft.commits.length, commits);
    // Drift (someone flushed iptlb's chain and emptied its set): sync repairs iptlb's objects only.
    const t = kernels.nft.tables.get('ip')!;
    t.chains.set('output', []);
    for (const s of t.sets.values()) s.clear();
    assert.deepEqual(await statuses(core), { v6: 'in-sync', web1: 'modified' });
    assert.equal((await core.sync()).committed, true);
    assert.deepEqual(kernels.nft.tables.get('ip')!.foreign, theirs, 'sync kept them');
    assert.deepEqual(await statuses(core), { v6: 'in-sync', web1: 'in-sync' });
    // A change that finds the table not as planned (the dispatch set deleted) replaces iptlb's content: they stay.
    const u = kernels.nft.tables.get('ip')!;
    u.chains.set('output', []);
    u.sets.clear();
    await apply(core, web(2));
    assert.ok(
      lines.some((l) => /is not as the state says .*replacing it/.test(l)),
      lines.join('\n'),
    );
    assert.deepEqual(kernels.nft.tables.get('ip')!.foreign, theirs, 'the rebuild kept them');
    assert.deepEqual(await statuses(core), { v6: 'in-sync', web1: 'in-sync', web2: 'in-sync' });
    // Orphans of iptlb's only, with no profile of the family left: the sync removes iptlb's content, not the table.
    await core.transact((state) => deleteChange(state, ['v6']), { run: true });
    assert.deepEqual(kernels.nft.tables.get('ip6')!.foreign, ['their6'], 'the last delete kept them');
    await new Core({ stateFile: false }, kernels.nft as Executor).transact(
      (state) =>
        upsertChange(state, [{ name: 'stray6', source: '[2001:db8::11]:80', destination: ['[2001:db8::1]:1'] }]),
      { run: true },
    );
    assert.deepEqual(await statuses(core), { web1: 'in-sync', web2: 'in-sync', '[2001:db8::11]:80': 'orphaned' });
    assert.equal((await core.sync()).committed, true);
    assert.deepEqual(kernels.nft.tables.get('ip6')!.foreign, ['their6'], 'the sync of no profile kept them');
    assert.deepEqual(await statuses(core), { web1: 'in-sync', web2: 'in-sync' });
  } finally {
    done();
  }
});

test('nft: sync, and migrate --to nft, with a rule iptlb did not write in a base chain are refused (it would be flushed), nothing changed; status reports it', async () => {
  {
    const { core, kernels, done } = coreOn('nft');
    try {
      await apply(core, web(1));
      const t = kernels.nft.tables.get('ip')!;
      t.chains.get('output')!.unshift({ kind: 'foreign', text: 'ip daddr 10.0.0.1 accept' });
      for (const s of t.sets.values()) s.clear(); // drift too
      const before = JSON.stringify([...kernels.nft.tables.get('ip')!.chains]);
      const commits = kernels.nft.commits.length;
      const reports = await core.status();
      const rule = reports.find((r) => r.name.startsWith('foreign:output:'));
      assert.equal(rule?.status, 'orphaned');
      assert.match(rule.detail!, /iptlb does not remove it.*\(`nft -a list chain ip iptlb output` shows its handle\)$/);
      await assert.rejects(
        core.sync(),
        (e: IptlbError) =>
          e.code === 'ECONFLICT' &&
          /^table ip iptlb holds rules iptlb did not write in its base chain output; .*delete those rules first \(`nft -a list chain ip iptlb output` shows each rule's handle; `nft delete rule ip iptlb output handle <N>` deletes one\)$/.test(
            e.message,
          ),
      );
      assert.equal(kernels.nft.commits.length, commits, 'nothing committed');
      assert.equal(JSON.stringify([...kernels.nft.tables.get('ip')!.chains]), before);
    } finally {
      done();
    }
  }
  {
    const kernels = fakes();
    const { core, done, file } = coreOn('legacy', kernels);
    try {
      await apply(core, web(1));
      await kernels.nft.commit({
        family: 'ip',
        table: 'iptlb',
        ops: [{ op: 'addTable' }, { op: 'addBaseChain', name: 'output' }],
      });
      kernels.nft.tables.get('ip')!.chains.get('output')!.push({ kind: 'foreign', text: 'ip daddr 10.0.0.1 accept' });
      const legacy = JSON.stringify([...kernels.legacy.tables]);
      const commits = kernels.nft.commits.length;
      await assert.rejects(core.migrate('nft'), (e: IptlbError) => e.code === 'ECONFLICT');
      assert.equal(kernels.nft.commits.length, commits, 'nothing installed');
      assert.equal(JSON.stringify([...kernels.legacy.tables]), legacy, 'nothing removed');
      assert.equal(existsSync(`${file}.engine.moving`), false, 'no move marker left');
    } finally {
      done();
    }
  }
});

test('nft: a change that would rewrite a base chain holding a rule iptlb did not write is refused, nothing changed', async () => {
  const { core, kernels, done } = coreOn('nft');
  try {
    await apply(core, { name: 'web', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] });
    kernels.nft.tables.get('ip')!.chains.get('output')!.unshift({ kind: 'foreign', text: 'ip daddr 10.0.0.1 accept' });
    const before = JSON.stringify([...kernels.nft.tables.get('ip')!.chains]);
    const commits = kernels.nft.commits.length;
    // Three destinations: a dispatch set of its own, so a new rule in chain output (a rewrite).
    await assert.rejects(
      apply(core, {
        name: 'web',
        source: '127.100.0.1:80',
        destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
      }),
      (e: IptlbError) =>
        e.code === 'ECONFLICT' &&
        /holds rules iptlb did not write in its base chain output; this change rewrites it, which would remove them: delete those rules first \(`nft -a list chain ip iptlb output` shows/.test(
          e.message,
        ),
    );
    assert.equal(kernels.nft.commits.length, commits, 'nothing committed');
    assert.equal(JSON.stringify([...kernels.nft.tables.get('ip')!.chains]), before);
    // A change of elements only does not rewrite the chain: it goes through, the rule stays.
    await apply(core, { name: 'web', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9004'] });
    assert.equal(kernels.nft.tables.get('ip')!.chains.get('output')![0].kind, 'foreign');
  } finally {
    done();
  }
});

test('nft: a change of both families that the engine refuses for one commits nothing in the other; in a batch, only that call is refused', async () => {
  const { core, kernels, done } = coreOn('nft');
  try {
    await apply(
      core,
      { name: 'foo', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] },
      { name: 'bar6', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:9001'] },
    );
    // Another tool's rule in ip6 iptlb's chain output: deleting bar6 (the last IPv6 profile) is refused.
    kernels.nft.tables.get('ip6')!.chains.get('output')!.unshift({ kind: 'foreign', text: 'ip6 daddr 2001:db8::99' });
    const commits = kernels.nft.commits.length;
    await assert.rejects(
      core.transact((state) => deleteChange(state, ['foo', 'bar6']), { run: true }),
      (e: IptlbError) => e.code === 'ECONFLICT',
    );
    assert.equal(kernels.nft.commits.length, commits, 'no commit and no undo: table ip iptlb was never touched');
    // The same through the API's group commit: four calls in flight, the refused one alone fails.
    kernels.nft.tables.get('ip6')!.chains.get('output')!.shift(); // the tool's rule goes for a while
    const lb = await open({ stateFile: false }, kernels.nft as Executor);
    try {
      await lb.apply({ name: 'v6', source: '[2001:db8::11]:80', destination: ['[2001:db8::1]:9002'] });
      kernels.nft.tables.get('ip6')!.chains.get('output')!.unshift({ kind: 'foreign', text: 'ip6 daddr 2001:db8::98' });
      const calls = [
        lb.apply({ name: 'a', source: '127.100.0.21:80', destination: ['127.0.0.1:9001'] }),
        lb.apply({ name: 'b', source: '127.100.0.22:80', destination: ['127.0.0.1:9001'] }),
        lb.delete('v6'),
        lb.apply({ name: 'c', source: '127.100.0.23:80', destination: ['127.0.0.1:9001'] }),
      ];
      const settled = await Promise.allSettled(calls);
      assert.deepEqual(
        settled.map((x) => (x.status === 'fulfilled' ? 'ok' : (x.reason as IptlbError).code)),
        ['ok', 'ok', 'ECONFLICT', 'ok'],
      );
    } finally {
      await lb.close();
    }
  } finally {
    done();
  }
});

test('nft: profiles that swap addresses, or one that takes the address another leaves, in one commit keep their elements', async () => {
  const P = (name: string, vip: string, dest = 9001): ProfileInput => ({
    name,
    source: `${vip}:80`,
    destination: [`127.0.0.1:${dest}`],
  });
  for (const stateFile of [true, false]) {
    const kernels = fakes();
    const handle = stateFile ? coreOn('nft', kernels) : undefined;
    const lb = handle ? undefined : await open({ stateFile: false }, kernels.nft as Executor);
    const run = (...inputs: ProfileInput[]) => (handle ? apply(handle.core, ...inputs) : lb!.apply(inputs));
    const check = async (want: Record<string, string>) => {
      const reports = handle ? await handle.core.status() : await lb!.status();
      assert.deepEqual(Object.fromEntries(reports.map((r) => [r.name, r.status])), want, `state file: ${stateFile}`);
    };
    try {
      await run(P('s1', '127.105.0.7'), P('s2', '127.105.0.8'));
      await run(P('s1', '127.105.0.8'), P('s2', '127.105.0.7')); // swap, same destinations
      await check({ s1: 'in-sync', s2: 'in-sync' });
      await run(P('s1', '127.105.0.7', 9002), P('s2', '127.105.0.8', 9003)); // swap back, other destinations
      await check({ s1: 'in-sync', s2: 'in-sync' });
      await run(P('s2', '127.105.0.9', 9003), P('s1', '127.105.0.8', 9003)); // s1 takes the address s2 leaves
      await check({ s1: 'in-sync', s2: 'in-sync' });
    } finally {
      handle?.done();
      await lb?.close();
    }
  }
});

test('nft: a rebuild empties the table in place and keeps it (its NAT hooks): an in-memory instance adding a round-robin profile beside profiles it was not told about', async () => {
  const kernels = fakes();
  const inMemory = (k = kernels) =>
    new Core({ stateFile: false, engine: 'nft' }, k as unknown as Record<EngineName, Executor>);
  const before: ProfileInput[] = [
    { name: 'p0', source: '127.100.0.10:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] },
    {
      name: 'p2',
      source: '127.100.0.10:82',
      destination: ['127.0.0.1:9002', '127.0.0.1:9003'],
      scheduler: 'round-robin',
    },
    { name: 'p3', source: '127.100.0.10:83', destination: ['127.0.0.1:9003', '127.0.0.1:9004'], affinity: 30 },
  ];
  const added: ProfileInput = {
    name: 'p5',
    source: '127.100.0.10:85',
    destination: ['127.0.0.1:9005'],
    scheduler: 'round-robin',
  };
  await apply(inMemory(), ...before);
  // The restarted agent: nothing in memory; a round-robin profile rewrites the base chains.
  const from = kernels.nft.commits.length;
  await apply(inMemory(), added);
  const ops = kernels.nft.commits.slice(from).flatMap((tx) => tx.ops.map((o) => o.op));
  assert.ok(ops.includes('flushChain'), 'the base chains were rewritten');
  assert.ok(!ops.includes('deleteTable'), `the table (and its hooks) stays: ${ops.join(' ')}`);
  // The kernel holds what one instance told about all four would have written.
  const all = fakes();
  await apply(inMemory(all), ...before, added);
  const content = (k: FakeNftKernel) => {
    const t = k.tables.get('ip')!;
    const sorted = (xs: Iterable<unknown>) => [...xs].map((x) => JSON.stringify(x)).sort();
    return {
      sets: sorted([...t.sets].map(([n, e]) => [n, [...e].sort()])),
      maps: sorted([...t.maps].map(([n, e]) => [n, sorted(e)])),
      affinity: sorted(t.affinitySets),
      chains: sorted([...t.chains].map(([n, r]) => [n, sorted(r)])),
    };
  };
  assert.deepEqual(content(kernels.nft), content(all.nft));
});

for (const engine of ['legacy', 'nft'] as const) {
  test(`${engine}: two state files on one kernel: no apply, reset or delete of one removes the other's profiles`, async () => {
    const kernels = fakes();
    const A = coreOn(engine, kernels);
    const B = coreOn(engine, kernels);
    try {
      // A: a plain profile, a round-robin one and a logging one (rules of their own in the base chains).
      await apply(
        A.core,
        { name: 'a1', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] },
        { name: 'a2', source: '127.100.0.2:80', destination: ['127.0.0.1:9001'], scheduler: 'round-robin' },
        { name: 'a3', source: '127.100.0.3:80', destination: ['127.0.0.1:9003'], logEnabled: true },
      );
      const mine = async (core: Core, names: string[]) =>
        Object.fromEntries(Object.entries(await statuses(core)).filter(([n]) => names.includes(n)));
      const aIntact = async (what: string) =>
        assert.deepEqual(await mine(A.core, ['a1', 'a2', 'a3']), { a1: 'in-sync', a2: 'in-sync', a3: 'in-sync' }, what);
      // B: a destination count A does not use (a new dispatch set: the base chains are rewritten).
      await apply(B.core, {
        name: 'b',
        source: '127.100.0.9:80',
        destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
      });
      await aIntact('after B added a profile');
      await apply(B.core, { name: 'b', source: '127.100.0.9:80', destination: ['127.0.0.1:9001'] }); // a move
      await aIntact('after B reset its profile');
      await B.core.transact((state) => deleteChange(state, ['b']), { run: true }); // B's last profile
      await aIntact('after B deleted its last profile');
      // Written without -run, then applied unchanged with -run: the kernel lacks what B's state says.
      const stateOnly: ProfileInput[] = [
        { name: 'c', source: '127.100.0.10:80', destination: ['127.0.0.1:9004', '127.0.0.1:9005'] },
        { name: 'd', source: '127.100.0.11:80', destination: ['127.0.0.1:9004'], logEnabled: true },
      ];
      await B.core.transact((state) => upsertChange(state, stateOnly), { run: false });
      await apply(B.core, ...stateOnly);
      assert.deepEqual(await mine(B.core, ['c', 'd']), { c: 'in-sync', d: 'in-sync' });
      await aIntact('after B applied profiles written without -run');
      await B.core.transact((state) => deleteChange(state, ['c', 'd']), { run: true });
      await aIntact('after B deleted them');
      // Only sync makes the kernel exactly one state file's profiles (documented); B has none left,
      // so nothing of iptlb's stays (on nft, not an empty table with its NAT hooks).
      await B.core.sync();
      assert.deepEqual(await mine(A.core, ['a1', 'a2', 'a3']), { a1: 'missing', a2: 'missing', a3: 'missing' });
      if (engine === 'nft') assert.equal(kernels.nft.tables.has('ip'), false, 'table ip iptlb removed');
    } finally {
      A.done();
      B.done();
    }
  });
}

test('nft: a tcp and a udp profile on one address and port (DNS) are both in sync; a sync commits nothing', async () => {
  const { core, kernels, done } = coreOn('nft');
  try {
    await apply(
      core,
      { name: 't', source: '127.100.0.53:53', destination: ['127.0.0.1:9001'] },
      { name: 'u', source: '127.100.0.53:53', destination: ['127.0.0.1:9002'], protocol: 'udp' },
    );
    assert.deepEqual(await statuses(core), { t: 'in-sync', u: 'in-sync' });
    const commits = kernels.nft.commits.length;
    const r = await core.sync();
    assert.equal(r.committed, false);
    assert.equal(kernels.nft.commits.length, commits);
    // One of them gone from the kernel: that one is missing, the other still in sync.
    await core.transact((state) => deleteChange(state, ['u']), { run: true });
    assert.deepEqual(await statuses(core), { t: 'in-sync' });
  } finally {
    done();
  }
});

test('nft: a state file does not take over an address another state file holds: ECONFLICT naming source, asked with a narrow read', async () => {
  const kernels = fakes();
  const A = coreOn('nft', kernels);
  const B = coreOn('nft', kernels);
  try {
    await apply(A.core, { name: 'a1', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] });
    await apply(A.core, {
      name: 'a2',
      source: '127.100.0.2:80',
      destination: ['127.0.0.1:9001'],
      scheduler: 'round-robin',
    });
    await apply(B.core, { name: 'bb', source: '127.100.0.9:80', destination: ['127.0.0.1:9003'] });
    const commits = kernels.nft.commits.length;
    const asked = { ...kernels.nft.asked };
    const taken = (name: string) => (e: IptlbError) =>
      e.code === 'ECONFLICT' &&
      e.field === 'source' &&
      new RegExp(
        `^source: profile ${name}: its address .* is taken in table ip iptlb by a profile this state file does not hold`,
      ).test(e.message);
    // Another destination count than a1's (no element key collides: the kernel would take it silently).
    await assert.rejects(
      apply(B.core, { name: 'b', source: '127.100.0.1:80', destination: ['127.0.0.1:9003'] }),
      taken('b'),
    );
    assert.ok(kernels.nft.asked.lookups > asked.lookups, 'asked with a narrow read');
    // A round-robin profile's address (a rule, not an element); B's own profile moved onto a1's.
    await assert.rejects(
      apply(B.core, { name: 'b2', source: '127.100.0.2:80', destination: ['127.0.0.1:9003'] }),
      taken('b2'),
    );
    await assert.rejects(
      apply(B.core, { name: 'bb', source: '127.100.0.1:80', destination: ['127.0.0.1:9003'] }),
      taken('bb'),
    );
    assert.equal(kernels.nft.commits.length, commits, 'nothing committed');
    assert.deepEqual(await statuses(B.core), {
      bb: 'in-sync',
      '127.100.0.1:80': 'orphaned',
      '127.100.0.2:80': 'orphaned',
      'rule:a2': 'orphaned',
    });
    assert.deepEqual(await statuses(A.core), { a1: 'in-sync', a2: 'in-sync', '127.100.0.9:80': 'orphaned' });
    assert.deepEqual([...(await B.core.readState()).keys()], ['bb'], 'nothing recorded');
    // A free address: one narrow read, no whole one (the cost does not grow with the table).
    const before = { ...kernels.nft.asked };
    await apply(B.core, { name: 'b3', source: '127.100.0.3:80', destination: ['127.0.0.1:9003'] });
    assert.deepEqual(kernels.nft.asked, { reads: before.reads, lookups: before.lookups + 1 });
    // A change interrupted before its state write left a profile in the kernel: applying it again
    // from a state file that lacks it completes it (the table holds it exactly as planned).
    const C = coreOn('nft', kernels);
    try {
      await apply(C.core, { name: 'b3', source: '127.100.0.3:80', destination: ['127.0.0.1:9003'] });
      assert.deepEqual(Object.keys(await statuses(C.core)).includes('b3'), true);
    } finally {
      C.done();
    }
    // An in-memory instance cannot tell its own profiles of before a restart from another's: it takes the address.
    const lb = await open({ stateFile: false }, kernels.nft as Executor);
    try {
      await lb.apply({ name: 'm', source: '127.100.0.9:80', destination: ['127.0.0.1:9004'] });
    } finally {
      await lb.close();
    }
  } finally {
    A.done();
    B.done();
  }
});

for (const engine of ['legacy', 'nft'] as const) {
  test(`${engine}: a state file does not take a profile name another state file holds (ECONFLICT naming name, IPv4 and IPv6, nothing changed); an interrupted create is completed by applying again`, async () => {
    const kernels = fakes();
    const A = coreOn(engine, kernels);
    const B = coreOn(engine, kernels);
    const kernel = engine === 'legacy' ? kernels.legacy : kernels.nft;
    // On nft only rules carry a profile's name (elements are keyed by address): A's profiles log.
    const logs = engine === 'nft' ? { logEnabled: true } : {};
    const held =
      (name: string, v6 = false) =>
      (e: IptlbError) =>
        e.code === 'ECONFLICT' &&
        e.field === 'name' &&
        e.message.startsWith(`name: profile ${name}: ${tableOf(engine, v6)} already holds a profile of that name (`) &&
        e.message.endsWith(
          '), which this state file does not hold: delete it through the state file that holds it, or, if an interrupted change left it, `iptlb status` shows it orphaned and `iptlb sync` removes it',
        ) &&
        !e.message.includes('\n');
    try {
      await apply(
        A.core,
        { name: 'web', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'], ...logs },
        { name: 'web6', source: '[2001:db8::1]:80', destination: ['[2001:db8::a]:9001'], ...logs },
        { name: 'rr', source: '127.100.0.2:80', destination: ['127.0.0.1:9001'], scheduler: 'round-robin' },
      );
      const commits = kernel.commits.length;
      const tables = JSON.stringify([...kernel.tables], (_, v) => (v instanceof Map || v instanceof Set ? [...v] : v));
      // Another address, another destination: the name alone is A's.
      await assert.rejects(
        apply(B.core, { name: 'web', source: '127.100.0.9:80', destination: ['127.0.0.1:9003'] }),
        held('web'),
      );
      await assert.rejects(
        apply(B.core, { name: 'web6', source: '[2001:db8::9]:80', destination: ['[2001:db8::a]:9003'] }),
        held('web6', true),
      );
      // A round-robin profile's name (a rule of its own on both engines), in a change of two.
      await assert.rejects(
        apply(
          B.core,
          { name: 'free', source: '127.100.0.8:80', destination: ['127.0.0.1:9003'] },
          { name: 'rr', source: '127.100.0.7:80', destination: ['127.0.0.1:9003'] },
        ),
        held('rr'),
      );
      if (engine === 'legacy')
        // A name that shares A's chain (IPTLB_NAT_WEB) is A's profile to the kernel too.
        await assert.rejects(
          apply(B.core, { name: 'WEB', source: '127.100.0.9:80', destination: ['127.0.0.1:9003'] }),
          (e: IptlbError) => e.field === 'name' && /\(chain IPTLB_NAT_WEB\)/.test(e.message),
        );
      assert.equal(kernel.commits.length, commits, 'nothing committed');
      assert.equal(
        JSON.stringify([...kernel.tables], (_, v) => (v instanceof Map || v instanceof Set ? [...v] : v)),
        tables,
      );
      assert.deepEqual([...(await B.core.readState()).keys()], [], 'nothing recorded');
      assert.deepEqual(
        Object.fromEntries(Object.entries(await statuses(A.core)).filter(([n]) => ['web', 'web6', 'rr'].includes(n))),
        { web: 'in-sync', web6: 'in-sync', rr: 'in-sync' },
      );
      // A change interrupted after its kernel commit, before its state write (C's file lost): applying
      // the profile again from a state file that lacks it completes it, IPv4 and IPv6 alike.
      const C = coreOn(engine, kernels);
      const D = coreOn(engine, kernels);
      try {
        const again: ProfileInput[] = [
          {
            name: 'done',
            source: '127.100.0.5:80',
            destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
            weights: { '127.0.0.1:9002': 2 },
            scheduler: 'round-robin',
            logEnabled: true,
          },
          { name: 'done6', source: '[2001:db8::5]:80', destination: ['[2001:db8::a]:9001'], affinity: 30, ...logs },
        ];
        await apply(C.core, ...again);
        await apply(D.core, ...again);
        const d = await statuses(D.core);
        assert.deepEqual([d.done, d.done6], ['in-sync', 'in-sync']);
        // Not as planned (another destination): that is another profile of the name, refused.
        const E = coreOn(engine, kernels);
        try {
          await assert.rejects(
            apply(E.core, { ...again[0], destination: ['127.0.0.1:9009'], weights: {} }),
            held('done'),
          );
        } finally {
          E.done();
        }
      } finally {
        C.done();
        D.done();
      }
      // A profile this state file holds keeps its chain through a rename onto a name sharing it.
      if (engine === 'legacy') {
        await A.core.transact(
          (state) => ({
            upsert: [validateProfile({ name: 'WEB', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'] })],
            remove: [...state.keys()].filter((n) => n === 'web'),
          }),
          { run: true },
        );
        assert.equal((await statuses(A.core)).WEB, 'in-sync');
      }
      // An in-memory instance cannot tell its own profiles of before a restart from another's: it takes the name.
      const lb = await open({ stateFile: false }, kernel as Executor);
      try {
        await lb.apply({ name: 'rr', source: '127.100.0.6:80', destination: ['127.0.0.1:9004'] });
      } finally {
        await lb.close();
      }
    } finally {
      A.done();
      B.done();
    }
  });
}

for (const engine of ['legacy', 'nft'] as const) {
  test(`${engine}: a change that takes in another state file's profile as it is (the same name, exactly as planned) and cannot write its state file leaves that profile in the kernel when it undoes itself`, async () => {
    const kernels = fakes();
    const reg = mkdtempSync(path.join(tmpdir(), 'iptlb-reg-'));
    const A = coreOn(engine, kernels, [], { stateRegistry: reg });
    const B = coreOn(engine, kernels, [], { stateRegistry: reg });
    const kernel = engine === 'legacy' ? kernels.legacy : kernels.nft;
    // Rules in the hook chains in any order (they select different addresses): a change that takes a
    // profile in rewrites its rules there, where they may come back in another order.
    const dump = (): string =>
      JSON.stringify([...kernel.tables], (k, v) =>
        v instanceof Map || v instanceof Set
          ? [...v]
          : k === 'hooks'
            ? Object.fromEntries(
                Object.entries(v as Record<string, unknown[]>).map(([c, rules]) => [
                  c,
                  rules.map((r) => JSON.stringify(r)).sort(),
                ]),
              )
            : v,
      );
    try {
      const shared: ProfileInput[] = [
        { name: 'done', source: '127.100.0.5:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'], logEnabled: true },
        { name: 'done6', source: '[2001:db8::5]:80', destination: ['[2001:db8::a]:9001'], logEnabled: true },
      ];
      await apply(A.core, ...shared);
      await apply(B.core, { name: 'own', source: '127.100.0.6:80', destination: ['127.0.0.1:9003'] });
      const before = dump();
      // B's next change takes in A's two profiles as they are and adds one of its own; its state write fails.
      const write = mock.method(FileHandle.prototype, 'write', async () => {
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
      });
      const writeFile = mock.method(FileHandle.prototype, 'writeFile', async () => {
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
      });
      try {
        await assert.rejects(
          apply(B.core, ...shared, { name: 'more', source: '127.100.0.7:80', destination: ['127.0.0.1:9004'] }),
          (e: IptlbError) =>
            e.code === 'ESTATE' && /the kernel change was undone, nothing was changed$/.test(e.message),
        );
      } finally {
        write.mock.restore();
        writeFile.mock.restore();
      }
      assert.equal(dump(), before, "the kernel is as before: A's profiles kept, B's new one gone");
      assert.deepEqual(await statuses(A.core), { done: 'in-sync', done6: 'in-sync' });
      assert.deepEqual(Object.keys(await statuses(B.core)), ['own']);
    } finally {
      A.done();
      B.done();
      rmSync(reg, { recursive: true, force: true });
    }
  });
}

for (const engine of ['legacy', 'nft'] as const) {
  test(`${engine}: a profile the state file holds whose name the kernel has at another address is refused (ECONFLICT naming name, IPv4 and IPv6, nothing changed): written without -run and then applied, it would take over another state file's profile; one an interrupted change moved is refused until sync puts it back`, async () => {
    const kernels = fakes();
    const A = coreOn(engine, kernels);
    const B = coreOn(engine, kernels);
    const kernel = engine === 'legacy' ? kernels.legacy : kernels.nft;
    const snapshot = () =>
      JSON.stringify([...kernel.tables], (_, v) => (v instanceof Map || v instanceof Set ? [...v] : v));
    const elsewhere =
      (name: string, v6 = false) =>
      (e: IptlbError) =>
        e.code === 'ECONFLICT' &&
        e.field === 'name' &&
        e.message.startsWith(
          `name: profile ${name}: ${tableOf(engine, v6)} holds a profile of that name at another address than this state file's (rule iptlb:${name} in `,
        ) &&
        e.message.endsWith(
          "): another state file's profile of that name (delete it there, or give this one another name; -delete without -run removes this one from this state file only), or one an interrupted change of this state file moved (`iptlb sync` puts back this state file's)",
        ) &&
        !e.message.includes('\n');
    // Every profile has rules of its own on nft (only rules carry a name there): round-robin, or logging.
    const rr = { scheduler: 'round-robin' } as const;
    const logs = { logEnabled: true };
    const useState = (core: Core) =>
      core.transact((state) => ({ upsert: [...state.values()], remove: [] }), { run: true });
    try {
      await apply(
        A.core,
        { name: 'web', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'], ...logs },
        { name: 'web6', source: '[2001:db8::1]:80', destination: ['[2001:db8::a]:9001'], ...rr },
        { name: 'CHAIN', source: '127.100.0.3:80', destination: ['127.0.0.1:9001'], ...logs },
      );
      const before = snapshot();
      const commits = kernel.commits.length;
      // B records profiles of A's names at other addresses without -run, then applies its file.
      const cases: [ProfileInput & { name: string; source: string }, boolean][] = [
        [{ name: 'web', source: '127.100.0.9:80', destination: ['127.0.0.1:9003'], ...rr }, false],
        [{ name: 'web6', source: '[2001:db8::9]:80', destination: ['[2001:db8::a]:9003'], ...logs }, true],
      ];
      for (const [p, v6] of cases) {
        await B.core.transact((state) => upsertChange(state, [p]), { run: false });
        await assert.rejects(useState(B.core), elsewhere(p.name, v6));
        // Applying it alone, or moving it elsewhere, is refused the same way.
        await assert.rejects(apply(B.core, p), elsewhere(p.name, v6));
        const moved = { ...p, source: v6 ? '[2001:db8::8]:80' : '127.100.0.8:80' };
        await assert.rejects(apply(B.core, moved), elsewhere(p.name, v6));
        // Deleting it would delete A's rules of the name: refused too; without run it leaves the file.
        await assert.rejects(
          B.core.transact((state) => deleteChange(state, [p.name]), { run: true }),
          elsewhere(p.name, v6),
        );
        await B.core.transact((state) => deleteChange(state, [p.name]), { run: false });
      }
      if (engine === 'legacy') {
        // A name that shares the chain of A's profile (IPTLB_NAT_CHAIN), recorded without -run.
        await B.core.transact(
          (state) =>
            upsertChange(state, [{ name: 'chain', source: '127.100.0.7:80', destination: ['127.0.0.1:9003'] }]),
          { run: false },
        );
        await assert.rejects(
          useState(B.core),
          (e: IptlbError) =>
            e.field === 'name' &&
            e.message.startsWith(
              'name: profile chain: the nat table already holds a profile of that name (chain IPTLB_NAT_CHAIN, rule iptlb:CHAIN in IPTLB_OUTPUT)',
            ),
        );
      }
      assert.equal(kernel.commits.length, commits, 'nothing committed');
      assert.equal(snapshot(), before);
      assert.deepEqual(
        Object.fromEntries(
          Object.entries(await statuses(A.core)).filter(([n]) => ['web', 'web6', 'CHAIN'].includes(n)),
        ),
        { web: 'in-sync', web6: 'in-sync', CHAIN: 'in-sync' },
      );
      // A's own changes of those profiles go on (its file holds them where the kernel does).
      await A.core.transact(
        (state) =>
          upsertChange(state, [{ ...state.get('web')!, source: '127.100.0.2:80', destination: ['127.0.0.1:9002'] }]),
        { run: true },
      );
      await useState(A.core);
      // An interrupted move (the kernel committed it, the state file did not record it): applying the
      // file is refused as above; repeating the move completes it, and sync puts the file's back.
      const file = readFileSync(A.file);
      await apply(A.core, { name: 'web', source: '127.100.0.4:80', destination: ['127.0.0.1:9002'], ...logs });
      writeFileSync(A.file, file);
      rmSync(`${A.file}.journal`, { force: true });
      await assert.rejects(useState(A.core), elsewhere('web'));
      await apply(A.core, { name: 'web', source: '127.100.0.4:80', destination: ['127.0.0.1:9002'], ...logs });
      assert.equal((await statuses(A.core)).web, 'in-sync');
      writeFileSync(A.file, file);
      rmSync(`${A.file}.journal`, { force: true });
      await A.core.sync();
      await useState(A.core);
      assert.equal((await statuses(A.core)).web, 'in-sync');
    } finally {
      A.done();
      B.done();
    }
  });
}

test("a state-file registry that cannot be written is said once (its profiles are not protected from another file's sync), and the change goes on", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-registry-'));
  try {
    writeFileSync(path.join(dir, 'file'), 'x');
    const lines: string[] = [];
    const c = coreOn('nft', fakes(), lines, { stateRegistry: path.join(dir, 'file', 'registry') });
    try {
      await apply(c.core, { name: 'a', source: '127.100.4.1:80', destination: ['127.0.0.1:9001'] });
      await apply(c.core, { name: 'b', source: '127.100.4.2:80', destination: ['127.0.0.1:9001'] });
      const said = lines.filter((l) => l.startsWith('state-file registry: cannot register'));
      assert.equal(said.length, 1, lines.join('\n'));
      assert.match(said[0]!, /\(ENOTDIR\): another state file's sync and status on this host cannot tell/);
      assert.deepEqual(await statuses(c.core), { a: 'in-sync', b: 'in-sync' });
    } finally {
      c.done();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const engine of ['legacy', 'nft'] as const) {
  test(`${engine}: an in-memory handle's sync and drift events leave every profile it was not given alone (another state file's, or a leftover)`, async () => {
    const kernels = fakes();
    const owner = coreOn(engine, kernels);
    try {
      await apply(owner.core, {
        name: 'keep',
        source: '127.100.3.1:80',
        destination: ['127.0.0.1:9001'],
        logEnabled: true,
      });
      const mem = await open({ stateFile: false, engine }, kernels[engine] as Executor);
      try {
        const drift: string[][] = [];
        mem.on('drift', (r) => drift.push(r.map((x) => `${x.name}:${x.status}`)));
        await mem.apply({ name: 'mine', source: '127.100.3.2:80', destination: ['127.0.0.1:9002'] });
        // status reports what it does not know as orphaned; sync leaves it, and no drift event names it.
        assert.ok((await mem.status()).some((r) => r.status === 'orphaned'));
        const commits = kernels[engine].commits.length;
        const r = await mem.sync();
        assert.equal(r.committed, false);
        assert.deepEqual(Object.keys(r).sort(), ['before', 'commitMs', 'committed'], 'what sync() declares, no more');
        assert.equal(kernels[engine].commits.length, commits);
        assert.deepEqual(drift, []);
        // (An in-memory handle registers no state file: the owner sees its profile as orphaned.)
        assert.equal((await statuses(owner.core)).keep, 'in-sync');
        await mem.apply({ name: 'mine', source: '127.100.3.2:80', destination: ['127.0.0.1:9003'] });
        assert.equal((await mem.sync()).committed, false);
        assert.equal((await statuses(owner.core)).keep, 'in-sync');
        assert.equal((await mem.status()).find((x) => x.name === 'mine')?.status, 'in-sync');
      } finally {
        await mem.close();
      }
    } finally {
      owner.done();
    }
  });
}

for (const engine of ['legacy', 'nft'] as const) {
  test(`${engine}: a name two state files give profiles at different addresses: the sync of the one the kernel does not hold changes nothing (ECONFLICT naming name and the other file); its status says whose; where both are held (nft, no rules of their own) a sync keeps both`, async () => {
    const kernels = fakes();
    const registry = mkdtempSync(path.join(tmpdir(), 'iptlb-registry-'));
    const on = () => coreOn(engine, kernels, [], { stateRegistry: registry });
    const A = on();
    const B = on();
    try {
      await apply(A.core, { name: 'web', source: '127.100.0.1:80', destination: ['127.0.0.1:9001'], logEnabled: true });
      await apply(A.core, { name: 'other', source: '127.100.0.3:80', destination: ['127.0.0.1:9001'] });
      // B records a profile of that name at another address without running it (as -profile without -run).
      await B.core.transact(
        (state) => upsertChange(state, [{ name: 'web', source: '127.100.0.2:80', destination: ['127.0.0.1:9002'] }]),
        { run: false },
      );
      const kernel = () => kernels[engine].commits.length; // commits made (a refusal makes none)
      const before = kernel();
      await assert.rejects(B.core.sync(), (e: IptlbError) => {
        assert.equal(e.code, 'ECONFLICT');
        assert.equal(e.field, 'name');
        assert.match(
          e.message,
          new RegExp(
            `^name: profile web: another state file, ${A.file.replaceAll('.', '\\.')}, holds a profile of this name at 127\\.100\\.0\\.1:80/tcp: this sync would take it over or remove it, so it changes nothing`,
          ),
        );
        return true;
      });
      assert.equal(kernel(), before, 'nothing changed');
      assert.deepEqual(await statuses(A.core), { web: 'in-sync', other: 'in-sync' });
      const web = (await B.core.status()).find((r) => r.name === 'web');
      assert.notEqual(web?.status, 'in-sync');
      assert.match(
        web?.detail ?? '',
        new RegExp(
          `another state file, ${A.file.replaceAll('.', '\\.')}, holds a profile of this name at 127\\.100\\.0\\.1:80/tcp$`,
        ),
      );
      const report = await B.core.statusReport();
      assert.deepEqual(
        report.otherStateFiles?.map((f) => [f.stateFile, [...f.profiles].sort()]),
        [[A.file, ['other', 'web']]],
      );
      // A's own sync is not held back: the kernel holds A's.
      assert.equal((await A.core.sync()).committed, false);
      if (engine === 'nft') {
        // Profiles without rules of their own leave no name in table ip iptlb: both can be held, each at its
        // address (docs/state-file.md). A sync of either keeps the other's.
        await apply(A.core, { name: 'solo', source: '127.100.0.4:80', destination: ['127.0.0.1:9001'] });
        await apply(B.core, { name: 'solo', source: '127.100.0.5:80', destination: ['127.0.0.1:9002'] });
        await B.core.transact((state) => ({ upsert: [], remove: state.has('web') ? ['web'] : [] }), { run: false });
        const held = kernel();
        assert.equal((await B.core.sync()).committed, false);
        assert.equal((await A.core.sync()).committed, false);
        assert.equal(kernel(), held);
        assert.equal((await statuses(A.core)).solo, 'in-sync');
        assert.equal((await statuses(B.core)).solo, 'in-sync');
      }
    } finally {
      A.done();
      B.done();
      rmSync(registry, { recursive: true, force: true });
    }
  });
}

for (const engine of ['legacy', 'nft'] as const) {
  test(`${engine}: sync and status of one state file leave another registered state file's profiles alone; a leftover of no registered state file is removed`, async () => {
    const kernels = fakes();
    const registry = mkdtempSync(path.join(tmpdir(), 'iptlb-registry-'));
    const on = () => coreOn(engine, kernels, [], { stateRegistry: registry });
    const A = on();
    const B = on();
    const C = on();
    try {
      await apply(
        A.core,
        { name: 'web', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'], logEnabled: true },
        { name: 'web6', source: '[2001:db8::1]:80', destination: ['[2001:db8::a]:9001'], scheduler: 'round-robin' },
        { name: 'aff', source: '127.100.0.3:80', destination: ['127.0.0.1:9001'], affinity: 30 },
      );
      await apply(B.core, { name: 'api', source: '127.100.0.2:80', destination: ['127.0.0.1:9003'] });
      // C's change reaches the kernel, then C's state file is lost: a leftover of no registered file.
      await apply(C.core, {
        name: 'gone',
        source: '127.100.0.4:80',
        destination: ['127.0.0.1:9004'],
        logEnabled: true,
      });
      C.done();
      const statusOf = async (core: Core) =>
        Object.fromEntries((await core.status()).map((r) => [r.name, r.status])) as Record<string, string>;
      // B's status: its own profile, and the leftover; A's are A's.
      const b = await statusOf(B.core);
      assert.equal(b.api, 'in-sync');
      for (const n of [
        'web',
        'web6',
        'aff',
        'rule:web',
        'rule:web6',
        'rule:aff',
        '127.100.0.1:80',
        '127.100.0.3:80',
        '[2001:db8::1]:80',
      ])
        assert.equal(b[n], undefined, `${n} is A's: ${JSON.stringify(b)}`);
      assert.ok(
        Object.entries(b).some(([n, st]) => st === 'orphaned' && /gone|127\.100\.0\.4/.test(n)),
        JSON.stringify(b),
      );
      // Whose they are: A's state file and its profiles (statusReport(), which the CLI's status prints).
      const report = await B.core.statusReport();
      assert.deepEqual(
        report.otherStateFiles?.map((o) => ({ ...o, profiles: [...o.profiles].sort() })),
        [{ stateFile: A.file, profiles: ['aff', 'web', 'web6'] }],
      );
      assert.deepEqual(report.profiles, await B.core.status(), 'the same reports as status()');
      assert.equal(report.inSync, false, 'the orphan is drift');
      // And A's names B's. The library's handle returns the same (and emits the drift).
      assert.deepEqual((await A.core.statusReport()).otherStateFiles, [{ stateFile: B.file, profiles: ['api'] }]);
      const lb = await open({ stateFile: B.file, engine, stateRegistry: registry }, kernels[engine] as Executor);
      try {
        const drift: string[][] = [];
        lb.on('drift', (r) => drift.push(r.map((x) => x.name)));
        const viaApi = await lb.statusReport();
        assert.deepEqual(viaApi, { ...report, otherStateFiles: viaApi.otherStateFiles });
        assert.deepEqual(
          viaApi.otherStateFiles?.map((o) => o.stateFile),
          [A.file],
        );
        assert.equal(drift.length, 1);
      } finally {
        await lb.close();
      }
      // While A's state file is locked (a change of A in flight: the kernel may hold what A's file
      // does not have yet), B's sync removes nothing beyond the files, and says so.
      const held = await lockStateFile(A.file, 1000);
      try {
        const lines: string[] = [];
        const logged = new Core(
          { stateFile: B.file, engine, stateRegistry: registry, log: (l) => lines.push(l) },
          kernels as unknown as Record<EngineName, Executor>,
        );
        assert.equal((await logged.sync()).committed, false, 'the leftover is kept while A is busy');
        assert.ok(
          lines.some((l) => l.startsWith('another state file was being changed')),
          lines.join('\n'),
        );
      } finally {
        held.release();
      }
      // A state file registered and not written yet (another process's first change in flight, its
      // lock held): the same. Once its lock is free and it still does not exist, its entry goes.
      const D = tmpState();
      try {
        registerStateFile(D.file, registry);
        const dLock = await lockStateFile(D.file, 1000);
        try {
          assert.equal((await B.core.sync()).committed, false, 'the leftover is kept while D is busy');
        } finally {
          dLock.release();
        }
        const r = await B.core.sync();
        assert.equal(r.committed, true, 'the leftover is removed');
        assert.ok(
          !otherStateFiles(B.file, registry).some((o) => o.file === D.file),
          "D's entry is dropped: its file does not exist and nobody holds its lock",
        );
      } finally {
        D.done();
      }
      assert.deepEqual(await statusOf(A.core), { web: 'in-sync', web6: 'in-sync', aff: 'in-sync' });
      assert.deepEqual(await statusOf(B.core), { api: 'in-sync' });
      // A's sync: nothing to do; B's profile stays.
      assert.equal((await A.core.sync()).committed, false);
      assert.deepEqual(await statusOf(B.core), { api: 'in-sync' });
      // Without a registry (another host layout, or an older iptlb), B's sync removes A's profiles, as before.
      const plain = new Core(
        { stateFile: B.file, engine, stateRegistry: false },
        kernels as unknown as Record<EngineName, Executor>,
      );
      await plain.sync();
      assert.deepEqual(
        Object.values(await statusOf(A.core)).filter((st) => st === 'in-sync'),
        [],
        'removed without the registry',
      );
    } finally {
      A.done();
      B.done();
      rmSync(registry, { recursive: true, force: true });
    }
  });
}

for (const engine of ['legacy', 'nft'] as const) {
  describe(`core over the ${engine} fake kernel`, () => {
    test('apply, status in sync; tampering found; sync repairs it in one transaction per family; orphans removed', async () => {
      const { core, kernels, lines, done } = coreOn(engine);
      try {
        await apply(core, web(1), web(2), web(3, 2));
        assert.deepEqual(await statuses(core), { web1: 'in-sync', web2: 'in-sync', web3: 'in-sync' });
        // Someone removes web2's objects, and leaves an object of a profile nobody has.
        if (engine === 'legacy') {
          const t = kernels.legacy.tables.get('ipv4')!;
          t.hooks.OUTPUT = t.hooks.OUTPUT.filter((r) => r.owner !== 'web2');
          t.chains.delete('IPTLB_NAT_WEB2');
          t.hooks.OUTPUT.push({
            owner: 'ghost',
            rule: { matches: [{ name: 'comment', comment: 'iptlb:ghost' }], target: { name: 'RETURN' } },
          });
        } else {
          const t = kernels.nft.tables.get('ip')!;
          t.sets.get('out_tcp_3')!.delete('127.100.0.12 . 80');
          for (const k of t.maps.get('be_tcp')!.keys())
            if (k.startsWith('127.100.0.12 . 80 .')) t.maps.get('be_tcp')!.delete(k);
          t.sets.get('out_tcp_3')!.add('127.100.0.99 . 80');
        }
        const drifted = await statuses(core);
        assert.equal(drifted.web2, 'missing');
        assert.equal(drifted.web1, 'in-sync');
        assert.ok(Object.values(drifted).includes('orphaned'), JSON.stringify(drifted));
        const commits = engine === 'legacy' ? kernels.legacy.commits.length : kernels.nft.commits.length;
        const r = await core.sync();
        assert.equal(r.committed, true);
        assert.equal(
          (engine === 'legacy' ? kernels.legacy.commits.length : kernels.nft.commits.length) - commits,
          1,
          'one transaction',
        );
        assert.deepEqual(await statuses(core), { web1: 'in-sync', web2: 'in-sync', web3: 'in-sync' });
        const again = await core.sync();
        assert.equal(again.committed, false);
        assert.ok(lines.some((l) => /kernel already matches/.test(l)));
      } finally {
        done();
      }
    });

    test('sync with a guard: a file rewritten in place while the sync reads it (emptied, here) is not applied', async () => {
      const { core, kernels, done, file } = coreOn(engine);
      try {
        await apply(core, web(1), web(2));
        const commits = (): number =>
          engine === 'legacy' ? kernels.legacy.commits.length : kernels.nft.commits.length;
        const before = commits();
        // The guard holds when first asked (the version that settled); a writer then empties the file
        // in place, without the lock, before the sync reads it: the second look finds another version.
        let asked = 0;
        const r = await core.sync({
          guard: async () => {
            if (++asked === 1) {
              writeFileSync(file, '{}\n');
              return true;
            }
            return false;
          },
        });
        assert.equal(asked, 2, 'asked before and after the read');
        assert.equal(r.skipped, true);
        assert.equal(commits(), before, 'nothing committed: the empty file would have removed both profiles');
        writeFileSync(file, serializeState([validateProfile(web(1)), validateProfile(web(2))]));
        assert.deepEqual(await statuses(core), { web1: 'in-sync', web2: 'in-sync' });
      } finally {
        done();
      }
    });

    test('a failed IPv6 commit undoes the IPv4 part: the kernel and the state file are as before', async () => {
      const { core, kernels, done, file } = coreOn(engine);
      try {
        await apply(core, web(1));
        const before = JSON.stringify(
          [...(engine === 'legacy' ? kernels.legacy.tables : kernels.nft.tables)].map(([k, v]) => [
            k,
            [...Object.entries(v)].map(([a, b]) => [a, b instanceof Map ? [...b] : b]),
          ]),
        );
        const k = engine === 'legacy' ? kernels.legacy : kernels.nft;
        (k as FakeLegacyKernel).fail = (tx: { family: string }) =>
          tx.family === 'ipv6' || tx.family === 'ip6' ? kernelError(22, 'refused') : undefined;
        await assert.rejects(
          apply(core, web(1, 2), { name: 'v6', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:9001'] }),
          /refused/,
        );
        (k as FakeLegacyKernel).fail = undefined;
        const after = JSON.stringify(
          [...(engine === 'legacy' ? kernels.legacy.tables : kernels.nft.tables)].map(([key, v]) => [
            key,
            [...Object.entries(v)].map(([a, b]) => [a, b instanceof Map ? [...b] : b]),
          ]),
        );
        // The legacy fake keeps rules in order; the nft one keeps elements in sets: compare by status too.
        assert.deepEqual(await statuses(core), { web1: 'in-sync' });
        if (engine === 'legacy') assert.equal(after, before, 'the nat table is exactly as before');
        assert.equal((await core.readState()).get('web1')!.destination.length, 3, `state file ${file} unchanged`);
      } finally {
        done();
      }
    });

    test('plan gives exactly the transactions apply then commits', async () => {
      const { core, kernels, done } = coreOn(engine);
      try {
        await apply(core, web(1), web(2));
        const k = engine === 'legacy' ? kernels.legacy : kernels.nft;
        for (const change of [[web(1, 2)], [web(3, 1)], [{ ...web(2), logEnabled: true }]]) {
          const planned = await core.plan((state) => upsertChange(state, change));
          const n = k.commits.length;
          await apply(core, ...change);
          assert.deepEqual(
            k.commits.slice(n),
            planned.plans.flatMap((p) => p.steps),
            JSON.stringify(change),
          );
        }
        const planned = await core.plan((state) => deleteChange(state, ['web1']));
        const n = k.commits.length;
        await core.transact((state) => deleteChange(state, ['web1']), { run: true });
        assert.deepEqual(
          k.commits.slice(n),
          planned.plans.flatMap((p) => p.steps),
        );
      } finally {
        done();
      }
    });
  });
}

test('nft: a table someone deleted is replaced whole by the next change, with every profile', async () => {
  const { core, kernels, lines, done } = coreOn('nft');
  try {
    await apply(core, web(1), web(2));
    kernels.nft.tables.delete('ip');
    await apply(core, web(3));
    assert.ok(
      lines.some((l) => /table ip iptlb does not exist yet .*creating it with all 3 profile\(s\)/.test(l)),
      lines.join('\n'),
    );
    assert.deepEqual(await statuses(core), { web1: 'in-sync', web2: 'in-sync', web3: 'in-sync' });
  } finally {
    done();
  }
});

test('nft: a change that created the table with every profile of the state, then could not write the state file, is undone whole: no table, as before', async () => {
  const { core, kernels, lines, file, done } = coreOn('nft');
  try {
    // Written without -run: the kernel holds no table.
    await core.transact((state) => upsertChange(state, [web(1)]), { run: false });
    assert.equal(kernels.nft.tables.size, 0);
    const text = readFileSync(file, 'utf8');
    // The state write fails after the commit (the file turned into a directory: refused before the rename).
    const commit = kernels.nft.commit.bind(kernels.nft);
    let once = true;
    kernels.nft.commit = async (tx) => {
      const r = await commit(tx);
      if (once) {
        once = false;
        rmSync(file);
        mkdirSync(file);
      }
      return r;
    };
    await assert.rejects(apply(core, web(2)), (e: IptlbError) => {
      assert.match(e.message, /the kernel change was undone, nothing was changed$/);
      return true;
    });
    assert.ok(
      lines.some((l) => /does not exist yet .*creating it with all 2 profile\(s\)/.test(l)),
      lines.join('\n'),
    );
    // Before: web1 (never applied) stayed in the kernel, the table with it.
    assert.deepEqual([...kernels.nft.tables.keys()], [], 'the kernel is as before: no table');
    rmSync(file, { recursive: true });
    writeFileSync(file, text, { mode: 0o600 });
    assert.deepEqual(await statuses(core), { web1: 'missing' });
  } finally {
    done();
  }
});

for (const [from, to] of [
  ['legacy', 'nft'],
  ['nft', 'legacy'],
] as const) {
  test(`migrate ${from} → ${to}: everything installed in ${to} first, then ${from} emptied; status in sync on ${to}`, async () => {
    const kernels = fakes();
    const a = coreOn(from, kernels);
    try {
      await apply(a.core, web(1), web(2, 2), {
        name: 'v6',
        source: '[2001:db8::10]:80',
        destination: ['[2001:db8::1]:9001'],
      });
      const journal: string[] = [];
      kernels.legacy.journal = journal;
      kernels.nft.journal = journal;
      const r = await a.core.migrate(to);
      assert.equal(r.moved, 3);
      assert.equal(r.removedFrom, true);
      // Both families installed in the target before anything is removed from the source.
      assert.deepEqual(
        journal.map((j) => j.split(' ')[0]),
        [to, to, from, from],
        journal.join(', '),
      );
      const b = new Core({ stateFile: a.file, engine: to }, kernels as unknown as Record<EngineName, Executor>);
      assert.deepEqual(await statuses(b), { web1: 'in-sync', web2: 'in-sync', v6: 'in-sync' });
      const source = new Core({ stateFile: a.file, engine: from }, kernels as unknown as Record<EngineName, Executor>);
      assert.deepEqual(
        await statuses(source),
        { web1: 'missing', web2: 'missing', v6: 'missing' },
        `${from} holds nothing`,
      );
    } finally {
      a.done();
    }
  });
}

test("nft → legacy with another tool's set in table ip iptlb: the table it keeps holds none of iptlb's rules, so no split; the set stays, a second state file applies, migrate again changes nothing", async () => {
  const kernels = fakes();
  const a = coreOn('nft', kernels);
  const b = tmpState();
  try {
    await apply(a.core, web(1), { name: 'v6', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:9001'] });
    kernels.nft.tables.get('ip')!.foreign.push('theirs');
    await a.core.migrate('legacy');
    const t = kernels.nft.tables.get('ip');
    assert.ok(t, 'table ip iptlb stays: another tool keeps a set in it');
    assert.deepEqual(t.foreign, ['theirs']);
    assert.equal(t.sets.size, 0, "iptlb's dispatch sets went");
    assert.ok(
      [...t.chains.values()].every((rules) => rules.length === 0),
      "iptlb's base chains are empty",
    );
    assert.equal(kernels.nft.tables.has('ip6'), false, 'table ip6 iptlb held only iptlb objects: gone');
    const engine = new NftEngine(kernels.nft);
    const reads = kernels.nft.asked.reads;
    assert.equal(await engine.holdsObjects(), false);
    assert.equal(kernels.nft.asked.reads, reads, 'asked with narrow reads only');
    const auto = another(a.file, 'auto', kernels);
    const report = await auto.statusReport();
    assert.equal(report.split, undefined);
    assert.equal(report.inSync, true);
    assert.equal(await auto.engineSplit(), undefined);
    // Not recorded: auto finds the rules in legacy, and nft is not asked to refuse them.
    rmSync(`${a.file}.engine`, { force: true });
    assert.equal((await another(a.file, 'auto', kernels).select()).engine, 'legacy');
    // A migrate to legacy again has nothing to remove from table ip iptlb: no nft commit.
    const nftCommits = kernels.nft.commits.length;
    await a.core.migrate('legacy');
    assert.equal(kernels.nft.commits.length, nftCommits);
    assert.deepEqual(kernels.nft.tables.get('ip')!.foreign, ['theirs']);
    // A state file without a record applies (auto: legacy, where iptlb's rules are).
    const fresh = new Core({ stateFile: b.file }, kernels as unknown as Record<EngineName, Executor>);
    assert.equal((await apply(fresh, web(2))).engine, 'legacy');
    assert.equal((await statuses(fresh)).web2, 'in-sync');
    assert.equal(await fresh.engineSplit(), undefined);
    // A profile of iptlb's in the table (an element and its rule) is a split again.
    await apply(new Core({ stateFile: false }, kernels.nft as Executor), web(3));
    assert.equal(await engine.holdsObjects(), true);
    assert.match((await fresh.engineSplit()) ?? '', /^iptlb's rules are in both engines/);
  } finally {
    a.done();
    b.done();
  }
});

test("nft holdsObjects: iptlb's rules or sets count, not the table; asked without a set's elements when it can be", async () => {
  const kernels = fakes();
  const nft = kernels.nft;
  // The three ways the engine can ask: a narrow read (native), a read without elements (spawn's `nft -t`), a read.
  const shapes: [string, Executor][] = [
    ['lookup', nft as Executor],
    [
      'survey',
      {
        kind: 'spawn',
        engine: 'nft',
        commit: (tx) => nft.commit(tx),
        render: (tx) => nft.render(tx),
        read: () => Promise.reject(new Error('a whole read')),
        survey: async (f) => {
          const v = await nft.lookup(f, []);
          return { ...v, narrow: undefined };
        },
      } as Executor,
    ],
    [
      'read',
      {
        kind: 'spawn',
        engine: 'nft',
        commit: (tx) => nft.commit(tx),
        render: (tx) => nft.render(tx),
        read: (f) => nft.read(f),
      } as Executor,
    ],
  ];
  const holds = async (): Promise<boolean[]> =>
    Promise.all(shapes.map(([, ex]) => new NftEngine(ex as never).holdsObjects()));
  assert.deepEqual(await holds(), [false, false, false], 'no table');
  const lb = await open({ stateFile: false }, nft as Executor);
  try {
    await lb.apply({ name: 'v6', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:9001'] });
    assert.deepEqual(await holds(), [true, true, true], 'a profile in table ip6 iptlb');
    nft.tables.get('ip6')!.foreign.push('theirs');
    await lb.delete('v6');
    const t = nft.tables.get('ip6')!;
    assert.deepEqual(t.foreign, ['theirs'], 'the last profile went; the table stays with the set of another tool');
    assert.deepEqual(await holds(), [false, false, false], "iptlb's empty base chains and maps are no rules");
    // Another tool's rule in iptlb's base chain is not iptlb's either; an element no rule leads to only in a read.
    t.chains.get('output')!.push({ kind: 'foreign', text: 'ip6 daddr 2001:db8::99 accept' });
    assert.deepEqual(await holds(), [false, false, false]);
    t.maps.get('be_tcp')!.set('2001:db8::10 . 80 . 0', '2001:db8::1 . 9001');
    assert.deepEqual(await holds(), [false, false, true]);
    t.maps.get('be_tcp')!.clear();
    t.sets.set('out_tcp_1', new Set());
    assert.deepEqual(await holds(), [true, true, true], 'a dispatch set');
  } finally {
    await lb.close();
  }
});

test('migrate: a source that refuses its removal stops the move before anything changed; a removal that fails undoes the install', async () => {
  // nft → legacy, another tool's rule in a base chain of table ip iptlb: refused when planned, first.
  {
    const kernels = fakes();
    const a = coreOn('nft', kernels);
    try {
      await apply(a.core, web(1));
      kernels.nft.tables.get('ip')!.chains.get('output')!.push({ kind: 'foreign', text: 'ip daddr 10.0.0.1 accept' });
      await assert.rejects(a.core.migrate('legacy'), (e: IptlbError) =>
        /^table ip iptlb holds rules iptlb did not write in its base chain output; removing iptlb's objects would remove them/.test(
          e.message,
        ),
      );
      assert.equal(kernels.legacy.commits.length, 0, 'nothing installed in legacy');
      assert.equal(kernels.nft.tables.get('ip')!.chains.get('output')!.length, 2);
    } finally {
      a.done();
    }
  }
  // legacy → nft, the legacy removal refused by the kernel after the nft install: the install is undone.
  {
    const kernels = fakes();
    const a = coreOn('legacy', kernels);
    try {
      await apply(a.core, web(1));
      const legacyBefore = JSON.stringify([...kernels.legacy.tables]);
      kernels.legacy.fail = (tx) =>
        tx.deleteChains.length ? kernelError(31, 'deleting chain: Too many links') : undefined;
      await assert.rejects(a.core.migrate('nft'), (e: IptlbError) =>
        /^removing iptlb's objects from the legacy engine failed \(.*Too many links.*\); the install in the nft engine was undone, nothing was changed$/.test(
          e.message,
        ),
      );
      assert.equal(kernels.nft.tables.has('ip'), false, 'table ip iptlb is gone again');
      assert.equal(JSON.stringify([...kernels.legacy.tables]), legacyBefore);
      assert.equal(existsSync(`${a.file}.engine`), false, 'no engine recorded');
      kernels.legacy.fail = undefined;
      await a.core.migrate('nft');
      assert.equal(kernels.nft.tables.has('ip'), true);
    } finally {
      a.done();
    }
  }
});

/** A Core of its own (another process) on state file `file`, over the same fake kernels. */
const another = (file: string, engine: EngineName | 'auto', kernels: ReturnType<typeof fakes>, lines: string[] = []) =>
  new Core({ stateFile: file, engine, log: (l) => lines.push(l) }, kernels as unknown as Record<EngineName, Executor>);
const refusedByEngine = (re: RegExp) => (e: IptlbError) =>
  e.code === 'ECONFLICT' && e.field === 'engine' && re.test(e.message);

test("another process's migrate: a running writer (auto) follows it under the lock; one that asked for the engine left is refused", async () => {
  const kernels = fakes();
  const seed = coreOn('legacy', kernels);
  try {
    await apply(seed.core, web(1));
    const lines: string[] = [];
    const handle = another(seed.file, 'auto', kernels, lines);
    const pinned = another(seed.file, 'legacy', kernels);
    await apply(handle, web(2));
    await apply(pinned, web(3));
    assert.equal(kernels.nft.commits.length, 0);
    const r = await another(seed.file, 'auto', kernels).migrate('nft');
    assert.equal(r.moved, 3);
    assert.equal(
      readFileSync(`${seed.file}.engine`, 'utf8'),
      'nft\n',
      'migrate records the engine beside the state file',
    );
    const legacyCommits = kernels.legacy.commits.length;
    // The handle chose legacy at its start; its next change goes where the profiles are now.
    const done = await apply(handle, web(4));
    assert.equal(done.engine, 'nft');
    assert.equal(kernels.legacy.commits.length, legacyCommits, 'nothing committed to the engine migrate left');
    assert.ok(
      lines.some((l) => /moved the profiles from the legacy engine to nft; following them$/.test(l)),
      lines.join('\n'),
    );
    assert.deepEqual(await statuses(handle), { web1: 'in-sync', web2: 'in-sync', web3: 'in-sync', web4: 'in-sync' });
    assert.equal(await handle.engineSplit(), undefined);
    // Its sync (watch mode's repair) too: the kernel is in step on nft, nothing to do, nothing put back in legacy.
    assert.equal((await handle.sync()).committed, false);
    // --engine=legacy (or IPTLB_ENGINE) against the record: refused, for a change and a sync, nothing changed.
    await assert.rejects(
      apply(pinned, web(5)),
      refusedByEngine(
        /^engine: legacy was asked for \(--engine, IPTLB_ENGINE or the engine option\), but `iptlb migrate` moved this state file's profiles to the nft engine \(.*state\.db\.engine\): run `iptlb migrate --to legacy` to move them, or leave the engine auto$/,
      ),
    );
    await assert.rejects(pinned.sync(), refusedByEngine(/^engine: legacy was asked for/));
    assert.equal(kernels.legacy.commits.length, legacyCommits);
    assert.deepEqual((await handle.readState()).has('web5'), false);
    // A fresh process with auto takes the recorded engine without asking the kernel (it survives a reboot).
    assert.equal((await another(seed.file, 'auto', kernels).select()).engine, 'nft');
  } finally {
    seed.done();
  }
});

test('an explicit engine while the other holds iptlb rules refuses changes (migrate itself goes on); both engines holding them is a split', async () => {
  const kernels = fakes();
  const seed = coreOn('legacy', kernels);
  try {
    await apply(seed.core, web(1));
    const nft = another(seed.file, 'nft', kernels);
    await assert.rejects(
      apply(nft, web(2)),
      refusedByEngine(
        /^engine: nft was asked for \(--engine, IPTLB_ENGINE or the engine option\), but iptlb's rules are in the legacy engine: run `iptlb migrate --to nft` to move them, or leave the engine auto$/,
      ),
    );
    assert.equal(kernels.nft.commits.length, 0);
    assert.deepEqual([...(await nft.readState()).keys()], ['web1']);
    assert.deepEqual(await statuses(nft), { web1: 'missing' }, 'a read goes on');
    await nft.migrate('nft');
    await apply(nft, web(2));
    assert.deepEqual(await statuses(nft), { web1: 'in-sync', web2: 'in-sync' });
  } finally {
    seed.done();
  }
  // Both engines hold iptlb's objects (another state file's writer over the nft executor alone, an older iptlb).
  const both = fakes();
  const a = coreOn('legacy', both);
  const b = tmpState();
  try {
    await apply(a.core, web(1));
    await apply(new Core({ stateFile: b.file }, both.nft as Executor), web(2));
    const auto = another(a.file, 'auto', both);
    assert.equal(
      await auto.engineSplit(),
      "iptlb's rules are in both engines (the x_tables nat table and table ip/ip6 iptlb), and traffic may use either copy: run `iptlb migrate --to legacy` (or --to nft) to keep them in one",
    );
    await assert.rejects(
      apply(auto, web(3)),
      refusedByEngine(/^iptlb's rules are in both engines .*\(or --to nft\) to keep them in one$/),
    );
    // A migrate killed between its install and its removal: the record names the engine every profile is in.
    writeFileSync(`${a.file}.engine`, 'nft\n');
    const after = another(a.file, 'auto', both);
    assert.equal((await apply(after, web(3))).engine, 'nft');
    assert.match(
      (await after.engineSplit()) ?? '',
      /run `iptlb migrate --to nft` \(or --to legacy\) to keep them in one$/,
    );
  } finally {
    a.done();
    b.done();
  }
});

test('a change after a migrate killed between its install and its removal says that the rules are in both engines (result.split) until they are not; the move marker goes then', async () => {
  const kernels = fakes();
  const a = coreOn('legacy', kernels);
  const marker = `${a.file}.engine.moving`;
  try {
    await apply(a.core, web(1));
    // A migrate to nft: installed there, recorded, killed before emptying legacy (its marker left).
    await new Core({ stateFile: a.file, engine: 'nft' }, kernels.nft as unknown as Executor).sync();
    writeFileSync(`${a.file}.engine`, 'nft\n');
    writeFileSync(marker, 'legacy nft\n');
    const after = another(a.file, 'auto', kernels);
    const r = await apply(after, web(2));
    assert.equal(r.engine, 'nft');
    assert.match(r.split ?? '', /^iptlb's rules are in both engines .*run `iptlb migrate --to nft`/);
    assert.ok(existsSync(marker), 'kept while they are');
    // migrate again: legacy emptied, the marker removed by the migrate itself.
    await after.migrate('nft');
    assert.equal(existsSync(marker), false);
    assert.equal((await apply(after, web(3))).split, undefined);
    // A marker with the rules in one engine (a migrate that failed and undid its install): the next change
    // asks, finds no copy, says nothing and removes it.
    writeFileSync(marker, 'nft legacy\n');
    assert.equal((await apply(after, web(4))).split, undefined);
    assert.equal(existsSync(marker), false);
    // Without a marker a change does not ask the other engine (the state file says nothing of a move).
    await new Core({ stateFile: a.file, engine: 'legacy' }, kernels.legacy as unknown as Executor).sync();
    assert.equal((await apply(after, web(5))).split, undefined);
  } finally {
    a.done();
  }
});

test('migrate leaves its move marker when it fails after marking, and removes it when it succeeds', async () => {
  const kernels = fakes();
  const a = coreOn('legacy', kernels);
  const marker = `${a.file}.engine.moving`;
  try {
    await apply(a.core, web(1));
    kernels.legacy.fail = () => kernelError(22, 'refused');
    await assert.rejects(a.core.migrate('nft'));
    kernels.legacy.fail = undefined;
    assert.ok(existsSync(marker));
    await a.core.migrate('nft');
    assert.equal(existsSync(marker), false);
    assert.equal(readFileSync(`${a.file}.engine`, 'utf8'), 'nft\n');
  } finally {
    a.done();
  }
});

test('a state file that does not exist is refused by sync, migrate, -use-state and their plan when they require it: ESTATE naming it, before anything is created or committed; {} is no profiles', async () => {
  const kernels = fakes();
  const a = coreOn('nft', kernels);
  const dir = path.join(path.dirname(a.file), 'x');
  try {
    await apply(a.core, web(1));
    const commits = kernels.nft.commits.length + kernels.legacy.commits.length;
    const wrong = new Core(
      { stateFile: path.join(dir, 'nonexistent', 'state.db'), engine: 'nft' },
      kernels as unknown as Record<EngineName, Executor>,
    );
    const useState = (state: Map<string, unknown>) => ({ upsert: [], remove: [...state.keys()] });
    for (const [what, call] of [
      ['sync', () => wrong.sync({ requireFile: true })],
      ['migrate', () => wrong.migrate('legacy', { requireFile: true })],
      ['-use-state -run -delete', () => wrong.transact(useState, { run: true, requireFile: true })],
      ['plan --use-state --delete', () => wrong.plan(useState, { requireFile: true })],
    ] as const) {
      await assert.rejects(
        (call as () => Promise<unknown>)(),
        (e: IptlbError) =>
          e.code === 'ESTATE' &&
          e.field === 'state-file' &&
          e.exitCode === 1 &&
          /^state-file: \S+\/x\/nonexistent\/state\.db does not exist; nothing was changed/.test(e.message),
        what,
      );
      assert.equal(existsSync(dir), false, `${what}: no directory, no lock file`);
    }
    assert.equal(kernels.nft.commits.length + kernels.legacy.commits.length, commits, 'nothing committed');
    assert.deepEqual(await statuses(a.core), { web1: 'in-sync' });
    // Without requireFile (the library's sync, watch's own checks) it is read as before.
    assert.equal(await wrong.stateFileExists(), false);
    // An existing empty file is no profiles: its sync removes web1.
    const empty = path.join(path.dirname(a.file), 'empty.db');
    writeFileSync(empty, '{}\n');
    const e = new Core({ stateFile: empty, engine: 'nft' }, kernels as unknown as Record<EngineName, Executor>);
    assert.equal((await e.sync({ requireFile: true })).committed, true);
    assert.deepEqual(await statuses(a.core), { web1: 'missing' });
  } finally {
    a.done();
  }
});

for (const registered of [false, true])
  test(`migrate refuses, changing nothing, when either engine holds profiles its state file does not hold (another state file's)${registered ? ', naming the registered state file that holds them' : ''}`, async () => {
    const kernels = fakes();
    const registry = registered ? mkdtempSync(path.join(tmpdir(), 'iptlb-reg-')) : undefined;
    const opts = registry ? { stateRegistry: registry } : {};
    const a = coreOn('legacy', kernels, [], opts);
    const b = coreOn('nft', kernels);
    try {
      await apply(a.core, web(1));
      // Another state file's writer with an executor of its own (a handle given only the nft executor):
      // an explicit engine over both kernels would be refused while legacy holds rules.
      await apply(new Core({ stateFile: b.file, engine: 'nft', ...opts }, kernels.nft as unknown as Executor), web(2));
      const before = JSON.stringify([[...kernels.legacy.tables], [...kernels.nft.tables]]);
      const commits = kernels.nft.commits.length + kernels.legacy.commits.length;
      const bCore = new Core(
        { stateFile: b.file, engine: 'nft', ...opts },
        kernels as unknown as Record<EngineName, Executor>,
      );
      const owned = (o: string, file: string): string =>
        registered ? `${o}, a profile of ${file}` : `${o}: another state file's, or left by an interrupted change`;
      for (const [core, to, holder, other] of [
        [a.core, 'legacy', 'nft', owned('127.100.0.12:80', b.file)],
        [a.core, 'nft', 'nft', owned('127.100.0.12:80', b.file)],
        [bCore, 'nft', 'legacy', owned('web1', a.file)],
        [bCore, 'legacy', 'legacy', owned('web1', a.file)],
      ] as const)
        await assert.rejects(
          core.migrate(to),
          (e: IptlbError) =>
            e.code === 'ECONFLICT' &&
            e.field === 'state-file' &&
            e.message.startsWith(`state-file: the ${holder} engine holds iptlb rules of profiles `) &&
            e.message.includes(`(${other}); `) &&
            e.message.includes('migrate would leave them without rules, so nothing was changed'),
          `${to} from ${holder}`,
        );
      assert.equal(kernels.nft.commits.length + kernels.legacy.commits.length, commits, 'nothing committed');
      assert.equal(JSON.stringify([[...kernels.legacy.tables], [...kernels.nft.tables]]), before);
    } finally {
      a.done();
      b.done();
      if (registry) rmSync(registry, { recursive: true, force: true });
    }
  });

test('migrate says what keeps the engine: the record beside the state file (auto takes it), a pinned other engine is a warning', async () => {
  {
    const lines: string[] = [];
    const a = coreOn('auto' as EngineName, fakes(), lines);
    try {
      await apply(a.core, web(1));
      lines.length = 0;
      await a.core.migrate('legacy');
      await a.core.migrate('nft');
      assert.doesNotMatch(lines.join('\n'), /not recorded|IPTLB_ENGINE/, 'recorded: nothing to do');
    } finally {
      a.done();
    }
  }
  {
    const lines: string[] = [];
    const a = coreOn('nft', fakes(), lines);
    try {
      await apply(a.core, web(1));
      await a.core.migrate('legacy');
      assert.match(
        lines.at(-1)!,
        /^warning: --engine \(or IPTLB_ENGINE\) says nft: changes made with it are refused now that the profiles are in the legacy engine; set it to legacy/,
      );
    } finally {
      a.done();
    }
  }
});

test('group commit: a batch the kernel refuses is split until the culprit is alone; every other call lands', async () => {
  for (const engine of ['legacy', 'nft'] as const) {
    const kernels = fakes();
    const bad = (tx: unknown): boolean => JSON.stringify(tx).includes('127.100.0.66');
    kernels.legacy.fail = (tx) => (bad(tx) ? kernelError(22, 'refused') : undefined);
    kernels.nft.fail = (tx) => (bad(tx) ? kernelError(22, 'refused') : undefined);
    const lb = await open({ stateFile: false }, (engine === 'legacy' ? kernels.legacy : kernels.nft) as Executor);
    const inputs = Array.from({ length: 8 }, (_, i) => web(i, 2, i === 5 ? '127.100.0.66:80' : undefined));
    const results = await Promise.allSettled(inputs.map((p) => lb.apply(p)));
    assert.deepEqual(
      results.map((r) => r.status),
      inputs.map((_, i) => (i === 5 ? 'rejected' : 'fulfilled')),
      engine,
    );
    assert.match(String((results[5] as PromiseRejectedResult).reason), /refused/);
    const names = (await lb.list()).map((p) => p.name).sort();
    assert.deepEqual(names, ['web0', 'web1', 'web2', 'web3', 'web4', 'web6', 'web7']);
    // The kernel holds exactly the profiles that landed.
    const held = new Core({ stateFile: false, engine }, kernels as unknown as Record<EngineName, Executor>);
    const view = JSON.stringify(await held.readKernel(), (_k, v) => (typeof v === 'bigint' ? Number(v) : v));
    for (const p of inputs)
      assert.equal(
        view.includes(validateProfile(p).source.split(':')[0]),
        p.source !== '127.100.0.66:80',
        `${engine}: ${p.name}`,
      );
    await lb.close();
  }
});

test("API: every failed call is also an 'error' event when listened to (sync, kernel, list, a closed handle's calls), once each", async () => {
  const kernels = fakes();
  const lb = await open({ stateFile: false }, kernels.nft as Executor);
  const errors: string[] = [];
  lb.on('error', (e) => errors.push((e as IptlbError).code));
  await lb.apply({ name: 'a', source: '127.100.5.1:80', destination: ['127.0.0.1:9001'] });
  // The kernel refuses the sync's repair (the profile's element flushed by hand first).
  kernels.nft.tables.get('ip')!.sets.forEach((set) => set.clear());
  kernels.nft.fail = () => new IptlbError('EKERNEL', 'refused');
  await assert.rejects(lb.sync(), (e: IptlbError) => e.code === 'EKERNEL');
  kernels.nft.fail = undefined;
  await assert.rejects(lb.kernel('ipv7' as never), (e: IptlbError) => e.code === 'EUSAGE');
  await assert.rejects(lb.apply({ name: 'bad name', source: '127.100.5.2:80', destination: ['127.0.0.1:1'] }));
  assert.deepEqual(errors, ['EKERNEL', 'EUSAGE', 'EINVAL_PROFILE']);
  await lb.close();
  for (const f of [() => lb.list(), () => lb.status(), () => lb.apply([]), () => lb.delete('a'), () => lb.sync()])
    await assert.rejects(f(), (e: IptlbError) => e.code === 'EUSAGE');
  assert.deepEqual(errors.slice(3), ['EUSAGE', 'EUSAGE', 'EUSAGE', 'EUSAGE', 'EUSAGE']);
});

for (const engine of ['legacy', 'nft'] as const)
  test(`${engine}: a sync's log line counts a profile once (its rules at an address it left are its own) and names the leftovers no profile owns`, async () => {
    const lines: string[] = [];
    const c = coreOn(engine, fakes(), lines);
    try {
      await apply(c.core, web(1), web(2), web(3));
      // web1 moved to another address and web3 removed in the state file only (no -run): a sync repairs web1
      // and removes web3's rules, a leftover; on nft web1's element at its old address is one more (nft
      // names it by that address, which no profile has now), where legacy replaces web1's chain.
      await c.core.transact(
        (state) => {
          const moved = upsertChange(state, [web(1, 3, '127.100.0.99:80')]);
          return { upsert: moved.upsert, remove: ['web3'] };
        },
        { run: false },
      );
      lines.length = 0;
      assert.equal((await c.core.sync()).committed, true);
      const said = lines.filter((l) => l.startsWith('committed the sync of'));
      assert.equal(said.length, 1, lines.join('\n'));
      assert.match(
        said[0]!,
        new RegExp(
          `^committed the sync of 1 profile\\(s\\) and ${engine === 'nft' ? 2 : 1} leftover\\(s\\) no profile of the state file owns in one`,
        ),
      );
    } finally {
      c.done();
    }
  });

test('countDrifted: orphans named after a profile (rule:NAME, its address, its name) count as that profile', async () => {
  const { countDrifted } = await import('../../src/core/orphans.js');
  const profiles = new Map([web(1), web(2)].map((p) => [p.name, validateProfile(p)] as const));
  const r = (name: string, status: 'orphaned' | 'missing' | 'modified') => ({ name, status });
  assert.deepEqual(
    countDrifted([r('web1', 'modified'), r('127.100.0.11:80', 'orphaned'), r('rule:web1', 'orphaned')], profiles),
    {
      profiles: 1,
      leftovers: 0,
    },
  );
  assert.deepEqual(
    countDrifted([r('web2', 'missing'), r('web9', 'orphaned'), r('127.100.0.99:80', 'orphaned')], profiles),
    {
      profiles: 1,
      leftovers: 2,
    },
  );
});

/**
 * The original iptlb's rules in a fake table, as it writes them (seed-behaviour.md): its chain with a DNAT rule and
 * RETURN, and a jump without a comment (no owner here) at the top of OUTPUT.
 */
function originalRules(kernel: FakeLegacyKernel, family: 'ipv4' | 'ipv6', name: string, vip: string, port: number) {
  const v6 = family === 'ipv6';
  const t: FakeNatTable = kernel.tables.get(family) ?? {
    hooks: { OUTPUT: [], PREROUTING: [], POSTROUTING: [], INPUT: [] },
    chains: new Map(),
  };
  const chain = `IPTLB_NAT_${name.toUpperCase()}`;
  const dst = `${vip}/${v6 ? 128 : 32}`;
  const head = { dst, proto: 'tcp' as const, matches: [{ name: 'tcp' as const, dport: port }] };
  t.chains.set(chain, [
    { ...head, target: { name: 'DNAT', toDestination: v6 ? '[2001:db8::a]:9001' : '127.0.0.1:9001' } },
    { matches: [], target: { name: 'RETURN' } },
  ]);
  t.hooks.OUTPUT.unshift({ rule: { ...head, target: { name: 'jump', chain } } });
  kernel.tables.set(family, t);
}

/** A state file as the original iptlb wrote it: profiles `[name, source, destination]`, client, tcp. */
const originalStateText = (profiles: string[][]): string =>
  profiles
    .map(
      ([n, s, d]) =>
        `${n}:\n  destination:\n  - ${d}\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: ${s}\n`,
    )
    .join('');

/** The original iptlb's state file holding its profile `test` at 127.100.0.10:8081 (as originalRules writes it). */
const ORIGINAL_STATE = originalStateText([['test', '127.100.0.10:8081', '127.0.0.1:9001']]);

/** The original's state file with `test` (IPv4) and `six` (IPv6), as the --verbose takeover tests write it. */
const ORIGINAL_TEST_AND_SIX = originalStateText([
  ['test', '127.100.0.10:8081', '127.0.0.1:9001'],
  ['six', '"[2001:db8::1]:8081"', '"[2001:db8::a]:9001"'],
]);

/** What --verbose says of `core`'s last change (its commits described), the lines `keep` accepts. */
const describedCommits = (core: Core, keep: (line: string) => boolean): string[] =>
  core.commits.flatMap(({ engine, tx }) => engine.describeTransaction(tx)).filter(keep);

/** A fake kernel's tables as text: equal texts mean nothing changed. */
const tablesText = (k: FakeLegacyKernel | FakeNftKernel): string =>
  JSON.stringify([...k.tables], (_, v) => (v instanceof Map || v instanceof Set ? [...v] : v));

test("legacy: a new profile at the address of the original iptlb's jump (no comment) is refused naming source, IPv4 and IPv6, nothing changed; the original's profile is still taken over under its name", async () => {
  const kernels = fakes();
  originalRules(kernels.legacy, 'ipv4', 'test', '127.100.0.10', 8081);
  originalRules(kernels.legacy, 'ipv6', 'six', '2001:db8::1', 8081);
  const A = coreOn('legacy', kernels);
  try {
    const before = tablesText(kernels.legacy);
    const commits = kernels.legacy.commits.length;
    for (const [p, hook, rule] of [
      [
        { name: 'web2', source: '127.100.0.10:8081', destination: ['127.0.0.1:9003'] },
        'OUTPUT',
        'iptables-legacy -t nat -D OUTPUT -p tcp -d 127.100.0.10 --dport 8081 -j IPTLB_NAT_TEST',
      ],
      [
        { name: 'web6', source: '[2001:db8::1]:8081', destination: ['[2001:db8::a]:9003'] },
        'OUTPUT',
        'ip6tables-legacy -t nat -D OUTPUT -p tcp -d 2001:db8::1 --dport 8081 -j IPTLB_NAT_SIX',
      ],
    ] as [ProfileInput, string, string][]) {
      await assert.rejects(apply(A.core, p), (e: IptlbError) => {
        assert.equal(e.code, 'ECONFLICT');
        assert.equal(e.field, 'source');
        assert.ok(
          e.message.startsWith(
            `source: profile ${p.name}: its address is served by the original iptlb's rule in ${hook} (`,
          ),
          e.message,
        );
        assert.ok(e.message.includes('take that profile over under its original name'), e.message);
        assert.ok(e.message.endsWith(`delete the original's rule: ${rule}`), e.message);
        assert.ok(!e.message.includes('\n'), 'one line');
        return true;
      });
    }
    assert.equal(kernels.legacy.commits.length, commits, 'nothing committed');
    assert.equal(tablesText(kernels.legacy), before, 'the tables unchanged');
    assert.equal(existsSync(A.file), false, 'no state file written');
    // Another port of the same address is free; so is the address in PREROUTING (another hook).
    await apply(A.core, { name: 'other', source: '127.100.0.10:8082', destination: ['127.0.0.1:9003'] });
    const P = coreOn('legacy', kernels);
    await apply(P.core, {
      name: 'proxy',
      source: '127.100.0.10:8081',
      destination: ['127.0.0.1:9003'],
      rulesBackend: 'proxy',
    });
    P.done();
    // The original's own profile, from its state file: taken over, its jump deleted with the chain refilled.
    const B = coreOn('legacy', kernels);
    try {
      writeFileSync(B.file, ORIGINAL_STATE);
      await apply(B.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9004'] });
      const out = kernels.legacy.tables.get('ipv4')!.hooks.OUTPUT;
      assert.deepEqual(
        out.map((r) => r.owner ?? 'none'),
        ['test', 'other'],
        "the original's jump is gone",
      );
      // Now iptlb's: a new profile at that address is refused as another profile's.
      await assert.rejects(
        apply(A.core, { name: 'web2', source: '127.100.0.10:8081', destination: ['127.0.0.1:9003'] }),
        (e: IptlbError) => e.field === 'source' && /its address is taken in the kernel by profile test/.test(e.message),
      );
    } finally {
      B.done();
    }
  } finally {
    A.done();
  }
});

test("legacy --verbose: the original iptlb's jumps a change deletes are listed (a takeover refills its chain, a delete removes it), IPv4 and IPv6", async () => {
  const kernels = fakes();
  originalRules(kernels.legacy, 'ipv4', 'test', '127.100.0.10', 8081);
  originalRules(kernels.legacy, 'ipv6', 'six', '2001:db8::1', 8081);
  const A = coreOn('legacy', kernels);
  try {
    writeFileSync(A.file, ORIGINAL_TEST_AND_SIX);
    const described = (): string[] => describedCommits(A.core, (l) => l.includes('original'));
    await apply(A.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9004'] });
    assert.deepEqual(described(), [
      "[delete] nat/OUTPUT: -d 127.100.0.10/32 -p tcp -m tcp --dport 8081 -j IPTLB_NAT_TEST (the original iptlb's jump, no comment)",
    ]);
    await A.core.transact((state) => deleteChange(state, ['six']), { run: true });
    assert.deepEqual(described(), [
      "[delete] ip6tables nat/OUTPUT: -d 2001:db8::1/128 -p tcp -m tcp --dport 8081 -j IPTLB_NAT_SIX (the original iptlb's jump, no comment)",
    ]);
    // A change that deletes none lists none.
    await apply(A.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9005'] });
    assert.deepEqual(described(), []);
  } finally {
    A.done();
  }
});

test("legacy: a profile the state file holds whose chain another tool's chain jumps to (the original's chain, taken over): the refusal says so, not that the state file does not hold it; nothing changed", async () => {
  const kernels = fakes();
  originalRules(kernels.legacy, 'ipv4', 'test', '127.100.0.10', 8081);
  const t = kernels.legacy.tables.get('ipv4')!;
  t.chains.set('MYCHAIN', [{ matches: [], target: { name: 'jump', chain: 'IPTLB_NAT_TEST' } }]);
  const A = coreOn('legacy', kernels);
  try {
    const original = ORIGINAL_STATE;
    writeFileSync(A.file, original);
    const before = tablesText(kernels.legacy);
    await assert.rejects(
      apply(A.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9003'] }),
      (e: IptlbError) => {
        assert.equal(e.code, 'ECONFLICT');
        assert.equal(e.field, 'name');
        assert.equal(
          e.message,
          "name: profile test: its chain IPTLB_NAT_TEST, which this change refills, is jumped to by a rule iptlb did not write (in MYCHAIN), whose packets would reach this profile's new rules: remove that jump (`iptables-legacy-save -t nat | grep -- '-j IPTLB_NAT_TEST'` finds it), then apply again",
        );
        return true;
      },
    );
    assert.equal(tablesText(kernels.legacy), before, 'the table unchanged');
    assert.equal(readFileSync(A.file, 'utf8'), original, 'the state file unchanged');
    // Without that jump, the original's profile is taken over.
    t.chains.delete('MYCHAIN');
    await apply(A.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9003'] });
    assert.deepEqual(await statuses(A.core), { test: 'in-sync' });
  } finally {
    A.done();
  }
});

/**
 * The original iptlb's jump in iptables-nft's `table <family> nat` as the nft executors read it: `-p tcp -d VIP
 * --dport PORT -j IPTLB_NAT_<NAME>` (no comment) at the top of OUTPUT (seed-behaviour.md).
 */
function originalNftJump(kernel: FakeNftKernel, family: 'ip' | 'ip6', name: string, vip: string, port: number) {
  const jumps = kernel.originals.get(family) ?? [];
  jumps.unshift({
    chain: 'OUTPUT',
    handle: 4 + jumps.length,
    target: `IPTLB_NAT_${name.toUpperCase()}`,
    ip: vip,
    proto: 'tcp',
    port,
  });
  kernel.originals.set(family, jumps);
  kernel.natChains.set(family, new Set([...(kernel.natChains.get(family) ?? []), `IPTLB_NAT_${name.toUpperCase()}`]));
}

test("nft: a new profile at the address of the original iptlb's jump (iptables-nft's table ip nat / ip6 nat) is refused naming source and the command that deletes it, IPv4 and IPv6, nothing changed; another port, protocol or hook is not; a profile moved there is", async () => {
  const kernels = fakes();
  originalNftJump(kernels.nft, 'ip', 'test', '127.100.0.10', 8081);
  originalNftJump(kernels.nft, 'ip6', 'six', '2001:db8::1', 8081);
  const A = coreOn('nft', kernels);
  try {
    const before = tablesText(kernels.nft);
    for (const [p, rule] of [
      [
        { name: 'web2', source: '127.100.0.10:8081', destination: ['127.0.0.1:9003'] },
        'table ip nat chain OUTPUT (-p tcp -d 127.100.0.10 --dport 8081 -j IPTLB_NAT_TEST, no comment)',
      ],
      [
        { name: 'web6', source: '[2001:db8::1]:8081', destination: ['[2001:db8::a]:9003'] },
        'table ip6 nat chain OUTPUT (-p tcp -d 2001:db8::1 --dport 8081 -j IPTLB_NAT_SIX, no comment)',
      ],
    ] as [ProfileInput, string][]) {
      const v6 = p.name === 'web6';
      await assert.rejects(apply(A.core, p), (e: IptlbError) => {
        assert.equal(e.code, 'ECONFLICT');
        assert.equal(e.field, 'source');
        assert.equal(
          e.message,
          `source: profile ${p.name}: its address is served by the original iptlb's rule in ${rule}, which iptlb does not change and this change would leave in place (two tables' nat rules for one address: the chain the kernel registered first wins): delete the original's rule, then apply again: ${v6 ? 'ip6tables-nft -t nat -D OUTPUT -p tcp -d 2001:db8::1 --dport 8081 -j IPTLB_NAT_SIX' : 'iptables-nft -t nat -D OUTPUT -p tcp -d 127.100.0.10 --dport 8081 -j IPTLB_NAT_TEST'}`,
        );
        return true;
      });
    }
    assert.equal(kernels.nft.commits.length, 0, 'nothing committed');
    assert.equal(tablesText(kernels.nft), before, 'the tables unchanged');
    assert.equal(existsSync(A.file), false, 'no state file written');
    // Another port of the same address and another protocol are free (the address in PREROUTING below).
    await apply(A.core, { name: 'other', source: '127.100.0.10:8082', destination: ['127.0.0.1:9003'] });
    await apply(A.core, { name: 'dns', source: '127.100.0.10:8081', destination: ['127.0.0.1:9003'], protocol: 'udp' });
    // A profile moved to that address is new there: refused, nothing changed.
    const commits = kernels.nft.commits.length;
    const state = readFileSync(A.file, 'utf8');
    await assert.rejects(
      apply(A.core, { name: 'other', source: '127.100.0.10:8081', destination: ['127.0.0.1:9003'] }),
      (e: IptlbError) =>
        e.field === 'source' &&
        e.message.startsWith(
          "source: profile other: its address is served by the original iptlb's rule in table ip nat chain OUTPUT (",
        ),
    );
    assert.equal(kernels.nft.commits.length, commits, 'nothing committed');
    assert.equal(readFileSync(A.file, 'utf8'), state, 'the state file unchanged');
    // The address in PREROUTING (another hook) is free.
    const P = coreOn('nft', kernels);
    await apply(P.core, {
      name: 'proxy',
      source: '127.100.0.10:8081',
      destination: ['127.0.0.1:9003'],
      rulesBackend: 'proxy',
    });
    P.done();
    // Once the jump is deleted, the profile applies.
    kernels.nft.originals.delete('ip6');
    await apply(A.core, { name: 'web6', source: '[2001:db8::1]:8081', destination: ['[2001:db8::a]:9003'] });
    assert.equal((await statuses(A.core)).web6, 'in-sync');
  } finally {
    A.done();
  }
});

test("nft: the original iptlb's jumps are read only by a state-file instance's change that makes a profile new at its address or applies or deletes one of its state file; the original's own profile, applied through its state file, takes its rules over", async () => {
  const kernels = fakes();
  originalNftJump(kernels.nft, 'ip', 'test', '127.100.0.10', 8081);
  const A = coreOn('nft', kernels);
  try {
    await apply(A.core, { name: 'other', source: '127.100.0.10:8082', destination: ['127.0.0.1:9003'] });
    assert.equal(kernels.nft.originalReads, 1, 'a new profile: read');
    // Changes of a profile of the state file: read (the original's rules of that name would be taken over), nothing
    // of table ip nat deleted (no jump to IPTLB_NAT_OTHER).
    await apply(A.core, { name: 'other', source: '127.100.0.10:8082', destination: ['127.0.0.1:9004'] });
    await A.core.transact((s) => deleteChange(s, ['other']), { run: true });
    assert.equal(kernels.nft.originalReads, 3);
    assert.equal(kernels.nft.originals.get('ip')!.length, 1, "the original's jump to another chain kept");
    assert.ok(kernels.nft.commits.every((tx) => tx.ops.every((o) => !o.op.startsWith('deleteNat'))));
  } finally {
    A.done();
  }
  // The original's own profile, from its state file (as it wrote it), at the address of its jump: applied, not
  // refused, and its rules in table ip nat taken over in the same transaction.
  const B = coreOn('nft', kernels);
  try {
    writeFileSync(B.file, ORIGINAL_STATE);
    await apply(B.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9004'] });
    assert.deepEqual(await statuses(B.core), { test: 'in-sync' });
    assert.deepEqual(kernels.nft.originals.get('ip'), []);
    assert.deepEqual([...kernels.nft.natChains.get('ip')!], []);
  } finally {
    B.done();
  }
  // A change that creates the table (every profile of the state file written, after the change's commit found no
  // table) takes over the original's rules of the untouched profiles too.
  const rebuild = fakes();
  originalNftJump(rebuild.nft, 'ip', 'test', '127.100.0.10', 8081);
  originalNftJump(rebuild.nft, 'ip', 'keep', '127.100.0.11', 8081);
  const C = coreOn('nft', rebuild);
  try {
    writeFileSync(
      C.file,
      originalStateText([
        ['test', '127.100.0.10:8081', '127.0.0.1:9001'],
        ['keep', '127.100.0.11:8081', '127.0.0.1:9001'],
      ]),
    );
    await apply(C.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9004'] });
    assert.deepEqual(rebuild.nft.originals.get('ip'), [], 'both profiles of the state file taken over');
    assert.deepEqual([...rebuild.nft.natChains.get('ip')!], []);
    assert.deepEqual(await statuses(C.core), { test: 'in-sync', keep: 'in-sync' });
  } finally {
    C.done();
  }
  // An in-memory instance takes the address (as it takes another state file's, and as on legacy).
  const memory = fakes();
  originalNftJump(memory.nft, 'ip', 'test', '127.100.0.10', 8081);
  const lb = await open({ stateFile: false }, memory.nft as Executor);
  try {
    await lb.apply({ name: 'web2', source: '127.100.0.10:8081', destination: ['127.0.0.1:9003'] });
    assert.equal(memory.nft.originalReads, 0);
  } finally {
    await lb.close();
  }
});

test("nft: a jump of the original's whose match iptlb does not read whole is refused as one that may serve the address (what it reads of it decides), naming the rule's handle and the nft command that deletes it", async () => {
  const kernels = fakes();
  kernels.nft.originals.set('ip', [
    {
      chain: 'OUTPUT',
      handle: 7,
      target: 'IPTLB_NAT_S',
      ip: '127.100.0.12',
      proto: 'sctp',
      unknown: 'xt match sctp',
    },
  ]);
  const A = coreOn('nft', kernels);
  try {
    await assert.rejects(
      apply(A.core, { name: 's', source: '127.100.0.12:99', destination: ['127.0.0.1:9003'], protocol: 'sctp' }),
      (e: IptlbError) => {
        assert.equal(e.code, 'ECONFLICT');
        assert.equal(e.field, 'source');
        assert.equal(
          e.message,
          "source: profile s: its address may be served by the original iptlb's rule in table ip nat chain OUTPUT (handle 7: -d 127.100.0.12 -j IPTLB_NAT_S, no comment, with a match iptlb does not read: xt match sctp), which iptlb does not change and this change would leave in place (two tables' nat rules for one address: the chain the kernel registered first wins): see it with `nft -a list chain ip nat OUTPUT`; if it matches 127.100.0.12:99/sctp, delete it, then apply again: nft delete rule ip nat OUTPUT handle 7",
        );
        return true;
      },
    );
    assert.equal(kernels.nft.commits.length, 0);
    // What it reads excludes these: another protocol, another address.
    await apply(A.core, { name: 't', source: '127.100.0.12:99', destination: ['127.0.0.1:9003'] });
    await apply(A.core, { name: 's', source: '127.100.0.13:99', destination: ['127.0.0.1:9003'], protocol: 'sctp' });
  } finally {
    A.done();
  }
});

test("nft: the original iptlb's jump in PREROUTING refuses a proxy or server profile at its address, not a client one (its rules see other packets); the change asks only for the chains its new profiles go to", async () => {
  const kernels = fakes();
  kernels.nft.originals.set('ip', [
    { chain: 'PREROUTING', handle: 9, target: 'IPTLB_NAT_DNS', ip: '127.100.0.11', proto: 'udp', port: 53 },
  ]);
  const asked: string[][] = [];
  const read = kernels.nft.originalJumps.bind(kernels.nft);
  kernels.nft.originalJumps = (f, chains) => {
    asked.push([...(chains ?? [])]);
    return read(f, chains);
  };
  const A = coreOn('nft', kernels);
  try {
    for (const rulesBackend of ['proxy', 'server'] as const)
      await assert.rejects(
        apply(A.core, {
          name: 'dns',
          source: '127.100.0.11:53',
          destination: ['127.0.0.1:9003'],
          protocol: 'udp',
          rulesBackend,
        }),
        (e: IptlbError) =>
          e.field === 'source' &&
          e.message.endsWith(
            "in table ip nat chain PREROUTING (-p udp -d 127.100.0.11 --dport 53 -j IPTLB_NAT_DNS, no comment), which iptlb does not change and this change would leave in place (two tables' nat rules for one address: the chain the kernel registered first wins): delete the original's rule, then apply again: iptables-nft -t nat -D PREROUTING -p udp -d 127.100.0.11 --dport 53 -j IPTLB_NAT_DNS",
          ),
      );
    assert.equal(kernels.nft.commits.length, 0);
    await apply(A.core, { name: 'dns', source: '127.100.0.11:53', destination: ['127.0.0.1:9003'], protocol: 'udp' });
    assert.deepEqual(asked, [['PREROUTING'], ['PREROUTING'], ['OUTPUT']]);
  } finally {
    A.done();
  }
});

test("nft: a change that applies or deletes a profile of the state file takes the original iptlb's rules of that name over (its jumps by handle and its chain, in iptables-nft's table ip nat / ip6 nat) in the same transaction, IPv4 and IPv6; --verbose lists them; nothing else of table nat is touched", async () => {
  const kernels = fakes();
  originalNftJump(kernels.nft, 'ip', 'test', '127.100.0.10', 8081);
  originalNftJump(kernels.nft, 'ip', 'keep', '127.100.0.11', 8081);
  originalNftJump(kernels.nft, 'ip6', 'six', '2001:db8::1', 8081);
  const A = coreOn('nft', kernels);
  try {
    writeFileSync(A.file, ORIGINAL_TEST_AND_SIX);
    const described = (): string[] => describedCommits(A.core, (l) => / ip6? nat /.test(l));
    // Applied (as -run -reset does): the jump and the chain go in the commit that writes the profile.
    await apply(A.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9004'] });
    const tx = kernels.nft.commits.at(-1)!;
    assert.deepEqual(
      tx.ops.slice(0, 2),
      [
        { op: 'deleteNatRule', chain: 'OUTPUT', handle: 4, target: 'IPTLB_NAT_TEST' },
        { op: 'deleteNatChain', name: 'IPTLB_NAT_TEST' },
      ],
      'in the same batch as the profile',
    );
    assert.ok(tx.ops.slice(2).length > 0);
    assert.deepEqual(described(), [
      "[nft] delete rule ip nat OUTPUT handle 4 (the original iptlb's jump to IPTLB_NAT_TEST, no comment)",
      '[nft] flush chain ip nat IPTLB_NAT_TEST',
      "[nft] delete chain ip nat IPTLB_NAT_TEST (the original iptlb's chain)",
    ]);
    assert.equal(
      (await kernels.nft.render(tx)).split('\n').slice(0, 3).join('\n'),
      'delete rule ip nat OUTPUT handle 4\nflush chain ip nat IPTLB_NAT_TEST\ndelete chain ip nat IPTLB_NAT_TEST',
    );
    assert.deepEqual(
      kernels.nft.originals.get('ip')!.map((j) => j.target),
      ['IPTLB_NAT_KEEP'],
      'another profile of the original, not of this state file, kept',
    );
    assert.deepEqual([...kernels.nft.natChains.get('ip')!], ['IPTLB_NAT_KEEP']);
    assert.equal((await statuses(A.core)).test, 'in-sync');
    // Deleted: the profile's elements and the original's rules of it go together.
    await A.core.transact((state) => deleteChange(state, ['six']), { run: true });
    assert.deepEqual(described(), [
      "[nft] delete rule ip6 nat OUTPUT handle 4 (the original iptlb's jump to IPTLB_NAT_SIX, no comment)",
      '[nft] flush chain ip6 nat IPTLB_NAT_SIX',
      "[nft] delete chain ip6 nat IPTLB_NAT_SIX (the original iptlb's chain)",
    ]);
    assert.deepEqual(kernels.nft.originals.get('ip6'), []);
    assert.deepEqual([...kernels.nft.natChains.get('ip6')!], []);
    // Nothing of the original's left to take over: nothing of table nat in the next change.
    await apply(A.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9005'] });
    assert.deepEqual(described(), []);
  } finally {
    A.done();
  }
});

test("nft: the original's chain that another rule jumps to is not taken over: refused (ECONFLICT) naming the chain, nothing changed; a jump deleted between the read and the commit fails the batch (ENOENT), and the change is made again with the original's rules as they are then", async () => {
  const kernels = fakes();
  originalNftJump(kernels.nft, 'ip', 'test', '127.100.0.10', 8081);
  kernels.nft.natJumpers.set('ip', ['IPTLB_NAT_TEST']);
  const A = coreOn('nft', kernels);
  try {
    writeFileSync(A.file, ORIGINAL_STATE);
    const state = readFileSync(A.file, 'utf8');
    await assert.rejects(
      apply(A.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9004'] }),
      (e: IptlbError) => {
        assert.equal(e.code, 'ECONFLICT');
        assert.equal(
          e.message,
          "name: profile test: the original iptlb's chain IPTLB_NAT_TEST in table ip nat, whose jumps (no comment) this change deletes to take it over, is jumped to by another rule (another tool's, or one with a comment), which iptlb does not delete: nothing changed; remove that jump (`nft -a list table ip nat | grep -- 'IPTLB_NAT_TEST'` finds it), then apply again",
        );
        return true;
      },
    );
    assert.equal(kernels.nft.commits.length, 0, 'nothing committed');
    assert.equal(kernels.nft.originals.get('ip')!.length, 1);
    assert.deepEqual([...kernels.nft.natChains.get('ip')!], ['IPTLB_NAT_TEST']);
    assert.equal(readFileSync(A.file, 'utf8'), state, 'the state file unchanged');
    // That jump gone: the takeover goes through. But the original's jump is deleted (by someone else) between the
    // read and the commit: the batch fails on its handle, nothing of it made; made again with a fresh read.
    kernels.nft.natJumpers.delete('ip');
    const read = kernels.nft.originalJumps.bind(kernels.nft);
    let first = true;
    kernels.nft.originalJumps = async (f, chains) => {
      const jumps = await read(f, chains);
      if (first) kernels.nft.originals.set('ip', []);
      first = false;
      return jumps;
    };
    await apply(A.core, { name: 'test', source: '127.100.0.10:8081', destination: ['127.0.0.1:9004'] });
    assert.equal(kernels.nft.commits.length, 1, 'one batch committed');
    const ops = kernels.nft.commits[0]!.ops;
    assert.ok(!ops.some((o) => o.op === 'deleteNatRule'), 'no handle asked for that was not there');
    assert.equal((await statuses(A.core)).test, 'in-sync');
  } finally {
    A.done();
  }
});

for (const [from, to] of [
  ['legacy', 'nft'],
  ['nft', 'legacy'],
] as const) {
  test(`migrate ${from} → ${to} while a watch's health checks drain a destination: moves the profile as the kernel holds it, drained (it was refused on nft as rules of another state file, or installed the down destination back at its weight)`, async () => {
    const { spawn } = await import('node:child_process');
    const { pidIdentity } = await import('../../src/platform/pid.js');
    const { healthFileOf } = await import('../../src/health/effective.js');
    const kernels = fakes();
    const a = coreOn(from, kernels);
    // The process checking health (a watch): alive, its published file names 127.0.0.1:9002 drained.
    const checker = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    try {
      await apply(a.core, { ...web(1), health: { kind: 'tcp' } });
      writeFileSync(
        healthFileOf(a.file),
        JSON.stringify({
          version: 1,
          pid: checker.pid,
          pidStart: pidIdentity(checker.pid!),
          updatedAt: 0,
          profiles: { web1: { drained: ['127.0.0.1:9002'], destinations: {} } },
        }),
      );
      // As the CLI's commands do: they follow the published health (src/cli/context.ts).
      const following = (engine: EngineName) => {
        const c = new Core({ stateFile: a.file, engine }, kernels as unknown as Record<EngineName, Executor>);
        c.health.follow(healthFileOf(a.file));
        return c;
      };
      await following(from).sync(); // the watch's drain, in the kernel
      assert.deepEqual(await statuses(following(from)), { web1: 'in-sync' });
      await following(from).migrate(to);
      assert.deepEqual(await statuses(following(to)), { web1: 'in-sync' }, 'moved drained');
      const target = new Core({ stateFile: a.file, engine: to }, kernels as unknown as Record<EngineName, Executor>);
      assert.equal((await statuses(target)).web1, 'modified', 'not at the configured weights');
      assert.deepEqual(await statuses(following(from)), { web1: 'missing' }, `${from} emptied`);
    } finally {
      checker.kill();
      a.done();
    }
  });
}

test('nft: a sync whose table another tool deletes between its read and its commit (nft -f: no generation id to catch it) reads again and rebuilds it (before: failed, ENOENT)', async () => {
  const { core, kernels, lines, done } = coreOn('nft');
  try {
    await apply(
      core,
      { name: 'a', source: '127.100.0.1:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] },
      { name: 'b', source: '127.100.0.2:80', destination: ['127.0.0.1:9003'], scheduler: 'round-robin' },
    );
    kernels.nft.tables.get('ip')!.sets.get('out_tcp_2')!.clear(); // drift: a sync has something to repair
    assert.equal((await statuses(core)).a, 'modified');
    let raced = 0;
    kernels.nft.fail = () => {
      // `nft flush ruleset` as the sync's batch goes in; the generation is not what the spawn executor checks.
      if (raced++ === 0) kernels.nft.tables.delete('ip');
      return undefined;
    };
    const r = await core.sync();
    kernels.nft.fail = undefined;
    assert.equal(r.committed, true);
    assert.equal(raced, 2, 'the batch planned against the deleted table, then one planned against none');
    assert.deepEqual(await statuses(core), { a: 'in-sync', b: 'in-sync' });
    assert.equal(lines.filter((l) => l.startsWith('sync a: ')).length, 1, 'the drift is logged once');
    // What the retry found besides is said too: the repair committed it.
    assert.ok(lines.includes('sync b: missing (table ip iptlb does not exist)'), lines.join('\n'));
  } finally {
    done();
  }
});
