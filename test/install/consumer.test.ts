/**
 * The package as a user gets it: `npm pack` (the tree as built: dist/ and prebuilds/), installed into
 * a fresh project on a host WITHOUT a compiler and WITHOUT -dev headers (a private mount namespace
 * puts an empty tmpfs over /usr/include, and PATH holds only node, npm and sh: no g++, make, python3 or
 * pkg-config). The install must use the prebuilt addon (nothing compiled, no build/ directory), and
 * then: import with ESM, require with CommonJS, types resolved by tsc for both, `iptlb --help` and
 * `iptlb doctor --json` from node_modules/.bin reporting both engines native from prebuilds/, and
 * `iptlb demo` (real connections in a throwaway network namespace) from there too. A
 * rebuild from source forced there (IPTLB_BUILD_FROM_SOURCE=1) must not fail the install and must
 * print the fix that works in a consumer project, naming the missing Debian packages, with its log
 * kept for doctor.
 * Needs root (mount namespace); dependencies come from npm's cache when there (--prefer-offline).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { PROJECT_ROOT, registryEnv } from '../harness/env.js';
import { typeCheckConsumer } from '../harness/types-project.js';
import { findBinary } from '../../src/platform/spawn.js';

const prebuilt = path.join(PROJECT_ROOT, 'prebuilds', `${process.platform}-${process.arch}`);
const skip =
  process.getuid?.() !== 0
    ? 'needs root (a mount namespace hides the compiler and headers)'
    : !findBinary('unshare')
      ? 'unshare (util-linux) is not installed'
      : false;

function sh(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {},
): { status: number | null; out: string; err: string; ms: number } {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    timeout: opts.timeout ?? 120_000,
    cwd: opts.cwd,
    env: registryEnv(opts.env),
    maxBuffer: 64 << 20,
  });
  return {
    status: r.status,
    out: r.stdout ?? '',
    err: (r.stderr ?? '') + (r.error ? String(r.error) : ''),
    ms: Math.round(performance.now() - t0),
  };
}

test(
  'consumer project: packed tarball installs without g++ or -dev headers, prebuilt addon used, ESM + CJS + types, bin works',
  { skip, timeout: 300_000 },
  (t) => {
    // CI builds them before the suite (npm run prebuilds); made here in every run too, so that a tree
    // whose addon changed since its last prebuilds does not pack stale ones: prebuild.js copies
    // build/Release/ when that was built from these sources (a quarter of a second) and compiles
    // otherwise.
    const r = sh(process.execPath, [path.join(PROJECT_ROOT, 'scripts', 'prebuild.js'), '--quiet'], {
      timeout: 240_000,
    });
    assert.equal(r.status, 0, `npm run prebuilds: ${r.err}`);
    assert.ok(['core', 'xt', 'nft'].every((p) => existsSync(path.join(prebuilt, `iptlb_${p}.node`))));
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-consumer-'));
    try {
      // --ignore-scripts: the tree is already built (prepack would rebuild dist/ under the other tests).
      const pack = sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: PROJECT_ROOT });
      assert.equal(pack.status, 0, pack.err);
      const [info] = JSON.parse(pack.out) as { filename: string; files: { path: string }[] }[];
      const shipped = info!.files.map((f) => f.path);
      for (const f of [
        'LICENSE',
        'LICENSE-GPL-2.0',
        'README.md',
        'docs/install.md',
        'docs/operations.md',
        'docs/state-file.md',
        'examples/agent.ts',
        'dist/index.cjs',
        'dist/index.mjs',
        'dist/cjs/index.d.ts',
        'dist/iptlb.1',
        'scripts/install.js',
        `prebuilds/${process.platform}-${process.arch}/iptlb_nft.node`,
      ])
        assert.ok(shipped.includes(f), `${f} in the tarball`);
      assert.ok(!shipped.some((f) => f.startsWith('test/') || f.startsWith('dist/test/')), 'no tests in the tarball');
      // The library is the bundles: dist/src/ and dist/cjs/ hold declarations only.
      assert.deepEqual(
        shipped.filter((f) => /^dist\/(src|cjs)\//.test(f) && !/\.d\.ts$|^dist\/cjs\/package\.json$/.test(f)),
        [],
      );

      const app = path.join(dir, 'app');
      mkdirSync(app);
      writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
      // PATH with node, npm and sh only: no compiler, make, python3 or pkg-config can be found.
      const bin = path.join(dir, 'bin');
      mkdirSync(bin);
      symlinkSync(process.execPath, path.join(bin, 'node'));
      symlinkSync(findBinary('npm')!, path.join(bin, 'npm'));
      symlinkSync('/bin/sh', path.join(bin, 'sh')); // npm runs install scripts with sh
      const env = { ...process.env, PATH: bin, npm_config_update_notifier: 'false' };
      const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
      const tarball = path.join(dir, info!.filename);
      const install = sh(
        findBinary('unshare')!,
        [
          '-m',
          '--propagation',
          'private',
          '--',
          '/bin/sh',
          '-c',
          `${q(findBinary('mount')!)} -t tmpfs none /usr/include && cd ${q(app)} && npm install ${q(tarball)} --prefer-offline --no-audit --no-fund --foreground-scripts`,
        ],
        { env, timeout: 180_000 },
      );
      t.diagnostic(`npm install of the tarball without compiler/headers: ${install.ms} ms`);
      assert.equal(install.status, 0, install.err + install.out);
      const log = install.out + install.err;
      assert.match(
        log,
        /iptlb: using the prebuilt native addon \(prebuilds\/linux-x64\/iptlb_\{core,xt,nft\}\.node\); nothing compiled/,
      );
      assert.doesNotMatch(log, /gyp info|node-gyp|not built/);
      const pkg = path.join(app, 'node_modules', 'iptlb');
      assert.ok(!existsSync(path.join(pkg, 'build')), 'nothing was built');
      // The README's and the docs' relative links lead to installed files.
      for (const page of ['README.md', ...readdirSync(path.join(pkg, 'docs')).map((f) => `docs/${f}`)])
        for (const m of readFileSync(path.join(pkg, page), 'utf8').matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g))
          if (!/^[a-z]+:/.test(m[1]!))
            assert.ok(existsSync(path.join(pkg, path.dirname(page), m[1]!)), `${page} -> ${m[1]} installed`);
      // commander is in the CLI bundle: not installed with iptlb.
      assert.ok(!existsSync(path.join(app, 'node_modules', 'commander')), 'commander not installed');

      // ESM and CommonJS: the same exports.
      const esm = sh(
        process.execPath,
        ['--input-type=module', '-e', "import * as m from 'iptlb'; console.log(JSON.stringify(Object.keys(m).sort()))"],
        { cwd: app },
      );
      assert.equal(esm.status, 0, esm.err);
      const cjs = sh(
        process.execPath,
        [
          '-e',
          "const m = require('iptlb'); console.log(JSON.stringify(Object.keys(m).filter((k) => k !== '__esModule').sort()))",
        ],
        { cwd: app },
      );
      assert.equal(cjs.status, 0, cjs.err);
      assert.deepEqual(JSON.parse(cjs.out), JSON.parse(esm.out));
      assert.ok((JSON.parse(esm.out) as string[]).includes('open'));
      const cjsUse = sh(
        process.execPath,
        [
          '-e',
          "const { validateProfile, IptlbError } = require('iptlb'); try { validateProfile({ name: 'x' }) } catch (e) { console.log(e instanceof IptlbError, e.field) }",
        ],
        { cwd: app },
      );
      assert.equal(cjsUse.status, 0, cjsUse.err);
      assert.match(cjsUse.out, /^true \S+/);

      // Types for both: a .mts importing and a .cts requiring, checked with node16 resolution.
      const tsc = typeCheckConsumer(app);
      assert.equal(tsc.status, 0, tsc.output);

      // The bin.
      const iptlb = path.join(app, 'node_modules', '.bin', 'iptlb');
      const help = sh(iptlb, ['--help']);
      assert.equal(help.status, 0, help.err);
      assert.match(help.out, /^Usage: iptlb /);
      assert.match(help.out, /demo \[options\]/);
      const bare = sh(iptlb, []);
      assert.equal(bare.status, 0, bare.err);
      assert.equal(bare.out, help.out);
      const doctor = sh(iptlb, ['doctor', '--json', `--state-file=${path.join(dir, 'state.db')}`]);
      const d = JSON.parse(doctor.out) as {
        native: { engines: Record<string, { executor: string; files: string[] }> };
      };
      for (const e of ['legacy', 'nft']) {
        assert.equal(d.native.engines[e]!.executor, 'native', doctor.out);
        for (const f of d.native.engines[e]!.files)
          assert.ok(f.startsWith(path.join(pkg, 'prebuilds', `${process.platform}-${process.arch}`)), f);
      }

      // The quick start from the installed package (it runs itself in a throwaway network namespace).
      const demo = sh(iptlb, ['demo', '--connections=30'], { timeout: 120_000 });
      assert.equal(demo.status, 0, demo.out + demo.err);
      assert.match(demo.out, /failed +0\n[\s\S]*Demo OK\./);

      // Forced build from source where there is no compiler: the install still succeeds, says what
      // to install and the command that works here, and keeps the log.
      const rebuild = sh(
        findBinary('unshare')!,
        [
          '-m',
          '--propagation',
          'private',
          '--',
          '/bin/sh',
          '-c',
          `${q(findBinary('mount')!)} -t tmpfs none /usr/include && cd ${q(app)} && IPTLB_BUILD_FROM_SOURCE=1 npm rebuild iptlb --foreground-scripts`,
        ],
        { env, timeout: 120_000 },
      );
      assert.equal(rebuild.status, 0, rebuild.err + rebuild.out);
      assert.match(
        rebuild.out + rebuild.err,
        /iptlb: native addon not built \(missing to build it: libiptc-dev libxtables-dev libnftnl-dev libmnl-dev g\+\+ make python3\); the prebuilt native addon \(prebuilds\/linux-x64\/\) will be used\. Fix: apt-get install -y libiptc-dev libxtables-dev libnftnl-dev libmnl-dev g\+\+ make python3 && IPTLB_BUILD_FROM_SOURCE=1 npm rebuild iptlb --foreground-scripts\. Log: /,
      );
      assert.match(readFileSync(path.join(pkg, 'build', 'build-addon.log'), 'utf8'), /not built: missing to build it/);
      assert.deepEqual(readdirSync(path.join(pkg, 'build')), ['build-addon.log']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
