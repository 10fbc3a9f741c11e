/**
 * What the npm package ships (`npm pack --dry-run`, the tree as built; no scripts run): the docs the
 * README links and every page they link (each relative link of a shipped README or doc resolves to a
 * shipped file), the GPL-2.0 text the licence names, only the types under dist/src/ (its .js are
 * reached by nothing: `exports` gives the bundles), and dependencies that are exactly what the shipped
 * code loads at run time (commander is bundled into dist/iptlb.cjs).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { builtinModules } from 'node:module';
import * as path from 'node:path';
import { PROJECT_ROOT } from '../harness/env.js';
import { findBinary } from '../../src/platform/spawn.js';

const npm = findBinary('npm');
const skip = npm ? false : 'npm is not installed';

let packed: string[] | undefined;
/** The files `npm pack` would put in the tarball, as paths relative to the package root. */
function shipped(): string[] {
  if (packed) return packed;
  const r = spawnSync(npm!, ['pack', '--dry-run', '--ignore-scripts', '--json'], {
    cwd: PROJECT_ROOT,
    encoding: 'utf8',
    env: { ...process.env, npm_config_update_notifier: 'false' },
  });
  assert.equal(r.status, 0, r.stderr);
  const [info] = JSON.parse(r.stdout) as { files: { path: string }[] }[];
  return (packed = info!.files.map((f) => f.path));
}

const pkg = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  exports: Record<string, Record<string, Record<string, string>>>;
  types: string;
};

/** The relative link targets of a markdown file (inline links and images; code spans and blocks left out). */
function relativeLinks(text: string): string[] {
  const prose = text.replace(/^```[\s\S]*?^```/gm, '').replace(/`[^`\n]*`/g, '');
  const out: string[] = [];
  for (const m of prose.matchAll(/\]\(\s*([^)\s]+)(?:\s+"[^"]*")?\s*\)/g)) {
    const target = m[1]!;
    if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith('#')) continue; // a URL or an anchor
    out.push(decodeURIComponent(target.replace(/#.*$/, '')));
  }
  return out;
}

test(
  'the package ships every page of docs/, the README, and the GPL-2.0 text that LICENSE and docs/install.md name',
  { skip },
  () => {
    const files = shipped();
    for (const f of readdirSync(path.join(PROJECT_ROOT, 'docs')).filter((f) => f.endsWith('.md')))
      assert.ok(files.includes(`docs/${f}`), `docs/${f} in the tarball`);
    for (const f of ['README.md', 'LICENSE', 'LICENSE-GPL-2.0']) assert.ok(files.includes(f), `${f} in the tarball`);
    const gpl = readFileSync(path.join(PROJECT_ROOT, 'LICENSE-GPL-2.0'), 'utf8');
    assert.match(gpl, /GNU GENERAL PUBLIC LICENSE\s+Version 2, June 1991/);
    assert.match(gpl, /END OF TERMS AND CONDITIONS/);
    assert.match(readFileSync(path.join(PROJECT_ROOT, 'LICENSE'), 'utf8'), /\bLICENSE-GPL-2\.0\b/);
    assert.match(readFileSync(path.join(PROJECT_ROOT, 'docs', 'install.md'), 'utf8'), /\(\.\.\/LICENSE-GPL-2\.0\)/);
    assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('dist/test/')), 'no tests in the tarball');
  },
);

test('every relative link in the shipped README and docs resolves to a file in the tarball', { skip }, () => {
  const files = new Set(shipped());
  const pages = [...files].filter((f) => /^(README\.md|docs\/[^/]+\.md)$/.test(f));
  assert.ok(pages.length > 10, `docs shipped: ${pages.join(' ')}`);
  const broken: string[] = [];
  let checked = 0;
  for (const page of pages) {
    for (const link of relativeLinks(readFileSync(path.join(PROJECT_ROOT, page), 'utf8'))) {
      checked++;
      if (link === '') continue; // "page.md#anchor" on itself
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(page), link)).replace(/\/$/, '');
      // A file, or a directory of which something ships.
      if (!files.has(target) && ![...files].some((f) => f.startsWith(`${target}/`))) broken.push(`${page} -> ${link}`);
    }
  }
  assert.ok(checked > 50, `${checked} links checked`);
  assert.deepEqual(broken, []);
});

test('relativeLinks: inline links, anchors and URLs told apart', () => {
  assert.deepEqual(
    relativeLinks(
      'see [a](a.md#x), [b](../examples/agent.ts), [c](https://x.org/y), [d](#top), `[e](e.md)`, ![i](img%201.png "title")\n```\n[f](f.md)\n```\n',
    ),
    ['a.md', '../examples/agent.ts', 'img 1.png'],
  );
});

/** The bare module specifiers (packages) a JavaScript or declaration file requires or imports. */
function packagesOf(text: string): string[] {
  const out = new Set<string>();
  const re = /(?:\brequire\s*\(\s*|\bimport\s*\(\s*|\bfrom\s+|^\s*import\s+)["']([^"'./][^"']*)["']/gm;
  for (const m of text.matchAll(re)) {
    const spec = m[1]!;
    // Node's own modules, and the package's own name (`import … from 'iptlb'` in a doc comment).
    if (spec.startsWith('node:') || builtinModules.includes(spec.split('/')[0]!) || spec === 'iptlb') continue;
    out.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
  }
  return [...out];
}

test(
  'dist/src/ ships its declarations only: no .js there, and every declaration the types entries reach',
  { skip },
  () => {
    const files = new Set(shipped());
    assert.deepEqual(
      [...files].filter((f) => f.startsWith('dist/src/') && !f.endsWith('.d.ts')),
      [],
      'only .d.ts under dist/src/',
    );
    // What `exports` and `types` reach: the two bundles and the declarations of the two entry points,
    // and every declaration those import.
    const entries = [pkg.types, ...Object.values(pkg.exports['.']!).flatMap((c) => Object.values(c))].map((f) =>
      path.posix.normalize(f),
    );
    const seen = new Set<string>();
    const queue = entries.filter((f) => f.endsWith('.d.ts'));
    while (queue.length) {
      const f = queue.pop()!;
      if (seen.has(f)) continue;
      seen.add(f);
      const text = readFileSync(path.join(PROJECT_ROOT, f), 'utf8');
      for (const m of text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*)["'](\.[^"']+)["']/g))
        queue.push(path.posix.join(path.posix.dirname(f), m[1]!.replace(/\.js$/, '.d.ts')));
    }
    for (const f of [...entries, ...seen]) assert.ok(files.has(f), `${f} in the tarball`);
    assert.ok(seen.size > 20, `${seen.size} declarations reached`);
  },
);

test(
  'dependencies are what the shipped code loads at run time; commander (bundled into the CLI) is a devDependency',
  { skip },
  () => {
    const files = shipped();
    const code = files.filter((f) => /\.(c|m)?js$|\.d\.ts$/.test(f) && !f.startsWith('scripts/'));
    assert.ok(code.includes('dist/iptlb.cjs') && code.includes('dist/index.cjs'));
    const loaded = new Map<string, string>();
    for (const f of code)
      for (const p of packagesOf(readFileSync(path.join(PROJECT_ROOT, f), 'utf8'))) loaded.set(p, f);
    // Every package a shipped file loads is a dependency…
    for (const [p, f] of loaded) assert.ok(p in pkg.dependencies, `${p} (loaded by ${f}) is in dependencies`);
    // …and every dependency is loaded by a shipped file, or by binding.gyp for a build from source.
    const gyp = readFileSync(path.join(PROJECT_ROOT, 'binding.gyp'), 'utf8');
    for (const d of Object.keys(pkg.dependencies))
      assert.ok(loaded.has(d) || gyp.includes(`require('${d}')`), `dependency ${d} is loaded by a shipped file`);
    assert.ok(!('commander' in pkg.dependencies));
    assert.ok('commander' in pkg.devDependencies);
    // It is in the CLI bundle itself.
    assert.match(readFileSync(path.join(PROJECT_ROOT, 'dist', 'iptlb.cjs'), 'utf8'), /commander\.invalidArgument/);
  },
);

test('npm run soak selects every kernel and native test file whose counts or pairs IPTLB_SOAK changes (docs/development.md)', () => {
  const pkg = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')) as {
    scripts: Record<string, string>;
  };
  const filters = /run-tests\.js (.*)$/.exec(pkg.scripts.soak!)![1]!.split(' ');
  const soaked: string[] = [];
  for (const dir of ['kernel', 'native']) {
    for (const name of readdirSync(path.join(PROJECT_ROOT, 'test', dir))) {
      if (!name.endsWith('.test.ts')) continue;
      const text = readFileSync(path.join(PROJECT_ROOT, 'test', dir, name), 'utf8');
      if (/\bSOAK\b|aboveExecutor|ABOVE_EXECUTOR_PAIRS/.test(text))
        soaked.push(`${dir}/${name.replace(/\.ts$/, '.js')}`);
    }
  }
  assert.ok(soaked.length >= 5, soaked.join(' '));
  // As scripts/run-tests.js selects: a file whose path contains one of the filters.
  const missed = soaked.filter((f) => !filters.some((x) => `dist/test/${f}`.includes(x)));
  assert.deepEqual(missed, []);
});
