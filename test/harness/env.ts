/** What the kernel tests need, and where things are. */
import { accessSync, constants } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Absolute path of the project root (works from test/harness and dist/test/harness). */
export const PROJECT_ROOT = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (path.basename(dir) !== 'test') dir = path.dirname(dir);
  dir = path.dirname(dir);
  return path.basename(dir) === 'dist' ? path.dirname(dir) : dir;
})();

/** The CLI entry point, as users run it. */
export const CLI_PATH = path.join(PROJECT_ROOT, 'bin', 'iptlb.cjs');

function which(name: string): boolean {
  for (const d of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/bin']) {
    try {
      accessSync(path.join(d, name), constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}

/** Whether kernel tests can run here; the reason when they cannot. */
export function kernelTestSupport(): { ok: true } | { ok: false; reason: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'kernel tests need root (they create network namespaces)' };
  for (const tool of ['unshare', 'ip', 'iptables-legacy', 'iptables-legacy-save', 'iptables-legacy-restore']) {
    if (!which(tool)) return { ok: false, reason: `${tool} is not installed (apt-get install -y iptables iproute2 util-linux)` };
  }
  return { ok: true };
}
