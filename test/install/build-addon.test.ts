/**
 * A build from source that fails (scripts/install.js with IPTLB_BUILD_FROM_SOURCE=1, then
 * scripts/build-addon.js; here the compiler's `make` fails) never fails the install, says what will
 * really be used instead (the prebuilt addon when its files load on this host, else the spawn
 * executors), gives a fix that rebuilds from source again, keeps node-gyp's output in
 * build/build-addon.log, and leaves nothing else of the failed build in build/ (the loader looks there
 * first). Runs in a copy of the package under a scratch node_modules/, as a consumer project has it.
 * Needs the build dependencies (headers, g++, python3) but no root: only node-gyp's configure step runs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  cpSync,
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
import { PROJECT_ROOT } from '../harness/env.js';
import { addonPath, loadAddon } from '../../src/platform/addon.js';
import { findBinary } from '../../src/platform/spawn.js';

const gyp = path.join(PROJECT_ROOT, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const prebuilt = path.join(PROJECT_ROOT, 'prebuilds', `${process.platform}-${process.arch}`);
const headers = ['libiptc', 'libip6tc', 'xtables', 'libnftnl', 'libmnl'];
const skip = !existsSync(gyp)
  ? 'node-gyp (devDependency) is not installed'
  : !['g++', 'python3', 'pkg-config'].every((p) => findBinary(p))
    ? 'the build dependencies (g++, python3, pkg-config) are not installed'
    : spawnSync('pkg-config', ['--exists', ...headers]).status !== 0
      ? `pkg-config does not find ${headers.join(' ')} (apt-get install -y libiptc-dev libxtables-dev libnftnl-dev libmnl-dev)`
      : !loadAddon().ok
        ? 'the native addon is not built (npm run build:addon or npm run prebuilds)'
        : false;

/** A copy of the package as installed in a project (node_modules/iptlb), with or without prebuilt files. */
function installCopy(dir: string, withPrebuilds: boolean): string {
  const pkg = path.join(dir, 'node_modules', 'iptlb');
  mkdirSync(path.join(pkg, 'scripts'), { recursive: true });
  for (const f of ['package.json', 'binding.gyp', 'scripts/install.js', 'scripts/build-addon.js'])
    copyFileSync(path.join(PROJECT_ROOT, f), path.join(pkg, f));
  cpSync(path.join(PROJECT_ROOT, 'native'), path.join(pkg, 'native'), { recursive: true });
  symlinkSync(
    path.join(PROJECT_ROOT, 'node_modules', 'node-addon-api'),
    path.join(dir, 'node_modules', 'node-addon-api'),
  );
  if (withPrebuilds)
    // The files the package ships; the local build when prebuilds/ was not made (the same code).
    cpSync(
      existsSync(prebuilt) ? prebuilt : path.dirname(addonPath('core')),
      path.join(pkg, 'prebuilds', `${process.platform}-${process.arch}`),
      { recursive: true, filter: (f) => !f.endsWith('.d') && !/obj\.target|\.deps/.test(f) },
    );
  return pkg;
}

for (const withPrebuilds of [true, false]) {
  test(
    `forced build from source that fails, ${withPrebuilds ? 'prebuilt files that load' : 'no prebuilt files'}: says ${withPrebuilds ? 'the prebuilt addon' : 'the spawn executors'} will be used, leaves only the log in build/`,
    { skip, timeout: 120_000 },
    () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-build-addon-'));
      try {
        const pkg = installCopy(dir, withPrebuilds);
        // A `make` that fails as a compilation would: node-gyp configures, then runs it.
        const bin = path.join(dir, 'bin');
        mkdirSync(bin);
        writeFileSync(
          path.join(bin, 'make'),
          '#!/bin/sh\necho "make: *** [iptlb_core.target.mk:120: Release/obj.target/x.o] Error 1" >&2\nexit 2\n',
        );
        chmodSync(path.join(bin, 'make'), 0o755);
        const r = spawnSync(process.execPath, [path.join(pkg, 'scripts', 'install.js')], {
          cwd: pkg,
          encoding: 'utf8',
          timeout: 100_000,
          env: {
            ...process.env,
            PATH: `${bin}:${process.env.PATH}`,
            IPTLB_BUILD_FROM_SOURCE: '1',
            npm_config_node_gyp: gyp,
            INIT_CWD: dir, // npm run in the project's directory (where npm's own run of the tests is not)
          },
        });
        assert.equal(r.status, 0, r.stderr);
        const log = path.join(pkg, 'build', 'build-addon.log');
        const instead = withPrebuilds
          ? `the prebuilt native addon (prebuilds/${process.platform}-${process.arch}/) will be used`
          : 'the spawn executors (iptables-legacy-restore, nft) will be used';
        assert.equal(
          r.stderr.trim(),
          `iptlb: native addon not built (compilation failed: make: *** [iptlb_core.target.mk:120: Release/obj.target/x.o] Error 1 | gyp ERR! build error); ${instead}. Fix: apt-get install -y libiptc-dev libxtables-dev libnftnl-dev libmnl-dev pkg-config g++ make python3 && IPTLB_BUILD_FROM_SOURCE=1 npm rebuild iptlb --foreground-scripts. Log: ${log}`,
        );
        // node-gyp's Makefiles and config.gypi are gone; its output and the outcome are in the log.
        assert.deepEqual(readdirSync(path.join(pkg, 'build')), ['build-addon.log']);
        const text = readFileSync(log, 'utf8');
        assert.match(text, /node-gyp\.js rebuild/);
        assert.match(text, /Error 1[\s\S]*exit status [1-9]/);
        assert.match(text, /\nnot built: compilation failed: make: \*\*\* /);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
}

test(
  'in a clone, build:addon and the install script compile nothing when build/Release/ was built from these sources and loads; a changed source or --fresh compiles',
  { skip, timeout: 120_000 },
  () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-build-stamp-'));
    try {
      // A clone's layout: scripts/addon-sources.js is there (the package does not ship it).
      const pkg = installCopy(dir, false);
      copyFileSync(
        path.join(PROJECT_ROOT, 'scripts', 'addon-sources.js'),
        path.join(pkg, 'scripts', 'addon-sources.js'),
      );
      const release = path.join(pkg, 'build', 'Release');
      mkdirSync(release, { recursive: true });
      for (const p of ['core', 'xt', 'nft'] as const) copyFileSync(addonPath(p), path.join(release, `iptlb_${p}.node`));
      const digest = spawnSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { sourcesDigest } from ${JSON.stringify(path.join(pkg, 'scripts', 'addon-sources.js'))}; console.log(sourcesDigest(${JSON.stringify(pkg)}))`,
        ],
        { encoding: 'utf8' },
      ).stdout.trim();
      assert.match(digest, /^[0-9a-f]{64}$/);
      writeFileSync(path.join(release, 'iptlb-sources.sha256'), `${digest}\n`);
      // Any compilation would run this `make`, which fails and says so.
      const bin = path.join(dir, 'bin');
      mkdirSync(bin);
      writeFileSync(path.join(bin, 'make'), '#!/bin/sh\necho "make: called" >&2\nexit 2\n');
      chmodSync(path.join(bin, 'make'), 0o755);
      const run = (script: string, ...args: string[]) =>
        spawnSync(process.execPath, [path.join(pkg, 'scripts', script), ...args], {
          cwd: pkg,
          encoding: 'utf8',
          timeout: 100_000,
          env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, npm_config_node_gyp: gyp },
        });
      const upToDate =
        'iptlb: native addon up to date: build/Release/ was built from these sources (build/Release/iptlb-sources.sha256); --fresh rebuilds it';
      for (const [script, args] of [
        ['build-addon.js', ['--verbose', '--stamp']],
        ['install.js', []],
      ] as const) {
        const r = run(script, ...args);
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stderr.trim(), upToDate, script);
      }
      assert.ok(existsSync(path.join(release, 'iptlb_nft.node')));
      // --fresh compiles anyway (here: the failing make runs).
      const fresh = run('build-addon.js', '--stamp', '--fresh');
      assert.equal(fresh.status, 0);
      assert.match(fresh.stderr, /native addon not built \(compilation failed/);
      // A changed source no longer matches the record: the install script compiles. (The failed
      // build above left only its log in build/.)
      mkdirSync(release, { recursive: true });
      for (const p of ['core', 'xt', 'nft'] as const) copyFileSync(addonPath(p), path.join(release, `iptlb_${p}.node`));
      writeFileSync(path.join(release, 'iptlb-sources.sha256'), `${digest}\n`);
      assert.equal(run('build-addon.js', '--stamp').stderr.trim(), upToDate);
      const src = path.join(pkg, 'native', 'common', 'errors.cc');
      writeFileSync(src, `${readFileSync(src, 'utf8')}\n// changed\n`);
      const changed = run('install.js');
      assert.equal(changed.status, 0);
      assert.match(changed.stderr, /native addon not built \(compilation failed/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'a prebuilt file cut short (an interrupted download or copy) does not kill the install script (SIGBUS): it builds from source, and says the other engine keeps the prebuilt addon',
  { skip, timeout: 120_000 },
  () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-build-cut-'));
    try {
      const pkg = installCopy(dir, true);
      const nft = path.join(pkg, 'prebuilds', `${process.platform}-${process.arch}`, 'iptlb_nft.node');
      const whole = readFileSync(nft);
      writeFileSync(nft, whole.subarray(0, Math.floor(whole.length / 3)));
      const bin = path.join(dir, 'bin');
      mkdirSync(bin);
      writeFileSync(path.join(bin, 'make'), '#!/bin/sh\necho "make: failed" >&2\nexit 2\n');
      chmodSync(path.join(bin, 'make'), 0o755);
      const r = spawnSync(process.execPath, [path.join(pkg, 'scripts', 'install.js')], {
        cwd: pkg,
        encoding: 'utf8',
        timeout: 100_000,
        env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, npm_config_node_gyp: gyp },
      });
      assert.equal(r.signal, null, r.stderr);
      assert.equal(r.status, 0, r.stderr);
      const lines = r.stderr.trim().split('\n');
      assert.equal(
        lines[0],
        `iptlb: the prebuilt native addon does not load here (iptlb_nft.node: ${nft}: loading it was killed by SIGBUS (damaged?)); building from source`,
      );
      assert.match(
        lines[1] ?? '',
        new RegExp(
          `^iptlb: native addon not built \\(compilation failed: .*\\); the legacy engine will use the prebuilt native addon \\(prebuilds/${process.platform}-${process.arch}/\\), the nft engine its spawn executor \\(nft\\)\\. Fix: `,
        ),
      );
      assert.equal(lines.length, 2, r.stderr);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
