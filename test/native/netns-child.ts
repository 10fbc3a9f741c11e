/**
 * Runs a compiled fixture script in a throwaway network namespace — `unshare -n -- node <script>` —
 * and returns the JSON object it prints on its last stdout line. Nothing that touches netfilter runs
 * in the test process itself, and the namespace (with every rule in it) dies with the child.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { loadAddon } from '../../src/platform/addon.js';

export interface NetnsChildOptions {
  /** Kill the child after this long (default 120 s). */
  timeoutMs?: number;
  /** Added to the child's environment. */
  env?: Record<string, string>;
  /** Prefix the command, e.g. ['setpriv', '--reuid=65534', …] to drop privileges inside the namespace. */
  wrapper?: string[];
  /** Node options before the script, e.g. ['--expose-gc']. */
  nodeArgs?: string[];
}

/** Absolute path of a compiled fixture next to this file (dist/test/native/fixtures/<name>.js). */
export function fixture(name: string): string {
  return new URL(`./fixtures/${name}.js`, import.meta.url).pathname;
}

/** `false` when kernel tests can run here, else why not (for `{ skip }`). */
export function kernelSkip(): string | false {
  if (process.platform !== 'linux') return 'not Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0)
    return 'needs root (unshare -n and CAP_NET_ADMIN)';
  const loaded = loadAddon();
  if (!loaded.ok) return `native addon unavailable: ${loaded.reason}: ${loaded.detail}`;
  return false;
}

/** Runs `unshare -n -- [wrapper…] node script args…`; resolves with the parsed last stdout line. */
export function runInNetns<T = any>(script: string, args: string[] = [], opts: NetnsChildOptions = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    const argv = ['-n', '--', ...(opts.wrapper ?? []), process.execPath, ...(opts.nodeArgs ?? []), script, ...args];
    // A temporary directory of its own, removed when it ends (what the fixture makes under os.tmpdir()).
    const tmp = mkdtempSync(path.join(tmpdir(), 'iptlb-child-'));
    chmodSync(tmp, 0o1777); // as /tmp: a fixture run as another user (setpriv) can use it too
    const child = spawn('unshare', argv, {
      env: { ...process.env, TMPDIR: tmp, ...opts.env, IPTLB_TEST_HOST_NETNS: readlinkSync('/proc/self/ns/net') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const limit = opts.timeoutMs ?? 120_000;
    const timer = setTimeout(() => child.kill('SIGKILL'), limit);
    child.on('error', (e) => {
      clearTimeout(timer);
      rmSync(tmp, { recursive: true, force: true });
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      rmSync(tmp, { recursive: true, force: true });
      const tails = `\n--- stderr:\n${err.slice(-4000)}\n--- stdout:\n${out.slice(-2000)}`;
      if (code !== 0)
        return reject(
          new Error(
            `${script} ${args.join(' ')} exited ${code ?? signal}${signal === 'SIGKILL' ? ` (killed after ${limit} ms)` : ''}${tails}`,
          ),
        );
      const last = out.trimEnd().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(last) as T);
      } catch {
        reject(new Error(`${script} printed no JSON on its last stdout line${tails}`));
      }
    });
  });
}

/**
 * Random profile sets the equivalence tests compare (IPTLB_SOAK: 200). The seed is fixed, so every
 * run compares the same sets; {@link checkEquivalence} checks that they hold every form of rule. 40
 * sets are about 6,000 rules.
 */
export const EQUIVALENCE_SETS = process.env.IPTLB_SOAK ? 200 : 40;

/**
 * Runs the equivalence fixture on {@link EQUIVALENCE_SETS} random profile sets of `family` in a fresh
 * namespace: no mismatch, and every form of rule compared. The fixture counts each profile's features;
 * each must be in 3 profiles or more, so that a run with few sets still compares every form of rule.
 */
export async function checkEquivalence(family: 'ipv4' | 'ipv6'): Promise<void> {
  const r = await runInNetns<{
    sets: number;
    rules: number;
    seen: Record<string, number>;
    mismatches: string[];
    mismatchCount: number;
  }>(fixture('equivalence'), [String(EQUIVALENCE_SETS), ...(family === 'ipv6' ? ['ipv6'] : [])], {
    timeoutMs: 300_000,
  });
  assert.equal(r.sets, EQUIVALENCE_SETS);
  assert.ok(r.rules > 10 * EQUIVALENCE_SETS, `only ${r.rules} rules compared`);
  assert.equal(r.mismatchCount, 0, r.mismatches.join('\n'));
  for (const feature of [
    'mode client',
    'mode proxy',
    'mode server',
    'protocol tcp',
    'protocol udp',
    'protocol sctp',
    'scheduler random',
    'scheduler round-robin',
    'weights',
    'a drained destination',
    'affinity',
    'affinity with round-robin',
    'logging',
    'masquerade',
    'one destination',
    'over 32 destinations',
  ])
    assert.ok(
      (r.seen[feature] ?? 0) >= 3,
      `only ${r.seen[feature] ?? 0} profile(s) with ${feature}: ${JSON.stringify(r.seen)}`,
    );
}
