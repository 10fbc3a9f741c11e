/**
 * The quick-start demo (scripts/demo.sh): inside a throwaway network namespace, three real backends,
 * a real profile applied with the iptlb CLI, 600 real connections through the virtual address, and
 * the split printed. Deletes the profile at the end and shows the table is empty again.
 */
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTcpBackends } from './backends.js';
import { tcpSplit } from './traffic.js';
import { chiSquare } from './stats.js';
import { CLI_PATH } from './env.js';

if (!process.env.IPTLB_DEMO_IN_NETNS) {
  if (process.getuid?.() !== 0) {
    console.error('iptlb demo: run as root (it creates a throwaway network namespace)');
    process.exit(1);
  }
  const r = spawnSync('unshare', ['-n', '--', process.execPath, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, IPTLB_DEMO_IN_NETNS: '1' },
  });
  process.exit(r.status ?? 1);
}

const say = (s = ''): void => void process.stdout.write(s + '\n');
const VIP = '127.100.0.10';
const PORT = 8081;
const ports = [9001, 9002, 9003];
const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-demo-'));
const state = path.join(dir, 'state.db');
const iptlb = (...args: string[]): { status: number | null; out: string; err: string } => {
  const r = spawnSync(process.execPath, [CLI_PATH, `-state-file=${state}`, ...args], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout, err: r.stderr };
};
const natRules = (): string =>
  execFileSync('iptables-legacy-save', ['-t', 'nat'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.startsWith('-A') || (l.startsWith(':') && l.includes('IPTLB')))
    .join('\n');

execFileSync('ip', ['link', 'set', 'lo', 'up']);
say('iptlb demo: a throwaway network namespace (this machine\'s own tables are not touched)');
say();
const backends = await startTcpBackends(ports);
say(`backends: ${ports.map((p) => `127.0.0.1:${p}`).join(', ')} (each answers "backend:<port>")`);
const doctor = iptlb('doctor');
say(doctor.out.split('\n').slice(0, 2).join('\n'));
say();
const args = ['-run', '-profile=demo', `-src-addr=${VIP}:${PORT}`, `-dest-addr=${ports.map((p) => `127.0.0.1:${p}`).join(',')}`];
say(`$ iptlb ${args.join(' ')}`);
const applied = iptlb(...args);
process.stdout.write(applied.err);
if (applied.status !== 0) {
  console.error('iptlb demo: apply failed');
  process.exit(1);
}
say();
say('nat rules now (iptables-legacy-save -t nat):');
say(natRules());
say();
const N = 600;
say(`opening ${N} real TCP connections to ${VIP}:${PORT} ...`);
const split = await tcpSplit(VIP, PORT, N, { concurrency: 8 });
const counts = ports.map((p) => split.counts[`backend:${p}`] ?? 0);
say();
say('backend           connections  share');
ports.forEach((p, i) => say(`127.0.0.1:${p}   ${String(counts[i]).padStart(11)}  ${((100 * counts[i]) / N).toFixed(1).padStart(5)} %`));
const chi = chiSquare(counts, [1, 1, 1]);
say(`failed connections: ${split.failures}`);
say(`chi-square against an even split: ${chi.statistic.toFixed(2)} (df ${chi.df}), p = ${chi.pValue.toFixed(3)}${chi.pValue < 0.001 ? '  <- suspicious' : ''}`);
say();
say('$ iptlb -run -delete -profile=demo');
const deleted = iptlb('-run', '-delete', '-profile=demo');
process.stdout.write(deleted.err);
say(`nat rules after delete: ${natRules() || '(none)'}`);
await backends.close();
rmSync(dir, { recursive: true, force: true });
process.exit(split.failures === 0 && deleted.status === 0 ? 0 : 1);
