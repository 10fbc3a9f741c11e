/**
 * `/metrics` (Prometheus text format 0.0.4) and `/healthz` for a long-running iptlb process (`iptlb
 * watch`, the fleet agent, a library user). Per-destination counters are the kernel counters
 * `status` reads, read on each scrape (no timer). Written by hand rather than with prom-client: the
 * few metric families below need no registry, and the process then loads no extra dependency.
 */
import type { Socket } from 'node:net';
import { nodeHttp } from '../platform/builtins.js';
import { inheritedKey, INHERITED, IptlbError } from '../model/errors.js';
import { canonicalIpv6, ipv4Problem } from '../model/address.js';
import type { Core } from '../core/core.js';
import type { HealthFileStatus, ProfileReport } from '../model/report.js';
import type { Profile } from '../model/types.js';
import type { HealthChecker } from '../health/checker.js';

/** Upper bounds of the commit duration histogram, seconds. */
export const COMMIT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** Process counters a long-running process updates; the server renders them. */
export class ProcessStats {
  commits = 0;
  commitSeconds = 0;
  readonly commitBuckets = COMMIT_BUCKETS.map(() => 0);
  driftDetected = 0;
  driftRepaired = 0;
  syncFailures = 0;
  /** The last sync (or check) of the kernel against the state: null before the first. */
  lastSync: { ok: boolean; at: number; error?: string } | null = null;

  /** One kernel commit of `ms` milliseconds. */
  observeCommit(ms: number): void {
    this.commits++;
    const s = ms / 1000;
    this.commitSeconds += s;
    COMMIT_BUCKETS.forEach((b, i) => {
      if (s <= b) this.commitBuckets[i]++;
    });
  }

  /**
   * The result of a sync: what it found out of step (`drifted` profiles) and whether it repaired it,
   * or its error and what it had found out of step before it failed (`drifted`: a repair the kernel
   * refuses still counts the drift it found, at every sync that finds it).
   */
  observeSync(r: { drifted: number; committed: boolean; commitMs: number } | Error, drifted = 0): void {
    if (r instanceof Error) {
      this.syncFailures++;
      this.driftDetected += drifted;
      this.lastSync = { ok: false, at: Date.now(), error: r.message };
      return;
    }
    if (r.drifted > 0) this.driftDetected += r.drifted;
    if (r.committed) {
      this.driftRepaired += r.drifted;
      this.observeCommit(r.commitMs);
    }
    this.lastSync = { ok: true, at: Date.now() };
  }
}

export interface MetricsServerOptions {
  /** `host:port` to listen on, e.g. `127.0.0.1:9469` (`[::1]:9469` for IPv6). */
  address: string;
  /** What to report on: an {@link Iptlb} handle (its checker is used when `checker` is not given) or a core. */
  iptlb?: { healthHost(): { core: Core; closed?(): boolean }; healthChecker?: HealthChecker };
  core?: Core;
  stats?: ProcessStats;
  checker?: HealthChecker;
  /**
   * More lines of exposition text (the fleet agent: applied revision, watch state), each family with its # HELP and #
   * TYPE.
   */
  extra?: () => string | Promise<string>;
  /**
   * @internal `iptlb watch`: why its state file is not applied when it does not exist (a wrong path, a file not
   * copied in yet); /healthz is 503 with it. A status read would take the absent file for "no profiles" and answer
   * 200 while the watch applies nothing.
   */
  stateMissing?: () => string | undefined;
  /**
   * Connections held at once ({@link MAX_CONNECTIONS} by default). One more takes the place of one held that has no
   * request being answered: first the oldest that has sent no complete request (past {@link YOUNG_MS}), then the one
   * idle longest between requests; when each one held has a request being answered, it is closed as soon as it is
   * accepted, unanswered.
   */
  maxConnections?: number;
  /**
   * @internal `iptlb watch`: the profiles of the version of its state file applied last while the file has changed
   * since and not settled (`--settle`), else undefined. /healthz and /metrics compare the kernel with them then: the
   * kernel holds that version until the file settles, and a half-written file is not read.
   */
  settling?: () => Promise<ReadonlyMap<string, Profile> | undefined>;
  /**
   * @internal Milliseconds a connection may hold a response it does not read (no byte taken) before it is closed;
   * {@link STALL_MS} by default. Tests shorten it.
   */
  stallMs?: number;
  /**
   * @internal Milliseconds a connection may take to send a request's headers ({@link HEADERS_MS} by default). Tests
   * shorten it.
   */
  headersMs?: number;
  /**
   * @internal Milliseconds a connection that has sent no complete request is young ({@link YOUNG_MS} by default):
   * closed for a new one only after those held that are not, and those idle between requests. Tests set it.
   */
  youngMs?: number;
}

/** A response not read for this long (no progress at all) is dropped with its connection. */
export const STALL_MS = 30_000;

/**
 * Connections the server holds at once by default. Scrapers are few (a Prometheus pair, a probe, a curl); a flood
 * was held whole before: 5,000 connections were 5,000 descriptors and 44 MiB more RSS in the balancing process,
 * whose descriptor limit Node raises to the hard one, and that also needs descriptors for its kernel and health
 * checks.
 */
export const MAX_CONNECTIONS = 64;

/**
 * A request whose headers have not all come in this long is answered 408 and its connection closed (Node's own
 * default is 60 s, checked every 30 s: a flood of connections that send nothing kept scrapes out that long).
 */
export const HEADERS_MS = 10_000;

/**
 * A connection is young for this long after it came (and for two turns of the event loop): its client may not have
 * sent its request yet, or the server not read it. At the cap, a young one that sent nothing is closed for a new
 * connection only after the others that sent nothing and those idle between requests.
 */
export const YOUNG_MS = 100;

export interface MetricsServer {
  /** Where it listens. */
  host: string;
  port: number;
  close(): Promise<void>;
}

/** Parses `host:port` / `[v6]:port`; throws a one-line EUSAGE naming `metrics-address`. */
export function parseListenAddress(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+|localhost)):([0-9]{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  // A dotted quad (not `0`, `127.1` or `2130706433`, which the resolver would widen or look up) or an
  // IPv6 address in brackets.
  const host = m ? (m[1] ?? m[2]) : '';
  const badHost = m
    ? m[1] !== undefined
      ? canonicalIpv6(host) === null
      : host !== 'localhost' && ipv4Problem(host) !== null
    : true;
  if (!m || port > 65535 || badHost)
    throw new IptlbError(
      'EUSAGE',
      `metrics-address: ${JSON.stringify(text)} must be host:port, e.g. 127.0.0.1:9469 or [::1]:9469 (port 0: any free one)`,
      { field: 'metrics-address' },
    );
  return { host: m[1] ?? m[2], port };
}

function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

class Text {
  lines: string[] = [];
  family(name: string, type: 'counter' | 'gauge' | 'histogram', help: string): void {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  }
  sample(name: string, labels: Record<string, string>, value: number): void {
    const l = Object.entries(labels)
      .map(([k, v]) => `${k}="${esc(v)}"`)
      .join(',');
    this.lines.push(`${name}${l ? `{${l}}` : ''} ${Number.isFinite(value) ? value : 0}`);
  }
}

/** The exposition text: kernel counters (one status read), health, and the process counters. */
export async function renderMetrics(
  opts: Omit<MetricsServerOptions, 'address' | 'core'> & {
    core: Core;
    connectionsDropped?: () => number;
    connectionsEvicted?: () => number;
  },
): Promise<string> {
  const t = new Text();
  let reports: ProfileReport[] = [];
  let readOk = 1;
  let stateOk = 1;
  let split = 0;
  let healthFile: HealthFileStatus | undefined;
  try {
    // One status pass, and the other engine asked once (not per profile) whether it holds iptlb's rules too. While
    // watch's state file has changed and not settled, the kernel holds the version applied last: compared with that
    // (as /healthz does), so an edit or a half-written file is no read failure; once settled, the file is read as is.
    const held = await opts.settling?.();
    const r = await opts.core.statusReport({ original: false, ...(held ? { profiles: held } : {}) });
    reports = r.profiles;
    split = r.split ? 1 : 0;
    healthFile = r.healthFile;
  } catch (e) {
    // An unreadable state file is not a kernel that cannot be read: the kernel is not read then.
    if (e instanceof IptlbError && e.code === 'ESTATE') stateOk = 0;
    readOk = 0;
  }
  const profiles = reports.filter((r) => r.status !== 'orphaned');
  t.family(
    'iptlb_state_read_success',
    'gauge',
    'Whether this scrape could read the state file (1) or not (0: nothing else is read, the kernel keeps its rules).',
  );
  t.sample('iptlb_state_read_success', {}, stateOk);
  t.family('iptlb_kernel_read_success', 'gauge', 'Whether this scrape could read the kernel counters (1) or not (0).');
  t.sample('iptlb_kernel_read_success', {}, readOk);
  t.family(
    'iptlb_engines_split',
    'gauge',
    "Whether iptlb's rules are in both engines (1: traffic may use either copy; iptlb migrate keeps one) or not (0).",
  );
  t.sample('iptlb_engines_split', {}, split);
  t.family('iptlb_profiles', 'gauge', 'Profiles in the state file.');
  t.sample('iptlb_profiles', {}, profiles.length);
  t.family(
    'iptlb_profile_in_sync',
    'gauge',
    'Whether the kernel holds the profile as planned (1) or not (0); orphans have profile="" and the owner in "orphan".',
  );
  // One series per orphan: the same one may be in both address families' tables.
  const orphans = new Set<string>();
  for (const r of reports) {
    if (r.status !== 'orphaned') t.sample('iptlb_profile_in_sync', { profile: r.name }, r.status === 'in-sync' ? 1 : 0);
    else if (!orphans.has(r.name)) {
      orphans.add(r.name);
      t.sample('iptlb_profile_in_sync', { profile: '', orphan: r.name }, 0);
    }
  }
  t.family(
    'iptlb_destination_packets_total',
    'counter',
    'Packets matched by the NAT rule of the destination: one per new connection (kernel counter).',
  );
  for (const r of profiles)
    for (const d of r.destinations)
      t.sample('iptlb_destination_packets_total', { profile: r.name, destination: d.destination }, d.packets);
  t.family('iptlb_destination_bytes_total', 'counter', 'Bytes of those packets (kernel counter).');
  for (const r of profiles)
    for (const d of r.destinations)
      t.sample('iptlb_destination_bytes_total', { profile: r.name, destination: d.destination }, d.bytes);
  t.family('iptlb_destination_weight', 'gauge', 'Configured weight of the destination (state file).');
  for (const r of profiles)
    for (const d of r.destinations)
      t.sample('iptlb_destination_weight', { profile: r.name, destination: d.destination }, d.weight ?? 1);
  t.family(
    'iptlb_destination_effective_weight',
    'gauge',
    'Weight the kernel has for the destination (0 when drained because down).',
  );
  for (const r of profiles)
    for (const d of r.destinations)
      t.sample(
        'iptlb_destination_effective_weight',
        { profile: r.name, destination: d.destination },
        d.effectiveWeight ?? d.weight ?? 1,
      );
  t.family(
    'iptlb_destination_health',
    'gauge',
    'Health state of the destination: 1 for its current state (up, down or unchecked), 0 for the others; profiles with a health check only.',
  );
  for (const r of profiles) {
    for (const d of r.destinations) {
      if (d.health === undefined) continue;
      for (const s of ['up', 'down', 'unchecked'])
        t.sample(
          'iptlb_destination_health',
          { profile: r.name, destination: d.destination, state: s },
          d.health === s ? 1 : 0,
        );
    }
  }
  const c = opts.checker?.counters;
  t.family('iptlb_health_checks_total', 'counter', 'Health checks finished, per profile.');
  if (c) for (const [p, n] of c.checks) t.sample('iptlb_health_checks_total', { profile: p }, n);
  t.family('iptlb_health_check_failures_total', 'counter', 'Health checks that failed, per profile.');
  if (c) for (const [p, n] of c.failures) t.sample('iptlb_health_check_failures_total', { profile: p }, n);
  // The health file of another process that checks this state file (a watch with --no-health-checks, a library
  // handle without a checker follow one): whether its drains count. No series when there is none (or this process
  // runs the checks itself).
  t.family(
    'iptlb_health_file_followed',
    'gauge',
    'Whether the health file another process publishes beside the state file is followed (1) or not (0: its writer is stopped, hung or gone; the configured weights hold).',
  );
  if (healthFile) t.sample('iptlb_health_file_followed', {}, healthFile.state === 'followed' ? 1 : 0);
  t.family(
    'iptlb_health_file_age_seconds',
    'gauge',
    "Seconds since that health file was written, by this process's clock (negative: written ahead of it).",
  );
  if (healthFile?.ageMs !== undefined) t.sample('iptlb_health_file_age_seconds', {}, healthFile.ageMs / 1000);
  const s = opts.stats;
  if (s) {
    t.family('iptlb_commits_total', 'counter', 'Kernel commits made by this process (syncs and health changes).');
    t.sample('iptlb_commits_total', {}, s.commits);
    t.family('iptlb_commit_duration_seconds', 'histogram', 'Duration of those kernel commits.');
    COMMIT_BUCKETS.forEach((b, i) =>
      t.sample('iptlb_commit_duration_seconds_bucket', { le: String(b) }, s.commitBuckets[i]),
    );
    t.sample('iptlb_commit_duration_seconds_bucket', { le: '+Inf' }, s.commits);
    t.sample('iptlb_commit_duration_seconds_sum', {}, s.commitSeconds);
    t.sample('iptlb_commit_duration_seconds_count', {}, s.commits);
    t.family('iptlb_drift_detected_total', 'counter', 'Profiles found out of step with the state file by a sync.');
    t.sample('iptlb_drift_detected_total', {}, s.driftDetected);
    t.family('iptlb_drift_repaired_total', 'counter', 'Profiles a sync brought back in step.');
    t.sample('iptlb_drift_repaired_total', {}, s.driftRepaired);
    t.family('iptlb_sync_failures_total', 'counter', 'Syncs that failed.');
    t.sample('iptlb_sync_failures_total', {}, s.syncFailures);
    t.family('iptlb_last_sync_success', 'gauge', 'Whether the last sync succeeded (1) or failed (0).');
    t.sample('iptlb_last_sync_success', {}, s.lastSync?.ok ? 1 : 0);
  }
  if (opts.connectionsDropped) {
    t.family(
      'iptlb_metrics_connections_dropped_total',
      'counter',
      'Connections to this metrics server closed at accept, unanswered, because it held its maximum of connections, each answering a request.',
    );
    t.sample('iptlb_metrics_connections_dropped_total', {}, opts.connectionsDropped());
  }
  if (opts.connectionsEvicted) {
    t.family(
      'iptlb_metrics_connections_evicted_total',
      'counter',
      'Connections to this metrics server closed to make room for a new one at its maximum of connections: one that had sent no complete request, or was idle between requests.',
    );
    t.sample('iptlb_metrics_connections_evicted_total', {}, opts.connectionsEvicted());
  }
  let text = t.lines.join('\n') + '\n';
  if (opts.extra) {
    const more = await opts.extra();
    if (more) text += more.endsWith('\n') ? more : more + '\n';
  }
  return text;
}

/**
 * `/healthz`: 200 while the last sync succeeded, iptlb's rules are in one engine only and the kernel matches the
 * state (with health), else 503 and why.
 */
export async function healthz(
  opts: Omit<MetricsServerOptions, 'address' | 'core'> & { core: Core },
): Promise<{ ok: boolean; reason: string; profiles?: string[] }> {
  const last = opts.stats?.lastSync;
  if (last && !last.ok) return { ok: false, reason: `last sync failed: ${last.error}` };
  const missing = opts.stateMissing?.();
  if (missing !== undefined) return { ok: false, reason: missing };
  try {
    const held = await opts.settling?.();
    // A handle without a state file (stateFile: false) leaves the profiles it was not given alone (its sync removes
    // no orphan, its statusReport().inSync does not count them): they are others' (another agent's, a state
    // file's), no reason for its /healthz to fail.
    const memory = opts.core.statePath === null;
    const what = held
      ? 'the version of the state file applied (the file changed since and has not settled)'
      : memory
        ? "this handle's profiles"
        : 'the state file';
    const report = await opts.core.statusReport({ original: false, ...(held ? { profiles: held } : {}) });
    if (report.split) return { ok: false, reason: report.split };
    const seen = new Set<string>(); // an orphan may be in both address families' tables: once
    const drifted = report.profiles.filter(
      (r) =>
        r.status !== 'in-sync' &&
        !(memory && r.status === 'orphaned') &&
        !seen.has(`${r.status}:${r.name}`) &&
        !!seen.add(`${r.status}:${r.name}`),
    );
    if (drifted.length)
      return {
        ok: false,
        reason: `kernel does not match ${what}: ${drifted.length} profile(s) ${drifted
          .slice(0, 5)
          .map((r) => `${r.name} ${r.status}`)
          .join(', ')}`,
        profiles: drifted.map((r) => r.name),
      };
    return { ok: true, reason: `kernel matches ${what}` };
  } catch (e) {
    if (e instanceof IptlbError && e.code === 'ESTATE')
      return { ok: false, reason: `cannot read the state file: ${e.message}` };
    return { ok: false, reason: `cannot read the kernel: ${(e as Error).message}` };
  }
}

const METRICS_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** The path of an absolute-form request target (`http://host:port/path?query`); the target itself if it is not a URL. */
function absolutePath(target: string): string {
  try {
    return new URL(target).pathname;
  } catch {
    return target;
  }
}

const CLOSED = 'the iptlb handle this server reports on is closed: close the server with it';

const METRICS_OPTIONS = ['address', 'iptlb', 'core', 'stats', 'checker', 'extra', 'maxConnections'];

/** The options of {@link startMetricsServer} checked as open()'s are: an object of known keys, each of its kind. */
function checkMetricsOptions(o: unknown): asserts o is MetricsServerOptions {
  const usage = (field: string, message: string): IptlbError =>
    new IptlbError('EUSAGE', `${field}: ${message}`, { field });
  if (o === null || typeof o !== 'object' || Array.isArray(o))
    throw usage('options', `startMetricsServer takes an object, got ${o === null ? 'null' : typeof o}`);
  const v = o as Record<string, unknown>;
  for (const k of Object.keys(v))
    // stateMissing, settling: iptlb watch's own; stallMs, headersMs, youngMs: tests' (internal, not listed).
    if (
      !METRICS_OPTIONS.includes(k) &&
      k !== 'stateMissing' &&
      k !== 'settling' &&
      k !== 'stallMs' &&
      k !== 'headersMs' &&
      k !== 'youngMs'
    )
      throw usage(k, `unknown option (known: ${METRICS_OPTIONS.join(', ')})`);
  const inherited = inheritedKey(v, [
    ...METRICS_OPTIONS,
    'stateMissing',
    'settling',
    'stallMs',
    'headersMs',
    'youngMs',
  ]);
  if (inherited !== undefined) throw usage(inherited, INHERITED);
  const kind = (field: string, ok: boolean, what: string): void => {
    if (v[field] !== undefined && !ok) throw usage(field, `must be ${what}`);
  };
  kind('iptlb', typeof (v.iptlb as { healthHost?: unknown })?.healthHost === 'function', 'a handle of open()');
  kind('stats', v.stats instanceof ProcessStats, 'a ProcessStats');
  kind('checker', typeof (v.checker as { states?: unknown })?.states === 'function', 'a HealthChecker');
  kind('extra', typeof v.extra === 'function', 'a function returning exposition text');
  kind(
    'maxConnections',
    Number.isSafeInteger(v.maxConnections) && (v.maxConnections as number) > 0,
    'a whole number of connections, 1 or more',
  );
  kind('stateMissing', typeof v.stateMissing === 'function', 'a function');
  kind('settling', typeof v.settling === 'function', 'a function');
  kind('stallMs', Number.isInteger(v.stallMs) && (v.stallMs as number) > 0, 'a positive whole number of ms');
  kind('headersMs', Number.isInteger(v.headersMs) && (v.headersMs as number) > 0, 'a positive whole number of ms');
  kind('youngMs', Number.isInteger(v.youngMs) && (v.youngMs as number) >= 0, 'a whole number of ms');
}

/** Serves `/metrics` and `/healthz` on `address`. Resolves once listening. */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  checkMetricsOptions(options);
  const { host, port } = parseListenAddress(options.address);
  const handle = options.core ? undefined : options.iptlb?.healthHost();
  const core = options.core ?? handle?.core;
  if (!core) throw new IptlbError('EUSAGE', 'startMetricsServer: give iptlb (a handle) or core', { field: 'iptlb' });
  const checker = options.checker ?? options.iptlb?.healthChecker;
  // Connections closed at accept over maxConnections (a scraper refused sees only a reset), and connections held
  // that were closed to make room for a new one; counted for /metrics.
  let dropped = 0;
  let evicted = 0;
  const opts = {
    ...options,
    core,
    ...(checker ? { checker } : {}),
    connectionsDropped: () => dropped,
    connectionsEvicted: () => evicted,
  };
  // Requests that come while one of the same path is being answered share its answer: one status read and one
  // body for all of them. Each took its own before: 5 requests pipelined by each of 20 clients that did not read
  // were 105 status reads of 10,000 profiles and 2.1 GiB more RSS, each response its own 9 MB copy of the text.
  let metricsBody: Promise<Buffer> | undefined;
  let healthBody: Promise<{ ok: boolean; body: Buffer }> | undefined;
  const shared = <T>(
    get: () => Promise<T> | undefined,
    set: (p: Promise<T> | undefined) => void,
    make: () => Promise<T>,
  ) => {
    let p = get();
    if (!p) {
      p = make().finally(() => set(undefined));
      set(p);
    }
    return p;
  };
  // A connection that sends no request, or part of one, holds one of the maxConnections places until this closes
  // it: HEADERS_MS for the headers (and the whole request: a scrape has no body), checked every second.
  const headersMs = options.headersMs ?? HEADERS_MS;
  const serverOptions = {
    headersTimeout: headersMs,
    requestTimeout: headersMs,
    connectionsCheckingInterval: Math.min(1000, headersMs),
  };
  const server = nodeHttp().createServer(serverOptions, (req, res) => {
    // A request target in absolute form (`GET http://127.0.0.1:9469/metrics`), which a server must accept (RFC 9112
    // 3.2.2), names the same path as `GET /metrics` (it was a 404 before 2026-12-07).
    const target = req.url ?? '/';
    const url = (/^https?:\/\//i.test(target) ? absolutePath(target) : target).split('?')[0];
    // HEAD /metrics reads nothing (it ran GET's status read and extra(), before 2026-12-07, for a body it did not
    // send): GET's status and Content-Type, without the Content-Length only the read would give (RFC 9110 9.3.2 lets
    // a HEAD omit it). HEAD /healthz is answered as GET (its answer is its status, which takes the read: load
    // balancers' checks often use HEAD), Node leaving the body out.
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    // close() promises that the handle reaches the kernel no more: a server started on it and not closed
    // with it reads nothing through it, and says so (a scraper or probe sees the process stopped balancing).
    if ((url === '/metrics' || url === '/healthz') && handle?.closed?.()) {
      res
        .writeHead(503, { 'content-type': url === '/healthz' ? 'application/json' : 'text/plain' })
        .end(url === '/healthz' ? JSON.stringify({ ok: false, reason: CLOSED }) + '\n' : `iptlb: ${CLOSED}\n`);
    } else if (url === '/metrics' && req.method === 'HEAD') {
      res.writeHead(200, { 'content-type': METRICS_TYPE }).end();
    } else if (url === '/metrics') {
      shared(
        () => metricsBody,
        (p) => (metricsBody = p),
        async () => Buffer.from(await renderMetrics(opts)),
      ).then(
        (body) =>
          res
            .writeHead(200, {
              'content-type': METRICS_TYPE,
              'content-length': body.length,
            })
            .end(body),
        (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`),
      );
    } else if (url === '/healthz') {
      shared(
        () => healthBody,
        (p) => (healthBody = p),
        async () => {
          const h = await healthz(opts);
          return { ok: h.ok, body: Buffer.from(JSON.stringify(h) + '\n') };
        },
      ).then(
        (h) =>
          res
            .writeHead(h.ok ? 200 : 503, { 'content-type': 'application/json', 'content-length': h.body.length })
            .end(h.body),
        (e: Error) =>
          res
            .writeHead(503, { 'content-type': 'application/json' })
            .end(JSON.stringify({ ok: false, reason: e.message }) + '\n'),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('iptlb: /metrics or /healthz\n');
    }
  });
  // A client that asks and never reads (a stuck scraper, a port scan, a slow-loris) kept its connection and the part
  // of the response its socket buffers did not take (a body of 32 MiB: most of it) for as long as it stayed
  // connected: Node times out no socket by default, and its keep-alive timeout starts only once a response is
  // written out. A connection whose response makes no progress for stallMs is closed (Node's socket timeout is
  // not raised while a write progresses, so a slow reader is kept); a request still being answered (a long
  // status read) is not cut. Set on the response, not the server: a server 'timeout' listener would take the
  // keep-alive timeout's closing of idle connections away from Node.
  server.on('request', (_req: unknown, res: import('node:http').ServerResponse) =>
    res.setTimeout(options.stallMs ?? STALL_MS, () => {
      if (res.socket && res.socket.writableLength > 0) res.socket.destroy();
    }),
  );
  // A flood of connections (a port scan, a misbehaving client, connections opened and left) was held whole: each a
  // descriptor and about 9 KB. It is capped at maxConnections. Until 2026-12-07 Node closed every new connection
  // past the cap at accept: 64 connections that sent nothing held every place for headersMs, and a scrape that sent
  // its request at once was refused for as long as such a flood lasted. Now a new connection past the cap takes the
  // place of one held, in this order: the oldest that has sent no complete request (nothing, or part of one) and is
  // no longer young; the one idle longest between requests (keep-alive; Node closes it after 5 s idle anyway); the
  // oldest young one. A connection is young for youngMs after it came, and until the event loop has turned twice:
  // a scraper's request, sent with its connection, is read in the turn after the accept, while the connections
  // behind it in the listen backlog are accepted in the same turn as it. A connection with a request being answered
  // is never closed for a new one; when every one held has, the new one is closed at accept, unanswered.
  const cap = options.maxConnections ?? MAX_CONNECTIONS;
  const youngMs = options.youngMs ?? YOUNG_MS;
  // Each connection held, in the order they came: when (turn of the loop, ms), requests seen on it, responses not
  // finished, and when the last one finished (a count of responses finished, for the order of idle ones).
  const held = new Map<Socket, { turn: number; at: number; requests: number; answering: number; idleSince: number }>();
  let finished = 0;
  let turn = 0;
  let lastTurn = -2; // the turn the last connection came in; the turns are counted while it is young
  let turning = false;
  const nextTurn = (): void => {
    turn++;
    turning = turn - lastTurn < 2;
    if (turning) setImmediate(nextTurn);
  };
  server.on('connection', (socket: Socket) => {
    const now = performance.now();
    held.set(socket, { turn, at: now, requests: 0, answering: 0, idleSince: 0 });
    socket.once('close', () => held.delete(socket));
    lastTurn = turn;
    if (!turning) {
      turning = true;
      setImmediate(nextTurn);
    }
    if (held.size <= cap) return;
    for (const s of held.keys()) if (s.destroyed) held.delete(s); // closed, its 'close' not yet emitted
    if (held.size <= cap) return;
    let victim: Socket | undefined;
    let idle: Socket | undefined;
    let young: Socket | undefined;
    let idleSince = Infinity;
    for (const [s, c] of held) {
      if (s === socket || c.answering > 0) continue;
      if (c.requests === 0) {
        if (turn - c.turn < 2 || now - c.at < youngMs) {
          young ??= s; // its request may have come and not been read yet
          continue;
        }
        victim = s; // the oldest that sent no complete request
        break;
      }
      if (c.idleSince < idleSince) [idle, idleSince] = [s, c.idleSince];
    }
    victim ??= idle ?? young;
    if (victim) evicted++;
    else dropped++;
    held.delete(victim ?? socket);
    (victim ?? socket).destroy();
  });
  server.on('request', (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => {
    const c = held.get(req.socket);
    if (!c) return;
    c.requests++;
    c.answering++;
    res.once('close', () => {
      c.answering--;
      c.idleSince = ++finished;
    });
  });
  // The one over the cap is taken in before one held is closed: Node's own cap, one above, is a bound should the
  // listener above ever fail to close one.
  server.maxConnections = cap + 1;
  server.on('drop', () => dropped++);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        new IptlbError('EUSAGE', `metrics-address: cannot listen on ${options.address} (${e.code ?? e.message})`, {
          field: 'metrics-address',
        }),
      ),
    );
    server.listen(port, host, () => resolve());
  });
  const a = server.address() as { address: string; port: number };
  return {
    host: a.address,
    port: a.port,
    // The connections still open are ended too: one without a request yet, or part way through one (a
    // scraper's, a port scan's), kept close() waiting for its client, and a watch's stop with it (its
    // health checker gives drained destinations their weights back after).
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}
