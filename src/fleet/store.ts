/**
 * The fleet's store, seen through the few calls the agent and `iptlb fleet` need. {@link EtcdStore}
 * talks to etcd (npm `etcd3`, loaded on first use); unit tests supply a fake with the same contract.
 */
import { readFileSync } from 'node:fs';
import { IptlbError } from '../model/errors.js';

export interface StoreKV {
  key: string;
  value: string;
  modRevision: number;
  /** The revision that created the key (a key deleted and put again is created again). */
  createRevision: number;
}
export interface StoreEvent {
  type: 'put' | 'delete';
  key: string;
  /** Set for `put`. */
  value?: string;
  modRevision: number;
  /** Set for `put`: the revision that created the key. */
  createRevision?: number;
}
export interface WatchHandlers {
  /** One watch response: its events (in revision order) and the store revision it was sent at. */
  events(events: StoreEvent[], revision: number): void;
  /**
   * The watch is dead. `resumable`: only its connection was lost (a member went away), so a new watch
   * from the last revision seen misses nothing; otherwise (cancelled, compacted start revision) re-list. A compacted
   * start revision is a reason {@link WATCH_COMPACTED} matches (and the watch's creation fails with one, as etcd
   * refuses such a watch at once).
   */
  failed(reason: string, resumable?: boolean): void;
}
export interface WatchHandle {
  cancel(): Promise<void>;
}
/** A write of `iptlb fleet`: one transaction. */
export type StoreOp = { put: string; value: string } | { delete: string };
/** A transaction's condition: no key of [start, end) was created or changed after `revision`. */
export interface StoreGuard {
  start: string;
  end: string;
  revision: number;
}

export interface FleetStore {
  /** Keys of [start, end) in key order, at most `limit`, at `revision` (default: the current one, linearizable). */
  range(
    start: string,
    end: string,
    opts: { limit: number; revision?: number },
  ): Promise<{ kvs: StoreKV[]; more: boolean; revision: number }>;
  /** Watches [start, end) from `fromRevision`. */
  watch(start: string, end: string, fromRevision: number, handlers: WatchHandlers): Promise<WatchHandle>;
  /**
   * The current revision, by a linearizable read of keys under `within` (count only; fails or times out without
   * quorum).
   */
  revision(within?: string): Promise<number>;
  /**
   * Puts `key` under this client's lease of `ttlSec` seconds (granted on first use, granted again after it is lost).
   * Resolves to the put's revision (the key's mod revision) when the store says it.
   */
  putLeased(key: string, value: string, ttlSec: number): Promise<number | void>;
  /**
   * One transaction (at most 128 operations); returns its revision, or `null` when `guard` is given
   * and does not hold (nothing written).
   */
  txn(ops: StoreOp[], guard?: StoreGuard): Promise<number | null>;
  close(): Promise<void>;
}

/**
 * What a store call's failure says, in one line: its first line, without the gRPC client's empty
 * "Resolution note:" (etcd3 errors end with it).
 */
export function storeErrorMessage(e: unknown): string {
  const m = String((e as Error)?.message || e);
  const line = m
    .split('\n')[0]!
    .replace(/\s*Resolution note:\s*$/, '')
    .trim();
  return tlsMessage(line) ?? line;
}

/** Node's words for a server certificate it did not accept (grpc-js: "14 UNAVAILABLE: … Last error: Error: <it>."). */
const SERVER_CERT_REFUSED =
  /unable to verify the first certificate|unable to get (?:local )?issuer certificate|self[- ]signed certificate(?: in certificate chain)?|certificate has expired|certificate is not yet valid|certificate signature failure/i;
const SERVER_NAME_REFUSED = /Hostname\/IP does not match certificate's altnames: (.*?)\.?$/i;
/** OpenSSL's alert from a server that refused the client's certificate (or its absence). */
const CLIENT_CERT_REFUSED =
  /(?:sslv3|tlsv1[0-9]?) alert (bad certificate|certificate required|unknown ca|certificate unknown|certificate expired|certificate revoked|unsupported certificate)/i;

/**
 * A TLS failure said as what to check (grpc-js reports it as an unavailable member, with OpenSSL's
 * internals: "…:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate:../deps/openssl/…").
 */
function tlsMessage(line: string): string | undefined {
  const name = SERVER_NAME_REFUSED.exec(line);
  if (name)
    return `TLS: etcd's server certificate does not name the endpoint's host (${name[1]!.trim()}): use an endpoint the certificate names, or a certificate that names it`;
  const server = SERVER_CERT_REFUSED.exec(line);
  if (server)
    return `TLS: etcd's server certificate is not accepted (${server[0]}): check --etcd-ca (the CA certificate that signed etcd's server certificate)`;
  const client = CLIENT_CERT_REFUSED.exec(line);
  if (client)
    return `TLS: etcd refused the client certificate (alert "${client[1]}"): etcd checks client certificates (--client-cert-auth); give --etcd-cert and --etcd-key, a certificate signed by a CA that etcd trusts`;
  return undefined;
}

/** A {@link storeErrorMessage} that is a TLS failure (a certificate not accepted, by either side). */
export const TLS_FAILURE = /^TLS: /;

/**
 * etcd refused the credentials (a user, password or token; a certificate's user) or a role's permissions:
 * "3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password", "7 PERMISSION_DENIED:
 * etcdserver: permission denied".
 */
export const CREDENTIALS_REFUSED =
  /authentication failed|invalid auth token|user name not found|auth: |permission denied|UNAUTHENTICATED|PERMISSION_DENIED/i;

/**
 * A watch whose start revision etcd has compacted: its history no longer holds the events from there, so the watcher
 * re-lists (it is no outage). {@link watchCompacted} says it; etcd answers such a watch with `canceled` and
 * `compact_revision` (the oldest revision it keeps), which etcd3 turns into an error "Watcher canceled: " without them.
 */
export const WATCH_COMPACTED = /^watch from revision \d+ compacted: /;
export const watchCompacted = (from: number, compactRevision: number): string =>
  `watch from revision ${from} compacted: etcd keeps revisions from ${compactRevision} on`;

/**
 * A response over the client's gRPC receive limit (4 MiB): grpc-js says "8 RESOURCE_EXHAUSTED: Received
 * message larger than max (4889395 vs 4194304)".
 */
export function isResponseTooLarge(e: unknown): boolean {
  return /RESOURCE_EXHAUSTED|larger than max/i.test(String((e as Error)?.message ?? e));
}

/**
 * One page of at most `limit` keys (`fetch(limit)`): a response over the receive limit is fetched again with
 * half the limit, down to one key per page (a key of etcd's is at most its request limit, 1.5 MiB by default,
 * so one always fits). Returns the page and the limit it was fetched with.
 */
export async function fetchPageHalving<T>(
  fetch: (limit: number) => Promise<T>,
  limit: number,
): Promise<{ page: T; limit: number }> {
  for (;;) {
    try {
      return { page: await fetch(limit), limit };
    } catch (e) {
      if (limit <= 1 || !isResponseTooLarge(e)) throw e;
      limit = Math.max(1, Math.floor(limit / 2));
    }
  }
}

/** etcd's limit of operations per transaction. */
export const MAX_TXN_OPS = 128;

/** The end of the key range of every key that starts with `prefix`. */
export function prefixEnd(prefix: string): string {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i]! < 0xff) {
      const e = Buffer.from(b.subarray(0, i + 1));
      e[i]!++;
      return e.toString('latin1');
    }
  }
  return '\0';
}

/** How to reach etcd (the same flags and environment for the agent and `iptlb fleet`). */
export interface EtcdOptions {
  /** Endpoints, e.g. `http://127.0.0.1:2379`, `https://etcd1:2379` or `unix:///run/etcd.sock`. */
  endpoints: string[];
  /** TLS: CA certificate file (PEM); client certificate and key files for client-certificate auth. */
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** etcd user and password (role-based access; a user without a password is refused). */
  user?: string;
  password?: string;
  /** Deadline of each unary call, ms (10 to 3,600,000). Default 5000 (a linearizable read blocks without quorum). */
  callTimeoutMs?: number;
}

/** Longest call deadline, ms (an hour; Node's timers, which bound a watch's creation, hold at most 2^31-1 ms). */
export const MAX_CALL_TIMEOUT_MS = 3_600_000;

/** Parses `--etcd a,b,c` / `IPTLB_ETCD_ENDPOINTS`. */
export function parseEndpoints(text: string | undefined, field = 'etcd'): string[] {
  const list = (text ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (!list.length)
    throw new IptlbError(
      'EUSAGE',
      `${field}: no etcd endpoint given (use --etcd URL[,URL...] or IPTLB_ETCD_ENDPOINTS)`,
      { field },
    );
  for (const e of list) {
    if (!/^(https?:\/\/[^/\s]+\/?|unix:\/\/?\/[^\s]+|[A-Za-z0-9.\-[\]:]+:\d+)$/.test(e)) {
      throw new IptlbError(
        'EUSAGE',
        `${field}: ${JSON.stringify(e)} is not an endpoint (http://host:port, https://host:port or unix:///path)`,
        { field },
      );
    }
  }
  return list;
}

/**
 * Options that cannot work together, refused before any connection: TLS files with an endpoint that
 * names a scheme other than https:// (grpc would switch it to TLS and fail obscurely), a user without a
 * password.
 */
export function checkEtcdOptions(o: EtcdOptions): void {
  const t = o.callTimeoutMs;
  if (t !== undefined && (!Number.isInteger(t) || t < 10 || t > MAX_CALL_TIMEOUT_MS))
    throw new IptlbError(
      'EUSAGE',
      `etcd-timeout-ms: ${JSON.stringify(t)} must be a whole number of ms from 10 to ${MAX_CALL_TIMEOUT_MS}`,
      { field: 'etcd-timeout-ms' },
    );
  const tls = o.caFile ? 'etcd-ca' : o.certFile ? 'etcd-cert' : o.keyFile ? 'etcd-key' : undefined;
  if (tls) {
    const plain = o.endpoints.find((e) => /^(http|unix):/.test(e));
    if (plain)
      throw new IptlbError(
        'EUSAGE',
        `${tls}: TLS needs https:// endpoints (or host:port); ${JSON.stringify(plain)} is not one`,
        { field: tls },
      );
  }
  if (o.user !== undefined && o.password === undefined)
    throw new IptlbError(
      'EUSAGE',
      `etcd-user: ${JSON.stringify(o.user)} needs a password: set it in the environment variable IPTLB_ETCD_PASSWORD`,
      { field: 'etcd-user' },
    );
}

/** Whether a file read as a PEM file holds the block it must (a CA or client certificate, a key). */
function pemProblem(data: Buffer, what: 'CERTIFICATE' | 'PRIVATE KEY'): string | undefined {
  const text = data.toString('latin1');
  const ok =
    what === 'CERTIFICATE' ? /-----BEGIN CERTIFICATE-----/.test(text) : /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text);
  return ok ? undefined : `holds no PEM ${what.toLowerCase()} ("-----BEGIN ${what}-----")`;
}

const num = (v: unknown): number => Number(v ?? 0);
const str = (b: unknown): string => (Buffer.isBuffer(b) ? b.toString('utf8') : String(b ?? ''));

/** {@link FleetStore} over etcd v3 (gRPC, npm `etcd3`), without its circuit breaker: the agent has its own backoff. */
export class EtcdStore implements FleetStore {
  private lease?: any;
  private leaseTtl = 0;
  /**
   * The page limit that fit the receive limit after a page did not: the rest of that list asks for no more
   * (rather than fetching a page too large again for each one); forgotten at the list's last page.
   */
  private pageCap?: number;

  private constructor(
    private readonly client: any,
    private readonly timeout: number,
  ) {}

  static async connect(o: EtcdOptions): Promise<EtcdStore> {
    const { Etcd3, isRecoverableError } = await import('etcd3');
    const { noop, circuitBreaker, retry, handleWhen, ConsecutiveBreaker } = await import('cockatiel');
    checkEtcdOptions(o);
    const read = (f: string | undefined, field: string, what: 'CERTIFICATE' | 'PRIVATE KEY'): Buffer | undefined => {
      if (!f) return undefined;
      let data: Buffer;
      try {
        data = readFileSync(f);
      } catch (e) {
        throw new IptlbError('EUSAGE', `${field}: cannot read ${JSON.stringify(f)} (${(e as Error).message})`, {
          field,
        });
      }
      const why = pemProblem(data, what);
      if (why) throw new IptlbError('EUSAGE', `${field}: ${JSON.stringify(f)} ${why}`, { field });
      return data;
    };
    const ca = read(o.caFile, 'etcd-ca', 'CERTIFICATE');
    const cert = read(o.certFile, 'etcd-cert', 'CERTIFICATE');
    const key = read(o.keyFile, 'etcd-key', 'PRIVATE KEY');
    if (!!cert !== !!key)
      throw new IptlbError(
        'EUSAGE',
        'etcd-cert: a client certificate needs its key (--etcd-key), and the other way round',
        { field: 'etcd-cert' },
      );
    const timeout = o.callTimeoutMs ?? 5000;
    const hosts = o.endpoints.map((e) => (/^[a-z]+:\/\//.test(e) ? e : `${ca || cert ? 'https' : 'http'}://${e}`));
    const client = new Etcd3({
      hosts,
      ...(ca || cert
        ? {
            credentials: {
              rootCertificate: ca ?? Buffer.alloc(0),
              ...(cert ? { certChain: cert, privateKey: key } : {}),
            },
          }
        : {}),
      ...(o.user ? { auth: { username: o.user, password: o.password! } } : {}),
      // One endpoint: our own retries (capped, jittered) decide; etcd3's breaker would block every
      // call for 5 s after three failures. Several: a call that fails on one member for want of it
      // (unavailable, a deadline) is tried on the next one, and a member that just failed is passed
      // over for 5 s, so one member down out of three costs no call (one stalled costs a call's
      // deadline every 5 s, then the next member answers).
      faultHandling:
        hosts.length > 1
          ? {
              // "leader changed" says the cluster elects a leader, not that this member is gone: every
              // member says it then, and passing over all of them would block every call for 5 s.
              host: () =>
                circuitBreaker(
                  handleWhen((e) => isRecoverableError(e) && !/leader changed/.test(e.message)),
                  {
                    halfOpenAfter: 5000,
                    breaker: new ConsecutiveBreaker(1),
                  },
                ),
              global: retry(handleWhen(isRecoverableError), { maxAttempts: hosts.length - 1 }),
            }
          : { host: () => noop, global: noop },
      // grpc-js's receive limit stays 4 MiB: lists go in pages, and a page over it is fetched again with
      // half as many keys (see range).
      defaultCallOptions: (ctx: { isStream: boolean }) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
    });
    return new EtcdStore(client, timeout);
  }

  async range(
    start: string,
    end: string,
    opts: { limit: number; revision?: number },
  ): Promise<{ kvs: StoreKV[]; more: boolean; revision: number }> {
    // A page may hold fewer keys than asked for (`more` says whether others follow): callers go on from its
    // last key.
    const { page: res, limit } = await fetchPageHalving<any>(
      (limit) =>
        this.client.kv.range({
          key: Buffer.from(start, 'latin1'),
          range_end: Buffer.from(end, 'latin1'),
          limit,
          ...(opts.revision ? { revision: opts.revision } : {}),
        }),
      Math.min(opts.limit, this.pageCap ?? Infinity),
    );
    if (res.more && limit < opts.limit) this.pageCap = limit;
    else if (!res.more && opts.limit >= (this.pageCap ?? Infinity)) this.pageCap = undefined; // a list's last page
    return {
      kvs: (res.kvs ?? []).map((kv: any) => ({
        key: kv.key.toString('latin1'),
        value: str(kv.value),
        modRevision: num(kv.mod_revision),
        createRevision: num(kv.create_revision),
      })),
      more: !!res.more,
      revision: num(res.header?.revision),
    };
  }

  async watch(start: string, end: string, fromRevision: number, h: WatchHandlers): Promise<WatchHandle> {
    // A watch manager (one gRPC stream) of its own for each watch: etcd3 shares one per namespace, and
    // a watch that ended (cancelled before its creation was confirmed, compacted, its member gone)
    // could leave that manager confused about the next one (CI saw etcd3 throw "Failed to find watcher
    // for IWatchResponse" from the stream, which ended the agent). What the manager still throws ends
    // this watch's stream, not the process.
    const ns = this.client.namespace('');
    const wm = (ns as unknown as { watchManager?: Record<string, unknown> }).watchManager;
    // etcd's answer to a watch from a compacted revision (canceled, with the oldest revision it keeps), seen here:
    // etcd3 emits it as an error "Watcher canceled: " that names neither (it read as an unexplained store failure).
    let compactRevision = 0;
    if (wm && typeof wm.handleError === 'function')
      for (const name of ['handleResponse', 'handleCreatedResponse']) {
        const f = wm[name];
        if (typeof f === 'function')
          wm[name] = (res: unknown): unknown => {
            const r = res as { canceled?: boolean; compact_revision?: unknown } | null;
            if (r?.canceled && num(r.compact_revision) > 0) compactRevision = num(r.compact_revision);
            try {
              return f.call(wm, res);
            } catch (e) {
              return (wm.handleError as (e: unknown) => void).call(wm, e);
            }
          };
      }
    let dead = false;
    let created = false;
    const w = ns
      .watch()
      .inRange({ start: Buffer.from(start, 'latin1'), end: Buffer.from(end, 'latin1') })
      .startRevision(String(fromRevision))
      .watcher();
    const fail = (why: string, resumable = false): void => {
      if (dead) return;
      dead = true;
      // (etcd3 would re-attach this watcher itself, from the header revision after the last response:
      // past events a catching-up watch had not sent yet. The agent resumes from its own revision.)
      void w.cancel().catch(() => {});
      if (created) h.failed(why, resumable);
    };
    // Every listener from the start: an 'error' without one would be thrown.
    w.on('data', (res: any) => {
      if (dead) return;
      if (num(res.compact_revision) > 0) return fail(watchCompacted(fromRevision, num(res.compact_revision)));
      if (res.canceled) return fail(`watch cancelled${res.cancel_reason ? `: ${res.cancel_reason}` : ''}`);

      const events: StoreEvent[] = (res.events ?? []).map((e: any) => ({
        type: e.type === 'Delete' || e.type === 1 ? 'delete' : 'put',
        key: e.kv.key.toString('latin1'),
        ...(e.type === 'Delete' || e.type === 1
          ? {}
          : { value: str(e.kv.value), createRevision: num(e.kv.create_revision) }),
        modRevision: num(e.kv.mod_revision),
      }));
      h.events(events, num(res.header?.revision));
    });
    let creation: { resolve: () => void; reject: (e: Error) => void } | undefined;
    w.on('connected', () => {
      if (created) return; // etcd3 re-attached it (after a disconnection this watch does not survive)
      created = true;
      creation?.resolve();
    });
    w.on('error', (e: Error) => {
      const why = compactRevision
        ? watchCompacted(fromRevision, compactRevision)
        : `watch error: ${e?.message || e?.name || 'cancelled'}`;
      if (!created) creation?.reject(new Error(why));
      fail(why);
    });
    // Before creation, etcd3 reconnects by itself (bounded below); after, the agent decides.
    // A response over the client's receive limit ends the stream as a lost connection would, but opening the watch
    // again from the same revision brings the same response: a watch catching up (after a lost connection) gets many
    // revisions' events in one response, and large values (etcd takes up to 1.5 MiB per request) pass 4 MiB. The
    // agent re-lists instead, in pages that are halved until they fit.
    w.on(
      'disconnected',
      (e: Error) =>
        created &&
        (isResponseTooLarge(e)
          ? fail(`watch response too large: ${e?.message ?? ''} (re-listing in pages)`)
          : fail(`watch disconnected: ${e?.message ?? ''}`, true)),
    );
    w.on('end', () => created && fail('watch ended'));
    // Bounded like a call, so that a stalled member is noticed.
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        creation = { resolve, reject };
        timer = setTimeout(() => reject(new Error(`watch not created within ${this.timeout} ms`)), this.timeout);
      });
    } catch (e) {
      dead = true;
      void w.cancel().catch(() => {});
      throw e;
    } finally {
      clearTimeout(timer);
      creation = undefined;
    }
    return {
      cancel: async () => {
        dead = true;
        // etcd3 waits for the member to confirm the cancel: a stalled member never does.
        let t: NodeJS.Timeout | undefined;
        await Promise.race([w.cancel().catch(() => {}), new Promise((r) => (t = setTimeout(r, this.timeout)))]);
        clearTimeout(t);
      },
    };
  }

  async revision(within = '/'): Promise<number> {
    const res = await this.client.kv.range({
      key: Buffer.from(within, 'latin1'),
      range_end: Buffer.from(prefixEnd(within), 'latin1'),
      count_only: true,
    });
    return num(res.header?.revision);
  }

  async putLeased(key: string, value: string, ttlSec: number): Promise<number> {
    if (!this.lease || this.leaseTtl !== ttlSec) {
      const lease = this.client.lease(ttlSec, { autoKeepAlive: true });
      lease.on('lost', () => {
        if (this.lease === lease) this.lease = undefined;
      });
      this.lease = lease;
      this.leaseTtl = ttlSec;
    }
    const lease = this.lease;
    try {
      const res = await lease.put(key).value(value).exec();
      // A lease revoked or expired while this process did not run may not say so: the key is checked
      // (see the agent's check) and, gone, written again; a put under a dead lease fails and the next
      // one grants a new lease.
      return num(res?.header?.revision);
    } catch (e) {
      // A failed grant closes the lease object without `lost`: drop it, the next put grants a new one.
      if (this.lease === lease) this.lease = undefined;
      void lease.revoke().catch(() => {});
      throw e;
    }
  }

  async txn(ops: StoreOp[], guard?: StoreGuard): Promise<number | null> {
    if (ops.length > MAX_TXN_OPS)
      throw new IptlbError(
        'EUSAGE',
        `profiles: ${ops.length} operations do not fit one etcd transaction (at most ${MAX_TXN_OPS})`,
        { field: 'profiles' },
      );
    const res = await this.client.kv.txn({
      // etcd compares every key of the range (an empty range holds): none modified after the revision.
      compare: guard
        ? [
            {
              key: Buffer.from(guard.start, 'latin1'),
              range_end: Buffer.from(guard.end, 'latin1'),
              target: 'Mod',
              result: 'Less',
              mod_revision: guard.revision + 1,
            },
          ]
        : [],
      success: ops.map((o) =>
        'put' in o
          ? { request_put: { key: Buffer.from(o.put, 'latin1'), value: Buffer.from(o.value) } }
          : { request_delete_range: { key: Buffer.from(o.delete, 'latin1') } },
      ),
      failure: [],
    });
    if (guard && !res.succeeded) return null;
    return num(res.header?.revision);
  }

  async close(): Promise<void> {
    if (this.lease) await this.lease.revoke().catch(() => {});
    this.lease = undefined;
    this.client.close();
  }
}
