/** src/conntrack.ts without a kernel: which flows a change leaves stale, and the log lines of both ways of deleting them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { flushStaleFlows, staleFlows, type StaleFlows } from '../../src/conntrack.js';
import type { Profile } from '../../src/types.js';

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
const flow = (destination: string, protocol: StaleFlows['protocol'] = 'udp'): StaleFlows => ({ protocol, source: '127.100.0.10:5353', destination });

test('staleFlows: the destinations a reset drops, every one on delete, every one when the address or protocol changes; tcp too', () => {
  assert.deepEqual(staleFlows(p(), p({ destination: ['127.0.0.1:9002', '127.0.0.1:9003'] })), [flow('127.0.0.1:9001')]);
  assert.deepEqual(staleFlows(p(), undefined), [flow('127.0.0.1:9001'), flow('127.0.0.1:9002')]);
  assert.deepEqual(staleFlows(p(), p({ source: '127.100.0.11:5353' })).length, 2);
  assert.deepEqual(staleFlows(p(), p({ protocol: 'tcp' })).length, 2);
  assert.deepEqual(staleFlows(p({ protocol: 'tcp' }), p({ protocol: 'tcp', destination: ['127.0.0.1:9002'] })), [flow('127.0.0.1:9001', 'tcp')]);
  assert.deepEqual(staleFlows(p(), p()), []);
});

test('native: one call for all flows; a line per flow that had entries, established tcp reported as left', async () => {
  const calls: unknown[] = [];
  const addon = {
    async conntrackFlush(flows: any[]) {
      calls.push(flows);
      return { durationMs: 0.1, kernelFilter: true, skipped: false, dumps: 3, flows: [{ deleted: 3, kept: 0 }, { deleted: 0, kept: 0 }, { deleted: 1, kept: 2 }, { deleted: 0, kept: 4 }] };
    },
  };
  const lines = await flushStaleFlows([flow('127.0.0.1:9001'), flow('127.0.0.1:9002', 'sctp'), flow('127.0.0.1:9003', 'tcp'), flow('127.0.0.1:9004', 'tcp')], { addon });
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
      throw Object.assign(new Error('dumping the conntrack table: Operation not permitted (permission denied: … CAP_NET_ADMIN …)'), { code: 'EPERM' });
    },
  };
  const lines = await flushStaleFlows([flow('127.0.0.1:9001'), flow('127.0.0.1:9002')], { addon });
  assert.equal(lines.length, 2);
  assert.match(lines[0], /^conntrack: could not remove flows of 127\.100\.0\.10:5353\/udp to 127\.0\.0\.1:9001: EPERM: dumping the conntrack table: .*CAP_NET_ADMIN/);
});

test('spawn: conntrack -D per flow; tcp once per half-open state; counts summed; failures said', async () => {
  const runs: string[][] = [];
  const run = async (args: string[]) => {
    runs.push(args);
    if (args.includes('9009')) return { code: 1, out: 'conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters' };
    const n = args.includes('SYN_SENT') ? 2 : args.includes('SYN_RECV') ? 1 : args.includes('9002') ? 0 : 5;
    return { code: n ? 0 : 1, out: `conntrack v1.4.7 (conntrack-tools): ${n} flow entries have been deleted.` };
  };
  const lines = await flushStaleFlows([flow('127.0.0.1:9001'), flow('127.0.0.1:9002'), flow('127.0.0.1:9003', 'tcp'), flow('127.0.0.1:9009')], { run });
  const base = (port: string, proto = 'udp') => ['-D', '-p', proto, '--orig-dst', '127.100.0.10', '--orig-port-dst', '5353', '--reply-src', '127.0.0.1', '--reply-port-src', port];
  assert.deepEqual(runs, [base('9001'), base('9002'), [...base('9003', 'tcp'), '--state', 'SYN_SENT'], [...base('9003', 'tcp'), '--state', 'SYN_RECV'], base('9009')]);
  assert.deepEqual(lines, [
    'conntrack: removed 5 flow(s) of 127.100.0.10:5353/udp to 127.0.0.1:9001',
    'conntrack: removed 3 half-open flow(s) of 127.100.0.10:5353/tcp to 127.0.0.1:9003',
    'conntrack: could not remove flows of 127.100.0.10:5353/udp to 127.0.0.1:9009: conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters',
  ]);
});

test('nothing to do: no lines, no calls', async () => {
  assert.deepEqual(await flushStaleFlows([], { native: true }), []);
});
