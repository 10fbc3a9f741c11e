/**
 * A user's TypeScript project against the installed `iptlb` (in `dir/node_modules/iptlb`): an ES module
 * importing it and a CommonJS module requiring it, type-checked strictly with node16 resolution and the
 * shipped declarations checked too (skipLibCheck false). Returns tsc's exit status and output.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { PROJECT_ROOT } from './env.js';

export function typeCheckConsumer(
  dir: string,
  opts: { lib?: string[] } = {},
): { status: number | null; output: string } {
  writeFileSync(
    path.join(dir, 'esm.mts'),
    "import { open, type Profile } from 'iptlb';\nexport const f: typeof open = open;\nexport type P = Profile;\n",
  );
  writeFileSync(
    path.join(dir, 'cjs.cts'),
    "import iptlb = require('iptlb');\nexport const f: typeof iptlb.open = iptlb.open;\nexport type P = iptlb.Profile;\n",
  );
  writeFileSync(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        module: 'node16',
        moduleResolution: 'node16',
        ...(opts.lib ? { lib: opts.lib } : {}),
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        types: ['node'],
        typeRoots: [path.join(PROJECT_ROOT, 'node_modules', '@types')],
      },
      files: ['esm.mts', 'cjs.cts'],
    }),
  );
  const tsc = spawnSync(
    process.execPath,
    [path.join(PROJECT_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir],
    { cwd: dir, encoding: 'utf8' },
  );
  return { status: tsc.status, output: `${tsc.stdout}${tsc.stderr}` };
}
