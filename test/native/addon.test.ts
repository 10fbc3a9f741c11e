/**
 * The native addon without the kernel (no root needed): the loader's classification, synchronous
 * TypeErrors for bad input, the file lock, the executor's error mapping, and readText (the large state file
 * read without copies).
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  cpSync,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import * as path from 'node:path';
import {
  BUILD_FIX,
  EXPECTED_ABI,
  buildFix,
  classifyLoadError,
  installedAsDependency,
  loadAddon,
  loadAddonFrom,
  loadAddonPart,
  rebuildCommand,
  truncatedElf,
} from '../../src/platform/addon.js';
import { mapNativeError, NativeExecutor } from '../../src/engines/legacy/native.js';
import { IptlbError } from '../../src/model/errors.js';
import { validateProfile } from '../../src/model/profile.js';
import { NATIVE_READ_MIN_BYTES, readStateFull, serializeState } from '../../src/core/state.js';
import { IndexedState, indexStateBytes } from '../../src/core/state-index.js';

const loaded = loadAddon();
/** The file of `part` that loaded. */
const addonPathOf = (part: 'core' | 'nft'): string => {
  const r = loadAddonPart(part);
  assert.ok(r.ok);
  return r.path;
};
const NO_ADDON = loaded.ok ? false : `native addon unavailable: ${loaded.reason}: ${loaded.detail}`;

describe('loader', () => {
  test('a missing file is not-built, with the build command as the fix', () => {
    const r = loadAddonFrom('/nonexistent/iptlb_xt.node');
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.equal(r.reason, 'not-built');
      assert.equal(r.fix, BUILD_FIX);
      // This checkout is not under node_modules: the repo's own script is the fix here.
      assert.match(
        r.fix,
        /^apt-get install -y libiptc-dev libxtables-dev libnftnl-dev libmnl-dev pkg-config g\+\+ make python3 && npm run build:addon$/,
      );
    }
  });
  test('in a consumer project the fix is npm rebuild, which exists there', () => {
    assert.equal(installedAsDependency('/srv/app/node_modules/iptlb'), true);
    assert.equal(installedAsDependency('/work/iptlb'), false);
    assert.equal(rebuildCommand(true), 'npm rebuild iptlb --foreground-scripts');
    assert.match(
      buildFix(true),
      /^apt-get install -y libiptc-dev .* g\+\+ make python3 && npm rebuild iptlb --foreground-scripts$/,
    );
    assert.match(
      classifyLoadError('/x/iptlb_nft.node: undefined symbol: nftnl_frob', true).fix,
      /npm rebuild iptlb --foreground-scripts/,
    );
  });
  test('a file that is not a shared object is load-failed, never a throw', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-loader-'));
    try {
      const f = path.join(dir, 'iptlb_core.node');
      writeFileSync(f, 'not an ELF file');
      const r = loadAddonFrom(f);
      assert.equal(r.ok, false);
      if (!r.ok) assert.ok(['load-failed', 'abi-mismatch'].includes(r.reason), r.reason);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  test('dlopen messages are classified, a missing library naming its Debian package', () => {
    const c = classifyLoadError('libip4tc.so.2: cannot open shared object file: No such file or directory');
    assert.equal(c.reason, 'library-missing');
    assert.equal(c.fix, 'apt-get install -y libip4tc2');
    assert.equal(classifyLoadError('libnftnl.so.11: file too short').fix, 'apt-get install -y libnftnl11');
    // What dlopen says when the file at the library's path is unusable (as the partial-host test makes it).
    assert.equal(
      classifyLoadError('/lib/x86_64-linux-gnu/libip4tc.so.2: file too short').fix,
      'apt-get install -y libip4tc2',
    );
    assert.equal(
      classifyLoadError('libmnl.so.0: cannot open shared object file: No such file or directory').fix,
      'apt-get install -y libmnl0',
    );
    assert.equal(
      classifyLoadError(
        "The module '/x/iptlb_xt.node' was compiled against a different Node.js version using NODE_MODULE_VERSION 108.",
      ).reason,
      'abi-mismatch',
    );
    assert.match(
      classifyLoadError('The module was compiled against a different Node.js version', false).fix,
      /npm run build:addon/,
    );
    const g = classifyLoadError(
      "/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.33' not found (required by /x/prebuilds/linux-x64/iptlb_nft.node)",
      true,
    );
    assert.equal(g.reason, 'abi-mismatch');
    assert.match(g.fix, /npm rebuild iptlb --foreground-scripts \(builds it from source/);
    assert.equal(classifyLoadError('/x/iptlb_xt.node: undefined symbol: iptc_frobnicate').reason, 'load-failed');
  });
  test(
    'a local build that does not load leaves the prebuild to serve; with none that loads, a damaged addon is said (`broken`), one never built is not',
    { skip: NO_ADDON },
    async () => {
      // A copy of the built modules under a package root of its own, with its own build/ and prebuilds/.
      const root = mkdtempSync(path.join(tmpdir(), 'iptlb-root-'));
      try {
        const here = new URL('../..', import.meta.url).pathname; // dist/
        const repo = path.dirname(here.replace(/\/$/, ''));
        cpSync(path.join(here, 'src'), path.join(root, 'dist', 'src'), { recursive: true });
        writeFileSync(path.join(root, 'package.json'), JSON.stringify({ name: 'iptlb', type: 'module' }));
        symlinkSync(path.join(repo, 'node_modules'), path.join(root, 'node_modules'));
        const build = path.join(root, 'build', 'Release');
        const pre = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
        mkdirSync(build, { recursive: true });
        mkdirSync(pre, { recursive: true });
        const real = (part: string): string => {
          const r = loadAddonPart(part as 'core');
          assert.ok(r.ok);
          return r.path;
        };
        for (const part of ['core', 'nft', 'xt']) {
          writeFileSync(path.join(build, `iptlb_${part}.node`), 'not an ELF file');
          cpSync(real(part), path.join(pre, `iptlb_${part}.node`));
        }
        const script = (body: string): { code: number | null; out: string; err: string } => {
          const r = spawnSync(process.execPath, ['--input-type=module', '-e', body], {
            cwd: root,
            encoding: 'utf8',
            env: { ...process.env, IPTLB_NO_NATIVE: '' },
          });
          return { code: r.status, out: r.stdout, err: r.stderr };
        };
        const report = `import { nativeReport } from './dist/src/core/doctor.js';
          process.stdout.write(JSON.stringify(nativeReport().engines));`;
        const a = script(report);
        assert.equal(a.code, 0, a.err);
        const engines = JSON.parse(a.out) as Record<string, { executor: string; files: string[] }>;
        for (const e of ['legacy', 'nft']) {
          assert.equal(engines[e]!.executor, 'native', `${e}: ${a.out}`);
          for (const f of engines[e]!.files) assert.ok(f.startsWith(pre), `${e} loaded ${f} (the prebuild)`);
        }
        // No prebuild: the damaged build is all there is. The spawn executor stands in, and says why.
        rmSync(pre, { recursive: true });
        const select = `import { selectExecutor } from './dist/src/engines/executors.js';
          const s = selectExecutor('auto', {}, { native: () => ({ kind: 'native' }), spawn: () => ({ kind: 'spawn' }), addonUse: 'nft' });
          process.stdout.write(JSON.stringify({ kind: s.executor.kind, broken: s.broken ?? null }));`;
        const b = script(select);
        assert.equal(b.code, 0, b.err);
        const damaged = JSON.parse(b.out) as { kind: string; broken: string | null };
        assert.equal(damaged.kind, 'spawn');
        assert.match(
          damaged.broken ?? '',
          /^native addon unavailable \((load-failed|abi-mismatch): .*iptlb_core\.node.*\); fix: /,
        );
        // Never built (no file at all): said at install, not again here.
        rmSync(path.join(root, 'build'), { recursive: true });
        const c = script(select);
        assert.equal(c.code, 0, c.err);
        assert.deepEqual(JSON.parse(c.out), { kind: 'spawn', broken: null });
      } finally {
        rmSync(root, { recursive: true, force: true });
      }
    },
  );
  test(
    'a file cut short (an interrupted copy or install) is load-failed, said damaged, without being dlopened (SIGBUS)',
    { skip: NO_ADDON },
    () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-cut-'));
      try {
        const whole = readFileSync(addonPathOf('nft'));
        const cut = path.join(dir, 'iptlb_nft.node');
        for (const bytes of [1000, Math.floor(whole.length / 3)]) {
          writeFileSync(cut, whole.subarray(0, bytes));
          // In a child: dlopen maps the segments the headers name past the file's end, and the first read
          // there kills the process with SIGBUS.
          const addon = new URL('../../src/platform/addon.js', import.meta.url).href;
          const r = spawnSync(
            process.execPath,
            [
              '--input-type=module',
              '-e',
              `import { loadAddonFrom } from ${JSON.stringify(addon)};
               process.stdout.write(JSON.stringify(loadAddonFrom(${JSON.stringify(cut)})));`,
            ],
            { encoding: 'utf8' },
          );
          assert.equal(r.signal, null, `${bytes} bytes: the loader was killed by ${r.signal}`);
          assert.equal(r.status, 0, r.stderr);
          const out = JSON.parse(r.stdout) as { ok: boolean; reason: string; detail: string; fix: string };
          assert.equal(out.ok, false);
          assert.equal(out.reason, 'load-failed');
          assert.ok(out.detail.startsWith(`${cut}: damaged: ${bytes} bytes, shorter than the `), out.detail);
          assert.match(out.detail, / its ELF headers give \(cut short by an interrupted copy or install\?\)$/);
          assert.equal(out.fix, BUILD_FIX);
        }
        assert.equal(truncatedElf(addonPathOf('core')), undefined);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
  test('loadAddon is memoised, per use and per part', () => {
    assert.equal(loadAddon(), loadAddon());
    assert.equal(loadAddon('nft'), loadAddon('nft'));
    assert.equal(loadAddonPart('xt'), loadAddonPart('xt'));
  });
  test('each use assembles the functions of the parts that loaded', { skip: NO_ADDON }, () => {
    for (const use of ['core', 'legacy', 'nft'] as const) {
      const r = loadAddon(use);
      assert.ok(r.ok, use);
      if (!r.ok) continue;
      assert.equal(typeof r.addon.flock, 'function');
      assert.equal(typeof r.addon.conntrackFlush, 'function');
      assert.deepEqual(r.addon.parts, use === 'core' ? ['core'] : ['core', use === 'legacy' ? 'xt' : 'nft']);
      assert.match(
        r.path,
        use === 'core' ? /iptlb_core\.node$/ : use === 'legacy' ? /iptlb_xt\.node$/ : /iptlb_nft\.node$/,
      );
    }
    const all = loadAddon();
    assert.ok(all.ok);
    if (all.ok) {
      assert.deepEqual(all.addon.parts, ['core', 'xt', 'nft']);
      for (const f of ['commit', 'commitJson', 'read', 'prefetch', 'releasePrefetch', 'info', 'nftCommit', 'nftRead'])
        assert.equal(typeof (all.addon as unknown as Record<string, unknown>)[f], 'function', f);
    }
    for (const p of ['core', 'xt', 'nft'] as const) {
      const r = loadAddonPart(p);
      assert.ok(r.ok && (r.addon as unknown as { part: string }).part === p, p);
    }
  });
});

describe('addon exports and input checking', { skip: NO_ADDON }, () => {
  const addon = loaded.ok ? loaded.addon : (null as never);
  const tx = { family: 'ipv4', table: 'nat', owners: [], deleteChains: [], chains: [], hookRules: [] };
  const rule = { matches: [], target: { name: 'RETURN' } };
  const inChain = (r: unknown) => ({ ...tx, chains: [{ name: 'IPTLB_C', rules: [r] }] });
  const hook = (r: unknown, owner = 'o') => ({ ...tx, hookRules: [{ chain: 'OUTPUT', owner, rule: r }] });
  const tagged = (extra: unknown[] = []) => ({
    matches: [{ name: 'comment', comment: 'iptlb:o' }, ...extra],
    target: { name: 'RETURN' },
  });

  test('abiVersion and info()', () => {
    assert.equal(addon.abiVersion, EXPECTED_ABI);
    const info = addon.info();
    assert.equal(info.libiptc, true);
    assert.equal(info.xtablesLockPath, process.env.XTABLES_LOCKFILE || '/run/xtables.lock');
  });

  const cases: [string, unknown, RegExp][] = [
    ['no transaction', undefined, /^transaction: must be an object/],
    ['not an object', 42, /^transaction: must be an object/],
    ['an array', [], /^transaction: must be an object/],
    ['wrong family', { ...tx, family: 'ipv5' }, /^transaction\.family: must be "ipv4" or "ipv6"/],
    ['wrong table', { ...tx, table: 'filter' }, /^transaction\.table/],
    ['owners not an array', { ...tx, owners: 'x' }, /^transaction\.owners: must be an array/],
    ['owner not a string', { ...tx, owners: [1] }, /^transaction\.owners\[0\]: must be a string/],
    ['empty owner', { ...tx, owners: [''] }, /^transaction\.owners\[0\]: must not be empty/],
    [
      'owner too long for a comment',
      { ...tx, owners: ['o'.repeat(250)] },
      /^transaction\.owners\[0\]: is longer than 249/,
    ],
    ['created not an array', { ...tx, created: 'web' }, /^transaction\.created: must be an array/],
    ['created entry not an object', { ...tx, created: ['web'] }, /^transaction\.created\[0\]: must be an object/],
    ['created name empty', { ...tx, created: [{ name: '' }] }, /^transaction\.created\[0\]\.name: must not be empty/],
    [
      'created chain a built-in',
      { ...tx, created: [{ name: 'web', chain: 'OUTPUT' }] },
      /^transaction\.created\[0\]\.chain: must not be the built-in name OUTPUT/,
    ],
    ['was not an array', { ...tx, was: {} }, /^transaction\.was: must be an array/],
    ['was entry not a string', { ...tx, was: [{ dst: '127.0.0.1' }] }, /^transaction\.was\[0\]: must be a string/],
    ['was entry not an element', { ...tx, was: ['web'] }, /^transaction\.was\[0\]: must be a\.b\.c\.d,proto:port/],
    [
      'was entry a network',
      { ...tx, was: ['10.0.0.0/8,tcp:80'] },
      /^transaction\.was\[0\]: must be a\.b\.c\.d,proto:port/,
    ],
    [
      'was entry of the other family',
      { ...tx, was: ['::1,tcp:80'] },
      /^transaction\.was\[0\]: must be a\.b\.c\.d,proto:port/,
    ],
    ['was entry protocol', { ...tx, was: ['127.0.0.1,icmp:80'] }, /^transaction\.was\[0\]: must name tcp, udp or sctp/],
    [
      'was entry port 0',
      { ...tx, was: ['127.0.0.1,tcp:0'] },
      /^transaction\.was\[0\]: must end in a port from 1 to 65535/,
    ],
    [
      'was entry port too big',
      { ...tx, was: ['127.0.0.1,tcp:65536'] },
      /^transaction\.was\[0\]: must end in a port from 1 to 65535/,
    ],
    [
      'was entry port leading zero',
      { ...tx, was: ['127.0.0.1,udp:080'] },
      /^transaction\.was\[0\]: must end in a port from 1 to 65535/,
    ],
    ['chains missing', { ...tx, chains: undefined }, /^transaction\.chains: must be an array/],
    [
      'chain name too long',
      { ...tx, chains: [{ name: 'X'.repeat(29), rules: [] }] },
      /^transaction\.chains\[0\]\.name: is longer than 28/,
    ],
    [
      'chain name of 28 is fine but blank inside is not',
      { ...tx, chains: [{ name: 'A B', rules: [] }] },
      /^transaction\.chains\[0\]\.name: must be printable/,
    ],
    ['built-in chain name', { ...tx, chains: [{ name: 'OUTPUT', rules: [] }] }, /built-in/],
    ['empty chain name', { ...tx, deleteChains: [''] }, /^transaction\.deleteChains\[0\]: must not be empty/],
    [
      'rules not an array',
      { ...tx, chains: [{ name: 'C', rules: {} }] },
      /^transaction\.chains\[0\]\.rules: must be an array/,
    ],
    ['rule not an object', inChain(null), /^transaction\.chains\[0\]\.rules\[0\]: must be an object/],
    ['matches missing', inChain({ target: { name: 'RETURN' } }), /rules\[0\]\.matches: must be an array/],
    ['target missing', inChain({ matches: [] }), /rules\[0\]\.target: must be an object/],
    ['unknown target', inChain({ ...rule, target: { name: 'ACCEPT' } }), /rules\[0\]\.target\.name: unknown target/],
    ['unknown match', inChain({ ...rule, matches: [{ name: 'mark' }] }), /matches\[0\]\.name: unknown match/],
    [
      'port out of range',
      inChain({ proto: 'tcp', matches: [{ name: 'tcp', dport: 70000 }], target: { name: 'RETURN' } }),
      /matches\[0\]\.dport: must be a whole number from 1 to 65535/,
    ],
    ['port zero', inChain({ proto: 'udp', matches: [{ name: 'udp', dport: 0 }], target: { name: 'RETURN' } }), /dport/],
    [
      'port fractional',
      inChain({ proto: 'udp', matches: [{ name: 'udp', dport: 80.5 }], target: { name: 'RETURN' } }),
      /dport/,
    ],
    [
      'port a string',
      inChain({ proto: 'udp', matches: [{ name: 'udp', dport: '80' }], target: { name: 'RETURN' } }),
      /dport: must be a number/,
    ],
    [
      'port without its protocol',
      inChain({ matches: [{ name: 'tcp', dport: 80 }], target: { name: 'RETURN' } }),
      /rules\[0\]\.proto/,
    ],
    ['unknown protocol', inChain({ ...rule, proto: 'icmp' }), /rules\[0\]\.proto: must be tcp, udp or sctp/],
    [
      'bad DNAT address',
      inChain({ ...rule, target: { name: 'DNAT', toDestination: '1.2.3:4' } }),
      /target\.toDestination/,
    ],
    [
      'DNAT without port',
      inChain({ ...rule, target: { name: 'DNAT', toDestination: '1.2.3.4' } }),
      /target\.toDestination/,
    ],
    [
      'DNAT port out of range',
      inChain({ ...rule, target: { name: 'DNAT', toDestination: '1.2.3.4:65536' } }),
      /target\.toDestination/,
    ],
    [
      'LOG prefix too long',
      inChain({ ...rule, target: { name: 'LOG', prefix: 'x'.repeat(30), level: 4 } }),
      /target\.prefix: is longer than 29/,
    ],
    ['LOG level out of range', inChain({ ...rule, target: { name: 'LOG', prefix: 'x', level: 9 } }), /target\.level/],
    ['jump without chain', inChain({ ...rule, target: { name: 'jump' } }), /target\.chain: must be a string/],
    [
      'jump to a verdict',
      inChain({ ...rule, target: { name: 'jump', chain: 'ACCEPT' } }),
      /target\.chain: must not be the built-in name/,
    ],
    [
      'comment too long',
      hook(tagged([{ name: 'comment', comment: 'c'.repeat(256) }])),
      /matches\[1\]\.comment: is longer than 255/,
    ],
    [
      'hook chain INPUT',
      { ...tx, hookRules: [{ chain: 'INPUT', owner: 'o', rule: tagged() }] },
      /hookRules\[0\]\.chain: must be OUTPUT, PREROUTING or POSTROUTING/,
    ],
    [
      'hook rule without its owner comment',
      hook(rule),
      /hookRules\[0\]\.rule\.matches: must include the comment "iptlb:o"/,
    ],
    ['hook rule with another owner comment', hook(tagged(), 'p'), /must include the comment "iptlb:p"/],
    [
      'probability not a number',
      inChain({ ...rule, matches: [{ name: 'statistic', mode: 'random', probability: 'half' }] }),
      /matches\[0\]\.probability/,
    ],
    [
      'probability above 1',
      inChain({ ...rule, matches: [{ name: 'statistic', mode: 'random', probability: '1.5' }] }),
      /probability/,
    ],
    [
      'probability as a number',
      inChain({ ...rule, matches: [{ name: 'statistic', mode: 'random', probability: 0.5 }] }),
      /probability: must be a string/,
    ],
    [
      'statistic mode nth without every',
      inChain({ ...rule, matches: [{ name: 'statistic', mode: 'nth', probability: '0.5' }] }),
      /matches\[0\]\.every/,
    ],
    [
      'statistic mode nth, packet not below every',
      inChain({ ...rule, matches: [{ name: 'statistic', mode: 'nth', every: 2, packet: 2 }] }),
      /matches\[0\]\.packet/,
    ],
    [
      'statistic mode unknown',
      inChain({ ...rule, matches: [{ name: 'statistic', mode: 'time', probability: '0.5' }] }),
      /matches\[0\]\.mode/,
    ],
    ['dst garbage', inChain({ ...rule, dst: '300.1.1.1/32' }), /rules\[0\]\.dst/],
    ['dst bad prefix', inChain({ ...rule, dst: '1.1.1.1/33' }), /rules\[0\]\.dst/],
    ['addrtype other than LOCAL', hook(tagged([{ name: 'addrtype', dstType: 'UNICAST' }])), /dstType/],
    [
      'conntrack state other than DNAT',
      hook(tagged([{ name: 'conntrack', ctstate: 'NEW', ctorigdst: '1.2.3.4', ctorigdstport: 80 }])),
      /ctstate/,
    ],
    [
      'conntrack bad address',
      hook(tagged([{ name: 'conntrack', ctstate: 'DNAT', ctorigdst: '1.2.3', ctorigdstport: 80 }])),
      /ctorigdst/,
    ],
    [
      'conntrack bad port',
      hook(tagged([{ name: 'conntrack', ctstate: 'DNAT', ctorigdst: '1.2.3.4', ctorigdstport: -1 }])),
      /ctorigdstport/,
    ],
    ['string with NUL', { ...tx, owners: ['a\u0000b'] }, /NUL/],
  ];
  const optionCases: [string, unknown, RegExp][] = [
    ['options not an object', 5, /^options: must be an object/],
    ['lockWaitMs not a number', { lockWaitMs: 'soon' }, /^options\.lockWaitMs: must be a number/],
    ['lockWaitMs negative', { lockWaitMs: -1 }, /^options\.lockWaitMs/],
    ['append not an object', { append: 3 }, /^options\.append: must be an object/],
    ['append.fd missing', { append: { data: new Uint8Array(1) } }, /^options\.append\.fd: must be a file descriptor/],
    ['append.fd negative', { append: { fd: -1, data: new Uint8Array(1) } }, /^options\.append\.fd/],
    ['append.fd fractional', { append: { fd: 1.5, data: new Uint8Array(1) } }, /^options\.append\.fd/],
    ['append.data a string', { append: { fd: 1, data: 'x' } }, /^options\.append\.data: must be a Uint8Array/],
    ['append.data empty', { append: { fd: 1, data: new Uint8Array(0) } }, /^options\.append\.data: must not be empty/],
  ];
  // The options are checked on the JS thread: a synchronous TypeError.
  const all: [string, unknown[], RegExp][] = optionCases.map(([l, o, re]): [string, unknown[], RegExp] => [
    l,
    [tx, o],
    re,
  ]);
  for (const [label, args, re] of all) {
    test(`TypeError: ${label}`, () => {
      assert.throws(
        () => (addon.commit as (...a: unknown[]) => unknown)(...args),
        (e: Error) => {
          assert.ok(e instanceof TypeError, `${e.name}: ${e.message}`);
          assert.match(e.message, re);
          return true;
        },
      );
    });
  }

  // The plan crosses as JSON text (commit() stringifies it): decoded on the addon's thread, refused
  // with code EPLAN and a message naming the field, before any lock or table is touched.
  for (const [label, v, re] of cases) {
    const json = JSON.stringify(v);
    if (json === undefined) continue; // e.g. no transaction at all: below
    test(`commit EPLAN: ${label}`, async () => {
      for (const p of [addon.commitJson(json), addon.commit(v as never)])
        await assert.rejects(p, (e: Error & { code?: string; errno?: number }) => {
          assert.ok(!(e instanceof TypeError), 'rejected, not thrown');
          assert.equal(e.code, 'EPLAN');
          assert.equal(e.errno, 22);
          assert.match(e.message, re);
          return true;
        });
    });
  }
  test('commitJson: text that is not JSON, and its own arguments', async () => {
    await assert.rejects(
      addon.commitJson('{"family":'),
      (e: Error & { code?: string }) =>
        e.code === 'EPLAN' && /^transaction: is not valid JSON \(unexpected end of text/.test(e.message),
    );
    await assert.rejects(addon.commitJson('['.repeat(100) + ']'.repeat(100)), /nested too deeply/);
    await assert.rejects(addon.commitJson('{} x'), /unexpected text after the value/);
    await assert.rejects(
      addon.commitJson(String.raw`{"a":"\u0001\ud800"}`),
      /Error: transaction\.family: must be "ipv4"/,
    );
    assert.throws(() => (addon.commitJson as (...a: unknown[]) => unknown)(), /^TypeError: json: must be a string/);
    assert.throws(() => (addon.commitJson as (...a: unknown[]) => unknown)(tx), /^TypeError: json: must be a string/);
    assert.throws(() => addon.commitJson(''), /^TypeError: json: must not be empty/);
    assert.throws(() => addon.commitJson('{}', { lockWaitMs: -1 }), /^TypeError: options\.lockWaitMs/);
  });

  test('flock() arguments are checked synchronously', () => {
    assert.throws(() => addon.flock(1 as never, 10), /^TypeError: path: must be a string/);
    assert.throws(() => addon.flock('', 10), /path: must be a file path/);
    assert.throws(() => addon.flock('/tmp/x', -1), /waitMs: must be from 0/);
    assert.throws(() => addon.flock('/tmp/x', 'x' as never), /waitMs: must be a number/);
  });

  test('FileLock cannot be forged from JavaScript', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-lock-'));
    try {
      const lock = await addon.flock(path.join(dir, 'a'), 0);
      const Ctor = (lock as object).constructor as new (...a: unknown[]) => unknown;
      assert.throws(() => new Ctor(0), /made by flock/);
      assert.throws(() => new Ctor({}, 0), /made by flock/);
      lock.release();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('flock(): exclusive, bounded wait (ELOCK), idempotent release, event loop free while waiting', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-lock-'));
    try {
      const file = path.join(dir, 'state.lock');
      const a = await addon.flock(file, 0);
      // A timer due at once runs while the wait goes on: a wait that blocked the event loop would settle its
      // promise first (its continuation is a microtask, ahead of any timer).
      let loopRan = false;
      setTimeout(() => (loopRan = true), 0);
      await assert.rejects(addon.flock(file, 150), (e: Error & { code?: string; errno?: number }) => {
        assert.equal(e.code, 'ELOCK');
        assert.equal(typeof e.errno, 'number');
        assert.match(e.message, /gave up after 150 ms/);
        return true;
      });
      assert.ok(loopRan, 'the event loop ran while flock waited');
      const waiting = addon.flock(file, 5000);
      setTimeout(() => a.release(), 50);
      const b = await waiting;
      a.release();
      a.release(); // idempotent, and does not release b
      await assert.rejects(addon.flock(file, 0), /gave up/);
      b.release();
      (await addon.flock(file, 0)).release();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('flock() refuses a symlink and reports a directory', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-lock-'));
    try {
      symlinkSync(path.join(dir, 'target'), path.join(dir, 'link'));
      await assert.rejects(
        addon.flock(path.join(dir, 'link'), 0),
        (e: Error & { errno?: number }) => e.errno === 40 /* ELOOP */,
      );
      mkdirSync(path.join(dir, 'd'));
      await assert.rejects(
        addon.flock(path.join(dir, 'd'), 0),
        (e: Error & { errno?: number }) => e.errno === 21 /* EISDIR */,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test(
    'a lock nobody released goes with its object (finalizer)',
    { skip: typeof global.gc !== 'function' ? 'run node with --expose-gc' : false },
    async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-lock-'));
      try {
        const file = path.join(dir, 'f');
        await addon.flock(file, 0); // dropped unreleased
        for (let i = 0; i < 10; i++) {
          global.gc!();
          await new Promise((r) => setImmediate(r));
        }
        (await addon.flock(file, 1000)).release();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

describe('native executor error mapping', () => {
  test('kernel, lock and permission errors keep code, errno and message', () => {
    const k = mapNativeError(
      Object.assign(new Error('iptc_commit: Invalid argument (errno 22) while committing table nat'), {
        code: 'EKERNEL',
        errno: 22,
      }),
    );
    assert.ok(k instanceof IptlbError);
    assert.equal(k.code, 'EKERNEL');
    assert.equal(k.errno, 22);
    assert.match(k.message, /errno 22/);
    assert.equal(mapNativeError(Object.assign(new Error('held'), { code: 'ELOCK', errno: 11 })).code, 'ELOCK');
    const p = mapNativeError(
      Object.assign(new Error('iptc_init: Permission denied (you must be root) (errno 1) (… CAP_NET_ADMIN …)'), {
        code: 'EPERM',
        errno: 1,
      }),
    );
    assert.equal(p.code, 'EPERM');
    assert.equal(p.errno, 1);
  });
  test('a conflict names its field: a profile name the table holds (name), else an address (source)', () => {
    const n = mapNativeError(
      Object.assign(
        new Error(
          'name: profile web: the nat table already holds a profile of that name (chain IPTLB_NAT_WEB, rule iptlb:web in IPTLB_OUTPUT)',
        ),
        { code: 'ECONFLICT', errno: 17 },
      ),
    );
    assert.equal(n.code, 'ECONFLICT');
    assert.equal(n.field, 'name');
    assert.equal(
      n.message,
      'name: profile web: the nat table already holds a profile of that name (chain IPTLB_NAT_WEB, rule iptlb:web in IPTLB_OUTPUT), which this state file does not hold: delete it through the state file that holds it, or, if an interrupted change left it, `iptlb status` shows it orphaned and `iptlb sync` removes it',
    );
    const a = mapNativeError(
      Object.assign(
        new Error('profile b: its address is taken in the kernel by profile a (rule iptlb:a in IPTLB_OUTPUT)'),
        {
          code: 'ECONFLICT',
          errno: 17,
        },
      ),
    );
    assert.equal(a.field, 'source');
    assert.match(a.message, /^source: profile b: its address is taken/);
  });
  test('a TypeError from the addon names the field', () => {
    const e = mapNativeError(new TypeError('transaction.chains[0].name: is longer than 28 bytes'));
    assert.equal(e.code, 'ENATIVE');
    assert.equal(e.field, 'transaction.chains[0].name');
  });
  test('a plan refused on the worker thread (EPLAN) names the field too', () => {
    const e = mapNativeError(
      Object.assign(new Error('transaction.hookRules[0].chain: must be OUTPUT, PREROUTING or POSTROUTING'), {
        code: 'EPLAN',
        errno: 22,
      }),
    );
    assert.equal(e.code, 'ENATIVE');
    assert.equal(e.field, 'transaction.hookRules[0].chain');
    assert.match(e.message, /^native addon refused the transaction: transaction\.hookRules/);
  });
  test('the executor maps a synchronous TypeError to a rejected IptlbError', { skip: NO_ADDON }, async () => {
    const ex = new NativeExecutor(loaded.ok ? loaded.addon : (null as never));
    assert.equal(ex.kind, 'native');
    assert.equal(ex.engine, 'legacy');
    await assert.rejects(
      ex.commit({ family: 'ipv4', table: 'filter' } as never),
      (e: IptlbError) => e instanceof IptlbError && e.code === 'ENATIVE',
    );
    // A plan JSON cannot carry is refused before it crosses.
    const bad = { family: 'ipv4', table: 'nat', owners: [1n], deleteChains: [], chains: [], hookRules: [] };
    await assert.rejects(
      ex.commit(bad as never),
      (e: IptlbError) =>
        e.code === 'ENATIVE' && e.field === 'transaction' && /cannot be written as JSON/.test(e.message),
    );
    // Through JSON, a bad field is refused on the worker thread and named the same way.
    const hook = {
      family: 'ipv4',
      table: 'nat',
      owners: [],
      deleteChains: [],
      chains: [],
      hookRules: [{ chain: 'INPUT', owner: 'o', rule: { matches: [], target: { name: 'RETURN' } } }],
    };
    await assert.rejects(
      ex.commit(hook as never),
      (e: IptlbError) => e.code === 'ENATIVE' && e.field === 'transaction.hookRules[0].chain',
    );
  });
});

describe('readText: a large state file read without copies (native/common/read_text.h)', { skip: NO_ADDON }, () => {
  const core = loadAddon('core');
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-readtext-'));
  const big = path.join(dir, 'state.db');
  const profiles = Array.from({ length: 1500 }, (_, i) =>
    validateProfile({
      name: `p${i + 1}`,
      source: `127.100.${i >> 8}.${i & 255}:8081`,
      destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
    }),
  );
  writeFileSync(big, serializeState(profiles), { mode: 0o600 });
  const withFd = <T>(file: string, f: (fd: number, size: number) => T): T => {
    const fd = openSync(file, 'r');
    try {
      return f(fd, fstatSync(fd).size);
    } finally {
      closeSync(fd);
    }
  };
  const addon = core.ok ? core.addon : (null as never);

  test('the bytes and the Latin-1 text are those Node reads, also for bytes above 0x7f', () => {
    const odd = path.join(dir, 'odd');
    writeFileSync(odd, Buffer.from([0x61, 0xe9, 0x0a, 0xff, 0x00, 0x62]));
    for (const file of [big, odd]) {
      const r = withFd(file, (fd, size) => addon.readText(fd, size));
      assert.ok(r);
      const want = readFileSync(file);
      assert.ok(Buffer.isBuffer(r.bytes));
      assert.equal(Buffer.compare(r.bytes, want), 0);
      assert.equal(r.text, want.toString('latin1'));
    }
  });

  test('a file larger than its size is null (it grew: read the usual way); a smaller one gives what it holds', () => {
    assert.equal(
      withFd(big, (fd, size) => addon.readText(fd, size - 1)),
      null,
    );
    const r = withFd(big, (fd, size) => addon.readText(fd, size + 10));
    assert.equal(r?.bytes.length, readFileSync(big).length);
  });

  test('bad arguments are TypeErrors naming the field; a read error carries its errno name', () => {
    assert.throws(() => addon.readText('3' as never, 5), /^TypeError: fd: must be a number$/);
    assert.throws(() => addon.readText(-1, 5), /^TypeError: fd: must be a file descriptor$/);
    assert.throws(() => addon.readText(1.5, 5), /^TypeError: fd: must be a file descriptor$/);
    assert.throws(() => withFd(big, (fd) => addon.readText(fd, 0)), /^TypeError: size: must be a whole number/);
    assert.throws(() => withFd(big, (fd) => addon.readText(fd, 2 ** 26 + 1)), /^TypeError: size: must be a whole/);
    const d = openSync(dir, 'r');
    try {
      assert.throws(
        () => addon.readText(d, 10),
        (e: NodeJS.ErrnoException) => e.code === 'EISDIR' && /^readText: read: /.test(e.message),
      );
    } finally {
      closeSync(d);
    }
  });

  test('each view outlives the descriptor and the collection of the other', async () => {
    // A real collection (the runner does not pass --expose-gc): the mapping is unmapped only when both
    // views are gone, so reading the one kept after the other was collected must still give the file.
    v8.setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const collect = async (): Promise<void> => {
      for (let i = 0; i < 3; i++) {
        gc();
        await new Promise((res) => setImmediate(res)); // N-API finalizers run after the collection
      }
    };
    const want = readFileSync(big);
    let r = withFd(big, (fd, size) => addon.readText(fd, size));
    const bytes = r!.bytes;
    r = null; // the string goes
    await collect();
    assert.equal(Buffer.compare(bytes, want), 0);
    let s = withFd(big, (fd, size) => addon.readText(fd, size));
    const text = s!.text;
    s = null; // the Buffer goes
    await collect();
    assert.equal(text, want.toString('latin1'));
  });

  test('the CLI index reads a file of 256 KiB or more through it, a smaller one the usual way; both the same', async () => {
    assert.ok(statSync(big).size >= NATIVE_READ_MIN_BYTES, 'the large file is large enough');
    const small = path.join(dir, 'small.db');
    writeFileSync(small, serializeState(profiles.slice(0, 100)), { mode: 0o600 });
    const viaAddon = await readStateFull(big, indexStateBytes);
    assert.ok(viaAddon.profiles instanceof IndexedState);
    assert.equal(viaAddon.profiles.size, 1500);
    assert.deepEqual(
      viaAddon.profiles.get('p777'),
      profiles.find((p) => p.name === 'p777'),
    );
    const usual = await readStateFull(small, indexStateBytes);
    assert.ok(usual.profiles instanceof IndexedState);
    assert.equal(usual.profiles.size, 100);
    const seen: boolean[] = [];
    const spy = (bytes: Buffer, latin1?: string) => (seen.push(latin1 !== undefined), indexStateBytes(bytes, latin1));
    await readStateFull(big, spy);
    await readStateFull(small, spy);
    assert.deepEqual(seen, [true, false], 'the text came with the bytes only for the large file');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
});
