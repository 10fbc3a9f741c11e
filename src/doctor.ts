/**
 * `iptlb doctor`: which engine and executor would be used and why, what is missing, how to fix it.
 */
import { existsSync } from 'node:fs';
import { hasNetAdmin } from './caps.js';
import { loadAddon } from './native/addon.js';
import { findBinary } from './executors/spawn.js';
import { parseExecutorChoice, selectExecutor } from './executors/index.js';
import { readState, resolveStatePath } from './state.js';
import { IptlbError } from './errors.js';

type Out = { out: (s: string) => void; err: (s: string) => void };

interface Check {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

export async function doctor(o: { stateFile?: string; executor?: string; json?: boolean }, io: Out): Promise<number> {
  const checks: Check[] = [];
  const cap = hasNetAdmin();
  checks.push({ name: 'privileges', ok: cap, detail: cap ? 'CAP_NET_ADMIN present' : 'CAP_NET_ADMIN missing', fix: cap ? undefined : 'run iptlb as root (sudo) or grant CAP_NET_ADMIN' });
  const xt = existsSync('/proc/net/ip_tables_names') || existsSync('/sys/module/ip_tables');
  checks.push({ name: 'x_tables', ok: xt, detail: xt ? 'legacy x_tables available in this kernel' : 'no ip_tables support visible', fix: xt ? undefined : 'modprobe ip_tables iptable_nat' });
  const addon = loadAddon();
  checks.push(
    addon.ok
      ? { name: 'native addon', ok: true, detail: 'loaded (libiptc)' }
      : { name: 'native addon', ok: false, detail: `${addon.reason}: ${addon.detail}`, fix: addon.fix },
  );
  const restore = findBinary('iptables-legacy-restore');
  checks.push({ name: 'iptables-legacy-restore', ok: !!restore, detail: restore ?? 'not found', fix: restore ? undefined : 'apt-get install -y iptables' });
  const statePath = resolveStatePath(o.stateFile);
  try {
    const state = await readState(statePath);
    checks.push({ name: 'state file', ok: true, detail: `${statePath}: ${existsSync(statePath) ? `${state.size} profile(s)` : 'not created yet'}` });
  } catch (e) {
    checks.push({ name: 'state file', ok: false, detail: (e as Error).message, fix: 'repair or move the file aside' });
  }
  let executor = '';
  let reason = '';
  let usable = true;
  try {
    const sel = selectExecutor(parseExecutorChoice(o.executor ?? process.env.IPTLB_EXECUTOR));
    executor = sel.executor.kind;
    reason = sel.reason;
  } catch (e) {
    usable = false;
    executor = 'none';
    reason = e instanceof IptlbError ? e.message : String(e);
  }
  const engine = 'legacy';
  const engineReason = 'x_tables nat table through libiptc / iptables-legacy-restore (the only engine in this version)';
  const ok = usable && cap;
  if (o.json) {
    io.out(JSON.stringify({ ok, engine, engineReason, executor, executorReason: reason, checks }));
  } else {
    io.out(`engine:   ${engine} — ${engineReason}`);
    io.out(`executor: ${executor} — ${reason}`);
    for (const c of checks) io.out(`  [${c.ok ? 'ok' : '!!'}] ${c.name}: ${c.detail}${c.fix ? `\n       fix: ${c.fix}` : ''}`);
    io.out(ok ? 'ready' : 'not ready: see the fixes above');
  }
  return ok ? 0 : 1;
}
