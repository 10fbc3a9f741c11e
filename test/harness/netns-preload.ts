/**
 * Preloaded (`node --import`) by runInFreshNetns into its child, which runs in a brand-new network
 * namespace made by `unshare -n`: brings the loopback interface up before the child script's first
 * line, without a shell. Acts only when runInFreshNetns asked for it (env marker, then removed so
 * that processes the child forks do not repeat it). Nothing to import from here.
 */
import { execFileSync } from 'node:child_process';

if (process.env.IPTLB_HARNESS_LO_UP === '1') {
  delete process.env.IPTLB_HARNESS_LO_UP;
  execFileSync('ip', ['link', 'set', 'lo', 'up'], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 10_000 });
}
