/**
 * Where the package is installed. Works from the TypeScript output (dist/src/…) and from the CLI
 * bundle (dist/iptlb.cjs) alike: walks up from this file to the directory whose package.json names iptlb.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

declare const __IPTLB_BUNDLE_FILE__: string | undefined;

function thisFile(): string {
  // In the CommonJS bundle esbuild defines __IPTLB_BUNDLE_FILE__ as __filename; in ESM it is undeclared.
  if (typeof __IPTLB_BUNDLE_FILE__ === 'string') return __IPTLB_BUNDLE_FILE__;
  return fileURLToPath(import.meta.url);
}

let root: string | undefined;
let version: string | undefined;

/** Absolute path of the package root (the directory holding iptlb's package.json). */
export function packageRoot(): string {
  if (root) return root;
  let dir = path.dirname(thisFile());
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'iptlb') {
        version = pkg.version;
        return (root = dir);
      }
    } catch {
      /* keep walking */
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error('iptlb: cannot find the package root (package.json named iptlb)');
    dir = up;
  }
}

export function packageVersion(): string {
  packageRoot();
  return version ?? '0.0.0';
}
