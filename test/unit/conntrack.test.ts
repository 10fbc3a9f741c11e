/**
 * src/core/conntrack.ts without a kernel: which flows a change leaves stale, and the log lines of both ways of deleting
 * them.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import {
  ConntrackJanitor,
  HALF_OPEN_GRACE_MS,
  HALF_OPEN_ONE_BY_ONE_MAX,
  changeFlows,
  conntrackEntries,
  flushStaleFlows,
  listedClients,
  replacedFlows,
  staleFlows,
  unservedFlows,
  type StaleFlows,
  type StalePair,
} from '../../src/core/conntrack.js';
import { validateProfile } from '../../src/model/profile.js';
import type { Profile, ProfileInput } from '../../src/model/types.js';
import { Core, deleteChange, upsertChange } from '../../src/core/core.js';
import { engineOver } from '../../src/engines/registry.js';
import type { Executor } from '../../src/engines/engine.js';
import { FakeLegacyKernel, FakeNftKernel } from '../harness/fake-kernel.js';

const p = (over: Partial<Profile> = {}): Profile => ({
  name: 'dns',
  source: '127.100.0.10:5353',
  destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
  protocol: 'udp',
  rulesBackend: 'client',
  logEnabled: false,
  logLevel: '4',
  ...over,
});
const flow = (destination: string, protocol: StaleFlows['protocol'] = 'udp'): StaleFlows => ({
  protocol,
  source: '127.100.0.10:5353',
  destination,
});

test('staleFlows: the destinations a reset drops, every one on delete, every one when the address or protocol changes; tcp too', () => {
  assert.deepEqual(staleFlows(p(), p({ destination: ['127.0.0.1:9002', '127.0.0.1:9003'] })), [flow('127.0.0.1:9001')]);
  assert.deepEqual(staleFlows(p(), undefined), [flow('127.0.0.1:9001'), flow('127.0.0.1:9002')]);
  assert.deepEqual(staleFlows(p(), p({ source: '127.100.0.11:5353' })).length, 2);
  assert.deepEqual(staleFlows(p(), p({ protocol: 'tcp' })).length, 2);
  assert.deepEqual(staleFlows(p({ protocol: 'tcp' }), p({ protocol: 'tcp', destination: ['127.0.0.1:9002'] })), [
    flow('127.0.0.1:9001', 'tcp'),
  ]);
  assert.deepEqual(staleFlows(p(), p()), []);
});

/** A stand-in for the addon: records each call's flows and answers with `counts`. */
function fakeAddon(counts: { deleted: number; kept: number }[]) {
  const calls: unknown[] = [];
  const addon = {
    async conntrackFlush(flows: any[]) {
      calls.push(flows);
      return {
        durationMs: 0.1,
        kernelFilter: true,
        skipped: false,
        dumps: 3,
        conditionalDelete: true,
        paused: false,
        sweeps: 0,
        flows: counts,
      };
    },
  };
  return { calls, addon };
}

test('native: one call for all flows; a line per flow that had entries, established tcp reported as left', async () => {
  const { calls, addon } = fakeAddon([
    { deleted: 3, kept: 0 },
    { deleted: 0, kept: 0 },
    { deleted: 1, kept: 2 },
    { deleted: 0, kept: 4 },
  ]);
  const lines = await flushStaleFlows(
    [
      flow('127.0.0.1:9001'),
      flow('127.0.0.1:9002', 'sctp'),
      flow('127.0.0.1:9003', 'tcp'),
      flow('127.0.0.1:9004', 'tcp'),
    ],
    { addon },
  );
  assert.deepEqual(calls, [
    [
      { protocol: 'udp', vip: { ip: '127.100.0.10', port: 5353 }, destination: { ip: '127.0.0.1', port: 9001 } },
      { protocol: 'sctp', vip: { ip: '127.100.0.10', port: 5353 }, destination: { ip: '127.0.0.1', port: 9002 } },
      { protocol: 'tcp', vip: { ip: '127.100.0.10', port: 5353 }, destination: { ip: '127.0.0.1', port: 9003 } },
      { protocol: 'tcp', vip: { ip: '127.100.0.10', port: 5353 }, destination: { ip: '127.0.0.1', port: 9004 } },
    ],
  ]);
  assert.deepEqual(lines, [
    'conntrack: removed 3 flow(s) of 127.100.0.10:5353/udp to 127.0.0.1:9001',
    'conntrack: removed 1 half-open flow(s) of 127.100.0.10:5353/tcp to 127.0.0.1:9003; 2 established connection(s) left to finish',
    'conntrack: 4 established connection(s) left to finish (127.100.0.10:5353/tcp to 127.0.0.1:9004)',
  ]);
});

test('native: a refusal is one line per flow with the code and message', async () => {
  const addon = {
    async conntrackFlush(): Promise<never> {
      throw Object.assign(
        new Error('dumping the conntrack table: Operation not permitted (permission denied: … CAP_NET_ADMIN …)'),
        { code: 'EPERM' },
      );
    },
  };
  const lines = await flushStaleFlows([flow('127.0.0.1:9001'), flow('127.0.0.1:9002')], { addon });
  assert.equal(lines.length, 2);
  assert.match(
    lines[0],
    /^conntrack: could not remove flows of 127\.100\.0\.10:5353\/udp to 127\.0\.0\.1:9001: EPERM: dumping the conntrack table: .*CAP_NET_ADMIN/,
  );
});

const listing = (entries: [string, number][], dst = '127.100.0.10') =>
  entries
    .map(
      ([ip, port]) =>
        `tcp      6 119 SYN_SENT src=${ip} dst=${dst} sport=${port} dport=5353 [UNREPLIED] src=127.0.0.1 dst=${ip} sport=9003 dport=${port} mark=0 use=1\n`,
    )
    .join('') + `conntrack v1.4.7 (conntrack-tools): ${entries.length} flow entries have been shown.\n`;

test('spawn: conntrack -D per udp flow; tcp: SYN_SENT entries listed, then after a pause each deleted by its client if still SYN_SENT; failures said', async () => {
  const runs: string[][] = [];
  const events: string[] = [];
  const run = async (args: string[]) => {
    runs.push(args);
    events.push(args[0]);
    if (args.includes('9009'))
      return { code: 1, out: 'conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters' };
    if (args[0] === '-L')
      return {
        code: 0,
        out: listing(
          args.includes('9003')
            ? [
                ['127.0.0.5', 40001],
                ['127.0.0.6', 40002],
              ]
            : [],
        ),
      };
    // The second tcp entry answered during the pause: still listed, no longer SYN_SENT, not deleted.
    const n = args.includes('40002') ? 0 : args.includes('SYN_SENT') ? 1 : args.includes('9002') ? 0 : 5;
    return { code: n ? 0 : 1, out: `conntrack v1.4.7 (conntrack-tools): ${n} flow entries have been deleted.` };
  };
  const sleep = async (ms: number) => {
    events.push(`sleep ${ms}`);
  };
  const lines = await flushStaleFlows(
    [
      flow('127.0.0.1:9001'),
      flow('127.0.0.1:9002'),
      flow('127.0.0.1:9003', 'tcp'),
      flow('127.0.0.1:9004', 'tcp'),
      flow('127.0.0.1:9009'),
    ],
    { run, sleep },
  );
  const base = (port: string, proto = 'udp') => [
    '-p',
    proto,
    '--orig-dst',
    '127.100.0.10',
    '--orig-port-dst',
    '5353',
    '--reply-src',
    '127.0.0.1',
    '--reply-port-src',
    port,
  ];
  assert.deepEqual(runs, [
    ['-D', ...base('9001')],
    ['-D', ...base('9002')],
    ['-L', ...base('9003', 'tcp'), '--state', 'SYN_SENT'],
    ['-L', ...base('9004', 'tcp'), '--state', 'SYN_SENT'],
    ['-D', ...base('9009')],
    ['-D', ...base('9003', 'tcp'), '-s', '127.0.0.5', '--sport', '40001', '--state', 'SYN_SENT'],
    ['-D', ...base('9003', 'tcp'), '-s', '127.0.0.6', '--sport', '40002', '--state', 'SYN_SENT'],
  ]);
  assert.deepEqual(events, ['-D', '-D', '-L', '-L', '-D', `sleep ${HALF_OPEN_GRACE_MS}`, '-D', '-D']);
  assert.deepEqual(lines, [
    'conntrack: removed 5 flow(s) of 127.100.0.10:5353/udp to 127.0.0.1:9001',
    'conntrack: removed 1 half-open flow(s) of 127.100.0.10:5353/tcp to 127.0.0.1:9003',
    'conntrack: could not remove flows of 127.100.0.10:5353/udp to 127.0.0.1:9009: conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters',
  ]);
});

test('spawn, tcp: no half-open entry listed, no pause; more than HALF_OPEN_ONE_BY_ONE_MAX of one flow: one delete for the flow; a refused listing is said', async () => {
  const runs: string[][] = [];
  let slept = 0;
  const many = Array.from({ length: HALF_OPEN_ONE_BY_ONE_MAX + 1 }, (_, i): [string, number] => [
    '127.0.0.5',
    40000 + i,
  ]);
  const run = async (args: string[]) => {
    runs.push(args);
    if (args.includes('9008')) return { code: 1, out: 'conntrack v1.4.7 (conntrack-tools): Operation failed: EPERM' };
    if (args[0] === '-L') return { code: 0, out: listing(args.includes('9003') ? many : []) };
    return { code: 0, out: `conntrack v1.4.7 (conntrack-tools): ${many.length} flow entries have been deleted.` };
  };
  const sleep = async () => {
    slept++;
  };
  assert.deepEqual(await flushStaleFlows([flow('127.0.0.1:9004', 'tcp')], { run, sleep }), []);
  assert.equal(slept, 0, 'nothing listed: no pause');
  runs.length = 0;
  const lines = await flushStaleFlows([flow('127.0.0.1:9003', 'tcp'), flow('127.0.0.1:9008', 'tcp')], { run, sleep });
  assert.equal(slept, 1);
  assert.deepEqual(
    runs.map((a) => a.join(' ')),
    [
      '-L -p tcp --orig-dst 127.100.0.10 --orig-port-dst 5353 --reply-src 127.0.0.1 --reply-port-src 9003 --state SYN_SENT',
      '-L -p tcp --orig-dst 127.100.0.10 --orig-port-dst 5353 --reply-src 127.0.0.1 --reply-port-src 9008 --state SYN_SENT',
      '-D -p tcp --orig-dst 127.100.0.10 --orig-port-dst 5353 --reply-src 127.0.0.1 --reply-port-src 9003 --state SYN_SENT',
    ],
  );
  assert.deepEqual(lines, [
    `conntrack: removed ${many.length} half-open flow(s) of 127.100.0.10:5353/tcp to 127.0.0.1:9003`,
    'conntrack: could not remove flows of 127.100.0.10:5353/tcp to 127.0.0.1:9008: conntrack v1.4.7 (conntrack-tools): Operation failed: EPERM',
  ]);
});

test('listedClients: the original source of each line conntrack -L printed (IPv4 and IPv6), nothing from the summary', () => {
  assert.deepEqual(
    listedClients(
      listing([['127.0.0.5', 40001]]) +
        'tcp      6 119 SYN_SENT src=2001:db8::5 dst=2001:db8::10 sport=40002 dport=5353 [UNREPLIED] src=::1 dst=2001:db8::5 sport=9001 dport=40002 mark=0 use=1\n',
    ),
    [
      { ip: '127.0.0.5', port: 40001 },
      { ip: '2001:db8::5', port: 40002 },
    ],
  );
  assert.deepEqual(listedClients('conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n'), []);
});

// Validated, as every profile the core hands to staleFlows is: any spelling of an IPv6 address becomes its canonical
// text.
const p6 = (over: Partial<Profile> = {}): Profile =>
  validateProfile(p({ source: '[2001:db8::10]:5353', destination: ['[2001:db8::1]:9001', '[::1]:9002'], ...over }));
const flow6 = (destination: string, protocol: StaleFlows['protocol'] = 'udp'): StaleFlows => ({
  protocol,
  source: '[2001:db8::10]:5353',
  destination,
});

test('staleFlows, IPv6: the destinations a change drops; validated profiles compare by address, not by spelling', () => {
  assert.deepEqual(staleFlows(p6(), p6({ destination: ['[::1]:9002', '[2001:db8::3]:9001'] })), [
    flow6('[2001:db8::1]:9001'),
  ]);
  assert.deepEqual(staleFlows(p6(), undefined), [flow6('[2001:db8::1]:9001'), flow6('[::1]:9002')]);
  assert.deepEqual(
    staleFlows(p6(), p6({ destination: ['[2001:DB8:0:0::1]:9001', '[0:0::1]:9002'] })),
    [],
    'the same endpoints, written otherwise',
  );
  assert.deepEqual(
    staleFlows(p6(), p6({ source: '[2001:0db8::10]:5353' })),
    [],
    'the same virtual address, written otherwise',
  );
  assert.deepEqual(staleFlows(p6(), p6({ source: '[2001:db8::11]:5353' })).length, 2);
  assert.deepEqual(
    staleFlows(p6(), p6({ destination: ['[2001:db8::1]:9002'] })),
    [flow6('[2001:db8::1]:9001'), flow6('[::1]:9002')],
    'another port of the address',
  );
  assert.deepEqual(staleFlows(p6({ protocol: 'tcp' }), p6({ protocol: 'tcp', destination: ['[::1]:9002'] })), [
    flow6('[2001:db8::1]:9001', 'tcp'),
  ]);
});

test('native, IPv6: addresses without brackets, in one call with IPv4 flows; flows the addon could not match (two families, unparseable) are not sent', async () => {
  const { calls, addon } = fakeAddon([
    { deleted: 2, kept: 0 },
    { deleted: 1, kept: 1 },
    { deleted: 1, kept: 0 },
  ]);
  const lines = await flushStaleFlows(
    [
      flow6('[2001:db8::1]:9001'),
      flow6('127.0.0.1:9001'), // two families: nothing to match
      flow6('[2001:db8::1]:9003', 'tcp'),
      flow6('[2001:db8::1'), // not an endpoint
      flow('127.0.0.1:9001'),
    ],
    { addon },
  );
  const spec = (protocol: string, vip: string, ip: string, port: number) => ({
    protocol,
    vip: { ip: vip, port: 5353 },
    destination: { ip, port },
  });
  const asked = [
    spec('udp', '2001:db8::10', '2001:db8::1', 9001),
    spec('tcp', '2001:db8::10', '2001:db8::1', 9003),
    spec('udp', '127.100.0.10', '127.0.0.1', 9001),
  ];
  assert.deepEqual(calls, [asked]);
  assert.deepEqual(lines, [
    'conntrack: removed 2 flow(s) of [2001:db8::10]:5353/udp to [2001:db8::1]:9001',
    'conntrack: removed 1 half-open flow(s) of [2001:db8::10]:5353/tcp to [2001:db8::1]:9003; 1 established connection(s) left to finish',
    'conntrack: removed 1 flow(s) of 127.100.0.10:5353/udp to 127.0.0.1:9001',
  ]);
});

test('spawn, IPv6: conntrack -D -f ipv6 with the addresses without brackets; tcp only SYN_SENT; IPv4 flows as before', async () => {
  const runs: string[][] = [];
  const run = async (args: string[]) => {
    runs.push(args);
    if (args[0] === '-L')
      return {
        code: 0,
        out: 'tcp      6 119 SYN_SENT src=2001:db8::5 dst=2001:db8::10 sport=40002 dport=5353 [UNREPLIED] src=::1 dst=2001:db8::5 sport=9002 dport=40002 mark=0 use=1\nconntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n',
      };
    return {
      code: 0,
      out: `conntrack v1.4.7 (conntrack-tools): ${args.includes('tcp') ? 1 : 3} flow entries have been deleted.`,
    };
  };
  const lines = await flushStaleFlows(
    [flow6('[2001:db8::1]:9001'), flow6('[::1]:9002', 'tcp'), flow6('127.0.0.1:9001'), flow('127.0.0.1:9001', 'sctp')],
    { run, sleep: async () => {} },
  );
  const args6 = (op: string, proto: string, dst: string, port: string) => [
    op,
    '-f',
    'ipv6',
    '-p',
    proto,
    '--orig-dst',
    '2001:db8::10',
    '--orig-port-dst',
    '5353',
    '--reply-src',
    dst,
    '--reply-port-src',
    port,
  ];
  assert.deepEqual(runs, [
    args6('-D', 'udp', '2001:db8::1', '9001'),
    [...args6('-L', 'tcp', '::1', '9002'), '--state', 'SYN_SENT'],
    [
      '-D',
      '-p',
      'sctp',
      '--orig-dst',
      '127.100.0.10',
      '--orig-port-dst',
      '5353',
      '--reply-src',
      '127.0.0.1',
      '--reply-port-src',
      '9001',
    ],
    [...args6('-D', 'tcp', '::1', '9002'), '-s', '2001:db8::5', '--sport', '40002', '--state', 'SYN_SENT'],
  ]);
  assert.deepEqual(lines, [
    'conntrack: removed 3 flow(s) of [2001:db8::10]:5353/udp to [2001:db8::1]:9001',
    'conntrack: removed 1 half-open flow(s) of [2001:db8::10]:5353/tcp to [::1]:9002',
    'conntrack: removed 3 flow(s) of 127.100.0.10:5353/sctp to 127.0.0.1:9001',
  ]);
});

test('nothing to do: no lines, no calls', async () => {
  assert.deepEqual(await flushStaleFlows([], { native: true }), []);
});

const pair = (destination: string, over: Partial<StalePair> = {}): StalePair => ({
  ...flow(destination),
  profile: 'dns',
  native: true,
  ...over,
});

test("janitor: off the caller's path; at most one flush at a time; pairs that arrive meanwhile go into one next flush, each pair once", async () => {
  const calls: { flows: StaleFlows[]; native: boolean }[] = [];
  let running = 0;
  let maxRunning = 0;
  const gates: (() => void)[] = [];
  const lines: string[] = [];
  const j = new ConntrackJanitor({
    log: (l) => lines.push(l),
    current: () => new Map([['dns', p({ destination: ['127.0.0.1:9100'] })]]),
    flush: async (flows, native) => {
      calls.push({ flows, native });
      maxRunning = Math.max(maxRunning, ++running);
      await new Promise<void>((r) => gates.push(r));
      running--;
      return flows.map((f) => `flushed ${f.destination}`);
    },
  });
  j.add([pair('127.0.0.1:9001')]);
  assert.equal(calls.length, 0, 'nothing flushed synchronously: the change returns first');
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.equal(calls.length, 1);
  j.add([pair('127.0.0.1:9002')]);
  j.add([pair('127.0.0.1:9003'), pair('127.0.0.1:9002')]);
  assert.equal(j.queued, 2, 'the same pair twice is queued once');
  let idle = false;
  const done = j.idle().then(() => (idle = true));
  gates.shift()!();
  await new Promise((r) => setImmediate(r));
  assert.equal(calls.length, 2);
  assert.deepEqual(
    calls[1].flows.map((f) => f.destination),
    ['127.0.0.1:9002', '127.0.0.1:9003'],
    'one call for both',
  );
  assert.equal(idle, false, 'idle waits for the running flush');
  gates.shift()!();
  await done;
  assert.equal(maxRunning, 1);
  assert.deepEqual(lines, ['flushed 127.0.0.1:9001', 'flushed 127.0.0.1:9002', 'flushed 127.0.0.1:9003']);
  assert.deepEqual(j.stats, { flushes: 2, pairs: 3, dropped: 0 });
});

test("janitor: a pair whose destination the address's current profile has again is dropped (by name, or by address after a rename); an unknown profile flushes", async () => {
  const calls: StaleFlows[][] = [];
  const j = new ConntrackJanitor({
    log: () => {},
    current: async () =>
      new Map([
        ['dns', p({ destination: ['127.0.0.1:9001', '127.0.0.1:9005'] })],
        ['web2', p({ name: 'web2', source: '127.100.0.11:80', protocol: 'tcp', destination: ['127.0.0.1:9002'] })],
      ]),
    flush: async (flows) => {
      calls.push(flows);
      return [];
    },
  });
  j.add([
    pair('127.0.0.1:9001'), // re-added to dns: dropped
    pair('127.0.0.1:9004'), // still gone: flushed
    // web renamed web2, which has it: dropped
    { ...pair('127.0.0.1:9002'), source: '127.100.0.11:80', protocol: 'tcp', profile: 'web' },
    { ...pair('127.0.0.1:9003'), source: '127.100.0.12:80', profile: 'gone' }, // no profile at that address: flushed
    { ...pair('127.0.0.1:9005'), protocol: 'tcp' }, // tcp, while dns is udp: flushed
  ]);
  await j.idle();
  assert.deepEqual(
    calls.flat().map((f) => `${f.protocol} ${f.source} ${f.destination}`),
    [
      'udp 127.100.0.10:5353 127.0.0.1:9004',
      'udp 127.100.0.12:80 127.0.0.1:9003',
      'tcp 127.100.0.10:5353 127.0.0.1:9005',
    ],
  );
  assert.equal(j.stats.dropped, 2);
});

test('janitor: native and spawned pairs go to separate calls; a throwing flush is one line; idle with nothing queued resolves', async () => {
  const seen: boolean[] = [];
  const lines: string[] = [];
  const j = new ConntrackJanitor({
    log: (l) => lines.push(l),
    current: () => new Map(),
    flush: async (_flows, native) => {
      seen.push(native);
      if (!native) throw new Error('boom\nmore');
      return ['ok'];
    },
  });
  await j.idle();
  j.add([pair('127.0.0.1:9001'), pair('127.0.0.1:9002', { native: false })]);
  await j.idle();
  assert.deepEqual(seen, [true, false]);
  assert.deepEqual(lines, ['ok', 'conntrack: could not remove flows of 1 removed destination(s): boom']);
});

/** A janitor on a fake clock whose flushes each take 20 ms of that clock; the first one is held until `release`. */
function pacedJanitor(): { j: ConntrackJanitor; starts: number[]; release: () => void } {
  let clock = 0;
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const starts: number[] = [];
  const j = new ConntrackJanitor({
    log: () => {},
    current: () => new Map(),
    pace: 10,
    now: () => clock,
    flush: async () => {
      starts.push(clock);
      clock += 20;
      if (starts.length === 1) await held;
      return [];
    },
  });
  return { j, starts, release };
}
const turns = async (n = 20): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

test('janitor: paced (waits pace × the last flush, at most 100 ms, before the next one), but idle() flushes what is queued at once', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  for (const how of ['timer', 'idle'] as const) {
    const { j, starts, release } = pacedJanitor();
    j.add([pair('127.0.0.1:9001')]);
    await turns();
    assert.equal(starts.length, 1);
    j.add([pair('127.0.0.1:9002')]); // arrives during the first flush
    release();
    await turns();
    assert.equal(starts.length, 1, 'the second flush waits (20 ms × pace 10, capped at 100 ms)');
    if (how === 'timer') {
      t.mock.timers.tick(99);
      await turns();
      assert.equal(starts.length, 1, 'not before 100 ms');
      t.mock.timers.tick(1);
      await turns();
    } else {
      await j.idle(); // with the timer never ticking: idle() must not wait for it
    }
    assert.equal(starts.length, 2, how);
    await j.idle();
  }
});

test('conntrackEntries reads the namespace count again on every call (the file kept open), 0 without conntrack', () => {
  const file = '/proc/sys/net/netfilter/nf_conntrack_count';
  const fresh = (): number => (existsSync(file) ? Number(readFileSync(file, 'latin1')) : 0);
  for (let i = 0; i < 3; i++) {
    const n = conntrackEntries();
    assert.equal(typeof n, 'number');
    // The host's count may move between the two reads; a stale value read at offset 0 would not.
    assert.ok(Math.abs(n! - fresh()) <= 1000, `${n} vs ${fresh()}`);
  }
});

test('changeFlows: a virtual address the kernel starts serving (new, moved, back from an all-down drain, applied again unchanged) has its untranslated flows deleted; a reset at the same address does not', () => {
  const dns = p();
  const state = new Map([['dns', dns]]);
  const none = new Map<string, Profile>();
  const flows = (
    change: { upsert: Profile[]; remove: string[] },
    st: Map<string, Profile>,
    kernel?: { state: Map<string, Profile>; change: { upsert: Profile[]; remove: string[] } },
  ) => {
    const next = new Map(st);
    for (const q of change.upsert) next.set(q.name, q);
    for (const n of change.remove) next.delete(n);
    return changeFlows(change, st, next, kernel ?? { state: st, change }).map(
      (f) => `${f.profile} ${f.protocol} ${f.source} ${f.destination}${f.drained ? ' drained' : ''}`,
    );
  };
  // A new profile: its own address, as the flows' destination (entries whose reply comes from the VIP).
  assert.deepEqual(flows({ upsert: [dns], remove: [] }, none), ['dns udp 127.100.0.10:5353 127.100.0.10:5353']);
  // Applied again unchanged (a reboot's -use-state -run; a profile recorded without -run): the same.
  assert.deepEqual(flows({ upsert: [dns], remove: [] }, state), ['dns udp 127.100.0.10:5353 127.100.0.10:5353']);
  assert.deepEqual(flows({ upsert: [p()], remove: [] }, state), ['dns udp 127.100.0.10:5353 127.100.0.10:5353']);
  // A reset at the same address (the churn): only the destinations it drops.
  assert.deepEqual(flows({ upsert: [p({ destination: ['127.0.0.1:9001'] })], remove: [] }, state), [
    'dns udp 127.100.0.10:5353 127.0.0.1:9002',
  ]);
  // Moved to another address: every old destination of the old address, and the new address's untranslated flows.
  assert.deepEqual(flows({ upsert: [p({ source: '127.100.0.11:53' })], remove: [] }, state), [
    'dns udp 127.100.0.10:5353 127.0.0.1:9001',
    'dns udp 127.100.0.10:5353 127.0.0.1:9002',
    'dns udp 127.100.0.11:53 127.100.0.11:53',
  ]);
  // Deleted: every destination; nothing untranslated to delete.
  assert.deepEqual(flows({ upsert: [], remove: ['dns'] }, state), [
    'dns udp 127.100.0.10:5353 127.0.0.1:9001',
    'dns udp 127.100.0.10:5353 127.0.0.1:9002',
  ]);
  // Health brings back a profile it had taken out whole (allDown: drain): the kernel did not serve it.
  assert.deepEqual(flows({ upsert: [], remove: [] }, state, { state: none, change: { upsert: [dns], remove: [] } }), [
    'dns udp 127.100.0.10:5353 127.100.0.10:5353',
  ]);
});

test('changeFlows: destinations a health check drains lose their flows (the operator’s weight 0 keeps them); a profile drained whole loses them all', () => {
  const dns = p({
    destination: ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'],
    weights: { '127.0.0.1:9003': 0 },
  });
  const state = new Map([['dns', dns]]);
  const drained = p({ ...dns, weights: { '127.0.0.1:9002': 0, '127.0.0.1:9003': 0 } });
  const show = (fs: ReturnType<typeof changeFlows>) =>
    fs.map((f) => `${f.protocol} ${f.destination}${f.drained ? ' drained' : ''}`);
  // A health-only transaction: the profile change is empty, the kernel's part gives 9002 weight 0.
  const empty = { upsert: [] as Profile[], remove: [] as string[] };
  assert.deepEqual(show(changeFlows(empty, state, state, { state, change: { upsert: [drained], remove: [] } })), [
    'udp 127.0.0.1:9002 drained',
  ]);
  // Already drained before: nothing new.
  const kstate = new Map([['dns', drained]]);
  assert.deepEqual(
    show(changeFlows(empty, state, state, { state: kstate, change: { upsert: [drained], remove: [] } })),
    [],
  );
  // Back up: nothing to delete.
  assert.deepEqual(
    show(changeFlows(empty, state, state, { state: kstate, change: { upsert: [dns], remove: [] } })),
    [],
  );
  // Every destination down with allDown: drain: the profile leaves the kernel; each destination that took connections.
  assert.deepEqual(show(changeFlows(empty, state, state, { state, change: { upsert: [], remove: ['dns'] } })), [
    'udp 127.0.0.1:9001 drained',
    'udp 127.0.0.1:9002 drained',
  ]);
  // The operator's weight 0 (a graceful drain) is not health's: its flows stay.
  const zero = p({ ...dns, weights: { '127.0.0.1:9001': 0, '127.0.0.1:9003': 0 } });
  const next = new Map([['dns', zero]]);
  assert.deepEqual(
    show(changeFlows({ upsert: [zero], remove: [] }, state, next, { state, change: { upsert: [zero], remove: [] } })),
    [],
  );
});

test('janitor: a drained pair is dropped once its destination takes connections again; log lines say what the flows were', async () => {
  const calls: StaleFlows[][] = [];
  const dns = p({ weights: { '127.0.0.1:9002': 0 } });
  const j = new ConntrackJanitor({
    log: () => {},
    current: async () => new Map([['dns', dns]]),
    flush: async (flows) => {
      calls.push(flows);
      return [];
    },
  });
  j.add([
    { ...pair('127.0.0.1:9001'), drained: true }, // up again (weight 1 in the kernel): dropped
    { ...pair('127.0.0.1:9002'), drained: true }, // still weight 0 in the kernel: flushed
    { ...pair('127.100.0.10:5353') }, // untranslated: flushed
  ]);
  await j.idle();
  assert.deepEqual(
    calls.flat().map((f) => `${f.destination}${f.drained ? ' drained' : ''}`),
    ['127.0.0.1:9002 drained', '127.100.0.10:5353'],
  );
  const lines = await flushStaleFlows(
    [{ ...flow('127.0.0.1:9002'), drained: true }, { ...flow('127.100.0.10:5353') }],
    { addon: { conntrackFlush: async () => ({ flows: [{ deleted: 2 }, { deleted: 1 }] }) } as never },
  );
  assert.deepEqual(lines, [
    'conntrack: removed 2 flow(s) of 127.100.0.10:5353/udp to 127.0.0.1:9002 (drained: its health check failed)',
    'conntrack: removed 1 flow(s) of 127.100.0.10:5353/udp made before its rules (never balanced)',
  ]);
});

describe('served: what the kernel DNATs to, read from either engine (fake kernels); replacedFlows and unservedFlows', () => {
  const inputs: ProfileInput[] = [
    { name: 'plain', source: '127.100.0.10:80', destination: ['127.0.0.1:9001', '127.0.0.1:9002'] },
    {
      name: 'weighted',
      source: '127.100.0.10:53',
      protocol: 'udp',
      destination: ['127.0.0.1:9001*2', '127.0.0.1:9002*0', '127.0.0.1:9003'],
    },
    {
      name: 'rot',
      source: '127.100.0.11:80',
      destination: ['127.0.0.1:9001', '127.0.0.1:9002*2'],
      scheduler: 'round-robin',
    },
    { name: 'sticky', source: '127.100.0.12:80', destination: ['127.0.0.1:9001', '127.0.0.1:9003'], affinity: 60 },
    { name: 'six', source: '[2001:DB8::10]:80', destination: ['[2001:db8:0::1]:9001', '[2001:db8::2]:9002'] },
  ];
  // Drained destinations (weight 0) take no new connection: the kernel serves them nothing.
  const expected = [
    'tcp 127.100.0.10:80 127.0.0.1:9001',
    'tcp 127.100.0.10:80 127.0.0.1:9002',
    'udp 127.100.0.10:53 127.0.0.1:9001',
    'udp 127.100.0.10:53 127.0.0.1:9003',
    'tcp 127.100.0.11:80 127.0.0.1:9001',
    'tcp 127.100.0.11:80 127.0.0.1:9002',
    'tcp 127.100.0.12:80 127.0.0.1:9001',
    'tcp 127.100.0.12:80 127.0.0.1:9003',
    'tcp [2001:db8::10]:80 [2001:db8::1]:9001',
    'tcp [2001:db8::10]:80 [2001:db8::2]:9002',
  ].sort();
  const text = (fs: readonly StaleFlows[]) =>
    [...new Set(fs.map((f) => `${f.protocol} ${f.source} ${f.destination}`))].sort();

  for (const name of ['legacy', 'nft'] as const) {
    test(`${name}: every profile kind, IPv4 and IPv6, as committed through the core`, async () => {
      const kernel = name === 'legacy' ? new FakeLegacyKernel() : new FakeNftKernel();
      const core = new Core({ stateFile: false }, kernel as Executor);
      await core.transact((state) => upsertChange(state, inputs), { run: true });
      const engine = engineOver(kernel as Executor);
      const served = [...engine.served(await engine.read('ipv4')), ...engine.served(await engine.read('ipv6'))];
      assert.deepEqual(text(served), expected);
      // After a delete, nothing of it is served.
      await core.transact((state) => deleteChange(state, ['plain', 'six']), { run: true });
      const after = [...engine.served(await engine.read('ipv4')), ...engine.served(await engine.read('ipv6'))];
      assert.deepEqual(
        text(after),
        expected.filter((l) => !l.startsWith('tcp 127.100.0.10:80 ') && !l.includes('2001')),
      );
    });
  }

  test('replacedFlows: a destination the profile at that address no longer lists goes (a drained one stays); one of no profile goes unless only; another state file’s stays', () => {
    const before: StaleFlows[] = [
      flow('127.0.0.1:9001'),
      flow('127.0.0.1:9002'),
      flow('127.0.0.1:9002'), // the same pair twice (round-robin slots): once
      { protocol: 'udp', source: '127.100.0.10:5354', destination: '127.0.0.1:9001' }, // a leftover's
      { protocol: 'udp', source: '127.100.0.10:5355', destination: '127.0.0.1:9001' }, // another state file's
      { protocol: 'tcp', source: '127.100.0.10:5353', destination: '127.0.0.1:9001' }, // tcp at the same address
    ];
    const now = [
      p({ destination: ['127.0.0.1:9003', '127.0.0.1:9002'], weights: { '127.0.0.1:9002': 0 } }),
      p({ name: 'web', protocol: 'tcp', destination: ['127.0.0.1:9001'] }),
    ];
    const keep = [p({ name: 'theirs', source: '127.100.0.10:5355', destination: ['127.0.0.1:9009'] })];
    assert.deepEqual(replacedFlows(before, now, { keep }), [
      { ...flow('127.0.0.1:9001'), profile: 'dns' },
      { protocol: 'udp', source: '127.100.0.10:5354', destination: '127.0.0.1:9001', profile: '' },
    ]);
    assert.deepEqual(replacedFlows(before, now, { keep, only: true }), [{ ...flow('127.0.0.1:9001'), profile: 'dns' }]);
  });

  test('unservedFlows: only what the commit took out, and not a destination the profile still lists', () => {
    const before = [flow('127.0.0.1:9001'), flow('127.0.0.1:9002'), flow('127.0.0.1:9003')];
    const after = [flow('127.0.0.1:9003')];
    let asked = 0;
    const profiles = () => (
      asked++,
      [p({ destination: ['127.0.0.1:9002', '127.0.0.1:9003'], weights: { '127.0.0.1:9002': 0 } })]
    );
    assert.deepEqual(unservedFlows(before, after, profiles), [{ ...flow('127.0.0.1:9001'), profile: 'dns' }]);
    assert.deepEqual(unservedFlows(before, before, profiles), []);
    assert.equal(asked, 1, 'the profiles are walked only when something was taken out');
  });
});
