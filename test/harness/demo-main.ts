/**
 * The quick-start demo (scripts/demo.sh, or `sudo node dist/test/harness/demo-main.js`): inside a
 * throwaway network namespace, three real backends, a real profile applied with the iptlb CLI,
 * 600 real connections through the virtual address, and the split printed. Deletes the profile at
 * the end and shows the nat table is empty again. Exits non-zero if any connection failed.
 *
 * Re-executes itself under `unshare -n` (env IPTLB_DEMO_IN_NETNS marks the inner run), so this
 * machine's own network configuration is never touched.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTcpBackends, backendId } from './backends.js';
import { tcpSplit } from './traffic.js';
import { chiSquare } from './stats.js';
import { ruleLines } from './iptables.js';
import { CLI_PATH, PROJECT_ROOT } from './env.js';

const say = (s = ''): void => void process.stdout.write(s + '\n');

if (!process.env.IPTLB_DEMO_IN_NETNS) {
  if (process.getuid?.() !== 0) {
    console.error('iptlb demo: run it as root (sudo): it creates a throwaway network namespace');
    process.exit(1);
  }
  const r = spawnSync('unshare', ['-n', '--', process.execPath, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, IPTLB_DEMO_IN_NETNS: '1' },
    timeout: 180_000,
  });
  if (r.error) console.error(`iptlb demo: could not run unshare -n: ${r.error.message}`);
  process.exit(r.status ?? 1);
}

const VIP = '127.100.0.10';
const PORT = 8081;
const PORTS = [9001, 9002, 9003];
const N = 600;
const rel = (p: string): string => path.relative(process.cwd(), p) || p;

/** Runs a command with a time limit; never throws. */
function run(cmd: string, args: string[], timeoutMs = 60_000): { status: number | null; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs });
  return { status: r.status, out: r.stdout ?? '', err: (r.stderr ?? '') + (r.error ? `${cmd}: ${r.error.message}\n` : '') };
}
const iptlb = (args: string[]): ReturnType<typeof run> => run(process.execPath, [CLI_PATH, ...args]);
/** iptlb's rules in either engine: the x_tables nat table's rule lines, then table ip iptlb if it exists. */
const natRules = (): string[] => {
  const nft = run('nft', ['list', 'table', 'ip', 'iptlb']);
  return [...ruleLines(run('iptables-legacy-save', ['-t', 'nat']).out), ...(nft.status === 0 ? nft.out.trimEnd().split('\n') : [])];
};

if (!existsSync(CLI_PATH) || !existsSync(path.join(PROJECT_ROOT, 'dist', 'iptlb.cjs'))) {
  console.error(`iptlb demo: the CLI is not built (${CLI_PATH} needs dist/iptlb.cjs); run \`npm run build\` in ${PROJECT_ROOT} first`);
  process.exit(1);
}

const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-demo-'));
const state = path.join(dir, 'state.db');
let exitCode = 1;
let backends: Awaited<ReturnType<typeof startTcpBackends>> | undefined;
try {
  const lo = run('ip', ['link', 'set', 'lo', 'up']);
  if (lo.status !== 0) throw new Error(`ip link set lo up: ${lo.err}`);
  say('iptlb demo — everything below happens in a throwaway network namespace;');
  say("this machine's own interfaces and netfilter rules are not touched.");
  say();

  backends = await startTcpBackends(PORTS);
  say(`1. Three backends listen on ${PORTS.map((p) => `127.0.0.1:${p}`).join(', ')};`);
  say(`   each answers every connection with its id ("${backendId(PORTS[0])}") and closes.`);
  say();

  const doctor = iptlb(['doctor', `-state-file=${state}`]);
  const how = doctor.out.split('\n').filter((l) => /^(engine|executor):/.test(l));
  const apply = ['-run', '-profile=demo', `-src-addr=${VIP}:${PORT}`, `-dest-addr=${PORTS.map((p) => `127.0.0.1:${p}`).join(',')}`, `-state-file=${state}`];
  say(`2. Balance the virtual address ${VIP}:${PORT} over them with a real iptlb profile:`);
  say(`   $ node ${rel(CLI_PATH)} ${apply.join(' ')}`);
  const applied = iptlb(apply);
  for (const l of (applied.err + applied.out).trim().split('\n').filter(Boolean)) say(`   ${l}`);
  if (applied.status !== 0) throw new Error(`iptlb exited ${applied.status}; the profile was not applied`);
  say();
  if (how.length) {
    say('   How it committed (from `iptlb doctor`):');
    for (const l of how) say(`   ${l}`);
    say();
  }
  say('   The rules it wrote (iptables-legacy-save -t nat rule lines, then nft list table ip iptlb):');
  for (const l of natRules()) say(`   ${l}`);
  say();

  say(`3. Open ${N} real TCP connections to ${VIP}:${PORT} and count who answered:`);
  const t0 = Date.now();
  const split = await tcpSplit(VIP, PORT, N, { concurrency: 8, timeoutMs: 3000 });
  const ms = Date.now() - t0;
  const counts = PORTS.map((p) => split.counts[backendId(p)] ?? 0);
  const chi = chiSquare(counts, PORTS.map(() => 1));
  say();
  say('   backend           connections   share');
  PORTS.forEach((p, i) => say(`   127.0.0.1:${p}    ${String(counts[i]).padStart(11)}   ${((100 * counts[i]) / N).toFixed(1).padStart(5)} %`));
  const other = Object.entries(split.counts).filter(([k]) => !PORTS.some((p) => backendId(p) === k));
  for (const [k, v] of other) say(`   (unexpected answer ${JSON.stringify(k)}: ${v})`);
  say(`   failed            ${String(split.failures).padStart(11)}`);
  say();
  say(`   ${N} connections in ${ms} ms. Expected share: 33.3 % each.`);
  say(`   Chi-square against an even split: ${chi.statistic.toFixed(2)} (df ${chi.df}), p-value ${chi.pValue.toFixed(3)}`);
  say(`   (a p-value above ~0.001 means the split is consistent with 1/3 each${chi.pValue < 0.001 ? ' — this one is NOT' : ''})`);
  for (const e of split.errors) say(`   error: ${e}`);
  say();

  const del = ['-run', '-delete', '-profile=demo', `-state-file=${state}`];
  say('4. Delete the profile:');
  say(`   $ node ${rel(CLI_PATH)} ${del.join(' ')}`);
  const deleted = iptlb(del);
  for (const l of (deleted.err + deleted.out).trim().split('\n').filter(Boolean)) say(`   ${l}`);
  const after = natRules();
  say(`   afterwards: ${after.length ? '' : 'no rule of iptlb left in either engine (the nat table holds only its built-in chains, table ip iptlb is gone)'}`);
  for (const l of after) say(`   ${l}`);
  say();

  const good = split.failures === 0 && other.length === 0 && deleted.status === 0 && after.length === 0;
  say(good ? 'Demo OK.' : 'Demo FAILED (see above).');
  exitCode = good ? 0 : 1;
} catch (e) {
  console.error(`iptlb demo: ${(e as Error).message}`);
  exitCode = 1;
} finally {
  await backends?.close();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);
