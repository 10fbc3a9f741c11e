/**
 * The fleet defects a probe found: `fleet apply` and `fleet status` agree with the agents' refusals,
 * refusal messages stay one short line, the store backoff starts again after a healthy session, SIGHUP
 * checks now, etcd options that cannot work are refused up front, a second agent with the same --host
 * is noticed. Fake store and fake nft kernel; no root.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { oneLine, parseStored, profileKey } from '../../src/fleet/reconcile.js';
import { fleetApply, fleetStatus } from '../../src/fleet/fleet.js';
import { EtcdStore } from '../../src/fleet/store.js';
import { IptlbError } from '../../src/model/errors.js';
import { FakeNftKernel } from '../harness/fake-kernel.js';
import { FakeStore } from '../harness/fake-store.js';
import { P, prof, putProf, until, cliWithStore, agentsStoppedAfterEach } from '../harness/fleet-agents.js';

const makeAgent = agentsStoppedAfterEach();

const cli = cliWithStore;

describe('fleet apply refuses what every agent refuses; fleet status does not call refusals converged', () => {
  test('an invalid stored value keeps its address and chain: apply of a profile that takes either is ECONFLICT naming the field and the key', async () => {
    const store = new FakeStore();
    // An invalid value (port 99999) whose source is valid: the agents let it keep 127.100.7.1:80.
    store.put(profileKey(P, 'olda'), '{"name":"olda","source":"127.100.7.1:80","destination":["127.0.0.1:99999"]}');
    const rev = store.rev;
    await assert.rejects(
      fleetApply(store, P, [{ name: 'newb', source: '127.100.7.1:80', destination: ['127.0.0.1:9001'] }] as never),
      (e: IptlbError) =>
        e.code === 'ECONFLICT' &&
        e.field === 'source' &&
        /^source: "127\.100\.7\.1:80"\/tcp already belongs to profile "olda", stored first \(an invalid value: refused, yet it keeps its claim\); every agent would refuse profile "newb" \(fix or delete \/iptlb\/v1\/profiles\/olda\); nothing written$/.test(
          e.message,
        ),
    );
    assert.equal(store.rev, rev, 'nothing written');
    // Its chain too: a name that maps to the same chain as an invalid value ("OLDA" upper-cases to it).
    store.put(profileKey(P, 'OLDB'), '{"name":"OLDB","source":"nonsense"}');
    await assert.rejects(
      fleetApply(store, P, [prof('oldb', 5)] as never),
      (e: IptlbError) => e.code === 'ECONFLICT' && e.field === 'name' && /profiles\/OLDB/.test(e.message),
    );
    // The invalid value itself can be fixed, and another address is fine.
    await fleetApply(store, P, [{ name: 'olda', source: '127.100.7.1:80', destination: ['127.0.0.1:9001'] }] as never);
    await fleetApply(store, P, [prof('newc', 6)] as never);
    // What fleet apply accepted, the agents accept.
    const a = makeAgent(store);
    await a.start();
    await a.ready;
    assert.deepEqual(
      a.status().refused.map((r) => r.name),
      ['OLDB'],
    );
  });

  test('fleet status: hosts that applied the target but refused profiles are not converged (exit 3, says REFUSED)', async () => {
    const store = new FakeStore();
    putProf(store, 'web', 1);
    store.put(profileKey(P, 'api'), JSON.stringify(prof('api', 1))); // written past fleet apply's check
    const a = makeAgent(store);
    const b = makeAgent(store, { host: 'h2' });
    await Promise.all([a.start(), b.start()]);
    await Promise.all([a.ready, b.ready]);
    await until(() => store.leased.size === 2 && [...store.leased.values()].every((v) => /"api"/.test(v)), 'keys');
    const s = await fleetStatus(store, P);
    assert.deepEqual(
      s.hosts.map((h) => [h.host, h.converged]),
      [
        ['h1', true],
        ['h2', true],
      ],
      'both applied the target revision',
    );
    assert.deepEqual(s.refused, [{ name: 'api', code: 'ECONFLICT', hosts: ['h1', 'h2'], kept: [] }]);
    assert.equal(s.converged, false);
    const r = await cli(store, 'fleet', 'status', '--etcd', '127.0.0.1:1');
    assert.equal(r.code, 3);
    assert.match(
      r.out,
      /^revision \d+ \(store at \d+\): REFUSED: applied on all 2 host\(s\), but profiles are refused \(api:ECONFLICT on every host: not served\); `iptlb fleet list` says why$/m,
    );
    // Deleted, nothing refused: converged, exit 0.
    store.del(profileKey(P, 'api'));
    await until(() => [...store.leased.values()].every((v) => /"refusedCount":0/.test(v)), 'refusal gone');
    const ok = await cli(store, 'fleet', 'status', '--etcd', '127.0.0.1:1');
    assert.equal(ok.code, 0, ok.out + ok.err);
    assert.match(ok.out, /converged on all 2 host\(s\)$/m);
  });
});

describe('refusal messages: one line, bounded, wherever they go', () => {
  test('a 600 KB field name, a field name with a newline, a value that is not JSON with newlines', async () => {
    const huge = 'x'.repeat(600_000);
    const r1 = parseStored('a', JSON.stringify({ ...prof('a', 1), [huge]: 1 }));
    assert.ok(!r1.ok);
    assert.ok(r1.message.length <= 300, `${r1.message.length} characters`);
    assert.match(r1.message, /^"x{30,}\.\.\.": is not a profile field/);
    const r2 = parseStored('b', JSON.stringify({ ...prof('b', 2), 'z\nagent: forged line': 1 }));
    assert.ok(!r2.ok);
    assert.match(r2.message, /^"z\\nagent: forged line": is not a profile field/);
    const r3 = parseStored('c', '{"name":\n"c",\r\n\u2028');
    assert.ok(!r3.ok);
    assert.doesNotMatch(r3.message, /[\n\r\u2028]/);
    assert.equal(oneLine('a\nb\u0007c\u2028'), 'a\\nb\\u0007c\\u2028');

    // The agent: its log lines, its host key (stays small), fleet list.
    const store = new FakeStore();
    store.put(profileKey(P, 'a'), JSON.stringify({ ...prof('a', 1), [huge]: 1 }));
    store.put(profileKey(P, 'b'), JSON.stringify({ ...prof('b', 2), 'z\nagent: forged line': 1 }));
    store.put(profileKey(P, `k\n${'y'.repeat(1000)}`), '{}'); // a key name no profile can have
    putProf(store, 'ok', 3);
    const lines: string[] = [];
    const a = makeAgent(store, { log: (l) => lines.push(l) });
    await a.start();
    await a.ready;
    await until(() => store.leased.has(`${P}hosts/h1`), 'host key');
    assert.equal(a.status().refusedCount, 3);
    for (const l of lines) assert.ok(!l.includes('\n') && l.length < 1000, l.slice(0, 200));
    assert.ok(!lines.some((l) => l.startsWith('agent: forged line')));
    const key = store.leased.get(`${P}hosts/h1`)!;
    assert.ok(key.length < 4000, `host key of ${key.length} characters`);
    const list = await cli(store, 'fleet', 'list', '--etcd', '127.0.0.1:1');
    assert.equal(list.code, 0, list.err);
    const rows = list.out.trimEnd().split('\n');
    assert.equal(rows.length, 5, 'a header and one line per profile');
    for (const row of rows) assert.ok(row.length < 1000, row.slice(0, 200));
  });
});

describe('agent: store backoff, SIGHUP, stop, log lines', () => {
  test('the store backoff starts again after a session that was healthy for the backoff cap', async () => {
    const store = new FakeStore();
    const lines: string[] = [];
    putProf(store, 'a', 1);
    const a = makeAgent(store, { backoffMs: 2, backoffMaxMs: 150, log: (l) => lines.push(l) });
    await a.start();
    await a.ready;
    // Down for a while: the backoff grows.
    store.setDown(true);
    await until(() => lines.some((l) => /\(attempt 5\)/.test(l)), 'five failed attempts', 10000);
    store.setDown(false);
    await until(() => a.status().watch === 'watching', 'watching again', 10000);
    await new Promise((r) => setTimeout(r, 200)); // healthy for longer than the cap
    lines.length = 0;
    store.setDown(true);
    await until(() => lines.some((l) => /agent: store: /.test(l)), 'the next failure');
    store.setDown(false);
    assert.match(
      lines.find((l) => /agent: store: /.test(l))!,
      /\(attempt 1\)$/,
    );
  });

  test('store errors are logged without the client\'s empty "Resolution note:"; credentials refused are said once', async () => {
    const store = new FakeStore();
    const lines: string[] = [];
    const range = store.range.bind(store);
    let fails = 4;
    let why = '14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED. Resolution note: ';
    store.range = async (s, e, o) => {
      if (fails > 0 && s.startsWith(`${P}profiles/`)) {
        fails--;
        throw new Error(why);
      }
      return range(s, e, o);
    };
    const a = makeAgent(store, { log: (l) => lines.push(l) });
    await a.start();
    await until(() => fails === 0, 'four failures');
    await a.ready;
    const store1 = lines.filter((l) => l.startsWith('agent: store: '));
    assert.equal(store1.length, 4);
    for (const l of store1) assert.doesNotMatch(l, /Resolution note/);
    assert.match(store1[0]!, /ECONNREFUSED\.; the kernel holds no profile of this agent \(its state file holds none/);
    await until(() => a.status().watch === 'watching', 'watching');
    lines.length = 0;
    why = 'etcdserver: authentication failed, invalid user ID or password';
    fails = 3;
    store.killWatches('watch cancelled (fake)');
    await until(() => fails === 0 && a.status().watch === 'watching', 'three failures, then back');
    assert.equal(lines.filter((l) => /refused this agent's credentials/.test(l)).length, 1);
    assert.match(
      lines.find((l) => /credentials/.test(l))!,
      /IPTLB_ETCD_PASSWORD/,
    );
  });

  test('SIGHUP checks now: drift repaired, the store re-read (re-listed) at once, logged; SIGTERM stops with a log line', async () => {
    const store = new FakeStore();
    const lines: string[] = [];
    const kernel = new FakeNftKernel();
    putProf(store, 'a', 1);
    const a = makeAgent(store, { executorInstance: kernel, log: (l) => lines.push(l) });
    await a.start();
    await a.ready;
    await until(() => a.status().watch === 'watching', 'watching');
    kernel.tables.delete('ip'); // someone flushed the rules
    const { agentSignals } = await import('../../src/cli/commands/agent.js');
    const proc = new EventEmitter();
    const stopped = agentSignals(a, proc as never);
    const lists = store.profileRanges;
    proc.emit('SIGHUP');
    await until(() => lines.some((l) => /drift repaired: a missing/.test(l)), 'drift repaired');
    await until(() => store.profileRanges > lists && a.status().watch === 'watching', 're-listed');
    assert.ok(lines.some((l) => /^agent: SIGHUP: checking the kernel for drift and re-reading the store now$/.test(l)));
    assert.ok(!lines.some((l) => /agent: store:/.test(l)), 'a re-read is not a failure (no backoff)');
    proc.emit('SIGHUP');
    await until(() => lines.some((l) => /the kernel holds what the state file says/.test(l)), 'in sync said');
    proc.emit('SIGTERM');
    await stopped;
    // (A commit of the last re-list may be under way: it is finished first, and the revision said after it.)
    assert.match(
      lines.at(-1)!,
      /^agent: SIGTERM: (stopping|stopped after the commit under way); the kernel keeps the rules of revision \d+/,
    );
    assert.equal(proc.listenerCount('SIGHUP'), 0);
  });

  test('a commit that touches both families says so (it was "in one transaction")', async () => {
    const store = new FakeStore();
    const lines: string[] = [];
    putProf(store, 'a', 1);
    store.put(
      profileKey(P, 'six'),
      JSON.stringify({ name: 'six', source: '[2001:db8::1]:80', destination: ['[2001:db8::2]:80'] }),
    );
    const a = makeAgent(store, { log: (l) => lines.push(l) });
    await a.start();
    await a.ready;
    assert.ok(
      lines.some((l) =>
        /2 applied, 0 removed as one change \(a kernel transaction per address family, ipv4 and ipv6;/.test(l),
      ),
      lines.join('\n'),
    );
    putProf(store, 'b', 2);
    await until(
      () => lines.some((l) => /1 applied, 0 removed as one change \(one kernel transaction, ipv4;/.test(l)),
      'b',
    );
  });
});

describe('two agents with one --host', () => {
  test('the second one is told at start; the one whose key is overwritten by a live agent warns, naming the host and --host', async () => {
    const store = new FakeStore();
    putProf(store, 'a', 1);
    const l1: string[] = [];
    const l2: string[] = [];
    const a = makeAgent(store, { log: (l) => l1.push(l) });
    await a.start();
    await a.ready;
    await until(() => store.leased.has(`${P}hosts/h1`), 'first key');
    const b = makeAgent(store, { log: (l) => l2.push(l) });
    await b.start();
    await b.ready;
    assert.ok(
      l2.some((l) =>
        /host key \/iptlb\/v1\/hosts\/h1 holds the status of another agent \(instance .*--host h1/.test(l),
      ),
      l2.join('\n'),
    );
    await until(() => JSON.parse(store.leased.get(`${P}hosts/h1`)!).instance === b.instance, 'b wrote its key');
    await until(() => l1.some((l) => /WARNING: another live agent runs with --host h1/.test(l)), 'a warns');
    assert.equal(l1.filter((l) => /WARNING/.test(l)).length, 1, 'once');
    // A restart (same store, key of the dead predecessor) warns softly at start only.
    assert.ok(!l2.some((l) => /WARNING/.test(l)));
  });
});

describe('etcd options that cannot work are refused before any connection', () => {
  test('TLS files with unix:// or http:// endpoints, a user without IPTLB_ETCD_PASSWORD, a CA file that is not PEM', async () => {
    const saved = { ...process.env };
    delete process.env.IPTLB_ETCD_ENDPOINTS;
    delete process.env.IPTLB_ETCD_PASSWORD;
    delete process.env.IPTLB_ETCD_USER;
    delete process.env.IPTLB_ETCD_CA;
    const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-tls-'));
    const ca = path.join(dir, 'ca.pem');
    writeFileSync(ca, 'not a certificate\n');
    try {
      for (const [endpoint, flag] of [
        ['unix:///run/etcd.sock', '--etcd-ca'],
        ['http://127.0.0.1:2379', '--etcd-cert'],
      ] as const) {
        for (const cmd of [['agent'], ['fleet', 'list']]) {
          const r = await cli(
            undefined,
            ...cmd,
            '--etcd',
            endpoint,
            flag,
            ca,
            ...(flag === '--etcd-cert' ? ['--etcd-key', ca] : []),
          );
          assert.equal(r.code, 2, r.err);
          assert.equal(
            r.err,
            `iptlb: error: ${flag.slice(2)}: TLS needs https:// endpoints (or host:port); "${endpoint}" is not one\n`,
          );
        }
      }
      let r = await cli(undefined, 'fleet', 'list', '--etcd', 'http://127.0.0.1:2379', '--etcd-user', 'ops');
      assert.equal(r.code, 2);
      assert.equal(
        r.err,
        'iptlb: error: etcd-user: "ops" needs a password: set it in the environment variable IPTLB_ETCD_PASSWORD\n',
      );
      process.env.IPTLB_ETCD_PASSWORD = 'secret';
      await assert.rejects(
        EtcdStore.connect({ endpoints: ['https://127.0.0.1:1'], caFile: ca }),
        (e: IptlbError) => e.code === 'EUSAGE' && e.field === 'etcd-ca' && /holds no PEM certificate/.test(e.message),
      );
      r = await cli(undefined, 'fleet', 'list', '--etcd', 'https://127.0.0.1:1', '--etcd-ca', ca);
      assert.equal(r.code, 2);
      assert.match(r.err, /^iptlb: error: etcd-ca: ".*ca\.pem" holds no PEM certificate/);
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });
});
