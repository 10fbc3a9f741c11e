/**
 * An in-memory {@link FleetStore} with etcd's semantics where the agent depends on them: a global
 * revision, ranges at a past revision (MVCC), watches from a revision (failed when that revision is
 * compacted), events delivered asynchronously per transaction, and switches for failures:
 * `down` (every call rejects, watches die), `quorumLost` (watches stay open and silent, linearizable
 * reads and writes reject).
 */
import type {
  FleetStore,
  StoreEvent,
  StoreGuard,
  StoreKV,
  StoreOp,
  WatchHandle,
  WatchHandlers,
} from '../../src/fleet/store.js';
import { watchCompacted } from '../../src/fleet/store.js';

interface Version {
  revision: number;
  value: string | null; // null: deleted
  /** The revision that created the key (set for a put). */
  created: number;
}

export class FakeStore implements FleetStore {
  rev = 1;
  compacted = 0;
  private readonly history = new Map<string, Version[]>();
  private watchers = new Set<{ start: string; end: string; h: WatchHandlers; dead: boolean }>();
  down = false;
  /** What every call rejects with while {@link down} (a TLS failure's grpc-js wording, say). */
  downError = '14 UNAVAILABLE: connect ECONNREFUSED (fake)';
  quorumLost = false;
  /** Events held back while quorum is lost (a real member does not commit them either). */
  ranges = 0;
  /** Ranges over profile keys (lists), apart from other reads such as the agent's host-key check. */
  profileRanges = 0;
  leased = new Map<string, string>();
  leaseFails = 0;
  /** Keys put by putLeased (with `leasedRevisions`). */
  private readonly leasedKeys = new Set<string>();

  /**
   * `leasedRevisions`: a leased put (a host key) is a write of its own, as in etcd: it takes a revision, which it
   * returns, and is kept in the history (read at a past revision, restored, compacted); {@link expire} deletes it as
   * an expired lease does. Without it (the default, which the older tests assume), a leased put takes no revision,
   * returns none and is read at the current revision only.
   */
  constructor(private readonly opts: { leasedRevisions?: boolean } = {}) {}

  private fail(): void {
    if (this.down) throw new Error(this.downError);
  }

  /** Writes as a transaction (one revision). */
  write(ops: StoreOp[]): number {
    const rev = ++this.rev;
    const events: StoreEvent[] = [];
    for (const o of ops) {
      const key = 'put' in o ? o.put : o.delete;
      const h = this.history.get(key) ?? [];
      const last = h[h.length - 1];
      if ('put' in o) {
        const created = last && last.value !== null ? last.created : rev;
        h.push({ revision: rev, value: o.value, created });
        events.push({ type: 'put', key, value: o.value, modRevision: rev, createRevision: created });
      } else {
        if (!last || last.value === null) continue;
        h.push({ revision: rev, value: null, created: 0 });
        events.push({ type: 'delete', key, modRevision: rev });
      }
      this.history.set(key, h);
    }
    for (const w of this.watchers) {
      const mine = events.filter((e) => e.key >= w.start && e.key < w.end);
      if (mine.length && !this.quorumLost) queueMicrotask(() => !w.dead && !this.down && w.h.events(mine, rev));
    }
    return rev;
  }
  put(key: string, value: string): number {
    return this.write([{ put: key, value }]);
  }
  del(key: string): number {
    return this.write([{ delete: key }]);
  }
  compact(rev = this.rev): void {
    this.compacted = rev;
  }
  /**
   * etcd restored from a snapshot taken at `rev`: what was written after it is gone and the revision
   * goes back to it; the members restart (every watch's connection is lost, resumable; `keepWatches`: a
   * watch that stays open, as one the client opened again meanwhile). Leased keys
   * (host keys) are `leased` as the snapshot held them (by default as they are now).
   */
  restore(rev: number, leased: Map<string, string> = this.leased, keepWatches = false): void {
    for (const [k, h] of this.history) {
      const kept = h.filter((v) => v.revision <= rev);
      if (kept.length) this.history.set(k, kept);
      else this.history.delete(k);
    }
    this.rev = rev;
    this.compacted = Math.min(this.compacted, rev);
    this.leased = new Map(leased);
    if (this.opts.leasedRevisions) {
      // As the restored history holds them.
      this.leased.clear();
      for (const k of this.leasedKeys) {
        const v = this.at(k, rev);
        if (v) this.leased.set(k, v.value!);
      }
    }
    if (!keepWatches) this.killWatches('watch disconnected: 14 UNAVAILABLE: Connection dropped (fake restore)', true);
  }
  /** Kills every watch (a disconnect / cancel). */
  /** Watches open now. */
  get watching(): number {
    return [...this.watchers].filter((w) => !w.dead).length;
  }
  /** Ends every watch; `resumable` as when only the connection to a member was lost. */
  killWatches(reason = 'watch disconnected (fake)', resumable = false): void {
    for (const w of this.watchers) {
      if (!w.dead) {
        w.dead = true;
        queueMicrotask(() => w.h.failed(reason, resumable));
      }
    }
    this.watchers.clear();
  }
  setDown(down: boolean): void {
    this.down = down;
    if (down) this.killWatches('watch disconnected: 14 UNAVAILABLE (fake)', true);
  }

  private at(key: string, revision: number): Version | undefined {
    const h = this.history.get(key);
    if (!h) return undefined;
    let v: Version | undefined;
    for (const x of h) if (x.revision <= revision) v = x;
    return v && v.value !== null ? v : undefined;
  }

  async range(
    start: string,
    end: string,
    opts: { limit: number; revision?: number },
  ): Promise<{ kvs: StoreKV[]; more: boolean; revision: number }> {
    await Promise.resolve();
    this.fail();
    if (!opts.revision && this.quorumLost) throw new Error('4 DEADLINE_EXCEEDED (fake: no quorum)');
    const revision = opts.revision ?? this.rev;
    if (revision < this.compacted) throw new Error('11 OUT_OF_RANGE: mvcc: required revision has been compacted');
    if (revision > this.rev)
      throw new Error('11 OUT_OF_RANGE: etcdserver: mvcc: required revision is a future revision');
    this.ranges++;
    // A list: the whole of a `profiles/` prefix, page by page (the end of the prefix range).
    if (end.endsWith('/profiles0')) this.profileRanges++;
    const keys = [...this.history.keys()].filter((k) => k >= start && k < end).sort();
    const kvs: StoreKV[] = [];
    for (const k of keys) {
      const v = this.at(k, revision);
      if (v) kvs.push({ key: k, value: v.value!, modRevision: v.revision, createRevision: v.created });
    }
    // Leased keys (host keys) are in etcd's key space too, at the current revision.
    // (With `leasedRevisions`, those put by putLeased are in the history.)
    for (const [k, value] of this.leased)
      if (k >= start && k < end && !this.leasedKeys.has(k) && !kvs.some((x) => x.key === k))
        kvs.push({ key: k, value, modRevision: this.rev, createRevision: this.rev });
    kvs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { kvs: kvs.slice(0, opts.limit), more: kvs.length > opts.limit, revision: this.rev };
  }

  async watch(start: string, end: string, fromRevision: number, h: WatchHandlers): Promise<WatchHandle> {
    await Promise.resolve();
    this.fail();
    const w = { start, end, h, dead: false };
    // etcd refuses a watch from a compacted revision at once (created and cancelled in one answer): its creation
    // fails, as EtcdStore.watch says it.
    if (fromRevision <= this.compacted) throw new Error(watchCompacted(fromRevision, this.compacted));
    // Events between fromRevision and now, in order.
    const past: StoreEvent[] = [];
    for (const [key, versions] of this.history) {
      if (key < start || key >= end) continue;
      for (const v of versions)
        if (v.revision >= fromRevision)
          past.push(
            v.value === null
              ? { type: 'delete', key, modRevision: v.revision }
              : { type: 'put', key, value: v.value, modRevision: v.revision, createRevision: v.created },
          );
    }
    past.sort((a, b) => a.modRevision - b.modRevision);
    this.watchers.add(w);
    if (past.length) queueMicrotask(() => !w.dead && h.events(past, this.rev));
    return {
      cancel: async () => {
        w.dead = true;
        this.watchers.delete(w);
      },
    };
  }

  /** The next this many revision() calls fail with an answer (as during a leader election). */
  revisionFails = 0;
  async revision(): Promise<number> {
    await Promise.resolve();
    this.fail();
    if (this.revisionFails > 0) {
      this.revisionFails--;
      throw new Error('14 UNAVAILABLE: etcdserver: leader changed (fake)');
    }
    if (this.quorumLost) throw new Error('4 DEADLINE_EXCEEDED (fake: no quorum)');
    return this.rev;
  }

  async putLeased(key: string, value: string): Promise<number | void> {
    await Promise.resolve();
    this.fail();
    if (this.quorumLost) throw new Error('4 DEADLINE_EXCEEDED (fake: no quorum)');
    if (this.leaseFails > 0) {
      this.leaseFails--;
      throw new Error('lease grant failed (fake)');
    }
    this.leased.set(key, value);
    if (!this.opts.leasedRevisions) return;
    this.leasedKeys.add(key);
    return this.put(key, value);
  }

  /** A leased key's lease expired (or was revoked): the key is deleted (with `leasedRevisions`, at a revision). */
  expire(key: string): void {
    this.leased.delete(key);
    if (this.opts.leasedRevisions) this.del(key);
  }

  /** Called at the start of each txn (a test's hook: a write that races the caller). */
  beforeTxn?: () => void;

  async txn(ops: StoreOp[], guard?: StoreGuard): Promise<number | null> {
    await Promise.resolve();
    this.fail();
    if (this.quorumLost) throw new Error('4 DEADLINE_EXCEEDED (fake: no quorum)');
    if (ops.length > 128) throw new Error('etcdserver: too many operations in txn request');
    this.beforeTxn?.();
    if (guard) {
      for (const [k, h] of this.history) {
        const last = h[h.length - 1]!;
        if (k >= guard.start && k < guard.end && last.value !== null && last.revision > guard.revision) return null;
      }
    }
    return this.write(ops);
  }

  async close(): Promise<void> {}
}
