/**
 * The addon's nftables executor (nftCommit / nftRead) against the kernel. Every case runs in a
 * child process in a fresh network namespace (fixtures/nft.ts under `unshare -n`, see
 * netns-child.ts). Skipped, with the reason, when not root, the addon is not built or nft (used as
 * the reference: `nft -f` of renderNft's text) is missing.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fixture, kernelSkip, runInNetns } from './netns-child.js';

function skip(): string | false {
  const k = kernelSkip();
  if (k) return k;
  const r = spawnSync('nft', ['--version']);
  return r.status === 0 ? false : 'nft (nftables) is not installed';
}
const SKIP = skip();
const ENOENT = 2;
const ERESTART = 85;

describe('nftables executor in the kernel (fresh network namespaces)', { skip: SKIP }, () => {
  test('op lists committed natively and via nft -f give the same table; nftRead round-trips; missing table; foreign objects', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['equivalence'], { timeoutMs: 120_000 });
    assert.deepEqual(r.failures, []);
    assert.equal(r.steps, 11);
    assert.ok(r.genidsIncrease, 'each commit returns a newer generation');
    assert.deepEqual(r.missing, {
      genid: 'number',
      exists: false,
      dispatchSets: [],
      backendMaps: [],
      chains: [],
      foreign: [],
    });
    assert.deepEqual(r.foreign.names, ['mine', 'other']);
    assert.equal(r.foreign.output.length, 2);
    for (const rule of r.foreign.output) {
      assert.equal(rule.kind, 'foreign');
      assert.equal(typeof rule.text, 'string');
      // Its handle first, as the spawn executor's read gives it (what `nft delete rule … handle N` takes).
      assert.match(rule.text, /^handle [1-9]\d*: \S/);
    }
    assert.match(r.foreign.output[1].text, /comment "not-ours"/);
  });

  test("nftChains: the chain names of any table (iptables-nft's nat tables), none of a missing one; bad arguments are TypeErrors", async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['chains'], { timeoutMs: 60_000 });
    assert.deepEqual(r.before, { ip: [], ip6: [] });
    assert.deepEqual(r.after.ip, ['IPTLB_NAT_WEB', 'OTHER']);
    assert.deepEqual(r.after.ip6, ['IPTLB_NAT_SIX']);
    assert.deepEqual(r.after.missing, []);
    assert.equal(r.errors.length, 5);
    for (const e of r.errors) assert.match(e, /^TypeError: (family|table): /, e);
  });

  test("nftOriginalJumps: the original iptlb's jumps in iptables-nft's nat tables (OUTPUT, PREROUTING) with their match, as the spawn executor reads them, both families; what it does not read is named; commented jumps and others' are not the original's", async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['originals'], { timeoutMs: 60_000 });
    const none = { native: [], spawn: [] };
    assert.deepEqual(r.before, { ip: none, ip6: none });
    const j = (handle: number, chain: string, rest: Record<string, unknown>) => ({
      chain,
      handle,
      target: 'IPTLB_NAT_TEST',
      ...rest,
    });
    // Rules in the order written (-A); the handles between are the chains'.
    assert.deepEqual(r.after.ip.native, [
      j(4, 'OUTPUT', { ip: '127.100.0.10', proto: 6, port: 8081 }),
      j(5, 'OUTPUT', { ip: '127.100.0.12', proto: 132, port: 99 }),
      j(6, 'OUTPUT', { proto: 6, port: 100, unknown: 'bitwise' }),
      j(8, 'OUTPUT', { ip: '127.100.0.17', proto: 6, port: 101, unknown: 'payload, bitwise' }),
      j(9, 'OUTPUT', { ip: '127.100.0.19', proto: 17, unknown: 'xt match multiport' }),
      j(12, 'PREROUTING', { ip: '127.100.0.11', proto: 17, port: 53 }),
      j(13, 'PREROUTING', { ip: '127.100.0.11', proto: 17, port: 54, unknown: 'goto' }),
    ]);
    // The spawn executor reads the same of the rules iptables-nft writes as the original did; nft's JSON has no
    // info of an xt match (sctp's port), and says a prefix and tcp flags its own way.
    assert.deepEqual(r.after.ip.spawn, [
      j(4, 'OUTPUT', { ip: '127.100.0.10', proto: 'tcp', port: 8081 }),
      j(5, 'OUTPUT', { ip: '127.100.0.12', proto: 'sctp', unknown: 'xt match sctp' }),
      j(6, 'OUTPUT', { proto: 'tcp', port: 100, unknown: 'ip daddr' }),
      j(8, 'OUTPUT', { ip: '127.100.0.17', proto: 'tcp', port: 101, unknown: 'bitwise' }),
      j(9, 'OUTPUT', { ip: '127.100.0.19', proto: 'udp', unknown: 'xt match multiport' }),
      j(12, 'PREROUTING', { ip: '127.100.0.11', proto: 'udp', port: 53 }),
      j(13, 'PREROUTING', { ip: '127.100.0.11', proto: 'udp', port: 54, unknown: 'goto' }),
    ]);
    const six = { chain: 'OUTPUT', handle: 3, target: 'IPTLB_NAT_SIX', ip: '2001:db8::1', port: 8081 };
    assert.deepEqual(r.after.ip6, { native: [{ ...six, proto: 6 }], spawn: [{ ...six, proto: 'tcp' }] });
    assert.equal(r.errors.length, 2);
    for (const e of r.errors) assert.match(e, /^TypeError: family: /, e);
  });

  test("takeover ops (the original iptlb's jump by handle, its chain) in the batch of iptlb's change, natively and by nft -f: a handle gone (ENOENT) or the chain jumped to by another rule (EBUSY) fails the batch whole, table ip nat and ip iptlb unchanged; else the jump and the chain go, nothing else of table ip nat; names not the original's are TypeErrors", async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['takeover'], { timeoutMs: 60_000 });
    for (const how of ['native', 'spawn']) {
      const x = r[how];
      assert.equal(x.jump.target, 'IPTLB_NAT_TEST', how);
      assert.equal(x.gone.ok, false, how);
      assert.equal(x.gone.errno, ENOENT, `${how}: ${x.gone.message}`);
      assert.ok(x.gone.unchanged, `${how}: nothing of the batch made`);
      assert.equal(x.busy.ok, false, how);
      assert.equal(x.busy.errno, 16, `${how}: ${x.busy.message}`);
      assert.ok(x.busy.unchanged, `${how}: nothing of the batch made`);
      assert.equal(x.done.ok, true, how);
      assert.doesNotMatch(x.done.nat, /IPTLB_NAT_TEST/, x.done.nat);
      assert.match(x.done.nat, /chain OTHER \{[^}]*udp dport 53[^}]*accept/, "another tool's chain kept");
      assert.match(x.done.nat, /chain OUTPUT \{[^}]*jump OTHER/, "another tool's jump kept");
      assert.ok(x.iptlb, `${how}: table ip iptlb made in the same batch`);
    }
    assert.equal(r.errors.length, 4);
    for (const e of r.errors) assert.match(e, /^TypeError: ops\[0\]\.(name|chain|handle): /, e);
  });

  test('refusals: failing op named by index (EKERNEL, errno), nothing applied; stale expectGenid is ERESTART; bad input is a TypeError', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['errors'], { timeoutMs: 60_000 });
    const m = r.missingElement;
    assert.equal(m.ok, false);
    assert.equal(m.code, 'EKERNEL');
    assert.equal(m.errno, ENOENT);
    assert.match(m.message, /^nft op 3 \(deleteDispatchElements out_tcp_3\): No such file or directory/);
    assert.ok(m.unchanged, 'table unchanged');
    assert.ok(m.genidUnchanged, 'no new generation');
    assert.equal(r.missingSet.code, 'EKERNEL');
    assert.equal(r.missingSet.errno, ENOENT);
    assert.match(r.missingSet.message, /^nft op 0 \(deleteSet pre_udp_9\): /);
    assert.equal(r.manyFailing.errno, ENOENT);
    assert.match(r.manyFailing.message, /^nft op 1 \(deleteSet nope0\): /);
    assert.ok(r.manyFailing.unchanged);
    assert.equal(r.referencedSet.code, 'EKERNEL');
    assert.match(r.referencedSet.message, /^nft op 0 \(deleteSet out_tcp_3\): /);
    assert.ok(r.referencedSet.unchanged);

    assert.equal(r.stale.ok, false);
    assert.equal(r.stale.code, 'ERESTART');
    assert.equal(r.stale.errno, ERESTART);
    assert.ok(r.stale.unchanged);
    assert.equal(r.fresh.ok, true, JSON.stringify(r.fresh));
    assert.ok(r.fresh.genid > r.freshGenid);

    const t = r.typeErrors;
    for (const [name, e] of Object.entries<any>(t)) {
      assert.equal(e.name, 'TypeError', `${name}: ${JSON.stringify(e)}`);
      assert.ok(e.sync, `${name}: thrown synchronously`);
    }
    assert.match(t.unknownOp.message, /^ops\[0\]\.op: unknown op/);
    assert.match(t.badIp.message, /^ops\[3\]\.elements\[0\]\.ip: /);
    assert.match(t.badVipIp.message, /^ops\[3\]\.elements\[0\]\.vip\.ip: /);
    assert.match(t.portRange.message, /^ops\[0\]\.elements\[1\]\.port: /);
    assert.match(t.nZero.message, /^ops\[0\]\.rule\.n: /);
    assert.match(t.badProto.message, /^ops\[0\]\.proto: /);
    assert.match(t.badSetName.message, /^ops\[0\]\.name: /);
    assert.match(t.badChain.message, /^ops\[0\]\.name: /);
    assert.match(t.badLevel.message, /^ops\[0\]\.rule\.level: /);
    assert.match(t.badGenid.message, /^transaction\.expectGenid: /);
    assert.match(t.notObject.message, /^transaction: /);
    assert.ok(r.badInputUnchanged, 'nothing was sent for bad input');
  });

  test('without CAP_NET_ADMIN: EPERM, saying so; an empty transaction sends nothing but still checks expectGenid', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['eperm'], {
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
    for (const o of [r.commit, r.read]) {
      assert.equal(o.ok, false);
      assert.equal(o.code, 'EPERM');
      assert.equal(o.errno, 1);
      assert.match(o.message, /CAP_NET_ADMIN/);
    }
    const e = await runInNetns<Record<string, any>>(fixture('nft'), ['empty']);
    assert.deepEqual(e, { sameGenid: true, stale: 'ERESTART' });
  });

  test('one netlink socket serves every commit and read (closing one after a delete waits for an RCU grace period); a failed commit drops it', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['reuse']);
    assert.equal(r.afterCommits, 1, 'six commits and a read left exactly one socket open');
    assert.equal(r.failed, 'EKERNEL');
    assert.equal(r.afterFailure, 0, 'the socket of the failed commit was closed');
    assert.equal(r.afterNext, 1);
    assert.deepEqual(r.backend, [9006]);
  });

  test('10,000 profiles (10,000 dispatch + 30,000 backend elements) in one commit, read back', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['load', '10000'], { timeoutMs: 120_000 });
    assert.equal(r.dispatch, 10_000);
    assert.equal(r.backend, 30_000);
    assert.ok(r.same, `read back equals what was committed (differs: ${JSON.stringify(r.differs)})`);
  });

  test('ip6: op lists committed natively and via nft -f give the same table ip6 iptlb; both reads round-trip; missing table; foreign objects', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['equivalence', '--ip6'], { timeoutMs: 120_000 });
    assert.deepEqual(r.failures, []);
    assert.equal(r.steps, 11);
    assert.ok(r.genidsIncrease, 'each commit returns a newer generation');
    assert.deepEqual(r.missing, {
      genid: 'number',
      family: 'ip6',
      exists: false,
      dispatchSets: [],
      backendMaps: [],
      chains: [],
      foreign: [],
    });
    assert.deepEqual(r.foreign.names, ['mine', 'other']);
    assert.equal(r.foreign.output.length, 2);
    for (const rule of r.foreign.output) assert.match(rule.text, /^handle [1-9]\d*: \S/);
    for (const rule of r.foreign.output) assert.equal(rule.kind, 'foreign');
    assert.match(r.foreign.output[0].text, /payload load 16b @ network header \+ 24/);
    assert.match(r.foreign.output[1].text, /comment "not-ours"/);
  });

  test('tables ip iptlb and ip6 iptlb side by side: commits, reads and removal of one leave the other alone; wrong-family addresses are TypeErrors', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['sidebyside'], { timeoutMs: 60_000 });
    assert.deepEqual(r.failures, []);
    assert.match(r.typeErrors.v4InIp6, /^TypeError: ops\[0\]\.elements\[0\]\.ip: not an IPv6 address: 127\.0\.0\.1$/);
    assert.match(r.typeErrors.v6InIp, /^TypeError: ops\[1\]\.rule\.vip\.ip: not an IPv4 address: /);
    assert.match(r.typeErrors.badFamily, /^TypeError: transaction\.family: must be 'ip' or 'ip6'$/);
    assert.match(r.typeErrors.badReadFamily, /^TypeError: family: must be 'ip' or 'ip6'$/);
    assert.deepEqual(r.addresses.native, r.addresses.want, 'nftRead gives IPv6 addresses in RFC 5952 text');
    assert.deepEqual(r.addresses.spawn, r.addresses.want, 'so does the spawn read');
    const text = r.ip6Listing.join('\n');
    assert.match(text, /typeof ip6 daddr \. tcp dport \. numgen random mod 1 : ip6 daddr \. tcp dport/);
    assert.match(text, /type ipv6_addr \. inet_service/);
    assert.match(
      text,
      /ip6 daddr \. tcp dport @out_tcp_3 dnat ip6 to ip6 daddr \. tcp dport \. numgen random mod 3 offset 3 map @be_tcp/,
    );
  });

  test('ip6: 10,000 profiles (10,000 dispatch + 30,000 backend elements) in one commit, read back', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['load', '10000', '--ip6'], { timeoutMs: 120_000 });
    assert.equal(r.dispatch, 10_000);
    assert.equal(r.backend, 30_000);
    assert.ok(r.same, `read back equals what was committed (differs: ${JSON.stringify(r.differs)})`);
  });

  test('ip6 traffic: [2001:db8::10]:80 planned, committed by each executor (native, nft -f), splits TCP over both IPv6 backends; in sync', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['traffic6'], { timeoutMs: 60_000 });
    for (const kind of ['native', 'spawn']) {
      const x = r[kind];
      assert.deepEqual(x.families, ['ip6'], kind);
      assert.equal(x.failures, 0, `${kind}: ${JSON.stringify(x.errors)}`);
      assert.deepEqual(Object.keys(x.counts).sort(), ['backend:9001', 'backend:9002'], kind);
      assert.equal(x.counts['backend:9001'] + x.counts['backend:9002'], 60);
      assert.equal(x.status, 'in-sync', `${kind}: ${x.detail}`);
      assert.ok(x.packets >= 60, `${kind}: dispatch element counted ${x.packets}`);
      assert.deepEqual(
        x.destinations.map((d: any) => d.destination),
        ['[2001:db8::1]:9001', '[2001:db8::2]:9002'],
      );
      assert.ok(
        x.destinations.every((d: any) => d.packets > 0),
        kind,
      );
      assert.deepEqual(x.others, [], kind);
      assert.equal(x.ipTable, false, `${kind}: table ip iptlb was not made`);
      assert.equal(r[`${kind}Removed`], false, `${kind}: planNftRemoveAll('ip6') removed the table`);
    }
  });

  test('traffic: TCP to 127.100.0.10:8080 reaches all three backends through the output chain; counters count', async () => {
    const r = await runInNetns<Record<string, any>>(fixture('nft'), ['traffic'], { timeoutMs: 60_000 });
    assert.deepEqual(r.failures, []);
    assert.deepEqual(Object.keys(r.seen).sort(), ['9001', '9002', '9003']);
    assert.equal(
      Object.values<number>(r.seen).reduce((a, b) => a + b, 0),
      60,
    );
    assert.ok(r.dispatchPackets >= 60, `dispatch element counted ${r.dispatchPackets} packets`);
    assert.ok(r.backendPackets.every((p: number) => p > 0));
  });
});
