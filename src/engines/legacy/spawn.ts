/**
 * The fallback executor: reads with `iptables-legacy-save` and commits with one
 * `iptables-legacy-restore --noflush` process fed on stdin (never a shell string); IPv6 transactions
 * and reads go to `ip6tables-legacy-save`/`ip6tables-legacy-restore` the same way.
 */
import { findBinary, run } from '../../platform/spawn.js';
import { IptlbError } from '../../model/errors.js';
import { bareJumpsOf, chainInUse, deletedOriginals, parseSave, renderRestore, renderRuleOf } from './restore.js';
import { GATE_SET, elementOf, isGatedHook, planGate, SET_FAMILY } from './gate.js';
import type { CommitResult, Family, KernelView, Transaction } from '../../model/types.js';
import { legacyPermissionMessage, type LegacyExecutor } from './executor.js';

/** Turns iptables' own error text into a typed error, naming the failing restore line. */
export function restoreError(stderr: string, input: string, tool: string): IptlbError {
  const text = stderr.trim().split('\n').filter(Boolean);
  const first = text[0] ?? `${tool} failed`;
  if (/Permission denied|must be root|Operation not permitted/i.test(stderr)) {
    const message = `${tool}: permission denied: changing netfilter rules needs root (CAP_NET_ADMIN)`;
    // ipset talks netlink (CAP_NET_ADMIN alone); iptables-legacy a raw socket too: name what is missing.
    return new IptlbError('EPERM', tool.startsWith('ipset') ? message : legacyPermissionMessage(message));
  }
  if (/xtables lock|holding the xtables/i.test(stderr)) {
    return new IptlbError('ELOCK', `${tool}: ${first}`);
  }
  const m = /line (\d+) failed/.exec(stderr);
  const lines = input.split('\n');
  const line = m ? (lines[Number(m[1]) - 1] ?? '') : '';
  const detail = m ? ` at line ${m[1]}: ${line}` : '';
  // A chain that cannot be deleted: iptables-restore does not say why; it is (nearly) always a jump.
  const x = /^-X (\S+)$/.exec(line);
  return new IptlbError('EKERNEL', `${tool}: ${text.join('; ')}${detail}${x ? `; ${chainInUse(x[1]!, tool)}` : ''}`);
}

/** The save and restore tools of one family. */
interface Tools {
  save: string;
  restore: string;
}

const TOOL_NAMES: Record<Family, { save: string; restore: string }> = {
  ipv4: { save: 'iptables-legacy-save', restore: 'iptables-legacy-restore' },
  ipv6: { save: 'ip6tables-legacy-save', restore: 'ip6tables-legacy-restore' },
};

function findTools(family: Family): Tools | null {
  const save = findBinary(TOOL_NAMES[family].save);
  const restore = findBinary(TOOL_NAMES[family].restore);
  return save && restore ? { save, restore } : null;
}

/** How many times a commit is rendered and restored when the table changes under it. */
const COMMIT_ATTEMPTS = 3;

/** The restore refused the text (the error to report), as opposed to a failure before it. */
class RestoreRefused extends Error {
  constructor(
    readonly error: IptlbError,
    /** Whether the gate's set existed when the text was rendered (then it is not created before the restore). */
    readonly setExisted: boolean,
  ) {
    super(error.message);
  }
}

/** A save's text without its counters and comment lines (dates): what a change of the rules changes. */
function withoutCounters(save: string): string {
  return save
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]/g, ''))
    .join('\n');
}

export class SpawnExecutor implements LegacyExecutor {
  readonly kind = 'spawn' as const;
  readonly engine = 'legacy' as const;
  private readonly tools: Record<Family, Tools | null>;
  private readonly lockWaitSeconds: number;

  constructor(opts: { lockWaitMs?: number } = {}) {
    const v4 = findTools('ipv4');
    if (!v4) {
      throw new IptlbError(
        'EEXECUTOR',
        'iptables-legacy-save/-restore not found; install them with: apt-get install -y iptables',
      );
    }
    // The IPv6 tools ship in the same package; when they are missing only IPv6 work fails (toolsOf).
    this.tools = { ipv4: v4, ipv6: findTools('ipv6') };
    this.lockWaitSeconds = Math.max(1, Math.ceil((opts.lockWaitMs ?? 10_000) / 1000));
  }

  private toolsOf(family: Family): Tools {
    const t = this.tools[family];
    if (!t)
      throw new IptlbError(
        'EEXECUTOR',
        `${TOOL_NAMES[family].save}/-restore not found; install them with: apt-get install -y iptables`,
      );
    return t;
  }

  async read(family: Family = 'ipv4'): Promise<KernelView> {
    return parseSave(await this.save(family));
  }

  /** The nat table as `iptables-legacy-save -c` prints it. */
  private async save(family: Family): Promise<string> {
    const r = await run(this.toolsOf(family).save, ['-t', 'nat', '-c']);
    if (r.code !== 0) throw restoreError(r.stderr || r.stdout, '', TOOL_NAMES[family].save);
    return r.stdout;
  }

  async render(tx: Transaction): Promise<string> {
    return renderRestore(tx, await this.read(tx.family));
  }

  private ipsetPath(): string {
    const p = findBinary('ipset');
    if (!p)
      throw new IptlbError(
        'EEXECUTOR',
        'ipset not found; the legacy engine needs it for its gate: apt-get install -y ipset',
      );
    return p;
  }

  /** Feeds `ipset restore` (set changes are not part of the x_tables commit: see gate.ts for the order). */
  private async ipset(lines: string[]): Promise<void> {
    if (lines.length === 0) return;
    const text = lines.join('\n') + '\n';
    const r = await run(this.ipsetPath(), ['-exist', 'restore'], text);
    if (r.code !== 0) throw restoreError(r.stderr || r.stdout, text, 'ipset restore');
  }

  /**
   * Reads the table, renders the transaction against it and feeds it to one restore. The read and the
   * restore are two processes, and the xtables lock is held by the restore only: another tool that
   * rewrote the table in between (`iptables -t nat -F`, a restore of the whole table by a firewall
   * reload) makes the restore fail on a rule it no longer has (`-D` of a flushed jump). Then the
   * table is read again and, when it changed meanwhile (or the gate's set that was there is gone:
   * `ipset destroy` after the flush), the transaction is rendered against what it
   * holds now and committed again (as the native executor, which holds the lock from its read to its
   * commit, would have), at most {@link COMMIT_ATTEMPTS} times; a refusal of an unchanged table is
   * the commit's error.
   */
  async commit(tx: Transaction): Promise<CommitResult> {
    const t0 = performance.now();
    let before = await this.save(tx.family);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.commitOnce(tx, parseSave(before));
        return { durationMs: performance.now() - t0 };
      } catch (e) {
        if (!(e instanceof RestoreRefused)) throw e;
        if (attempt >= COMMIT_ATTEMPTS) throw e.error;
        const now = await this.save(tx.family).catch(() => null);
        if (now === null) throw e.error;
        // The gate's set is not in the save: one destroyed after the read (`ipset destroy` once a
        // flush left no rule referring to it) fails the restore that refers to it.
        const setGone = e.setExisted && !(await this.setExists(GATE_SET[tx.family]));
        if (!setGone && withoutCounters(now) === withoutCounters(before)) throw e.error;
        before = now;
      }
    }
  }

  private async commitOnce(tx: Transaction, view: KernelView): Promise<void> {
    const restore = this.toolsOf(tx.family).restore;
    const gate = planGate(tx, view);
    const set = GATE_SET[tx.family];
    const setExists = (view.gate?.gates.length ?? 0) > 0 || (await this.setExists(set));
    // The text first: a change it refuses (an address another profile's rule takes) touches nothing.
    const text = renderRestore(tx, view);
    // 1. Before the commit: the set (iptables-restore resolves it by name) and the new elements.
    const before: string[] = [];
    if (gate.needSet && !setExists)
      before.push(`create ${set} hash:ip,port family ${SET_FAMILY[tx.family]} maxelem 1048576`);
    if (gate.needSet) for (const e of gate.add) before.push(`add ${set} ${e}`);
    // A set that was there and is gone by now (`ipset destroy` after a flush): made again by a retry.
    await this.ipset(before).catch((e: unknown) => {
      throw setExists && e instanceof IptlbError ? new RestoreRefused(e, true) : e;
    });
    const r = await run(restore, ['--noflush', `--wait=${this.lockWaitSeconds}`], text);
    if (r.code !== 0) {
      // Refused: the elements added for it go again (those no rule in the kernel selects), and the
      // set when it was made for it.
      const live = new Set(view.hookRules.map((h) => (isGatedHook(h.chain) && !h.direct ? elementOf(h.rule) : null)));
      const undo =
        !setExists && before.length
          ? [`destroy ${set}`]
          : gate.add.filter((e) => !live.has(e)).map((e) => `del ${set} ${e}`);
      await this.ipset(undo).catch(() => {});
      throw new RestoreRefused(restoreError(r.stderr, text, TOOL_NAMES[tx.family].restore), setExists);
    }
    // 2. After it: elements no rule needs any more, and the set once no gate refers to it.
    const after: string[] = [];
    if (gate.needSet) for (const e of gate.del) after.push(`del ${set} ${e}`);
    else if (setExists || before.length > 0) after.push(`destroy ${set}`);
    // The rules are committed. A failure to tidy the set is not the commit's: an element too many only
    // sends its packets through the dispatch chain and back; the next commit tidies again.
    await this.ipset(after).catch(() => {});
    const originals = bareJumpsOf(tx, view);
    if (originals.length)
      deletedOriginals.set(
        tx,
        originals.map((b) => ({ chain: b.chain, rule: b.rule ? renderRuleOf(b.rule, tx.family) : (b.raw ?? '') })),
      );
  }

  async gateMembers(family: Family): Promise<string[] | undefined> {
    const ipset = findBinary('ipset');
    if (!ipset) return undefined;
    const set = GATE_SET[family];
    const r = await run(ipset, ['save', set]);
    if (r.code !== 0) return /does not exist/i.test(r.stderr) ? [] : undefined;
    const members: string[] = [];
    for (const line of r.stdout.split('\n')) {
      const m = /^add (\S+) (\S+)/.exec(line);
      if (m && m[1] === set) members.push(m[2]!);
    }
    return members;
  }

  async leftGateSet(family: Family): Promise<{ members: string[]; references: number } | undefined> {
    const ipset = findBinary('ipset');
    if (!ipset) return undefined;
    const r = await run(ipset, ['list', GATE_SET[family]]);
    // (Not there: "The set with the given name does not exist", exit 1.)
    if (r.code !== 0) return undefined;
    const refs = /^References: (\d+)$/m.exec(r.stdout);
    if (!refs) return undefined;
    const list = r.stdout.split(/^Members:$/m)[1] ?? '';
    const members = list.split('\n').filter((l) => /^\S+,\S+:\d+/.test(l));
    return { members: members.map((l) => l.split(' ')[0]!), references: Number(refs[1]) };
  }

  private async setExists(set: string): Promise<boolean> {
    const r = await run(this.ipsetPath(), ['-n', 'list', set]);
    return r.code === 0;
  }
}
