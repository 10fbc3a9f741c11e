/** What the kernel tests need, and where things are. */
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { findBinary } from '../../src/platform/spawn.js';

/**
 * Absolute path of the project root: the nearest ancestor of this file holding package.json, found
 * the same way from test/harness/ (ts-node style runs) and from dist/test/harness/ (compiled).
 */
export const PROJECT_ROOT: string = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = here, i = 0; i < 8; i++, dir = path.dirname(dir)) {
    if (
      path.basename(dir) !== 'dist' &&
      existsSync(path.join(dir, 'package.json')) &&
      existsSync(path.join(dir, 'test'))
    )
      return dir;
    if (path.dirname(dir) === dir) break;
  }
  // Layout fallback: <root>/[dist/]test/harness.
  const up2 = path.resolve(here, '..', '..');
  return path.basename(up2) === 'dist' ? path.dirname(up2) : up2;
})();

/**
 * The CLI entry point, as users run it (`node CLI_PATH …`). The package's bin is `bin/iptlb.cjs`
 * (a CommonJS shim over the `dist/iptlb.cjs` bundle made by `npm run build`).
 */
export const CLI_PATH: string = path.join(PROJECT_ROOT, 'bin', 'iptlb.cjs');

/** Whether `name` is an executable on PATH or in the sbin directories (the product's own lookup). */
export const which = findBinary;

export type Support = { ok: true } | { ok: false; reason: string };

let cached: Support | undefined;

/**
 * Whether kernel tests can run here; the reason when they cannot. Checks root, the tools, and then
 * actually tries once (cached) to create a network namespace and list its nat table with
 * iptables-legacy — root inside a container without CAP_SYS_ADMIN, or a kernel without the legacy
 * x_tables nat table, is reported as a reason instead of failing every test.
 * Use as `test('x', { skip: skipReason() }, …)`.
 */
export function kernelTestSupport(): Support {
  if (cached) return cached;
  cached = probe();
  return cached;
}

/** `false` when kernel tests can run, else the reason (for `{ skip }`). */
export function skipReason(): string | false {
  const s = kernelTestSupport();
  return s.ok ? false : s.reason;
}

function probe(): Support {
  if (process.platform !== 'linux')
    return { ok: false, reason: `kernel tests need Linux (this is ${process.platform})` };
  if (process.getuid?.() !== 0) return { ok: false, reason: 'kernel tests need root (they create network namespaces)' };
  for (const tool of ['unshare', 'ip', 'iptables-legacy', 'iptables-legacy-save', 'iptables-legacy-restore']) {
    if (!which(tool))
      return { ok: false, reason: `${tool} is not installed (apt-get install -y iptables iproute2 util-linux)` };
  }
  // A real try, in a namespace of its own (it dies with the command): never the host's tables. The
  // xtables lock file is shared by every namespace, so another process may hold it for a while: try
  // three times, 20 s each. (A skip as root fails the run anyway: see scripts/reporter.mjs.)
  let why = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const r = spawnSync('unshare', ['-n', '--', 'iptables-legacy', '-w', '20', '-t', 'nat', '-S'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    if (!r.error && r.status === 0) return { ok: true };
    why = (r.error?.message ?? r.stderr ?? '').trim().split('\n')[0] || `exit ${r.status}`;
  }
  return {
    ok: false,
    reason: `cannot create a network namespace with a legacy nat table here (unshare -n iptables-legacy -t nat -S, 3 tries: ${why})`,
  };
}

/**
 * The environment for a command that may reach the npm registry: the runner (scripts/run-tests.js)
 * moves NODE_EXTRA_CA_CERTS aside for the tests' own Node processes, and npm gets it back here.
 */
export function registryEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const ca = env.IPTLB_TEST_NODE_EXTRA_CA_CERTS;
  return ca ? { ...env, NODE_EXTRA_CA_CERTS: ca } : env;
}
