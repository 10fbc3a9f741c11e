/**
 * The addon's conntrackFlush: argument checks (synchronous TypeErrors with code EINVAL, no kernel),
 * and against the kernel in fresh network namespaces (fixtures/conntrack.ts under `unshare -n`):
 * udp entries deleted, half-open tcp deleted, established tcp kept, other flows untouched; EPERM
 * without CAP_NET_ADMIN. IPv6 the same (also through `conntrack -D -f ipv6`), IPv4 and IPv6 flows in
 * one call.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { release } from 'node:os';
import { loadAddon } from '../../src/platform/addon.js';
import { fixture, kernelSkip, runInNetns } from './netns-child.js';

const loaded = loadAddon();
const NO_ADDON = loaded.ok ? false : `native addon unavailable: ${loaded.reason}: ${loaded.detail}`;

function skip(): string | false {
  const k = kernelSkip();
  if (k) return k;
  return spawnSync('nft', ['--version']).status === 0
    ? false
    : 'nft (nftables) is not installed (the fixture writes its DNAT rules with it)';
}

describe('conntrackFlush input checking', { skip: NO_ADDON }, () => {
  const addon = loaded.ok ? loaded.addon : (null as never);
  const ok = { protocol: 'udp', vip: { ip: '127.100.0.10', port: 53 }, destination: { ip: '127.0.0.1', port: 9001 } };
  const cases: [string, unknown, RegExp][] = [
    ['no argument', undefined, /^flows: must be an array/],
    ['not an array', { ...ok }, /^flows: must be an array/],
    ['entry not an object', [ok, 'x'], /^flows\[1\]: must be an object/],
    ['unknown protocol', [{ ...ok, protocol: 'icmp' }], /^flows\[0\]\.protocol: must be "tcp", "udp" or "sctp"/],
    ['missing vip', [{ ...ok, vip: undefined }], /^flows\[0\]\.vip: must be an object/],
    [
      'vip ip not an address',
      [{ ...ok, vip: { ip: '127.0.0.256', port: 53 } }],
      /^flows\[0\]\.vip\.ip: must be an IPv4 or IPv6 address/,
    ],
    [
      'vip ip IPv6 in brackets',
      [{ ...ok, vip: { ip: '[::1]', port: 53 } }],
      /^flows\[0\]\.vip\.ip: must be an IPv4 or IPv6 address \(IPv6 without brackets\)/,
    ],
    [
      'vip ip IPv6 with a zone',
      [{ ...ok, vip: { ip: 'fe80::1%lo', port: 53 } }],
      /^flows\[0\]\.vip\.ip: must be an IPv4 or IPv6 address/,
    ],
    [
      'destination ip not IPv6',
      [{ ...ok, destination: { ip: '2001:db8::g', port: 53 } }],
      /^flows\[0\]\.destination\.ip: must be an IPv4 or IPv6 address/,
    ],
    [
      'IPv6 vip, IPv4 destination',
      [ok, { ...ok, vip: { ip: '2001:db8::10', port: 53 } }],
      /^flows\[1\]\.destination\.ip: is IPv4 but flows\[1\]\.vip\.ip is IPv6; a flow's addresses are of one family/,
    ],
    [
      'IPv4 vip, IPv6 destination',
      [{ ...ok, destination: { ip: '::1', port: 53 } }],
      /^flows\[0\]\.destination\.ip: is IPv6 but flows\[0\]\.vip\.ip is IPv4/,
    ],
    ['vip ip not a string', [{ ...ok, vip: { ip: 1, port: 53 } }], /^flows\[0\]\.vip\.ip: must be a string/],
    [
      'port 0',
      [{ ...ok, destination: { ip: '127.0.0.1', port: 0 } }],
      /^flows\[0\]\.destination\.port: must be an integer from 1 to 65535/,
    ],
    ['port too big', [{ ...ok, destination: { ip: '127.0.0.1', port: 65536 } }], /^flows\[0\]\.destination\.port: /],
    ['port fraction', [{ ...ok, vip: { ip: '127.0.0.1', port: 1.5 } }], /^flows\[0\]\.vip\.port: /],
    ['port a string', [{ ...ok, vip: { ip: '127.0.0.1', port: '53' } }], /^flows\[0\]\.vip\.port: must be a number/],
    ['options not an object', { args: [[], 1] }, /^options: must be an object/],
    ['kernelFilter not a boolean', { args: [[], { kernelFilter: 1 }] }, /^options\.kernelFilter: must be a boolean/],
    [
      'ip with a suffix',
      [{ ...ok, destination: { ip: '127.0.0.1:9001', port: 9001 } }],
      /^flows\[0\]\.destination\.ip: /,
    ],
  ];
  for (const [name, input, re] of cases) {
    test(`${name}: a synchronous TypeError, code EINVAL, naming the field`, () => {
      let thrown: any;
      try {
        const args =
          input && typeof input === 'object' && 'args' in input ? (input as { args: unknown[] }).args : [input];
        (addon.conntrackFlush as (...x: unknown[]) => unknown)(...args);
      } catch (e) {
        thrown = e;
      }
      assert.ok(thrown, 'threw synchronously');
      assert.equal(thrown.name, 'TypeError');
      assert.equal(thrown.code, 'EINVAL');
      assert.equal(thrown.errno, 22);
      assert.match(thrown.message, re);
    });
  }
  test('an empty list resolves without touching the kernel', async () => {
    const r = await addon.conntrackFlush([]);
    assert.deepEqual(r.flows, []);
    assert.equal(typeof r.durationMs, 'number');
  });
});

describe('conntrackFlush in the kernel (fresh network namespaces)', { skip: skip() }, () => {
  test('udp: every entry to the destination deleted; tcp: the half-open one deleted, the established one kept and still working; others untouched', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('conntrack'), ['flush'], { timeoutMs: 60_000 });
    assert.equal(r.before, 'one');
    const [major, minor] = release().split('.').map(Number);
    if (major > 5 || (major === 5 && minor >= 8))
      assert.equal(r.first.kernelFilter, true, 'this kernel filters the dump (CTA_FILTER, 5.8+)');
    else assert.equal(typeof r.first.kernelFilter, 'boolean');
    assert.deepEqual(r.first.flows, [
      { deleted: 1, kept: 1 }, // tcp 80 -> 9001: the half-open entry deleted, the established one kept
      { deleted: 1, kept: 0 }, // udp 5353 -> 9001
      { deleted: 0, kept: 0 }, // udp 5353 -> 9002: no such flow
      { deleted: 0, kept: 0 }, // the same flow twice: counted once
      { deleted: 0, kept: 0 }, // sctp: none
    ]);
    assert.deepEqual(
      r.again.flows,
      [
        { deleted: 0, kept: 1 },
        { deleted: 0, kept: 0 },
      ],
      'nothing left to delete; the established entry is still there',
    );
    assert.deepEqual(
      r.other.flows,
      [{ deleted: 1, kept: 0 }],
      'the flow to another port of the address was not touched before',
    );
    assert.equal(r.after, 'two', 'the established connection still works');
    assert.deepEqual(r.empty.flows, []);
    if (r.first.kernelFilter)
      assert.equal(r.first.dumps, 3, 'one dump per protocol (tcp, udp, sctp), not one per virtual address');
    assert.equal(r.first.skipped, false);
  });

  const noTool =
    spawnSync('conntrack', ['--version']).status === 0
      ? false
      : 'conntrack (the tool, to insert entries) is not installed';
  for (const how of ['filtered', 'unfiltered'] as const) {
    test(
      `sctp (every state), a conntrack zone, tcp states, 200 entries of one flow: exactly the matching ones go (${how === 'filtered' ? 'kernel-side dump filter' : 'whole table, filtered in the addon'})`,
      { skip: noTool },
      async () => {
        const r = await runInNetns<Record<string, any>>(fixture('conntrack'), ['synthetic', how], {
          timeoutMs: 120_000,
        });
        const filtered = how === 'filtered';
        assert.equal(r.total, 209);
        assert.equal(r.kernelFilter, filtered);
        // The kernel's own check before each tcp delete: Linux 6.12+, with the dump filter only.
        const [major, minor] = release().split('.').map(Number);
        const checked = filtered && (major > 6 || (major === 6 && minor >= 12));
        assert.equal(r.conditionalDelete, checked);
        assert.equal(r.sweeps, filtered ? 1 : 0, 'one filtered flush for the tcp flow (tried, on older kernels)');
        assert.equal(r.paused, !checked, 'by tuple: after the pause, each entry read again');
        assert.deepEqual(r.flows, [
          { deleted: 1, kept: 0 }, // sctp, established: deleted all the same
          { deleted: 1, kept: 0 }, // udp in zone 7
          // tcp: SYN_SENT deleted; ESTABLISHED kept and counted; SYN_RECV and TIME_WAIT left, uncounted;
          // SYN_SENT with a reply seen (answered after the dump): left where the kernel checks (uncounted,
          // as its state is not an open one), else deleted
          checked ? { deleted: 1, kept: 1 } : { deleted: 2, kept: 1 },
          { deleted: 200, kept: 0 },
        ]);
        // What is left: "<proto> <client port> <vip port>" (ports of the original direction).
        assert.deepEqual(r.left, [
          'sctp 1001 5354',
          'tcp 1004 5353',
          'tcp 1005 5353',
          'tcp 1007 5353',
          ...(checked ? ['tcp 1008 5353'] : []),
          'udp 1006 5353',
        ]);
      },
    );
  }

  test(
    '64 virtual addresses in one call: one dump per protocol, every count right; an empty table: no dump at all',
    { skip: noTool },
    async () => {
      const r = await runInNetns<Record<string, any>>(fixture('conntrack'), ['many'], { timeoutMs: 120_000 });
      assert.equal(r.empty.skipped, true, 'nf_conntrack_count 0: nothing read');
      assert.equal(r.empty.dumps, 0);
      assert.deepEqual(r.empty.flows, [
        { deleted: 0, kept: 0 },
        { deleted: 0, kept: 0 },
      ]);
      assert.equal(r.total, 256);
      assert.equal(r.first.skipped, false);
      assert.equal(r.first.dumps, r.first.kernelFilter ? 2 : 1, 'one dump per protocol (or one of the whole table)');
      assert.equal(r.first.flows.length, 128);
      r.first.flows.forEach((c: unknown, i: number) =>
        assert.deepEqual(c, i % 2 === 0 ? { deleted: 1, kept: 0 } : { deleted: 1, kept: 1 }, `flow ${i}`),
      );
      assert.equal(r.afterFirst, 128, 'the udp entries to 9002 and the established tcp ones are left');
      assert.equal(r.rest.kernelFilter, false);
      assert.equal(r.rest.dumps, 1, 'the whole table, read once');
      assert.deepEqual(
        r.rest.flows,
        Array.from({ length: 64 }, () => ({ deleted: 1, kept: 0 })),
      );
      assert.equal(r.left, 64);
    },
  );

  for (const how of ['native', 'spawn'] as const) {
    test(
      `IPv6 (${how === 'native' ? 'addon, with an IPv4 flow in the call' : 'conntrack -D -f ipv6'}): real traffic; udp entries to the removed destination deleted, the half-open tcp one too; the established one, another destination, another address and IPv4 untouched`,
      { skip: how === 'spawn' ? noTool : false },
      async () => {
        const r = await runInNetns<Record<string, any>>(fixture('conntrack'), ['ipv6', how], { timeoutMs: 60_000 });
        assert.equal(r.before, 'one');
        if (how === 'native') {
          if (r.first.kernelFilter)
            assert.equal(r.first.dumps, 3, 'one dump per family and protocol: ipv6 tcp, ipv6 udp, ipv4 udp');
          assert.deepEqual(r.first.flows, [
            // tcp [2001:db8::10]:80 -> [::1]:9001: the half-open entry deleted, the established one kept
            { deleted: 1, kept: 1 },
            { deleted: 1, kept: 0 }, // udp [2001:db8::10]:5353 -> [::1]:9001
            { deleted: 0, kept: 0 }, // IPv4 udp to 127.0.0.1:9002: no such flow
          ]);
          assert.deepEqual(
            r.again.flows,
            [
              { deleted: 0, kept: 1 },
              { deleted: 0, kept: 0 },
              { deleted: 0, kept: 0 },
            ],
            'nothing left to delete',
          );
        } else {
          assert.deepEqual(r.first, [
            'conntrack: removed 1 half-open flow(s) of [2001:db8::10]:80/tcp to [::1]:9001',
            'conntrack: removed 1 flow(s) of [2001:db8::10]:5353/udp to [::1]:9001',
          ]);
          assert.deepEqual(r.again, [], 'nothing left to delete');
        }
        assert.equal(r.others.kernelFilter, false);
        assert.equal(r.others.dumps, 1, 'the whole table of both families, read once');
        assert.deepEqual(r.others.flows, [
          { deleted: 0, kept: 1 }, // the established tcp connection, still there
          { deleted: 1, kept: 0 }, // udp [2001:db8::10]:5353 -> [::1]:9002: another destination
          { deleted: 1, kept: 0 }, // udp [2001:db8::11]:5353 -> [::1]:9001: another virtual address
          { deleted: 1, kept: 0 }, // IPv4 udp 127.100.0.10:5353 -> 127.0.0.1:9001, the same ports
        ]);
        assert.equal(r.after, 'two', 'the established connection still works');
      },
    );
  }

  test(
    'spawn (conntrack -L, then -D): a half-open tcp entry answered during the pause is left; the other one goes',
    { skip: noTool },
    async () => {
      const r = await runInNetns<Record<string, any>>(fixture('conntrack'), ['answered'], { timeoutMs: 60_000 });
      assert.deepEqual(r.before, ['1003 SYN_SENT', '1008 SYN_SENT']);
      assert.deepEqual(r.during, ['1003 SYN_SENT', '1008 ESTABLISHED'], 'the pause ran after the listing');
      assert.deepEqual(r.lines, ['conntrack: removed 1 half-open flow(s) of 127.100.0.10:5353/tcp to 127.0.0.1:9001']);
      assert.deepEqual(r.after, ['1008 ESTABLISHED']);
    },
  );

  for (const how of ['filtered', 'unfiltered', 'spawn'] as const) {
    test(
      `IPv6 and IPv4 entries in one table (sctp, a zone, tcp states, 200 of one flow): exactly the matching ones go (${how === 'spawn' ? 'conntrack -D' : how === 'filtered' ? 'kernel-side dump filter' : 'whole table'})`,
      { skip: noTool },
      async () => {
        const r = await runInNetns<Record<string, any>>(fixture('conntrack'), ['synthetic6', how], {
          timeoutMs: 120_000,
        });
        assert.equal(r.total, 211);
        if (how === 'spawn') {
          assert.deepEqual(r.r, [
            'conntrack: removed 1 flow(s) of [2001:db8::10]:5353/sctp to [::1]:9001',
            'conntrack: removed 1 flow(s) of [2001:db8::10]:5353/udp to [::1]:9001',
            'conntrack: removed 1 half-open flow(s) of [2001:db8::10]:5353/tcp to [::1]:9001',
            'conntrack: removed 200 flow(s) of [2001:db8::10]:5353/udp to [::1]:9003',
            'conntrack: removed 1 half-open flow(s) of 127.100.0.10:5353/tcp to 127.0.0.1:9001',
          ]);
        } else {
          assert.equal(r.r.kernelFilter, how === 'filtered');
          assert.equal(
            r.r.dumps,
            how === 'filtered' ? 4 : 1,
            'ipv6 sctp, udp, tcp and ipv4 tcp; or the whole table once',
          );
          assert.deepEqual(r.r.flows, [
            { deleted: 1, kept: 0 }, // sctp, established: deleted all the same
            { deleted: 1, kept: 0 }, // udp in zone 7
            // tcp: SYN_SENT deleted; ESTABLISHED kept and counted; SYN_RECV and TIME_WAIT left, uncounted
            { deleted: 1, kept: 1 },
            { deleted: 200, kept: 0 },
            { deleted: 1, kept: 0 }, // IPv4 tcp SYN_SENT, in the same call
          ]);
        }
        // What is left: "<family> <proto> <vip> <client port> <vip port>" (the original direction).
        assert.deepEqual(r.left, [
          'ipv4 udp 127.100.0.10 1009 5353',
          'ipv6 sctp 2001:db8::10 1001 5354',
          'ipv6 tcp 2001:db8::10 1004 5353',
          'ipv6 tcp 2001:db8::10 1005 5353',
          'ipv6 tcp 2001:db8::10 1007 5353',
          'ipv6 udp 2001:db8::10 1006 5353',
          'ipv6 udp 2001:db8::11 1008 5353',
        ]);
      },
    );
  }

  test('without CAP_NET_ADMIN: EPERM, saying so', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('conntrack'), ['eperm'], {
      wrapper: [
        'setpriv',
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        '--inh-caps=-all',
        '--bounding-set=-all',
      ],
    });
    assert.equal(r.uid, 65534);
    assert.equal(r.flush.ok, false);
    assert.equal(r.flush.code, 'EPERM');
    assert.equal(r.flush.errno, 1);
    assert.match(r.flush.message, /conntrack.*CAP_NET_ADMIN/);
  });
});
