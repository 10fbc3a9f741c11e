/**
 * What the command line says a commit did, without root (the fake kernels of test/harness): the
 * `--verbose` lines of every command that commits (apply, delete, sync, migrate: the CLI's one printer,
 * verboseRules), the chain the legacy engine's rules are really in (IPTLB_OUTPUT / IPTLB_PREROUTING
 * behind the gate, not OUTPUT / PREROUTING), and a migration to the engine that already holds the
 * rules, which changes nothing. test/kernel/cli-commits.test.ts runs the same through the CLI in namespaces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Core, deleteChange, upsertChange } from '../../src/core/core.js';
import { verboseRules } from '../../src/cli/context.js';
import { LegacyEngine } from '../../src/engines/legacy/index.js';
import { planTransaction } from '../../src/engines/legacy/plan.js';
import { validateProfile } from '../../src/model/profile.js';
import { FakeLegacyKernel, FakeNftKernel } from '../harness/fake-kernel.js';
import type { EngineName, Family, KernelView, ProfileInput } from '../../src/model/types.js';
import type { Executor } from '../../src/engines/engine.js';

const web = (n: number, more: Partial<ProfileInput> = {}): ProfileInput => ({
  name: `web${n}`,
  source: `127.100.0.${10 + n}:80`,
  destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
  ...more,
});

function setup(engine: EngineName) {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-commits-'));
  const file = path.join(dir, 'state.db');
  const kernels = { legacy: new FakeLegacyKernel(), nft: new FakeNftKernel() };
  const lines: string[] = [];
  const core = new Core(
    { stateFile: file, engine, log: (l) => lines.push(l) },
    kernels as unknown as Record<EngineName, Executor>,
  );
  return { core, kernels, file, lines, done: () => rmSync(dir, { recursive: true, force: true }) };
}

/** What `--verbose` prints after the core's last change, sync or migration. */
function verbose(core: Core): string[] {
  const err: string[] = [];
  verboseRules(core, { out: () => {}, err: (s) => err.push(s) })();
  return err.map((l) => l.replace(/^iptlb: {3}/, ''));
}

const apply = (core: Core, ...inputs: ProfileInput[]) =>
  core.transact((state) => upsertChange(state, inputs), { run: true });

for (const engine of ['legacy', 'nft'] as const) {
  test(`--verbose on ${engine}: delete, sync and migrate print what they committed, as apply does; a sync with nothing to do prints nothing`, async () => {
    const { core, kernels, done } = setup(engine);
    try {
      await apply(core, web(1), web(2));
      const applied = verbose(core);
      assert.ok(applied.length > 0, 'apply');

      await core.transact((state) => deleteChange(state, ['web2']), { run: true });
      const deleted = verbose(core);
      if (engine === 'legacy')
        assert.deepEqual(deleted, [
          '[delete] nat: the rules commented "iptlb:web2"',
          '[delete] nat/IPTLB_NAT_WEB2: the chain',
        ]);
      else {
        assert.ok(deleted.length > 0 && deleted.every((l) => l.startsWith('[nft] ')), deleted.join('\n'));
        assert.ok(
          deleted.some((l) => /^\[nft\] delete element ip iptlb be_tcp \{ 127\.100\.0\.12 \. 80 /.test(l)),
          deleted.join('\n'),
        );
      }

      // Someone flushed web1's rules: the sync puts them back, and says which.
      if (engine === 'legacy') kernels.legacy.tables.get('ipv4')!.chains.set('IPTLB_NAT_WEB1', []);
      else kernels.nft.tables.get('ip')!.maps.get('be_tcp')!.clear();
      const r = await core.sync();
      assert.equal(r.committed, true);
      const synced = verbose(core);
      if (engine === 'legacy')
        assert.deepEqual(synced, [
          '[append] nat/IPTLB_NAT_WEB1: -d 127.100.0.11/32 -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 127.0.0.1:9001',
          '[append] nat/IPTLB_NAT_WEB1: -d 127.100.0.11/32 -p tcp -j DNAT --to-destination 127.0.0.1:9002',
          '[insert] nat/IPTLB_OUTPUT: -d 127.100.0.11/32 -p tcp -m comment --comment "iptlb:web1" -m tcp --dport 80 -j IPTLB_NAT_WEB1',
        ]);
      else
        assert.ok(
          synced.some((l) => /^\[nft\] add element ip iptlb be_tcp \{ 127\.100\.0\.11 \. 80 /.test(l)),
          synced.join('\n'),
        );

      assert.equal((await core.sync()).committed, false);
      assert.deepEqual(verbose(core), [], 'nothing committed, nothing printed');

      // A migration commits through both engines: the install in the other, then the removal here.
      const other = engine === 'legacy' ? 'nft' : 'legacy';
      await core.migrate(other);
      const moved = verbose(core);
      const nftLines = moved.filter((l) => l.startsWith('[nft] '));
      const legacyLines = moved.filter((l) => !l.startsWith('[nft] '));
      assert.ok(nftLines.length > 0 && legacyLines.length > 0, moved.join('\n'));
      if (engine === 'legacy') {
        assert.ok(moved.indexOf(nftLines[0]) < moved.indexOf(legacyLines[0]), 'installed first');
        assert.deepEqual(legacyLines, [
          '[delete] nat: the rules commented "iptlb:web1"',
          '[delete] nat/IPTLB_NAT_WEB1: the chain',
        ]);
      } else {
        assert.ok(moved.indexOf(legacyLines[0]) < moved.indexOf(nftLines[0]), 'installed first');
        assert.ok(
          legacyLines.includes(
            '[insert] nat/IPTLB_OUTPUT: -d 127.100.0.11/32 -p tcp -m comment --comment "iptlb:web1" -m tcp --dport 80 -j IPTLB_NAT_WEB1',
          ),
          legacyLines.join('\n'),
        );
        assert.deepEqual(nftLines, ['[nft] add table ip iptlb', '[nft] delete table ip iptlb']);
      }
    } finally {
      done();
    }
  });
}

test('legacy: --verbose, the apply log line and show name the chain a rule is in: IPTLB_OUTPUT / IPTLB_PREROUTING behind the gate, POSTROUTING, and OUTPUT only for an older jump sitting in OUTPUT itself', async () => {
  const client = validateProfile(web(1));
  const proxy = validateProfile(web(2, { rulesBackend: 'proxy', masquerade: true }));
  const v6 = validateProfile({ name: 'six', source: '[::1]:80', destination: ['[::1]:9001'] });
  const engine = new LegacyEngine(new FakeLegacyKernel());
  const described = [
    ...engine.describeTransaction(planTransaction([client, proxy], [])),
    ...engine.describeTransaction(planTransaction([v6], [], 'ipv6')),
  ];
  const chains = described.map((l) => /^\[\w+\] ([^:]+):/.exec(l)![1]);
  assert.deepEqual(chains, [
    'nat/IPTLB_NAT_WEB1',
    'nat/IPTLB_NAT_WEB1',
    'nat/IPTLB_NAT_WEB2',
    'nat/IPTLB_NAT_WEB2',
    'nat/IPTLB_OUTPUT',
    'nat/IPTLB_PREROUTING',
    'nat/POSTROUTING',
    'ip6tables nat/IPTLB_NAT_SIX',
    'ip6tables nat/IPTLB_OUTPUT',
  ]);
  assert.match(
    engine.describeProfile(client),
    /^client: jump in nat IPTLB_OUTPUT \(behind the gate in OUTPUT\), chain IPTLB_NAT_WEB1 /,
  );
  assert.match(
    engine.describeProfile(proxy),
    /^proxy: jump in nat IPTLB_PREROUTING \(behind the gate in PREROUTING\), .*masquerade in POSTROUTING$/,
  );

  const kernel = new FakeLegacyKernel();
  await kernel.commit(planTransaction([client, proxy], []));
  const shown = new LegacyEngine(kernel);
  const first = (lines: string[]) => lines.map((l) => l.split('\t')[0]);
  assert.deepEqual(first((await shown.show('web1', client, ['ipv4'])).lines), [
    'IPTLB_OUTPUT #1',
    'IPTLB_NAT_WEB1',
    'IPTLB_NAT_WEB1',
  ]);
  assert.deepEqual(first((await shown.show('web2', proxy, ['ipv4'])).lines), [
    'IPTLB_PREROUTING #1',
    'POSTROUTING #1',
    'IPTLB_NAT_WEB2',
    'IPTLB_NAT_WEB2',
  ]);
  // The layout of iptlb before the gate: the jump in nat OUTPUT itself (status: modified until the next commit).
  class Direct extends FakeLegacyKernel {
    override async read(family: Family = 'ipv4'): Promise<KernelView> {
      const view = await super.read(family);
      return { ...view, hookRules: view.hookRules.map((h) => ({ ...h, direct: true })), gate: undefined };
    }
  }
  const direct = new Direct();
  await direct.commit(planTransaction([client], []));
  assert.deepEqual(first((await new LegacyEngine(direct).show('web1', client, ['ipv4'])).lines), [
    'OUTPUT #1',
    'IPTLB_NAT_WEB1',
    'IPTLB_NAT_WEB1',
  ]);
});

for (const engine of ['legacy', 'nft'] as const) {
  test(`migrate --to ${engine} when the rules are in ${engine} already: it says so, and changes nothing (no commit, state file and record untouched)`, async () => {
    const { core, kernels, file, lines, done } = setup(engine);
    try {
      await apply(core, web(1), web(2), { name: 'six', source: '[::1]:80', destination: ['[::1]:9001'] });
      // No record yet (the rules were put in with --engine): the kernel is left alone, the engine recorded.
      const commits = () => kernels.legacy.commits.length + kernels.nft.commits.length;
      const before = commits();
      const tables = () =>
        JSON.stringify([
          [...kernels.legacy.tables],
          [...kernels.nft.tables].map(([f, t]) => [f, [...t.maps].map(([n, m]) => [n, [...m]])]),
        ]);
      const kernelBefore = tables();
      lines.length = 0;
      const recorded = await core.migrate(engine);
      assert.equal(commits(), before, 'nothing committed');
      assert.equal(tables(), kernelBefore);
      assert.equal(recorded.unchanged, false);
      // What tells a script (migrate --json) that only the record was written.
      assert.equal(recorded.recorded, true);
      assert.equal(recorded.moved, 0);
      assert.equal(readFileSync(`${file}.engine`, 'utf8'), `${engine}\n`);
      assert.deepEqual(lines, [
        `the rules are already in the ${engine} engine (3 profile(s) of ${file}, in step) and the ${engine === 'nft' ? 'legacy' : 'nft'} engine holds none of iptlb's: the kernel was not changed; the ${engine} engine is now recorded in ${file}.engine`,
      ]);

      // Recorded: nothing at all.
      const stat = (f: string) => {
        const s = statSync(f, { bigint: true });
        return [readFileSync(f, 'utf8'), s.mtimeNs, s.ino];
      };
      const files = [stat(file), stat(`${file}.engine`)];
      lines.length = 0;
      const again = await core.migrate(engine);
      assert.deepEqual(again, {
        moved: 0,
        installMs: 0,
        removeMs: 0,
        removedFrom: false,
        unchanged: true,
        recorded: false,
      });
      assert.equal(commits(), before, 'nothing committed');
      assert.equal(tables(), kernelBefore);
      assert.deepEqual([stat(file), stat(`${file}.engine`)], files, 'state file and record untouched');
      assert.deepEqual(lines, [
        `the rules are already in the ${engine} engine (3 profile(s) of ${file}, in step) and the ${engine === 'nft' ? 'legacy' : 'nft'} engine holds none of iptlb's: nothing was changed`,
      ]);
      assert.deepEqual(verbose(core), []);

      // One family out of step: only it is installed again; the log says so.
      if (engine === 'legacy') kernels.legacy.tables.get('ipv6')!.chains.set('IPTLB_NAT_SIX', []);
      else kernels.nft.tables.get('ip6')!.maps.get('be_tcp')!.clear();
      lines.length = 0;
      const repaired = await core.migrate(engine);
      assert.equal(repaired.moved, 1);
      assert.equal(commits(), before + 1);
      assert.match(
        lines[0],
        new RegExp(
          `^installed 1 profile\\(s\\) in the ${engine} engine in one transaction .*; it held the other 2 already, in step$`,
        ),
      );
    } finally {
      done();
    }
  });
}
