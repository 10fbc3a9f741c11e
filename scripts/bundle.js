#!/usr/bin/env node
// Bundles the CLI into one minified CommonJS file, dist/iptlb.cjs, so that `iptlb` starts as fast as
// Node itself (one file to read and compile, no ESM graph to resolve). `yaml` stays external: it is
// loaded only for state files outside the canonical layout.
import { build } from 'esbuild';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
await build({
  entryPoints: [path.join(root, 'src', 'cli.ts')],
  outfile: path.join(root, 'dist', 'iptlb.cjs'),
  bundle: true,
  minify: true,
  platform: 'node',
  format: 'cjs',
  target: 'node18',
  external: ['yaml'],
  define: { __IPTLB_BUNDLE_FILE__: '__filename', 'import.meta.url': '__IPTLB_IMPORT_META_URL__' },
  banner: { js: 'const __IPTLB_IMPORT_META_URL__ = require("node:url").pathToFileURL(__filename).href;' },
  logLevel: 'warning',
});
