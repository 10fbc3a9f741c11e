/**
 * The fix that the loader, `doctor` and the install script give for an addon that does not load must work where
 * the package is installed. In a global install (`npm install -g`: <prefix>/lib/node_modules/iptlb) a plain
 * `npm rebuild iptlb` looks for iptlb in the project of the current directory, rebuilds nothing, says "rebuilt
 * dependencies successfully" and exits 0: there the fix is `npm rebuild -g` (with `--prefix` unless npm's default).
 * No root, no compiler, no addon needed: the package is copied (dist/src, the scripts) into scratch layouts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  cpSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { PROJECT_ROOT } from '../harness/env.js';
import { globalInstallPrefix, libraryFix, loadAddon, projectDir, rebuildCommand } from '../../src/platform/addon.js';

const npmDefaultPrefix = path.dirname(path.dirname(process.execPath));

test('a global install is told apart from a project dependency and a clone', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-global-'));
  try {
    const global = path.join(dir, 'g', 'lib', 'node_modules', 'iptlb');
    mkdirSync(global, { recursive: true });
    assert.equal(globalInstallPrefix(global), path.join(dir, 'g'));
    // A project that happens to be named lib has its package.json there: a dependency, not a global install.
    const project = path.join(dir, 'srv', 'lib', 'node_modules', 'iptlb');
    mkdirSync(project, { recursive: true });
    writeFileSync(path.join(dir, 'srv', 'lib', 'package.json'), '{}');
    assert.equal(globalInstallPrefix(project), undefined);
    assert.equal(globalInstallPrefix(path.join(dir, 'app', 'node_modules', 'iptlb')), undefined);
    assert.equal(globalInstallPrefix(path.join(dir, 'iptlb')), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(rebuildCommand(false, '/opt/g'), 'npm run build:addon');
  assert.equal(rebuildCommand(true, undefined), 'npm rebuild iptlb --foreground-scripts');
  assert.equal(rebuildCommand(true, npmDefaultPrefix), 'npm rebuild -g iptlb --foreground-scripts');
  assert.equal(
    rebuildCommand(true, '/opt/npm-global'),
    'npm rebuild -g --prefix /opt/npm-global iptlb --foreground-scripts',
  );
  assert.equal(
    rebuildCommand(true, "/home/o'neil/npm global"),
    "npm rebuild -g --prefix '/home/o'\\''neil/npm global' iptlb --foreground-scripts",
  );
});

/** A copy of the package (declarations and code of dist/src, the install scripts) at `pkg`, without any addon file. */
function packageCopy(pkg: string): void {
  mkdirSync(path.join(pkg, 'scripts'), { recursive: true });
  cpSync(path.join(PROJECT_ROOT, 'dist', 'src'), path.join(pkg, 'dist', 'src'), { recursive: true });
  for (const f of ['package.json', 'scripts/install.js', 'scripts/build-addon.js'])
    copyFileSync(path.join(PROJECT_ROOT, f), path.join(pkg, f));
  symlinkSync(path.join(PROJECT_ROOT, 'node_modules'), path.join(pkg, 'node_modules'));
}

test('in a global install, the loader (doctor) and the install script give `npm rebuild -g` as the fix', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-global-'));
  try {
    const prefix = path.join(dir, 'g');
    const pkg = path.join(prefix, 'lib', 'node_modules', 'iptlb');
    packageCopy(pkg);
    const rebuild = `npm rebuild -g --prefix ${prefix} iptlb --foreground-scripts`;
    // The loader, as doctor and every command report a part that does not load (here: none built).
    const env = { ...process.env, IPTLB_NO_NATIVE: '', IPTLB_BUILD_FROM_SOURCE: '', npm_config_build_from_source: '' };
    const r = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { loadAddonPart } from './dist/src/platform/addon.js';
         process.stdout.write(JSON.stringify(loadAddonPart('xt')));`,
      ],
      { cwd: pkg, encoding: 'utf8', env },
    );
    assert.equal(r.status, 0, r.stderr);
    const xt = JSON.parse(r.stdout) as { ok: boolean; reason: string; fix: string };
    assert.equal(xt.ok, false);
    assert.equal(xt.reason, 'not-built');
    assert.ok(xt.fix.endsWith(` && ${rebuild}`), xt.fix);
    // The install script with no prebuilt file and no compiler on PATH: the build is skipped, and its fix
    // rebuilds this global copy.
    const bin = path.join(dir, 'bin');
    mkdirSync(bin);
    const i = spawnSync(process.execPath, [path.join(pkg, 'scripts', 'install.js')], {
      cwd: dir,
      encoding: 'utf8',
      env: { ...env, PATH: bin },
    });
    assert.equal(i.status, 0, i.stderr);
    assert.match(i.stderr, /^iptlb: native addon not built \(missing to build it: [^)]*g\+\+ make python3\); /);
    assert.ok(i.stderr.includes(` && ${rebuild}. Log: `), i.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const unit of ['iptlb', 'iptlb-agent'])
  test(`systemd/${unit}.service: its comment says how to run it when iptlb is not on systemd's PATH, with the same command`, () => {
    // `/usr/bin/env iptlb` finds iptlb only on systemd's PATH: not in a project's node_modules (as `npm install iptlb`
    // puts it), nor under nvm or another npm prefix, where the unit failed with status 127 and restarted in a loop.
    const text = readFileSync(path.join(PROJECT_ROOT, 'systemd', `${unit}.service`), 'utf8');
    const exec = /^ExecStart=\/usr\/bin\/env iptlb (.+)$/m.exec(text);
    assert.ok(exec, 'ExecStart runs iptlb through /usr/bin/env');
    assert.match(text, /systemd's PATH \(\/usr\/local\/sbin:\/usr\/local\/bin:\n# \/usr\/sbin:\/usr\/bin\)/);
    assert.ok(text.includes(`systemctl edit ${unit}\``), 'names the drop-in to write');
    const override = /^#   ExecStart=(\/\S+\/node) (\/\S+\/node_modules\/iptlb\/bin\/iptlb\.cjs) (.+)$/m.exec(text);
    assert.ok(override, 'gives an ExecStart= with the paths of node and of the package');
    assert.match(text, /^#   ExecStart=$/m, "resets the unit's ExecStart first");
    assert.equal(override[3], exec[1], 'the same command as the unit');
    // That command, with this package's bin, is one iptlb takes.
    const args = override[3].split(' ');
    const r = spawnSync(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'iptlb.cjs'), ...args, '--help'], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^Usage: iptlb ${args[0]} `));
  });

test(
  'libmnl0 and libip4tc2 missing (a minimal container): doctor and the executor name the packages of both parts an engine needs',
  { skip: loadAddon('all').ok ? false : 'the native addon is not built (npm run build:addon or npm run prebuilds)' },
  () => {
    // Empty files where the dynamic linker looks first (LD_LIBRARY_PATH): dlopen says "<lib>: file too short",
    // as for a missing library; each part names only the first library it stops at.
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-libs-'));
    try {
      for (const so of ['libmnl.so.0', 'libip4tc.so.2']) writeFileSync(path.join(dir, so), '');
      const r = spawnSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { nativeReport } from './dist/src/core/doctor.js';
           import { loadAddon } from './dist/src/platform/addon.js';
           const engines = nativeReport().engines;
           process.stdout.write(JSON.stringify({ doctor: { legacy: engines.legacy.fix, nft: engines.nft.fix },
             legacy: loadAddon('legacy'), nft: loadAddon('nft') }));`,
        ],
        { cwd: PROJECT_ROOT, encoding: 'utf8', env: { ...process.env, IPTLB_NO_NATIVE: '', LD_LIBRARY_PATH: dir } },
      );
      assert.equal(r.status, 0, r.stderr);
      const out = JSON.parse(r.stdout) as {
        doctor: { legacy: string; nft: string };
        legacy: { ok: boolean; reason: string; detail: string; fix: string };
        nft: { ok: boolean; reason: string; fix: string };
      };
      assert.equal(out.legacy.ok, false);
      assert.equal(out.legacy.reason, 'library-missing');
      assert.match(out.legacy.detail, /^iptlb_core\.node: .*libmnl\.so\.0: file too short$/);
      // Before: `apt-get install -y libmnl0` (core's), and once done, the legacy engine still fell back (libip4tc).
      assert.equal(out.legacy.fix, 'apt-get install -y libmnl0 libip4tc2 libip6tc2');
      assert.equal(out.doctor.legacy, 'apt-get install -y libmnl0 libip4tc2 libip6tc2');
      assert.equal(out.nft.fix, 'apt-get install -y libmnl0 libnftnl11');
      assert.equal(out.doctor.nft, 'apt-get install -y libmnl0 libnftnl11');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('in a project, the fix names the project (--prefix) when the command ran in another directory', () => {
  assert.equal(projectDir('/srv/app/node_modules/iptlb'), '/srv/app');
  assert.equal(projectDir('/srv/app/node_modules/.pnpm/iptlb@0.1.0/node_modules/iptlb'), '/srv/app');
  assert.equal(projectDir('/work/iptlb'), undefined);
  assert.equal(rebuildCommand(true, undefined, '/srv/app', '/srv/app'), 'npm rebuild iptlb --foreground-scripts');
  // From elsewhere a plain `npm rebuild iptlb` rebuilds nothing, says "rebuilt dependencies successfully", exits 0.
  assert.equal(
    rebuildCommand(true, undefined, '/srv/app', '/root'),
    'npm rebuild --prefix /srv/app iptlb --foreground-scripts',
  );
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-project-'));
  try {
    const app = path.join(dir, 'app');
    const pkg = path.join(app, 'node_modules', 'iptlb');
    packageCopy(pkg);
    writeFileSync(path.join(app, 'package.json'), '{"name":"app"}');
    const env = { ...process.env, IPTLB_NO_NATIVE: '', IPTLB_BUILD_FROM_SOURCE: '', npm_config_build_from_source: '' };
    const loaderFix = (cwd: string): string => {
      const r = spawnSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { loadAddonPart } from ${JSON.stringify(path.join(pkg, 'dist', 'src', 'platform', 'addon.js'))};
           process.stdout.write(loadAddonPart('core').fix);`,
        ],
        { cwd, encoding: 'utf8', env },
      );
      assert.equal(r.status, 0, r.stderr);
      return r.stdout;
    };
    assert.ok(loaderFix(app).endsWith(' && npm rebuild iptlb --foreground-scripts'), loaderFix(app));
    assert.ok(loaderFix(dir).endsWith(` && npm rebuild --prefix ${app} iptlb --foreground-scripts`), loaderFix(dir));
    // The install script: npm says where it was run (INIT_CWD), `npm install --prefix <app>` from elsewhere.
    const bin = path.join(dir, 'bin');
    mkdirSync(bin);
    const installFix = (initCwd: string): string => {
      const r = spawnSync(process.execPath, [path.join(pkg, 'scripts', 'install.js')], {
        cwd: pkg,
        encoding: 'utf8',
        env: { ...env, PATH: bin, INIT_CWD: initCwd },
      });
      assert.equal(r.status, 0, r.stderr);
      return r.stderr;
    };
    assert.ok(installFix(app).includes(' && npm rebuild iptlb --foreground-scripts. Log: '), installFix(app));
    assert.ok(installFix(dir).includes(` && npm rebuild --prefix ${app} iptlb --foreground-scripts. Log: `));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("docs/install.md: the install script's lines are said to show with --foreground-scripts (npm hides them otherwise)", () => {
  // A plain `npm install iptlb` (npm 7+) shows none of a dependency's install script output unless it fails, which
  // this one never does: the table of what `npm install iptlb` prints promised lines nobody saw.
  const text = readFileSync(path.join(PROJECT_ROOT, 'docs', 'install.md'), 'utf8');
  assert.ok(text.includes('| host | `npm install iptlb --foreground-scripts` prints | then |'));
  assert.match(
    text,
    /npm \(7 and later\) shows a dependency's install\nscript output only with `--foreground-scripts`/,
  );
});

test('a part missing a library no package is known for keeps its fix beside the packages of the others', () => {
  // A container without libstdc++6: core stops at libstdc++.so.6 (no package known: "install the package that
  // provides"), xt at libip4tc.so.2, listed before it. The fix named xt's packages alone: once installed, core
  // still failed for libstdc++, which the fix no longer named (core's own fix, before both parts were merged, did).
  const fix = libraryFix([
    {
      ok: false,
      reason: 'library-missing',
      detail: 'libstdc++.so.6: cannot open',
      fix: 'install the package that provides libstdc++.so.6',
    },
    {
      ok: false,
      reason: 'library-missing',
      detail: 'libip4tc.so.2: cannot open',
      fix: 'apt-get install -y libip4tc2 libip6tc2',
    },
  ]);
  assert.equal(fix, 'apt-get install -y libip4tc2 libip6tc2; install the package that provides libstdc++.so.6');
  assert.equal(
    libraryFix([
      { ok: false, reason: 'library-missing', detail: '', fix: 'install the package that provides libx.so.1' },
    ]),
    'install the package that provides libx.so.1',
  );
  assert.equal(
    libraryFix([
      { ok: false, reason: 'library-missing', detail: '', fix: 'apt-get install -y libmnl0' },
      { ok: false, reason: 'library-missing', detail: '', fix: 'apt-get install -y libmnl0 libnftnl11' },
    ]),
    'apt-get install -y libmnl0 libnftnl11',
  );
});
