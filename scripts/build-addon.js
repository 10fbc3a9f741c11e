#!/usr/bin/env node
// Builds the native addon from source (build/Release/iptlb_core.node, iptlb_xt.node, iptlb_nft.node,
// see binding.gyp). Run by scripts/install.js when no prebuilt binary fits this host or a build is
// forced (soft: a missing toolchain or library never fails the install; what loads instead is used,
// the prebuilt files when they load here, else the spawn executors, and `iptlb doctor` says why), by
// `npm run build:addon` (--verbose: full output, fails loudly; --stamp: records what it was built from,
// and builds nothing when that is what build/Release/ already holds, unless --fresh) and by `npm run prebuild`.
//
// node-gyp is never downloaded: it is npm's own bundled copy (npm hands its path to install scripts
// as npm_config_node_gyp), the pinned devDependency in a checkout of this repo, or the copy bundled
// with the npm beside this node binary.
// The whole output of the last run is kept in build/build-addon.log; `iptlb doctor` shows its end.
import { spawnSync } from 'node:child_process';
import {
  accessSync,
  appendFileSync,
  constants,
  existsSync,
  mkdirSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const verbose = process.argv.includes('--verbose');
const log = path.join(root, 'build', 'build-addon.log');
// In a consumer project (this package under node_modules) `npm run build:addon` does not exist.
const consumer = root.split(path.sep).includes('node_modules');
// A build forced over prebuilt files that load (scripts/install.js): a plain rebuild would take those again.
const forced = process.env.IPTLB_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true';
// A global install (`npm install -g`: <prefix>/lib/node_modules/iptlb, no project's package.json in
// <prefix>/lib) is rebuilt with -g (and its --prefix unless npm's default): a plain `npm rebuild iptlb`
// looks in the current directory's project, rebuilds nothing and exits 0. As src/platform/addon.ts.
const lib = path.dirname(path.dirname(root));
const globalPrefix =
  path.basename(path.dirname(root)) === 'node_modules' &&
  path.basename(lib) === 'lib' &&
  !existsSync(path.join(lib, 'package.json'))
    ? path.dirname(lib)
    : undefined;
const quote = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`);
const globalFlags =
  globalPrefix === undefined
    ? ''
    : ` -g${path.dirname(path.dirname(process.execPath)) === globalPrefix ? '' : ` --prefix ${quote(globalPrefix)}`}`;
// A project's copy: `npm rebuild` acts on the project of the directory it runs in; npm ran this script for one
// started elsewhere (INIT_CWD: `npm install --prefix /srv/app iptlb` from /root), so the project is named then.
const parts = root.split(path.sep);
const project = parts.indexOf('node_modules') > 0 ? parts.slice(0, parts.indexOf('node_modules')).join(path.sep) : '';
const projectFlags =
  globalPrefix === undefined && project && process.env.INIT_CWD && process.env.INIT_CWD !== project
    ? ` --prefix ${quote(project)}`
    : '';
const rebuild = consumer
  ? `${forced ? 'IPTLB_BUILD_FROM_SOURCE=1 ' : ''}npm rebuild${globalFlags}${projectFlags} iptlb --foreground-scripts`
  : 'npm run build:addon';
const BUILD_PACKAGES = 'libiptc-dev libxtables-dev libnftnl-dev libmnl-dev pkg-config g++ make python3';
const FIX = `apt-get install -y ${BUILD_PACKAGES} && ${rebuild}`;

let logged = false;
/** Starts the log of this run, then adds to it (the outcome after node-gyp's output). */
function writeLog(text) {
  try {
    mkdirSync(path.dirname(log), { recursive: true });
    if (logged) appendFileSync(log, text);
    else
      writeFileSync(
        log,
        `${new Date().toISOString()} iptlb: building the native addon from source in ${root}\n${text}`,
      );
    logged = true;
  } catch {
    /* a read-only install: the message on stderr is all there is */
  }
}

/**
 * What iptlb will use without this build, as src/platform/addon.ts loads it: per part the first of
 * build/Release/ (an earlier build) and prebuilds/<platform>-<arch>/ whose file loads in this node;
 * an engine runs natively when core and its own part load, else its spawn executor.
 */
function instead() {
  const dirs = [path.join('build', 'Release'), path.join('prebuilds', `${process.platform}-${process.arch}`)];
  const from = {};
  for (const part of ['core', 'xt', 'nft']) {
    // Loaded in a child process: a damaged file (cut short, garbled) can kill the process that
    // dlopens it (SIGBUS, SIGSEGV), and this script must still say what will be used.
    from[part] = dirs.find((d) => {
      const file = path.join(root, d, `iptlb_${part}.node`);
      return (
        existsSync(file) &&
        spawnSync(process.execPath, ['-e', 'require(process.argv[1])', file], { stdio: 'ignore' }).status === 0
      );
    });
  }
  const what = (d) =>
    d.startsWith('prebuilds') ? `the prebuilt native addon (${d}/)` : `the native addon of an earlier build (${d}/)`;
  const legacy = from.core && from.xt ? from.xt : undefined;
  const nft = from.core && from.nft ? from.nft : undefined;
  if (!legacy && !nft) return 'the spawn executors (iptables-legacy-restore, nft) will be used';
  if (legacy && legacy === nft && from.core === legacy) return `${what(legacy)} will be used`;
  const use = (d, program) => (d ? what(d) : `its spawn executor (${program})`);
  return `the legacy engine will use ${use(legacy, 'iptables-legacy-restore')}, the nft engine ${use(nft, 'nft')}`;
}

function skip(reason, missing) {
  writeLog(`not built: ${reason}\n`);
  const fix = missing ? `apt-get install -y ${missing} && ${rebuild}` : FIX;
  console.error(`iptlb: native addon not built (${reason}); ${instead()}. Fix: ${fix}. Log: ${log}`);
  process.exit(verbose ? 1 : 0);
}

/** The program `name` on PATH (an executable file, as node-gyp and make look for it). */
function which(name) {
  for (const d of (process.env.PATH ?? '').split(':')) {
    const f = d && path.join(d, name);
    try {
      if (f && statSync(f).isFile()) {
        accessSync(f, constants.X_OK);
        return f;
      }
    } catch {
      /* not there, or not executable: keep looking */
    }
  }
  return undefined;
}

/** What a failed node-gyp run left in build/ (its Makefiles, config.gypi, objects): all but the log. */
function removeLeftovers() {
  const dir = path.dirname(log);
  try {
    for (const f of readdirSync(dir))
      if (f !== path.basename(log)) rmSync(path.join(dir, f), { recursive: true, force: true });
  } catch {
    /* nothing there, or read-only */
  }
}

if (process.platform !== 'linux') skip(`${process.platform} has no netfilter`);
// What is missing, by Debian package, so the fix names exactly those.
// pkg-config when there is one; else the headers where Debian puts them (binding.gyp then links
// -lip4tc -lip6tc -lnftnl -lmnl without it).
const missing = [];
const mods = [
  ['libiptc', 'libiptc-dev', 'libiptc/libiptc.h'],
  ['libip6tc', 'libiptc-dev', 'libiptc/libip6tc.h'],
  ['xtables', 'libxtables-dev', 'xtables.h'],
  ['libnftnl', 'libnftnl-dev', 'libnftnl/table.h'],
  ['libmnl', 'libmnl-dev', 'libmnl/libmnl.h'],
];
const hasPkgConfig = !!which('pkg-config');
for (const [mod, pkg, header] of mods) {
  const found = hasPkgConfig
    ? spawnSync('pkg-config', ['--exists', mod]).status === 0
    : ['/usr/include', '/usr/local/include'].some((d) => existsSync(path.join(d, header)));
  if (!found && !missing.includes(pkg)) missing.push(pkg);
}
if (!which('g++') && !which('c++')) missing.push('g++');
if (!which('make')) missing.push('make');
if (!which('python3')) missing.push('python3');
if (missing.length) skip(`missing to build it: ${missing.join(' ')}`, missing.join(' '));

function nodeGyp() {
  const npmGyp = process.env.npm_config_node_gyp;
  if (npmGyp && existsSync(npmGyp)) return [process.execPath, [npmGyp]];
  const local = path.join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(local)) return [process.execPath, [local]];
  const bundled = path.join(
    path.dirname(process.execPath),
    '..',
    'lib',
    'node_modules',
    'npm',
    'node_modules',
    'node-gyp',
    'bin',
    'node-gyp.js',
  );
  if (existsSync(bundled)) return [process.execPath, [bundled]];
  return undefined;
}
const gyp = nodeGyp();
if (!gyp)
  skip(
    "node-gyp not found (neither npm_config_node_gyp from npm, node_modules/node-gyp, nor npm's bundled copy)",
    'npm',
  );
// --stamp (`npm run build:addon`): record what this build is made of (scripts/addon-sources.js), taken
// before it starts, so that `npm run prebuilds` can copy these binaries instead of building again. Not
// in a consumer's copy of the package, which never passes it and does not ship that file.
const stamp = process.argv.includes('--stamp') ? await import('./addon-sources.js') : undefined;
// Nothing to do when build/Release/ was built from these very sources and loads (--fresh builds anyway):
// a clone's `npm ci` builds it through the install script, and CI's `npm run build:addon` after it
// would compile the same sources again (about 2 minutes on 2 cores).
if (stamp && !process.argv.includes('--fresh') && stamp.currentBuild(root)) {
  console.error(
    `iptlb: native addon up to date: build/Release/ was built from these sources (${stamp.STAMP}); --fresh rebuilds it`,
  );
  process.exit(0);
}
const digest = stamp?.sourcesDigest(root);
const gypArgs = ['rebuild', '--jobs=max'];
// Build against the headers of the node that runs us (no download): npm passes them as
// npm_config_nodedir; otherwise they sit in <prefix>/include/node beside the binary.
const prefix = path.resolve(path.dirname(process.execPath), '..');
if (!process.env.npm_config_nodedir && existsSync(path.join(prefix, 'include', 'node', 'node_api.h')))
  gypArgs.push(`--nodedir=${prefix}`);
const [cmd, args] = gyp;
// Captured whole (for the log); --verbose prints it when the build ends.
const r = spawnSync(cmd, [...args, ...gypArgs], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'pipe'],
  encoding: 'utf8',
  maxBuffer: 64 << 20,
});
if (verbose) process.stderr.write(`${r.stdout ?? ''}${r.stderr ?? ''}`);
writeLog(
  `${cmd} ${[...args, ...gypArgs].join(' ')}\n${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? `${r.error.message}\n` : ''}exit status ${r.status}\n`,
);
if (r.status !== 0) {
  if (!verbose) {
    const lines = `${r.stderr ?? ''}${r.stdout ?? ''}`
      .split('\n')
      .filter((l) => /error/i.test(l))
      .slice(0, 2);
    // node-gyp rebuild cleaned build/ first: what it left is no addon, and the log tells what happened.
    removeLeftovers();
    skip(`compilation failed${lines.length ? `: ${lines.join(' | ').trim()}` : ''}`);
  }
  console.error(`iptlb: native addon build failed; log: ${log}`);
  process.exit(1);
}
if (stamp) writeFileSync(path.join(root, stamp.STAMP), `${digest}\n`);
console.error(
  `iptlb: native addon built from source: ${path.join(root, 'build', 'Release')}/iptlb_{core,xt,nft}.node (log: ${log})`,
);
