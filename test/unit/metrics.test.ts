/**
 * /metrics as a demanding scraper sees it: the exposition read by a strict parser of the text format 0.0.4
 * (test/harness/prom-text.ts), and the server's behaviour under scrapes that come together, pipelined requests
 * and clients that never read. No root: a core on the fake kernel, or a core whose status reads are counted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { validateProfile } from '../../src/index.js';
import { Core, upsertChange } from '../../src/core/core.js';
import { FakeLegacyKernel } from '../harness/fake-kernel.js';
import { healthz, ProcessStats, renderMetrics } from '../../src/metrics/server.js';
import { agentMetrics } from '../../src/cli/commands/agent.js';
import { labelSets, parsePromText } from '../harness/prom-text.js';
import type { ProfileReport } from '../../src/model/report.js';

const D = ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'];

test('the strict parser refuses what a strict scraper refuses', () => {
  const ok = '# HELP a_total x\n# TYPE a_total counter\na_total{p="a\\"b\\\\c\\nd"} 1\n';
  assert.equal(parsePromText(ok).get('a_total')!.samples[0].labels.p, 'a"b\\c\nd');
  const bad: [string, RegExp][] = [
    ['# TYPE a gauge\na 1', /newline/],
    ['# TYPE a gauge\n# TYPE a gauge\na 1\n', /second TYPE/],
    ['# HELP a x\n# HELP a y\na 1\n', /second HELP/],
    ['a 1\n# TYPE a gauge\n', /TYPE after samples/],
    ['a{p="x"} 1\na{p="x"} 2\n', /twice/],
    ['a{p="x",q="y"} 1\na{q="y",p="x"} 2\n', /twice/],
    ['a{p="x\\t"} 1\n', /escape/],
    ['a{p="x} 1\n', /not closed|no value/],
    ['# TYPE a counter\na 1\n', /_total/],
    ['# TYPE a_total counter\na_total -1\n', /-1/],
    ['a 1\nb 1\na{x="1"} 1\n', /continues after/],
    ['a one\n', /not a float/],
    ['# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', /cumulative/],
    ['a{__x="1"} 1\n', /label name/],
  ];
  for (const [text, re] of bad) assert.throws(() => parsePromText(text), re, JSON.stringify(text));
});

test('the exposition of a core with profiles, health, orphans with quotes, backslashes and newlines, the process and agent families, parses strictly', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-metrics-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const kernel = new FakeLegacyKernel();
  const core = new Core({ stateFile: path.join(dir, 'state.db'), engine: 'legacy' }, { legacy: kernel } as never);
  await core.transact(
    () => ({
      upsert: [
        validateProfile({ name: 'web', source: '127.100.0.10:80', destination: [D[0], `${D[1]}*2`] }),
        validateProfile({ name: 'api', source: '127.100.0.11:80', destination: D, health: { kind: 'tcp' } }),
        validateProfile({ name: 'v6', source: '[fd00::10]:80', destination: ['[fd00::1]:80', '[fd00::2]:80'] }),
      ],
      remove: [],
    }),
    { run: true },
  );
  // Orphans whose names come from the kernel (another tool's, hand-made) are label values: escaped.
  const real = core.statusReport.bind(core);
  const odd = ['a"b', 'back\\slash', 'new\nline', 'tab\there', 'ünï'];
  core.statusReport = async (o) => {
    const r = await real(o);
    const orphan = (name: string): ProfileReport => ({
      name,
      status: 'orphaned',
      destinations: [],
      packets: 0,
      bytes: 0,
    });
    return { ...r, profiles: [...r.profiles, ...odd.map(orphan), orphan(odd[0])] };
  };
  const stats = new ProcessStats();
  stats.observeCommit(3);
  stats.observeCommit(3000);
  stats.observeSync({ drifted: 2, committed: true, commitMs: 0.4 });
  stats.observeSync(new Error('refused'), 1);
  const checker = {
    states: () => [],
    counters: { checks: new Map([['api', 7]]), failures: new Map([['api', 2]]) },
  } as never;
  const text = await renderMetrics({
    core,
    stats,
    checker,
    extra: () => agentMetrics({ revision: 12, profiles: 3, refused: [], watch: 'watching' }),
  });
  const families = parsePromText(text);
  const inSync = families.get('iptlb_profile_in_sync')!;
  assert.deepEqual(
    inSync.samples.filter((s) => s.labels.orphan !== undefined).map((s) => s.labels.orphan),
    odd,
    'each orphan once, its name read back as it was',
  );
  assert.deepEqual(
    families
      .get('iptlb_destination_packets_total')!
      .samples.map((s) => `${s.labels.profile} ${s.labels.destination}`)
      .sort(),
    ['api 127.0.0.1:9001', 'api 127.0.0.1:9002', 'api 127.0.0.1:9003', 'v6 [fd00::1]:80', 'v6 [fd00::2]:80'].concat([
      'web 127.0.0.1:9001',
      'web 127.0.0.1:9002',
    ]),
  );
  for (const f of families.values()) {
    // One label set per family, but for iptlb_profile_in_sync's orphans (documented: profile="" and orphan).
    if (f.name === 'iptlb_profile_in_sync') assert.deepEqual(labelSets(f), ['profile', 'orphan,profile']);
    else assert.equal(labelSets(f).length <= 1 || f.type === 'histogram', true, `${f.name}: ${labelSets(f)}`);
  }
  const h = families.get('iptlb_commit_duration_seconds')!;
  assert.equal(h.samples.find((s) => s.name.endsWith('_count'))!.value, 3);
  assert.equal(families.get('iptlb_health_checks_total')!.samples[0].value, 7);
  assert.equal(families.get('iptlb_agent_watch_state')!.samples.length, 4);
});

/** A core whose status reads wait for `release()`, counted. */
function gatedCore(profiles: number): { core: Core; reads: () => number; release: () => void } {
  const reports: ProfileReport[] = Array.from({ length: profiles }, (_, i) => ({
    name: `p${i}`,
    status: 'in-sync',
    packets: i,
    bytes: i,
    destinations: [{ destination: `127.0.0.1:${9000 + (i % 100)}`, packets: i, bytes: 60 * i }],
  }));
  let reads = 0;
  let open!: () => void;
  let gate = new Promise<void>((r) => (open = r));
  const core = {
    statusReport: async () => {
      reads++;
      await gate;
      return { inSync: true, profiles: reports };
    },
  } as unknown as Core;
  return {
    core,
    reads: () => reads,
    release: () => {
      open();
      gate = new Promise<void>((r) => (open = r));
    },
  };
}

/** Returns a wait for the servers of this process to have been handed `n` more requests (their handlers run). */
async function requestsSeen(n: number): Promise<() => Promise<void>> {
  const http = await import('node:http');
  const emit = http.Server.prototype.emit as (...a: unknown[]) => boolean;
  let seen = 0;
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  http.Server.prototype.emit = function (this: unknown, ...args: unknown[]) {
    const r = emit.apply(this, args);
    if (args[0] === 'request' && ++seen === n) done();
    return r;
  };
  return async () => {
    await all;
    http.Server.prototype.emit = emit as typeof http.Server.prototype.emit;
  };
}

/** Sends `requests` on one connection at once, reads all until the server closes it (the last one says close). */
async function rawExchange(port: number, requests: string): Promise<string> {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    c.on('data', (d) => chunks.push(d));
    c.on('error', reject);
    c.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    c.write(requests); // not end(): the server drops the requests of a connection its client half-closed
  });
}

test('scrapes and /healthz requests that come together, pipelined or not, share one status read and one body', async () => {
  const { startMetricsServer } = await import('../../src/metrics/server.js');
  const g = gatedCore(2000);
  const stats = new ProcessStats();
  stats.observeSync({ drifted: 0, committed: false, commitMs: 0 });
  const server = await startMetricsServer({ address: '127.0.0.1:0', core: g.core, stats });
  try {
    // 10 scrapes pipelined on one connection, 4 more on their own, and 6 /healthz pipelined: 20 requests.
    const stop = await requestsSeen(20);
    const get = (p: string, last = false) =>
      `GET ${p} HTTP/1.1\r\nHost: x\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;
    const pipelined = rawExchange(port(server), get('/metrics').repeat(9) + get('/metrics', true));
    const health = rawExchange(port(server), get('/healthz').repeat(5) + get('/healthz', true));
    const alone = Array.from({ length: 4 }, () =>
      fetch(`http://127.0.0.1:${server.port}/metrics`).then(async (r) => {
        assert.equal(r.status, 200);
        return r.text();
      }),
    );
    await stop();
    // Every request has been handed to the server and is waiting: one read for /metrics, one for /healthz.
    assert.equal(g.reads(), 2, 'one status read per path, not one per request');
    g.release();
    const bodies = await Promise.all(alone);
    assert.ok(bodies.every((b) => b === bodies[0]));
    parsePromText(bodies[0]);
    const raw = await pipelined;
    const statuses = raw.match(/^HTTP\/1\.1 \d+/gm) ?? [];
    assert.deepEqual(statuses, Array(10).fill('HTTP/1.1 200'));
    assert.equal(raw.split(bodies[0]).length - 1, 10, 'each pipelined response is the whole text');
    assert.match(raw, new RegExp(`content-length: ${Buffer.byteLength(bodies[0])}\r\n`, 'i'));
    const h = await health;
    assert.equal((h.match(/^HTTP\/1\.1 200/gm) ?? []).length, 6);
    assert.equal((h.match(/\{"ok":true,"reason":"kernel matches the state file"\}\n/g) ?? []).length, 6);
    // A scrape after those is read afresh.
    const next = fetch(`http://127.0.0.1:${server.port}/metrics`);
    while (g.reads() < 3) await new Promise((r) => setImmediate(r));
    g.release();
    assert.equal((await next).status, 200);
  } finally {
    await server.close();
  }
});

const port = (s: { port: number }): number => s.port;

test(
  'a client that asks for /metrics and never reads is disconnected once its response makes no progress; others are answered meanwhile',
  { timeout: 60_000 },
  async () => {
    const { startMetricsServer } = await import('../../src/metrics/server.js');
    const http = await import('node:http');
    const net = await import('node:net');
    // 32 MiB of comment lines after the families: more than loopback's socket buffers hold, so a part stays queued.
    const big = `# ${'x'.repeat(1022)}\n`.repeat(32 * 1024);
    const core = { statusReport: async () => ({ inSync: true, profiles: [] }) } as unknown as Core;
    // stallMs: long enough that the reading scraper, in this same process, is not taken for stuck when the machine
    // is loaded (200 ms cut it once, at a load average of 10).
    const server = await startMetricsServer({ address: '127.0.0.1:0', core, extra: () => big, stallMs: 2000 });
    // The server's side of each connection, in the order they came.
    const accepted: import('node:net').Socket[] = [];
    const emit = http.Server.prototype.emit as (...a: unknown[]) => boolean;
    http.Server.prototype.emit = function (this: unknown, ...args: unknown[]) {
      if (args[0] === 'connection') accepted.push(args[1] as import('node:net').Socket);
      return emit.apply(this, args);
    };
    try {
      const stuck = net.connect(server.port, '127.0.0.1');
      stuck.on('error', () => {});
      stuck.pause(); // never reads
      stuck.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
      while (accepted.length < 1) await new Promise((r) => setImmediate(r));
      const serverSide = accepted[0];
      // The response is written (part of it still queued, the client reading nothing) …
      while (serverSide.writableLength === 0) await new Promise((r) => setImmediate(r));
      // … and a scraper that reads is answered whole meanwhile.
      const r = await fetch(`http://127.0.0.1:${server.port}/metrics`);
      assert.equal(r.status, 200);
      assert.equal((await r.text()).length, Number(r.headers.get('content-length')));
      // The stuck connection is closed by the server, its queued response with it (it stayed open, before).
      if (!serverSide.destroyed) await new Promise((r) => serverSide.once('close', r));
      assert.equal(serverSide.destroyed, true);
      stuck.destroy();
    } finally {
      http.Server.prototype.emit = emit as typeof http.Server.prototype.emit;
      await server.close();
    }
  },
);

test('HEAD /metrics reads nothing: GET status and type, no Content-Length; HEAD /healthz is GET /healthz without the body, sharing its read', async () => {
  const { startMetricsServer } = await import('../../src/metrics/server.js');
  const g = gatedCore(10);
  let extras = 0;
  const server = await startMetricsServer({
    address: '127.0.0.1:0',
    core: g.core,
    extra: () => {
      extras++;
      return '';
    },
  });
  try {
    const req = (method: string, p: string, last = false) =>
      `${method} ${p} HTTP/1.1\r\nHost: x\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;
    // On one connection: HEADs, a POST to /healthz, then GETs that do read (the connection stays usable).
    const stop = await requestsSeen(7);
    const exchange = rawExchange(
      port(server),
      req('HEAD', '/metrics') +
        req('HEAD', '/metrics') +
        req('HEAD', '/healthz') +
        req('POST', '/healthz') +
        req('HEAD', '/nothing') +
        req('GET', '/healthz') +
        req('GET', '/metrics', true),
    );
    await stop();
    // Every request has been handed to the server: their reads, if any, have started.
    assert.equal(g.reads(), 2, "the GETs read the kernel, HEAD /healthz with GET /healthz's read");
    g.release();
    const raw = await exchange;
    const responses = raw.split(/(?=^HTTP\/1\.1 )/m);
    assert.equal(responses.length, 7, raw);
    const [head1, head2, headHealth, postHealth, headOther, getHealth, get] = responses;
    for (const h of [head1, head2]) {
      assert.match(h, /^HTTP\/1\.1 200 /);
      assert.match(h, /\r\ncontent-type: text\/plain; version=0\.0\.4; charset=utf-8\r\n/i);
      assert.doesNotMatch(h, /content-length|transfer-encoding/i);
      assert.match(h, /\r\n\r\n$/, 'no body');
    }
    const healthHead = getHealth.slice(0, getHealth.indexOf('\r\n\r\n') + 4);
    assert.match(getHealth, /^HTTP\/1\.1 (200|503) .*\r\ncontent-type: application\/json\r\ncontent-length: [1-9]/is);
    assert.ok(getHealth.length > healthHead.length, 'GET /healthz has a body');
    const statusAndType = (h: string) => h.split('\r\n').filter((l) => /^(HTTP|content-)/i.test(l));
    assert.deepEqual(
      statusAndType(headHealth),
      statusAndType(healthHead),
      'HEAD /healthz: the status and headers of GET',
    );
    assert.match(headHealth, /\r\n\r\n$/, 'no body');
    assert.match(postHealth, /^HTTP\/1\.1 405 /);
    assert.match(postHealth, /\r\nallow: GET, HEAD\r\n/i);
    assert.match(headOther, /^HTTP\/1\.1 404 /);
    assert.match(get, /^HTTP\/1\.1 200 /);
    assert.match(get, /\r\ncontent-type: text\/plain; version=0\.0\.4; charset=utf-8\r\n/i);
    const body = get.slice(get.indexOf('\r\n\r\n') + 4);
    assert.match(get, new RegExp(`\r\ncontent-length: ${Buffer.byteLength(body)}\r\n`, 'i'));
    parsePromText(body);
    assert.equal(g.reads(), 2);
    assert.equal(extras, 1, 'extra() ran for the GET only');
  } finally {
    await server.close();
  }
});

/**
 * What becomes of each connection the servers of this process are offered, in order: 'held' (the server took it and
 * kept it: 'connection', with its server side) or 'dropped' (closed unanswered at accept, over the cap: Node's 'drop',
 * or a 'connection' the server's own listeners closed at once).
 */
async function connectionWatcher(): Promise<{
  next: () => Promise<{ fate: 'held' | 'dropped'; socket?: import('node:net').Socket }>;
  restore: () => void;
}> {
  const http = await import('node:http');
  type Fate = { fate: 'held' | 'dropped'; socket?: import('node:net').Socket };
  const emit = http.Server.prototype.emit as (...a: unknown[]) => boolean;
  const waiting: ((f: Fate) => void)[] = [];
  const seen: Fate[] = [];
  http.Server.prototype.emit = function (this: unknown, ...args: unknown[]) {
    const r = emit.apply(this, args);
    const socket = args[1] as import('node:net').Socket;
    const f: Fate | undefined =
      args[0] === 'connection'
        ? { fate: socket.destroyed ? 'dropped' : 'held', socket }
        : args[0] === 'drop'
          ? { fate: 'dropped' }
          : undefined;
    if (f) {
      const w = waiting.shift();
      if (w) w(f);
      else seen.push(f);
    }
    return r;
  };
  return {
    next: () => (seen.length ? Promise.resolve(seen.shift()!) : new Promise((r) => waiting.push(r))),
    restore: () => {
      http.Server.prototype.emit = emit as typeof http.Server.prototype.emit;
    },
  };
}

/** A client connection that records what it received and when the server closed it. */
async function client(
  port: number,
): Promise<{ c: import('node:net').Socket; got: () => string; closed: Promise<void> }> {
  const net = await import('node:net');
  const c = net.connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  c.on('data', (d) => chunks.push(d));
  c.on('error', () => {}); // a reset is a close too
  const closed = new Promise<void>((r) => c.on('close', () => r()));
  return { c, got: () => Buffer.concat(chunks).toString('latin1'), closed };
}

/**
 * One request on a connection kept open (written at once, before the connection is made if it is new); resolves with
 * the status line once the whole response came (a GET's Content-Length, a HEAD's head).
 */
function getOn(k: { c: import('node:net').Socket; got: () => string }, p: string, method = 'GET'): Promise<string> {
  const from = k.got().length;
  k.c.write(`${method} ${p} HTTP/1.1\r\nHost: x\r\n\r\n`);
  return new Promise((resolve) => {
    const check = () => {
      const r = k.got().slice(from);
      const head = r.indexOf('\r\n\r\n');
      const len = method === 'HEAD' ? ['', '0'] : /\r\ncontent-length: (\d+)\r\n/i.exec(r);
      if (head >= 0 && len && r.length >= head + 4 + Number(len[1])) {
        k.c.off('data', check);
        resolve(r.slice(0, r.indexOf('\r\n')));
      }
    };
    k.c.on('data', check);
    check();
  });
}

/**
 * Lets the event loop turn twice: a connection the server took in before is no longer young then (one that sent
 * nothing may make room for a new one).
 */
async function turns(): Promise<void> {
  for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
}

/** The value of an unlabelled sample in the last exposition a connection received. */
function sampleIn(got: string, name: string): number {
  const all = [...got.matchAll(new RegExp(`\n${name} (\\d+)\n`, 'g'))];
  assert.ok(all.length > 0, `${name} in the exposition`);
  return Number(all[all.length - 1][1]);
}

test('a flood of connections that send no complete request does not keep a scrape out: the oldest of them makes room for it', async () => {
  const { startMetricsServer, MAX_CONNECTIONS } = await import('../../src/metrics/server.js');
  assert.equal(MAX_CONNECTIONS, 64);
  const core = { statusReport: async () => ({ inSync: true, profiles: [] }) } as unknown as Core;
  const w = await connectionWatcher();
  // youngMs 0: a connection of the flood is young (not closed for a new one) for two turns of the loop only.
  const server = await startMetricsServer({ address: '127.0.0.1:0', core, youngMs: 0 });
  const clients: Awaited<ReturnType<typeof client>>[] = [];
  try {
    // Every place taken by the flood: connections that send nothing, or part of a request, and stay.
    const flood = async () => {
      const held: import('node:net').Socket[] = [];
      for (let i = 0; i < MAX_CONNECTIONS; i++) {
        const k = await client(server.port);
        if (i % 2) k.c.write('GET /metrics HTTP/1.1\r\nHo');
        clients.push(k);
        const f = await w.next();
        assert.equal(f.fate, 'held', `flood connection ${i + 1}`);
        held.push(f.socket!);
        await turns();
      }
      return held;
    };
    const first = await flood();
    // A scrape that sends its request at once is taken in, in place of the oldest of the flood, and answered.
    const scrape = await client(server.port);
    clients.push(scrape);
    const answer = getOn(scrape, '/metrics');
    assert.equal((await w.next()).fate, 'held', 'the scrape is taken in (it was closed at accept, before)');
    assert.deepEqual(
      first.map((s) => s.destroyed),
      first.map((_, i) => i === 0),
      'the oldest connection of the flood, and it only, is closed',
    );
    await clients[0].closed;
    assert.equal(clients[0].got(), '', 'closed unanswered');
    assert.equal(await answer, 'HTTP/1.1 200 OK');
    assert.equal(sampleIn(scrape.got(), 'iptlb_metrics_connections_evicted_total'), 1);
    assert.equal(sampleIn(scrape.got(), 'iptlb_metrics_connections_dropped_total'), 0);
    // The flood goes on: each new connection of it takes the place of the oldest held that sent no request (the
    // first flood's, then the second's own first), not the scraper's connection kept alive between its scrapes, which
    // is answered again.
    const second = await flood();
    assert.ok(
      first.every((s) => s.destroyed),
      'the first flood made room for the second',
    );
    assert.deepEqual(
      second.map((s) => s.destroyed),
      second.map((_, i) => i === 0),
    );
    assert.ok(!scrape.c.destroyed);
    assert.equal(await getOn(scrape, '/metrics'), 'HTTP/1.1 200 OK');
    assert.equal(sampleIn(scrape.got(), 'iptlb_metrics_connections_evicted_total'), 1 + MAX_CONNECTIONS);
    // So is a probe on a new connection.
    const probe = await client(server.port);
    clients.push(probe);
    const probed = getOn(probe, '/healthz');
    assert.equal((await w.next()).fate, 'held');
    assert.equal(await probed, 'HTTP/1.1 200 OK');
    assert.deepEqual(
      second.map((s) => s.destroyed),
      second.map((_, i) => i <= 1),
    );
    assert.ok(!scrape.c.destroyed);
  } finally {
    w.restore();
    for (const k of clients) k.c.destroy();
    await server.close();
  }
});

test('at the cap, a new connection closes the oldest held that sent no complete request, else the one idle longest between requests, never one being answered', async () => {
  const { startMetricsServer } = await import('../../src/metrics/server.js');
  const g = gatedCore(10);
  const w = await connectionWatcher();
  const server = await startMetricsServer({ address: '127.0.0.1:0', core: g.core, maxConnections: 3, youngMs: 0 });
  const clients: Awaited<ReturnType<typeof client>>[] = [];
  // A new connection, sending nothing or (head) a HEAD /metrics, which is answered at once, without a status read.
  const connect = async (head = false) => {
    const k = await client(server.port);
    clients.push(k);
    const answer = head ? getOn(k, '/metrics', 'HEAD') : undefined;
    const f = await w.next();
    assert.equal(f.fate, 'held');
    await turns();
    return { k, s: f.socket!, answer };
  };
  try {
    const a = await connect(true); // answered at once, then idle between requests
    assert.equal(await a.answer, 'HTTP/1.1 200 OK');
    const stop = await requestsSeen(1);
    const b = await connect();
    const bAnswer = getOn(b.k, '/metrics'); // a GET whose status read waits: being answered
    await stop();
    const c = await connect(); // sends nothing
    const d = await connect(); // sends nothing: the oldest that sent no request, c, makes room
    assert.deepEqual(
      [a, b, c, d].map((x) => x.s.destroyed),
      [false, false, true, false],
    );
    const e = await connect(true); // d goes, not a (idle) nor b (answered)
    assert.deepEqual(
      [a, b, d, e].map((x) => x.s.destroyed),
      [false, false, true, false],
    );
    assert.equal(await e.answer, 'HTTP/1.1 200 OK');
    // None held has sent no request: the one idle longest goes, a (idle since before e).
    const f = await connect();
    assert.deepEqual(
      [a, b, e, f].map((x) => x.s.destroyed),
      [true, false, false, false],
    );
    await a.k.closed;
    g.release();
    assert.equal(await bAnswer, 'HTTP/1.1 200 OK', 'the scrape being answered was kept throughout');
    assert.equal(sampleIn(b.k.got(), 'iptlb_metrics_connections_evicted_total'), 3);
    assert.equal(sampleIn(b.k.got(), 'iptlb_metrics_connections_dropped_total'), 0);
  } finally {
    w.restore();
    for (const k of clients) k.c.destroy();
    await server.close();
  }
});

test('at the cap, one that came less than youngMs ago and sent nothing goes after those idle between requests; when all held are such, the oldest of them', async () => {
  const { startMetricsServer, YOUNG_MS } = await import('../../src/metrics/server.js');
  assert.equal(YOUNG_MS, 100);
  const core = { statusReport: async () => ({ inSync: true, profiles: [] }) } as unknown as Core;
  const w = await connectionWatcher();
  // youngMs of an hour: every connection that sends nothing stays young throughout.
  const server = await startMetricsServer({ address: '127.0.0.1:0', core, maxConnections: 3, youngMs: 3_600_000 });
  const clients: Awaited<ReturnType<typeof client>>[] = [];
  const connect = async (head = false) => {
    const k = await client(server.port);
    clients.push(k);
    const answer = head ? getOn(k, '/metrics', 'HEAD') : undefined;
    const f = await w.next();
    assert.equal(f.fate, 'held');
    if (answer) assert.equal(await answer, 'HTTP/1.1 200 OK');
    await turns();
    return f.socket!;
  };
  try {
    const a = await connect(true); // idle between requests
    const b = await connect(); // young, sent nothing (a client not yet through its connect, a request not yet read)
    const c = await connect();
    const d = await connect(); // the idle one goes, not the young b
    assert.deepEqual(
      [a, b, c, d].map((s) => s.destroyed),
      [true, false, false, false],
    );
    const e = await connect(); // all held young: the oldest goes (the new one is not refused)
    assert.deepEqual(
      [b, c, d, e].map((s) => s.destroyed),
      [true, false, false, false],
    );
    const last = clients[clients.length - 1];
    assert.equal(await getOn(last, '/metrics'), 'HTTP/1.1 200 OK');
    assert.equal(sampleIn(last.got(), 'iptlb_metrics_connections_evicted_total'), 2);
    assert.equal(sampleIn(last.got(), 'iptlb_metrics_connections_dropped_total'), 0);
  } finally {
    w.restore();
    for (const k of clients) k.c.destroy();
    await server.close();
  }
});

test('when every connection held is being answered, one more is closed at accept, unanswered; once they are answered, the next takes the place of the one idle longest', async () => {
  const { startMetricsServer, MAX_CONNECTIONS } = await import('../../src/metrics/server.js');
  for (const cap of [3, MAX_CONNECTIONS]) {
    const g = gatedCore(10);
    const w = await connectionWatcher();
    const server = await startMetricsServer({
      address: '127.0.0.1:0',
      core: g.core,
      ...(cap === MAX_CONNECTIONS ? {} : { maxConnections: cap }),
    });
    const clients: Awaited<ReturnType<typeof client>>[] = [];
    try {
      const held: import('node:net').Socket[] = [];
      const answers: Promise<string>[] = [];
      const stop = await requestsSeen(cap);
      for (let i = 0; i < cap; i++) {
        clients.push(await client(server.port));
        answers.push(getOn(clients[i], '/metrics'));
        const f = await w.next();
        assert.equal(f.fate, 'held', `connection ${i + 1} of ${cap}`);
        held.push(f.socket!);
      }
      await stop(); // every one held has its request being answered (one status read, shared)
      // More connections: each closed as soon as it is accepted, with no response.
      for (let i = 0; i < 5; i++) {
        const k = await client(server.port);
        assert.equal((await w.next()).fate, 'dropped', `connection ${cap + 1 + i}, over the cap of ${cap}`);
        await k.closed;
        assert.equal(k.got(), '', 'no bytes: the connection is closed unanswered');
      }
      assert.ok(held.every((s) => !s.destroyed));
      g.release();
      for (const a of answers) assert.equal(await a, 'HTTP/1.1 200 OK');
      assert.match(clients[0].got(), /\n# TYPE iptlb_metrics_connections_dropped_total counter\n/);
      assert.equal(sampleIn(clients[0].got(), 'iptlb_metrics_connections_dropped_total'), 5);
      assert.equal(sampleIn(clients[0].got(), 'iptlb_metrics_connections_evicted_total'), 0);
      // All answered, all idle between requests: the next one takes the place of the first answered.
      const order = held.map((s, i) => ({ s, i }));
      clients.push(await client(server.port));
      const next = getOn(clients[cap], '/metrics', 'HEAD');
      assert.equal((await w.next()).fate, 'held');
      assert.equal(await next, 'HTTP/1.1 200 OK');
      assert.equal(order.filter((x) => x.s.destroyed).length, 1, 'one of those held made room');
    } finally {
      w.restore();
      for (const k of clients) k.c.destroy();
      await server.close();
    }
  }
});

test('a maxConnections that is not a whole number of 1 or more is a one-line EUSAGE naming it', async () => {
  const { startMetricsServer } = await import('../../src/metrics/server.js');
  const core = { statusReport: async () => ({ inSync: true, profiles: [] }) } as unknown as Core;
  for (const bad of [0, -1, 1.5, NaN, Infinity, '64', null])
    await assert.rejects(
      startMetricsServer({ address: '127.0.0.1:0', core, maxConnections: bad as number }),
      (e: Error & { code?: string; field?: string }) =>
        e.code === 'EUSAGE' &&
        e.field === 'maxConnections' &&
        /^maxConnections: must be a whole number of connections, 1 or more$/.test(e.message),
      String(bad),
    );
});

test('a connection that sends no request or part of one is answered 408 and closed after headersMs; a slow answer is not cut', async () => {
  const { startMetricsServer, HEADERS_MS } = await import('../../src/metrics/server.js');
  assert.equal(HEADERS_MS, 10_000);
  const g = gatedCore(10);
  const server = await startMetricsServer({ address: '127.0.0.1:0', core: g.core, headersMs: 200 });
  try {
    const net = await import('node:net');
    // A scrape whose status read waits (the gate) from before the others connect until after they are closed.
    const stop = await requestsSeen(1);
    const scrape = rawExchange(port(server), 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await stop();
    const closed = (first: string) =>
      new Promise<string>((resolve, reject) => {
        const c = net.connect(port(server), '127.0.0.1', () => c.write(first));
        let got = '';
        c.on('data', (d) => (got += d.toString('latin1')));
        c.on('error', reject);
        c.on('close', () => resolve(got));
      });
    const [silent, partial] = await Promise.all([closed(''), closed('GET /metrics HTTP/1.1\r\nHo')]);
    assert.match(silent, /^HTTP\/1\.1 408 /);
    assert.match(partial, /^HTTP\/1\.1 408 /);
    assert.equal(g.reads(), 1, 'neither reached the handler');
    g.release();
    assert.match(await scrape, /^HTTP\/1\.1 200 /, 'the scrape waiting since before them is answered');
  } finally {
    await server.close();
  }
});

test('a scrape accepted in the same turn of the loop as the flood after it is not closed for the flood before its request is read', async () => {
  // The server runs in a worker whose loop the test stops (Atomics.wait) while it connects: the scrape, which sends
  // its request at once, then a connection of the flood wait in the listen backlog, and the server accepts both in
  // one turn of its loop, before it has read either.
  const { Worker } = await import('node:worker_threads');
  const url = new URL('../../src/metrics/server.js', import.meta.url).href;
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(
    `const { parentPort, workerData } = require('node:worker_threads');
    import(${JSON.stringify(url)}).then(async ({ startMetricsServer }) => {
      const core = { statusReport: async () => ({ inSync: true, profiles: [] }) };
      const server = await startMetricsServer({ address: '127.0.0.1:0', core, maxConnections: 3 });
      parentPort.on('message', () => {
        parentPort.postMessage('stopped');
        Atomics.wait(workerData, 0, 0); // the worker's loop stops until the test sets the flag
      });
      parentPort.postMessage(server.port);
    });`,
    { eval: true, workerData: flag },
  );
  const clients: Awaited<ReturnType<typeof client>>[] = [];
  const message = () => new Promise<unknown>((r) => worker.once('message', r));
  try {
    const port = (await message()) as number;
    // Every place taken by keep-alive connections between their requests (HEAD /metrics: answered at once).
    for (let i = 0; i < 3; i++) {
      clients.push(await client(port));
      assert.equal(await getOn(clients[i], '/metrics', 'HEAD'), 'HTTP/1.1 200 OK');
    }
    const stopped = message();
    worker.postMessage('stop');
    await stopped;
    const connected = (k: { c: import('node:net').Socket }) => new Promise((r) => k.c.once('connect', r));
    const scrape = await client(port);
    clients.push(scrape);
    const answer = getOn(scrape, '/metrics');
    await connected(scrape);
    await new Promise((r) => scrape.c.write('', r)); // its request is sent
    const flood = await client(port);
    clients.push(flood);
    await connected(flood);
    Atomics.store(flag, 0, 1);
    Atomics.notify(flag, 0);
    assert.equal(
      await Promise.race([answer, scrape.closed.then(() => 'closed unanswered')]),
      'HTTP/1.1 200 OK',
      'the flood took the place of a keep-alive connection, not of the scrape',
    );
    assert.equal(sampleIn(scrape.got(), 'iptlb_metrics_connections_evicted_total'), 2);
    await Promise.all([clients[0].closed, clients[1].closed]);
    assert.equal(clients[2].c.destroyed, false);
  } finally {
    for (const k of clients) k.c.destroy();
    await worker.terminate();
  }
});

test('a request target in absolute form names the same path: GET http://host/metrics is a scrape, not a 404', async () => {
  const { startMetricsServer } = await import('../../src/metrics/server.js');
  const core = { statusReport: async () => ({ inSync: true, profiles: [] }) } as unknown as Core;
  const server = await startMetricsServer({ address: '127.0.0.1:0', core });
  try {
    const origin = `http://127.0.0.1:${server.port}`;
    const req = (target: string, last = false) =>
      `GET ${target} HTTP/1.1\r\nHost: x\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;
    const raw = await rawExchange(
      port(server),
      req(`${origin}/metrics`) +
        req(`HTTP://127.0.0.1/healthz?x=1`) +
        req(`${origin}/nothing`) +
        req(`${origin}`) +
        req('/metrics', true),
    );
    const responses = raw.split(/(?=^HTTP\/1\.1 )/m);
    assert.deepEqual(
      responses.map((r) => r.slice(0, r.indexOf('\r\n'))),
      ['HTTP/1.1 200 OK', 'HTTP/1.1 200 OK', 'HTTP/1.1 404 Not Found', 'HTTP/1.1 404 Not Found', 'HTTP/1.1 200 OK'],
    );
    const body = (r: string) => r.slice(r.indexOf('\r\n\r\n') + 4);
    assert.equal(body(responses[0]), body(responses[4]), 'the same exposition');
    assert.match(body(responses[1]), /^\{"ok":true,/);
  } finally {
    await server.close();
  }
});

test("/healthz of a handle without a state file: others' profiles in the kernel (orphans to it) are no 503, its own drift is", async () => {
  // An in-memory handle leaves what it was not given alone (its sync removes no orphan): a second agent on the host
  // made the first one's /healthz 503 for good ("kernel does not match the state file: … orphaned").
  const kernel = new FakeLegacyKernel();
  const mine = new Core({ stateFile: false }, kernel);
  const other = new Core({ stateFile: false }, kernel);
  const apply = (core: Core, name: string, source: string) =>
    core.transact((state) => upsertChange(state, [{ name, source, destination: ['127.0.0.1:9001'] }]), {
      run: true,
    });
  await apply(mine, 'a', '127.100.0.1:80');
  await apply(other, 'b', '127.100.0.2:80');
  assert.deepEqual(
    (await mine.status()).map((r) => `${r.name}:${r.status}`),
    ['a:in-sync', 'b:orphaned'],
  );
  assert.deepEqual(await healthz({ core: mine }), { ok: true, reason: "kernel matches this handle's profiles" });
  kernel.tables.clear(); // its own profile gone from the kernel: that is drift
  const gone = await healthz({ core: mine });
  assert.equal(gone.ok, false);
  assert.equal(gone.reason, "kernel does not match this handle's profiles: 1 profile(s) a missing");
  // A core with a state file owns the whole table, as before: an orphan is a 503.
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-healthz-'));
  try {
    const filed = new Core({ stateFile: path.join(dir, 'state.db'), stateRegistry: false }, kernel);
    await apply(filed, 'c', '127.100.0.3:80');
    await apply(other, 'b', '127.100.0.2:80');
    const r = await healthz({ core: filed });
    assert.equal(r.ok, false);
    assert.match(r.reason, /^kernel does not match the state file: 1 profile\(s\) b orphaned$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
