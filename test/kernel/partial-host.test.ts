/**
 * Partial hosts: only one engine's runtime libraries present. In a private mount namespace (and a
 * fresh network namespace, both made by `unshare -m -n` and gone with it), /dev/null is bind-mounted
 * over libip4tc.so.2 and libip6tc.so.2 (a host with nftables but no iptables libraries), or over
 * libnftnl.so.11 (the reverse). The other engine must still run natively: `iptlb demo` with that
 * engine and `--executor native` forced commits through the addon and sends real connections through
 * the virtual address; `doctor --json` reports per engine native or spawn, with the exact Debian
 * package as the fix; forcing the native executor on the hidden engine is refused with that fix;
 * and the install script keeps the prebuilt files and names the runtime package (no build).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { CLI_PATH, PROJECT_ROOT, skipReason } from '../harness/env.js';
import { addonPath, loadAddon } from '../../src/platform/addon.js';

/** Where the dynamic linker finds `soname` for this addon file (from ldd). */
function libraryOf(file: string, soname: string): string | undefined {
  const r = spawnSync('ldd', [file], { encoding: 'utf8' });
  return new RegExp(`^\\s*${soname.replace(/\./g, '\\.')} => (\\S+)`, 'm').exec(r.stdout ?? '')?.[1];
}

/**
 * A package in `dir`/pkg as the tarball ships it: the install script and the addon's files (the
 * prebuilt ones; the local build when prebuilds/ was not made, the same code).
 */
function packageIn(dir: string): void {
  const prebuilt = path.join(PROJECT_ROOT, 'prebuilds', `${process.platform}-${process.arch}`);
  mkdirSync(path.join(dir, 'pkg', 'scripts'), { recursive: true });
  copyFileSync(path.join(PROJECT_ROOT, 'scripts', 'install.js'), path.join(dir, 'pkg', 'scripts', 'install.js'));
  writeFileSync(path.join(dir, 'pkg', 'package.json'), '{ "type": "module" }\n');
  cpSync(
    existsSync(prebuilt) ? prebuilt : path.dirname(addonPath('core')),
    path.join(dir, 'pkg', 'prebuilds', `${process.platform}-${process.arch}`),
    { recursive: true, filter: (f) => !f.endsWith('.d') && !/obj\.target|\.deps/.test(f) },
  );
}

const cases = [
  {
    host: 'nftables only (libip4tc/libip6tc absent)',
    hide: [
      ['xt', 'libip4tc.so.2'],
      ['xt', 'libip6tc.so.2'],
    ],
    runs: 'nft',
    hidden: 'legacy',
    fix: 'apt-get install -y libip4tc2 libip6tc2',
  },
  {
    host: 'iptables only (libnftnl absent)',
    hide: [['nft', 'libnftnl.so.11']],
    runs: 'legacy',
    hidden: 'nft',
    fix: 'apt-get install -y libnftnl11 libmnl0',
  },
] as const;

const all = loadAddon();
const skip = skipReason() || (all.ok ? false : `the native addon is not built: ${all.detail}`);

for (const c of cases) {
  test(
    `partial host, ${c.host}: the ${c.runs} engine runs natively with real traffic, doctor names the fix for ${c.hidden}`,
    { skip, timeout: 180_000 },
    () => {
      const libs = c.hide.map(([part, so]) => libraryOf(addonPath(part), so));
      assert.ok(libs.every(Boolean), `ldd finds ${c.hide.map(([, so]) => so).join(', ')}: ${libs.join(', ')}`);
      const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-partial-'));
      try {
        const state = path.join(dir, 'state.db');
        packageIn(dir);
        const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
        const node = q(process.execPath);
        const cli = q(CLI_PATH);
        const script = [
          'set -u',
          ...libs.map((l) => `mount --bind /dev/null ${q(l!)} || exit 90`),
          'ip link set lo up || exit 91',
          // The install script on this host, in a copy of the package with only the prebuilt files (no
          // build script: it must not try to build, the library missing is not a compiler's to fix).
          `${node} ${q(`${dir}/pkg/scripts/install.js`)} > ${q(`${dir}/install.txt`)} 2>&1; echo $? > ${q(`${dir}/install.rc`)}`,
          `${node} ${cli} doctor --json --state-file=${q(state)} > ${q(`${dir}/doctor.json`)}`,
          // The engine that has its libraries, native executor forced: real backends, real connections.
          `IPTLB_DEMO_IN_NETNS=1 IPTLB_ENGINE=${c.runs} IPTLB_EXECUTOR=native ${node} ${cli} demo --connections=60 > ${q(`${dir}/demo.txt`)} 2>&1; echo $? > ${q(`${dir}/demo.rc`)}`,
          // The hidden engine, native forced: refused, nothing changed.
          `${node} ${cli} -run -profile=x -src-addr=127.100.0.20:8082 -dest-addr=127.0.0.1:9009 --engine=${c.hidden} --executor=native --state-file=${q(`${dir}/other.db`)} > ${q(`${dir}/other.txt`)} 2>&1; echo $? > ${q(`${dir}/other.rc`)}`,
        ].join('\n');
        const r = spawnSync('unshare', ['-m', '-n', '--propagation', 'private', '--', 'sh', '-c', script], {
          encoding: 'utf8',
          timeout: 150_000,
        });
        assert.equal(r.status, 0, `unshare: ${r.stderr}${r.error?.message ?? ''}`);

        const doctor = JSON.parse(readFileSync(path.join(dir, 'doctor.json'), 'utf8')) as {
          native: { engines: Record<string, { executor: string; reason?: string; fix?: string; files: string[] }> };
        };
        const runs = doctor.native.engines[c.runs]!;
        const hidden = doctor.native.engines[c.hidden]!;
        assert.equal(runs.executor, 'native', JSON.stringify(doctor.native));
        assert.equal(hidden.executor, 'spawn', JSON.stringify(doctor.native));
        assert.match(
          hidden.reason!,
          /^library-missing: iptlb_(xt|nft)\.node: \S*lib(ip4tc|nftnl)\.so\.\d+: file too short$/,
        );
        assert.equal(hidden.fix, c.fix);

        const install = readFileSync(path.join(dir, 'install.txt'), 'utf8');
        assert.equal(readFileSync(path.join(dir, 'install.rc'), 'utf8').trim(), '0', install);
        const engine = c.hidden === 'legacy' ? 'legacy' : 'nft';
        assert.equal(
          install.trim(),
          `iptlb: prebuilt native addon installed; ${engine}: ${c.hide[0][1]} not found on this host, so that part uses the spawn executor. Fix: ${c.fix} (no rebuild needed)`,
        );

        const demo = readFileSync(path.join(dir, 'demo.txt'), 'utf8');
        assert.equal(readFileSync(path.join(dir, 'demo.rc'), 'utf8').trim(), '0', demo);
        assert.match(demo, /Demo OK\./);
        assert.match(demo, /failed +0\n/);
        assert.match(demo, new RegExp(`executor: native`), demo);
        assert.match(demo, c.runs === 'nft' ? /table ip iptlb, nft\/native/ : /legacy\/native/, demo);

        const other = readFileSync(path.join(dir, 'other.txt'), 'utf8');
        assert.equal(readFileSync(path.join(dir, 'other.rc'), 'utf8').trim(), '1', other);
        assert.match(other, new RegExp(`native executor unavailable: library-missing: .*fix: ${c.fix}`));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
}

// The install script on hosts missing libraries of several parts: each library is named once (libmnl,
// linked by two parts, was listed twice), and the "none of the libraries" row of docs/install.md's
// table is what it prints.
const hosts = [
  {
    host: 'libmnl and libip4tc absent',
    hide: [
      ['core', 'libmnl.so.0'],
      ['xt', 'libip4tc.so.2'],
    ],
    says: 'locks/conntrack, legacy, nft: libmnl.so.0, libip4tc.so.2 not found on this host, so those parts use the spawn executor. Fix: apt-get install -y libmnl0 libip4tc2 libip6tc2 libnftnl11 (no rebuild needed)',
  },
  {
    host: 'none of the libraries',
    hide: [
      ['core', 'libmnl.so.0'],
      ['xt', 'libip4tc.so.2'],
      ['xt', 'libip6tc.so.2'],
      ['nft', 'libnftnl.so.11'],
    ],
    // The table's row, word for word.
    says: /^\| none of the libraries \| `… ([^`]+)` \|/m.exec(
      readFileSync(path.join(PROJECT_ROOT, 'docs', 'install.md'), 'utf8'),
    )?.[1],
  },
] as const;

for (const h of hosts) {
  test(`install script, ${h.host}: one line naming each missing library once`, { skip, timeout: 60_000 }, () => {
    assert.ok(h.says, 'the row of docs/install.md');
    const libs = [...new Set(h.hide.map(([part, so]) => libraryOf(addonPath(part), so)))];
    assert.ok(libs.every(Boolean), `ldd finds ${h.hide.map(([, so]) => so).join(', ')}: ${libs.join(', ')}`);
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-partial-'));
    try {
      packageIn(dir);
      const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
      const script = [
        ...libs.map((l) => `mount --bind /dev/null ${q(l!)} || exit 90`),
        `${q(process.execPath)} ${q(`${dir}/pkg/scripts/install.js`)}`,
      ].join('\n');
      const r = spawnSync('unshare', ['-m', '-n', '--propagation', 'private', '--', 'sh', '-c', script], {
        encoding: 'utf8',
        timeout: 50_000,
      });
      assert.equal(r.status, 0, `${r.stderr}${r.error?.message ?? ''}`);
      assert.equal(r.stderr.trim(), `iptlb: prebuilt native addon installed; ${h.says}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
