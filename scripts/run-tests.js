#!/usr/bin/env node
// Runs every compiled test file with node's built-in test runner. Arguments narrow the set:
// `node scripts/run-tests.js unit` runs the files whose path contains "unit".
import { readdirSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'dist', 'test');
function walk(d) {
  return readdirSync(d).flatMap((f) => {
    const p = path.join(d, f);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.test.js') ? [p] : [];
  });
}
const filters = process.argv.slice(2);
const files = walk(dir).sort().filter((f) => !filters.length || filters.some((x) => f.includes(x)));
if (!files.length) {
  console.error(`no test files under ${dir}${filters.length ? ` matching ${filters.join(', ')}` : ''}; run npm run build first`);
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--expose-gc', '--test', ...files], { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
