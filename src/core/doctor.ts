/**
 * `iptlb doctor`: which engine and executor would be used and why, what is missing, how to fix it.
 */
import { existsSync } from 'node:fs';
import { hasCap } from '../platform/caps.js';
import { buildLogTail, libraryFix, loadAddonPart, type AddonPart } from '../platform/addon.js';
import { executorChoiceOf } from '../engines/executors.js';
import { describeOriginalChains, engineChoiceOf, originalNftChains } from '../engines/select.js';
import { ENGINE_NAMES, engineNeeds } from '../engines/registry.js';
import type { HostCheck } from '../engines/engine.js';
import { Core } from './core.js';
import { readStateFull, resolveStatePath } from './state.js';
import { journalPath } from './journal.js';
import { IptlbError } from '../model/errors.js';
import type { EngineName } from '../model/types.js';

type Out = { out: (s: string) => void; err: (s: string) => void };

type Check = HostCheck;

export async function doctor(
  o: { stateFile?: string; executor?: string; engine?: string; json?: boolean },
  io: Out,
): Promise<number> {
  const checks: Check[] = [];
  // Filled in once the engine is known: the legacy engine needs CAP_NET_RAW too.
  const privileges: Check = { name: 'privileges', ok: false, detail: '' };
  checks.push(privileges);
  for (const name of ENGINE_NAMES) checks.push(...engineNeeds(name).hostChecks());
  // The addon per engine: each engine runs natively when its file and iptlb_core.node load, and
  // falls back to spawning its tools otherwise (see src/platform/addon.ts).
  const native = nativeReport();
  for (const [name, n] of Object.entries(native.engines)) {
    checks.push(
      n.executor === 'native'
        ? { name: `native ${name}`, ok: true, detail: `native (${n.files.join(', ')})` }
        : { name: `native ${name}`, ok: false, detail: `falls back to the spawn executor: ${n.reason}`, fix: n.fix },
    );
  }
  if (native.buildLog)
    checks.push({
      name: 'addon build log',
      ok: true,
      detail: `${native.buildLog.path}, last lines:\n         ${native.buildLog.lines.join('\n         ')}`,
    });
  if (o.stateFile === '')
    throw new IptlbError('EUSAGE', 'state-file: must not be empty (omit the flag for the default ./local/state.db)', {
      field: 'state-file',
    });
  const statePath = resolveStatePath(o.stateFile);
  // A state file no command can read: every command fails, so the host is not ready.
  let stateOk = true;
  try {
    // The profiles of the YAML and its journal, as every command reads them: a handle killed before
    // its first fold leaves only the journal.
    const { profiles, journal, records } = await readStateFull(statePath);
    const unfolded = journal && records > 0 ? `${records} change(s) in ${journalPath(statePath)}, not folded yet` : '';
    checks.push({
      name: 'state file',
      ok: true,
      detail: `${statePath}: ${
        existsSync(statePath)
          ? `${profiles.size} profile(s)${unfolded ? ` (${unfolded})` : ''}`
          : unfolded
            ? `${profiles.size} profile(s), only in the journal (${unfolded}; the file is not created yet)`
            : 'not created yet'
      }`,
    });
  } catch (e) {
    stateOk = false;
    const message = (e as Error).message;
    checks.push({
      name: 'state file',
      ok: false,
      detail: message,
      // A record of the journal beside the file (see docs/state-file.md): the line says how to cut it.
      fix:
        e instanceof IptlbError && e.code === 'EPERM'
          ? 'run iptlb as root (sudo), or as the user the state file belongs to'
          : message.startsWith('state journal ')
            ? `cut the journal as the line says, or move ${journalPath(statePath)} aside`
            : 'repair or move the file aside',
    });
  }
  let executor = 'none';
  let reason = '';
  let engine = 'none';
  let engineReason = '';
  let warning: string | undefined;
  let warningFix = 'iptlb migrate --to nft (or --to legacy)';
  let usable = true;
  try {
    const core = new Core({
      stateFile: statePath,
      executor: executorChoiceOf(o.executor),
      engine: engineChoiceOf(o.engine),
    });
    const sel = await core.select();
    executor = sel.executor.kind;
    reason = sel.reason;
    engine = sel.engine;
    engineReason = sel.engineReason;
    // Both engines holding iptlb's rules, or an explicit engine that would make it so. A process
    // that may not ask the other engine (not root) keeps the engine chosen, and says it could not.
    try {
      warning = (await core.engineSplit()) ?? sel.refusal;
    } catch (e) {
      if (!(e instanceof IptlbError && e.code === 'EPERM')) throw e;
      // (The probe's own advice, to run as root or to choose an engine, is the fix below, or done.)
      const why = e.message.replace(/^engine: /, '').replace(/: run iptlb as root.*$/, '');
      warning = `the other engine not asked: ${why}`;
      warningFix = 'run iptlb doctor as root';
    }
  } catch (e) {
    usable = false;
    reason = e instanceof IptlbError ? e.message : String(e);
    // A probe this process may not make (not root): which engine holds the rules is not known.
    if (e instanceof IptlbError && e.code === 'EPERM') {
      engine = 'unknown';
      engineReason = reason.replace(/^engine: /, '');
      reason = 'not chosen: the engine is not known';
    }
  }
  const admin = hasCap('CAP_NET_ADMIN');
  const raw = hasCap('CAP_NET_RAW');
  // CAP_NET_RAW: libiptc and iptables-legacy reach x_tables through a raw socket; nft is netlink only.
  const needsRaw = engine !== 'nft';
  const missing = [...(admin ? [] : ['CAP_NET_ADMIN' as const]), ...(raw || !needsRaw ? [] : ['CAP_NET_RAW' as const])];
  privileges.ok = missing.length === 0;
  privileges.detail = [
    `CAP_NET_ADMIN ${admin ? 'present' : 'missing'}`,
    `CAP_NET_RAW ${raw ? 'present' : needsRaw ? 'missing (the legacy engine needs it: x_tables is reached through a raw socket)' : 'missing (only the legacy engine needs it)'}`,
  ].join(', ');
  if (missing.length)
    privileges.fix = `run iptlb as root (sudo) or grant ${missing.join(' and ')}${admin ? ' too' : ''} (systemd: AmbientCapabilities= and CapabilityBoundingSet=)`;
  if (warning) checks.push({ name: 'engines', ok: false, detail: warning, fix: warningFix });
  // The original iptlb's rules on a host whose iptables is the nf_tables flavour: in iptables-nft's nat
  // tables, which iptlb changes only to take over those of a profile of the state file it applies or deletes; they go
  // on balancing their addresses (a new profile at one is refused).
  const original = admin ? await originalNftChains() : undefined;
  if (original?.length)
    checks.push({
      name: 'original rules',
      ok: false,
      detail: describeOriginalChains(original),
      fix: 'take them over with iptlb -use-state -run (the state file that holds their profiles), delete them with the original (iptlb -run -delete -profile NAME) or by hand (iptables-nft -t nat: the OUTPUT/PREROUTING jumps with -D, then -F and -X the chain; ip6tables-nft for table ip6 nat); see docs/state-file.md',
    });
  const ok = usable && privileges.ok && !warning && stateOk && !original?.length;
  if (o.json) {
    io.out(JSON.stringify({ ok, engine, engineReason, executor, executorReason: reason, native, checks }));
  } else {
    io.out(`engine:   ${engine} — ${engineReason || reason}`);
    io.out(`executor: ${executor} — ${reason}`);
    for (const c of checks)
      io.out(`  [${c.ok ? 'ok' : '!!'}] ${c.name}: ${c.detail}${c.fix ? `\n       fix: ${c.fix}` : ''}`);
    io.out(ok ? 'ready' : 'not ready: see the fixes above');
  }
  return ok ? 0 : 1;
}

interface EngineNative {
  /** What this engine's commits go through on this host when the executor is auto. */
  executor: 'native' | 'spawn';
  /** The addon files it uses (when native). */
  files: string[];
  reason?: string;
  fix?: string;
}

/** Per engine: native or spawn, and why; the last lines of the addon's build log when a file is missing. */
export function nativeReport(): {
  engines: Record<EngineName, EngineNative>;
  buildLog?: { path: string; lines: string[] };
} {
  const one = (part: AddonPart): EngineNative => {
    const files: string[] = [];
    const results = (['core', part] as AddonPart[]).map((p) => [p, loadAddonPart(p)] as const);
    for (const [p, r] of results) {
      if (!r.ok) {
        const detail = r.detail.includes(`iptlb_${p}.node`) ? r.detail : `iptlb_${p}.node: ${r.detail}`;
        // Libraries missing: those of both parts, not only of the first that fails.
        const fix = r.reason === 'library-missing' ? (libraryFix(results.map(([, x]) => x)) ?? r.fix) : r.fix;
        return { executor: 'spawn', files: [], reason: `${r.reason}: ${detail}`, fix };
      }
      files.push(r.path);
    }
    return { executor: 'native', files };
  };
  const engines = Object.fromEntries(ENGINE_NAMES.map((n) => [n, one(engineNeeds(n).addonPart)])) as Record<
    EngineName,
    EngineNative
  >;
  const missing = (['core', 'xt', 'nft'] as AddonPart[]).some((p) => {
    const r = loadAddonPart(p);
    return !r.ok && r.reason === 'not-built' && !r.detail.includes('IPTLB_NO_NATIVE');
  });
  const log = missing ? buildLogTail(8) : undefined;
  return { engines, ...(log ? { buildLog: log } : {}) };
}
