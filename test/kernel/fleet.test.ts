/**
 * Fleet control through a real etcd (Debian's etcd 3.4; members on unix sockets in a temp dir, which
 * network namespaces share through the filesystem) and real `iptlb agent` processes, each in its own
 * network namespace as a simulated host, with real backends and real connections through the VIP.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { get } from 'node:http';
import { NetnsTopology, type Spawned } from '../harness/netns.js';
import { CLI_PATH } from '../harness/env.js';
import { PAIRS, KERNEL_SKIP, waitFor, type Pair } from './common.js';
import { EtcdStore, prefixEnd } from '../../src/fleet/store.js';
import { fleetApply, fleetDelete, fleetList, fleetStatus } from '../../src/fleet/fleet.js';
import { hostKey, profileKey } from '../../src/fleet/reconcile.js';
import type { HostStatus } from '../../src/fleet/agent.js';
import type { Split } from '../harness/traffic.js';

const execFileP = promisify(execFile);
const ETCD = '/usr/bin/etcd';
const SKIP =
  KERNEL_SKIP || (existsSync(ETCD) ? false : 'etcd is not installed (apt-get install etcd-server etcd-client)');
const FIX = new URL('./fixtures/fleet-host.js', import.meta.url).pathname;
const P = '/iptlb/v1/';
const BACKENDS = '9001,9002';
const DESTS = ['127.0.0.1:9001', '127.0.0.1:9002'];
const prof = (name: string, vip: string, port = 8080) => ({ name, source: `${vip}:${port}`, destination: DESTS });
const nftNative = PAIRS.find((p) => p.name === 'nft/native')!;

class Cluster {
  readonly dir = mkdtempSync(path.join(tmpdir(), 'iptlb-etcd-'));
  readonly procs = new Map<string, ChildProcess>();
  constructor(readonly members: string[]) {}
  endpoint(m: string): string {
    return `unix://${this.dir}/${m}c:1`;
  }
  static async start(members: string[]): Promise<Cluster> {
    const c = new Cluster(members);
    for (const m of members) c.run(m);
    const s = await c.client(members[0]!);
    try {
      const end = Date.now() + 15_000;
      for (;;) {
        try {
          await s.revision();
          break;
        } catch (e) {
          if (Date.now() > end) throw new Error(`etcd did not start: ${(e as Error).message}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    } finally {
      await s.close();
    }
    return c;
  }
  /** Starts member `m` (again: its data directory is kept, so it rejoins). */
  run(m: string): void {
    // a killed member leaves its sockets
    for (const sock of [`${m}c:1`, `${m}p:1`]) rmSync(path.join(this.dir, sock), { force: true });
    const initial = this.members.map((x) => `${x}=unix://${x}p:1`).join(',');
    const p = spawn(
      ETCD,
      [
        '--name',
        m,
        '--data-dir',
        path.join(this.dir, m),
        '--unsafe-no-fsync',
        '--listen-client-urls',
        `unix://${m}c:1`,
        '--advertise-client-urls',
        `unix://${m}c:1`,
        '--listen-peer-urls',
        `unix://${m}p:1`,
        '--initial-advertise-peer-urls',
        `unix://${m}p:1`,
        '--initial-cluster',
        initial,
        '--initial-cluster-state',
        'new',
        '--heartbeat-interval',
        '50',
        '--election-timeout',
        '500',
        '--log-level',
        'error',
      ],
      { cwd: this.dir, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    p.stderr!.resume();
    this.procs.set(m, p);
  }
  /** Kills member `m` (SIGKILL) and waits until it is gone. */
  async kill(m: string): Promise<void> {
    const p = this.procs.get(m)!;
    p.kill('SIGKILL');
    if (p.exitCode === null && !p.signalCode) await new Promise((r) => p.once('exit', r));
  }
  /** Watchers open on member `m` now (its `/metrics`, on the client socket). */
  watchers(m: string): Promise<number> {
    return new Promise((resolve, reject) => {
      get({ socketPath: path.join(this.dir, `${m}c:1`), path: '/metrics' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve(Number(/^etcd_debugging_mvcc_watcher_total (\d+)$/m.exec(body)?.[1] ?? NaN)));
      }).on('error', reject);
    });
  }
  client(m: string): Promise<EtcdStore> {
    return EtcdStore.connect({ endpoints: [this.endpoint(m)], callTimeoutMs: 2000 });
  }
  async stop(): Promise<void> {
    for (const p of this.procs.values()) {
      p.kill('SIGCONT');
      p.kill('SIGKILL');
    }
    await Promise.all(
      [...this.procs.values()].map((p) =>
        p.exitCode !== null || p.signalCode ? undefined : new Promise((r) => p.once('exit', r)),
      ),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** An agent on `host` given the endpoint of `member` (or of each of several). */
function startAgent(
  t: NetnsTopology,
  c: Cluster,
  host: string,
  member: string | string[],
  pair: Pair,
  extra: string[] = [],
): Spawned {
  return t.spawn(host, [
    process.execPath,
    CLI_PATH,
    'agent',
    '--etcd',
    (Array.isArray(member) ? member : [member]).map((m) => c.endpoint(m)).join(','),
    '--host',
    host,
    '--state-file',
    path.join(c.dir, `${host}.db`),
    '--engine',
    pair.engine,
    '--executor',
    pair.executor,
    '--min-sync-ms',
    '0',
    '--check-ms',
    '200',
    '--etcd-timeout-ms',
    '1000',
    '--lease-ttl',
    '5',
    '--backoff-max-ms',
    '1500',
    ...extra,
  ]);
}

async function hostStatus(s: EtcdStore, host: string): Promise<HostStatus | null> {
  const r = await s.range(hostKey(P, host), hostKey(P, host) + '\0', { limit: 1 });
  return r.kvs.length ? (JSON.parse(r.kvs[0]!.value) as HostStatus) : null;
}
const waitApplied = (s: EtcdStore, host: string, rev: number, ms?: number): Promise<HostStatus> =>
  waitFor(
    `${host} at revision ${rev}`,
    async () => {
      const st = await hostStatus(s, host);
      return st && st.revision >= rev ? st : undefined;
    },
    ms,
  );
/** Waits for a line matching `re` in the agent's stderr, from offset `from` (what it printed since a mark). */
async function waitLog(a: Spawned, re: RegExp, what: string, ms = 15_000, from = 0): Promise<void> {
  await waitFor(what, async () => re.test(a.stderr().slice(from)), ms).catch((e: Error) => {
    throw new Error(`${e.message}\nagent stderr:\n${a.stderr().slice(-3000)}`);
  });
}
async function probe(t: NetnsTopology, host: string, vip: string, n = 20, port = 8080): Promise<Split> {
  const r = await t.exec(host, [process.execPath, FIX, 'probe', vip, String(port), String(n)]);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Split;
}
async function balanced(t: NetnsTopology, host: string, vip: string): Promise<void> {
  const r = await probe(t, host, vip);
  assert.equal(r.failures, 0, `${host} ${vip}: ${r.errors.join('; ')}`);
  assert.deepEqual(
    Object.keys(r.counts).sort(),
    ['backend:9001', 'backend:9002'],
    `${host} ${vip}: both backends answer (${JSON.stringify(r.counts)})`,
  );
}
async function gone(t: NetnsTopology, host: string, vip: string): Promise<void> {
  const r = await probe(t, host, vip, 3);
  assert.equal(r.failures, 3, `${host} ${vip}: no rules, so no answer (${JSON.stringify(r.counts)})`);
}
async function backends(t: NetnsTopology, host: string): Promise<Spawned> {
  const b = t.spawn(host, [process.execPath, FIX, 'backends', BACKENDS]);
  await b.waitFor(/ready/);
  return b;
}

/** A one-member etcd cluster, its client, namespaces `hosts` with their backends, for `fn`; all stopped after. */
async function onHosts(
  hosts: string[],
  fn: (c: Cluster, s: EtcdStore, t: NetnsTopology) => Promise<void>,
): Promise<void> {
  const c = await Cluster.start(['m1']);
  const s = await c.client('m1');
  try {
    await NetnsTopology.with(hosts, async (t) => {
      for (const h of t.hosts) await backends(t, h);
      await fn(c, s, t);
    });
  } finally {
    await s.close();
    await c.stop();
  }
}

for (const pair of PAIRS) {
  test(
    `fleet (${pair.name}): put → balanced on every host; delete → gone; SIGTERM leaves the rules and drops the host key`,
    { skip: SKIP || pair.skip, timeout: 90_000 },
    async () => {
      await onHosts(['h1', 'h2'], async (c, s, t) => {
        const agents = t.hosts.map((h) => startAgent(t, c, h, 'm1', pair));
        const put = await fleetApply(s, P, [prof('web', '127.100.0.10')]);
        for (const h of t.hosts) {
          const st = await waitApplied(s, h, put.revision);
          assert.equal(st.engine, pair.engine);
          assert.equal(st.executor, pair.executor);
          await balanced(t, h, '127.100.0.10');
        }
        const del = await fleetDelete(s, P, ['web']);
        for (const h of t.hosts) {
          await waitApplied(s, h, del.revision);
          await gone(t, h, '127.100.0.10');
        }
        await fleetApply(s, P, [prof('api', '127.100.0.11')]).then((r) =>
          Promise.all(t.hosts.map((h) => waitApplied(s, h, r.revision))),
        );
        for (const a of agents) assert.equal((await a.kill('SIGTERM')).code, 0);
        for (const h of t.hosts) {
          assert.equal(
            await hostStatus(s, h),
            null,
            `${h}: the host key went with its lease (unknown, not "no rules")`,
          );
          await balanced(t, h, '127.100.0.11'); // the rules stay after the agent stops
        }
      });
    },
  );
}

test(
  'fleet (nft/native): invalid profile isolated; SIGKILL + restart with zero failed connections to the other VIPs; drift repaired',
  { skip: SKIP || nftNative.skip, timeout: 120_000 },
  async () => {
    await onHosts(['h1'], async (c, s, t) => {
      let agent = startAgent(t, c, 'h1', 'm1', nftNative, ['--sync-ms', '300']);
      await fleetApply(s, P, [prof('a', '127.100.0.10')]);
      await s.txn([
        {
          put: profileKey(P, 'bad'),
          value: JSON.stringify({ ...prof('bad', '127.100.0.20'), destination: ['127.0.0.1:notaport'] }),
        },
      ]);
      const rb = (await fleetApply(s, P, [prof('b', '127.100.0.11')])).revision;
      const st = await waitApplied(s, 'h1', rb);
      assert.deepEqual(
        st.refused.map((r) => [r.name, r.code]),
        [['bad', 'EINVAL_PROFILE']],
      );
      assert.equal(st.profiles, 2);
      await balanced(t, 'h1', '127.100.0.10');
      await balanced(t, 'h1', '127.100.0.11');
      await gone(t, 'h1', '127.100.0.20');

      // SIGKILL: the kernel keeps everything; changes made while it is down are applied at restart in one
      // transaction.
      const cont = t.spawn('h1', [process.execPath, FIX, 'continuous', '127.100.0.10', '8080']);
      await cont.waitFor(/started/);
      await agent.kill('SIGKILL');
      const rc = (await fleetApply(s, P, [prof('c', '127.100.0.12')])).revision;
      const rd = (await fleetDelete(s, P, ['b'])).revision;
      assert.ok(rd > rc);
      agent = startAgent(t, c, 'h1', 'm1', nftNative, ['--sync-ms', '300']);
      await waitLog(agent, /listed 3 profile\(s\) at revision/, 'the re-list');
      await waitFor('restart applied', async () => {
        const x = await hostStatus(s, 'h1');
        return x && x.revision >= rd && x.watch === 'watching';
      });
      await waitLog(
        agent,
        /1 applied, 1 removed as one change \(one kernel transaction, ipv4;/,
        'one transaction at start-up',
      );
      await new Promise((r) => setTimeout(r, 300));
      const res = JSON.parse((await cont.kill('SIGTERM')).stdout.trim().split('\n').pop()!) as {
        ok: number;
        failures: number;
        errorsSample: string[];
      };
      assert.equal(res.failures, 0, `connections to a during the restart: ${res.errorsSample.join('; ')}`);
      assert.ok(res.ok > 20, `${res.ok} connections made`);
      await balanced(t, 'h1', '127.100.0.12');
      await gone(t, 'h1', '127.100.0.11');

      // Drift: someone deletes the table; the periodic sync restores it (no re-list).
      const beforeDrift = agent.stderr().length;
      await t.exec('h1', ['nft', 'delete', 'table', 'ip', 'iptlb']);
      await waitLog(agent, /drift repaired/, 'drift repaired', 15_000, beforeDrift);
      await balanced(t, 'h1', '127.100.0.10');
      await balanced(t, 'h1', '127.100.0.12');
      assert.equal((await agent.kill('SIGTERM')).code, 0);
    });
  },
);

test(
  'fleet (nft/native, 3 members): partition (member killed) + compaction + heal; a stalled member (SIGSTOP); quorum lost and regained (two members killed, restarted), rules kept throughout',
  { skip: SKIP || nftNative.skip, timeout: 150_000 },
  async () => {
    const c = await Cluster.start(['m1', 'm2', 'm3']);
    const s2 = await c.client('m2');
    const s1 = await c.client('m1');
    try {
      await NetnsTopology.with(['h1', 'h2'], async (t) => {
        for (const h of t.hosts) await backends(t, h);
        const a1 = startAgent(t, c, 'h1', 'm1', nftNative);
        startAgent(t, c, 'h2', 'm2', nftNative);
        const r1 = (await fleetApply(s2, P, [prof('p1', '127.100.0.10')])).revision;
        for (const h of t.hosts) await waitApplied(s2, h, r1);
        await waitFor('h1 watching', async () => (await hostStatus(s2, 'h1'))?.watch === 'watching');

        // Partition h1's member away; the fleet changes and compacts meanwhile.
        const beforeKill = a1.stderr().length;
        await c.kill('m1');
        await waitLog(a1, /linearizable read failed|store: /, 'h1 notices the lost member', 15_000, beforeKill);
        // Writes go to the majority (retried while it elects a new leader, as an operator would).
        const r2 = await waitFor(
          'p2 written',
          async () => (await fleetApply(s2, P, [prof('p2', '127.100.0.11')])).revision,
        );
        const r3 = await waitFor('p1 deleted', async () => (await fleetDelete(s2, P, ['p1'])).revision);
        await execFileP('etcdctl', ['--endpoints', c.endpoint('m2'), 'compact', String(r3)], {
          env: { ...process.env, ETCDCTL_API: '3' },
        });
        await waitApplied(s2, 'h2', r3);
        await gone(t, 'h2', '127.100.0.10');
        await balanced(t, 'h1', '127.100.0.10'); // h1 keeps its last rules while cut off
        c.run('m1');
        const st = await waitApplied(s2, 'h1', r3, 30_000).catch((e: Error) => {
          throw new Error(`${e.message}\nh1 agent:\n${a1.stderr().slice(-3000)}`);
        });
        assert.ok(st.revision >= r2);
        await balanced(t, 'h1', '127.100.0.11');
        await gone(t, 'h1', '127.100.0.10');

        // A stalled member (SIGSTOP): h1's watch and calls hang without an error; the check notices.
        let mark = a1.stderr().length;
        c.procs.get('m1')!.kill('SIGSTOP');
        try {
          await waitFor(
            'h1 notices the stalled member',
            async () => /linearizable read failed|store: /.test(a1.stderr().slice(mark)),
            20_000,
          ).catch((e: Error) => {
            throw new Error(`${e.message}\nh1 agent:\n${a1.stderr().slice(-3000)}`);
          });
          await balanced(t, 'h1', '127.100.0.11'); // rules kept
        } finally {
          c.procs.get('m1')!.kill('SIGCONT');
        }
        const r35 = await waitFor(
          'p35 written',
          async () => (await fleetApply(s2, P, [prof('p35', '127.100.0.13')])).revision,
        );
        await waitApplied(s2, 'h1', r35, 30_000).catch((e: Error) => {
          throw new Error(`${e.message}\nh1 agent:\n${a1.stderr().slice(-3000)}`);
        });
        await balanced(t, 'h1', '127.100.0.13');
        mark = a1.stderr().length;

        // Quorum lost: h1's member is alive but alone; its watch stays silent.
        await c.kill('m2');
        await c.kill('m3');
        await waitFor(
          'h1 notices the quorum loss',
          async () => /linearizable read failed|store: /.test(a1.stderr().slice(mark)),
          20_000,
        );
        await balanced(t, 'h1', '127.100.0.11'); // rules kept
        c.run('m2');
        c.run('m3');
        const r4 = await waitFor(
          'a write after quorum is back',
          async () => (await fleetApply(s1, P, [prof('p4', '127.100.0.14')])).revision,
          30_000,
        );
        await waitApplied(s1, 'h1', r4, 30_000);
        await balanced(t, 'h1', '127.100.0.14');
      });
    } finally {
      await s1.close();
      await s2.close();
      await c.stop();
    }
  },
);

test(
  'fleet (nft/native): 10,000 profiles listed in pages and applied in one transaction',
  { skip: SKIP || nftNative.skip, timeout: 120_000 },
  async () => {
    const c = await Cluster.start(['m1']);
    const s = await c.client('m1');
    try {
      let last = 0;
      const N = 10_000;
      for (let i = 0; i < N; i += 128) {
        const ops = [];
        for (let j = i; j < Math.min(N, i + 128); j++)
          ops.push({
            put: profileKey(P, `p${j}`),
            value: JSON.stringify(prof(`p${j}`, `127.101.${Math.floor(j / 250)}.${(j % 250) + 1}`)),
          });
        last = (await s.txn(ops)) as number;
      }
      await NetnsTopology.with(['h1'], async (t) => {
        await backends(t, 'h1');
        const a = startAgent(t, c, 'h1', 'm1', nftNative);
        const st = await waitApplied(s, 'h1', last, 60_000);
        assert.equal(st.profiles, N);
        await waitLog(a, /listed 10000 profile\(s\) at revision \d+ in 10 page\(s\)/, 'listed in pages');
        await waitLog(a, /10000 applied, 0 removed as one change \(one kernel transaction, ipv4;/, 'one transaction');
        await balanced(t, 'h1', '127.101.0.1');
        await balanced(t, 'h1', `127.101.${Math.floor((N - 1) / 250)}.${((N - 1) % 250) + 1}`);
      });
    } finally {
      await s.close();
      await c.stop();
    }
  },
);

test(
  'fleet (nft/native): a VIP claimed twice goes to the profile stored first on every host, fresh or not; a write checked against a stale list is not made',
  { skip: SKIP || nftNative.skip, timeout: 90_000 },
  async () => {
    const c = await Cluster.start(['m1']);
    const s = await c.client('m1');
    const base = `${P}profiles/`;
    try {
      await NetnsTopology.with(['h1', 'h2'], async (t) => {
        for (const h of t.hosts) await backends(t, h);
        startAgent(t, c, 'h1', 'm1', nftNative);
        const listed = await s.range(base, prefixEnd(base), { limit: 10 });
        await waitFor('h1 watching', async () => (await hostStatus(s, 'h1'))?.watch === 'watching');
        // h1 sees both by its watch: "zeta" first, then "alpha" (written past fleet apply's check) on its address.
        const rz = (await fleetApply(s, P, [prof('zeta', '127.100.0.10')])).revision;
        await waitApplied(s, 'h1', rz);
        const ra = (await s.txn([
          { put: profileKey(P, 'alpha'), value: JSON.stringify(prof('alpha', '127.100.0.10')) },
        ])) as number;
        const kvs = (await s.range(base, prefixEnd(base), { limit: 10 })).kvs;
        assert.deepEqual(
          kvs.map((kv) => [kv.key.slice(base.length), kv.createRevision]),
          [
            ['alpha', ra],
            ['zeta', rz],
          ],
        );
        // etcd's compare over the range: a write guarded by a list older than a stored profile is not made.
        const stale = await s.txn(
          [{ put: profileKey(P, 'late'), value: JSON.stringify(prof('late', '127.100.0.12')) }],
          { start: base, end: prefixEnd(base), revision: listed.revision },
        );
        assert.equal(stale, null);
        assert.equal((await s.range(profileKey(P, 'late'), profileKey(P, 'late') + '\0', { limit: 1 })).kvs.length, 0);
        startAgent(t, c, 'h2', 'm1', nftNative);
        for (const h of t.hosts) {
          const st = await waitApplied(s, h, ra);
          assert.deepEqual(
            st.refused.map((r) => [r.name, r.code]),
            [['alpha', 'ECONFLICT']],
            `${h}: the newer claim is refused`,
          );
          assert.equal(st.profiles, 1, h);
          await balanced(t, h, '127.100.0.10');
        }
      });
    } finally {
      await s.close();
      await c.stop();
    }
  },
);

test(
  'fleet: given three endpoints, one member killed costs no call (list, apply, status), for the operators and the agent',
  { skip: SKIP || nftNative.skip, timeout: 90_000 },
  async () => {
    const c = await Cluster.start(['m1', 'm2', 'm3']);
    const all = await EtcdStore.connect({ endpoints: c.members.map((m) => c.endpoint(m)), callTimeoutMs: 2000 });
    try {
      await NetnsTopology.with(['h1'], async (t) => {
        await backends(t, 'h1');
        const agent = startAgent(t, c, 'h1', c.members, nftNative, ['--check-ms', '100']);
        const first = await fleetApply(all, P, [prof('web', '127.100.0.10')]);
        await waitApplied(all, 'h1', first.revision);
        // The member holding the agent's watch is the one killed (a third of the time the leader too):
        // its watch must move, not re-list.
        await waitFor('h1 watching', async () => (await hostStatus(all, 'h1'))?.watch === 'watching');
        let counts: number[] = [];
        await waitFor('one watcher in all', async () => {
          counts = await Promise.all(c.members.map((m) => c.watchers(m)));
          return counts.filter((n) => n > 0).join() === '1';
        });
        const watched = c.members[counts.indexOf(1)]!;
        const mark = agent.stderr().length;
        await c.kill(watched);
        for (let i = 0; i < 12; i++) {
          await fleetList(all, P);
          await fleetStatus(all, P);
        }
        const r = await fleetApply(all, P, [prof(`w${Date.now() % 1000}`, '127.100.0.11')]);
        await waitApplied(all, 'h1', r.revision);
        await balanced(t, 'h1', '127.100.0.11');
        await new Promise((res) => setTimeout(res, 1500)); // about 15 checks of the agent
        const log = agent.stderr().slice(mark);
        assert.doesNotMatch(log, /linearizable read failed|store: /, 'no session ended');
        assert.match(log, /watch disconnected: .*; watching again from revision \d+, without re-listing/);
        assert.doesNotMatch(log, /listed \d+ profile/, 'no re-list');
        assert.equal((await hostStatus(all, 'h1'))!.watch, 'watching');
      });
    } finally {
      await all.close();
      await c.stop();
    }
  },
);

test(
  'fleet (nft/native): a key that is no profile key is refused, then removed by fleet delete as listed; fleet status --revision of a later store revision (host keys, other keys) converges',
  { skip: SKIP || nftNative.skip, timeout: 90_000 },
  async () => {
    await onHosts(['h1'], async (c, s, t) => {
      const agent = startAgent(t, c, 'h1', 'm1', nftNative);
      const put = await fleetApply(s, P, [prof('web', '127.100.0.10')]);
      await waitApplied(s, 'h1', put.revision);
      // Written past fleet apply (etcdctl): a key under profiles/ whose last part is no profile name.
      const odd = (await s.txn([{ put: profileKey(P, 'a/b'), value: JSON.stringify(prof('b', '127.100.0.20')) }]))!;
      const st = await waitApplied(s, 'h1', odd);
      assert.deepEqual(
        st.refused.map((r) => [r.name, r.code]),
        [['a/b', 'EINVAL_PROFILE']],
      );
      assert.equal(st.profileKeys, 2);
      const refused = await fleetStatus(s, P, { revision: odd });
      assert.deepEqual(
        refused.refused.map((r) => r.name),
        ['a/b'],
      );
      assert.equal(refused.converged, false);
      await assert.rejects(fleetDelete(s, P, ['a/c']), /^IptlbError: name: "a\/c" .*nothing deleted$/);
      const del = await fleetDelete(s, P, ['a/b']);
      assert.deepEqual(del.deleted, ['a/b']);
      assert.deepEqual(
        (await fleetList(s, P)).profiles.map((p) => p.name),
        ['web'],
      );
      await waitFor('refusal gone', async () => {
        const x = await hostStatus(s, 'h1');
        return x && x.revision >= del.revision && x.refusedCount === 0;
      });
      // The host key's write and other keys move the store's revision past the host's: no profile changed.
      await s.txn([{ put: `${P}notes/x`, value: '1' }]);
      const n = await s.revision();
      assert.ok(n > del.revision + 1, `store at ${n}, the delete at ${del.revision}`);
      const ok = await fleetStatus(s, P, { revision: n });
      assert.deepEqual(
        ok.hosts.map((h) => [h.host, h.converged, h.unchangedSince]),
        [['h1', true, del.revision]],
      );
      assert.equal(ok.converged, true);
      await balanced(t, 'h1', '127.100.0.10');
      // A profile change after that: applied, and the store's revision converges again.
      const later = await fleetApply(s, P, [prof('api', '127.100.0.11')]);
      await waitApplied(s, 'h1', later.revision);
      assert.equal((await fleetStatus(s, P, { revision: await s.revision() })).converged, true);
      assert.equal((await agent.kill('SIGTERM')).code, 0);
    });
  },
);

test(
  'fleet (nft/native): etcd restored from a snapshot (etcdctl snapshot save, restore into a new data directory, restart) and written past every revision the agent saw before it looks: the agent re-lists and serves what the store holds',
  { skip: SKIP || nftNative.skip, timeout: 90_000 },
  async () => {
    await onHosts(['h1'], async (c, s, t) => {
      const agent = startAgent(t, c, 'h1', 'm1', nftNative);
      const ra = (await fleetApply(s, P, [prof('a', '127.100.0.10')])).revision;
      await waitApplied(s, 'h1', ra);
      const snap = path.join(c.dir, 'snap.db');
      const etcdctl = (args: string[]) =>
        execFileP('etcdctl', args, { cwd: c.dir, env: { ...process.env, ETCDCTL_API: '3' } });
      await etcdctl(['--endpoints', c.endpoint('m1'), 'snapshot', 'save', snap]);
      const rbc = (await fleetApply(s, P, [prof('b', '127.100.0.11'), prof('c', '127.100.0.12')])).revision;
      await waitFor('b and c applied, watching', async () => {
        const x = await hostStatus(s, 'h1');
        return x && x.revision >= rbc && x.watch === 'watching';
      });
      await balanced(t, 'h1', '127.100.0.11');
      // The newest write the agent made: its host key's put, after its commit of b and c.
      const key = hostKey(P, 'h1');
      const seen = (await s.range(key, `${key}\0`, { limit: 1 })).kvs[0]!.modRevision;
      assert.ok(seen > rbc);

      // The agent does not run while etcd is restored and written past every revision it saw.
      agent.child.kill('SIGSTOP');
      let s2: EtcdStore | undefined;
      try {
        await c.kill('m1');
        rmSync(path.join(c.dir, 'm1'), { recursive: true, force: true });
        await etcdctl([
          'snapshot',
          'restore',
          snap,
          '--data-dir',
          path.join(c.dir, 'm1'),
          '--name',
          'm1',
          '--initial-cluster',
          'm1=unix://m1p:1',
          '--initial-advertise-peer-urls',
          'unix://m1p:1',
        ]);
        c.run('m1');
        s2 = await c.client('m1');
        const restored = await waitFor('etcd restored', () => s2!.revision());
        assert.ok(restored < rbc, `restored at ${restored}, b and c at ${rbc}`);
        const rd = (await fleetApply(s2, P, [prof('d', '127.100.0.13')])).revision;
        assert.ok(rd <= rbc, `d at ${rd}: a revision the agent has seen`);
        while ((await s2.revision()) <= seen) await s2.txn([{ put: `${P}notes/x`, value: '1' }]);
        const re = (await fleetApply(s2, P, [prof('e', '127.100.0.14')])).revision;
        assert.ok(re > seen);
        const mark = agent.stderr().length;
        agent.child.kill('SIGCONT');
        // (Resumed from the mirror's revision, the watch would skip d and serve b and c on.)
        await waitFor('e applied, watching', async () => {
          const x = await hostStatus(s2!, 'h1');
          return x && x.revision >= re && x.watch === 'watching';
        });
        for (const vip of ['127.100.0.10', '127.100.0.13', '127.100.0.14']) await balanced(t, 'h1', vip);
        for (const vip of ['127.100.0.11', '127.100.0.12']) await gone(t, 'h1', vip);
        await waitLog(
          agent,
          /the store no longer holds the write of \S+ at revision \d+ this agent saw \(.*\): etcd was restored from a snapshot or replaced; re-listing/,
          'the restore noticed',
          20_000,
          mark,
        );
        assert.equal((await agent.kill('SIGTERM')).code, 0);
      } finally {
        agent.child.kill('SIGCONT');
        await s2?.close();
      }
    });
  },
);

test(
  'fleet (nft/native): etcd restarted while the agent was stopped, a profile deleted and another written, the revision compacted: the resumed watch is said compacted, the agent re-lists at once (no store failure) and applies both',
  { skip: SKIP || nftNative.skip, timeout: 90_000 },
  async () => {
    await onHosts(['h1'], async (c, s, t) => {
      const agent = startAgent(t, c, 'h1', 'm1', nftNative);
      await fleetApply(s, P, [prof('a', '127.100.0.10')]);
      const rb = (await fleetApply(s, P, [prof('b', '127.100.0.11')])).revision;
      await waitApplied(s, 'h1', rb);
      await waitFor('h1 watching', async () => (await hostStatus(s, 'h1'))?.watch === 'watching');
      const mark = agent.stderr().length;
      // Stopped (SIGSTOP) while etcd restarts, a is deleted, c written, and etcd compacts past its revision.
      agent.child.kill('SIGSTOP');
      let rc: number;
      try {
        await c.kill('m1');
        c.run('m1');
        await waitFor('a deleted', async () => (await fleetDelete(s, P, ['a'])).revision);
        rc = await waitFor('c written', async () => (await fleetApply(s, P, [prof('c', '127.100.0.12')])).revision);
        await execFileP('etcdctl', ['--endpoints', c.endpoint('m1'), 'compact', String(rc)], {
          env: { ...process.env, ETCDCTL_API: '3' },
        });
      } finally {
        agent.child.kill('SIGCONT');
      }
      await waitLog(
        agent,
        /agent: watch from revision \d+ compacted: etcd keeps revisions from \d+ on: re-listing now \(the kernel keeps the rules of revision \d+ meanwhile\)/,
        'the compacted watch said as such',
        15_000,
        mark,
      );
      await waitApplied(s, 'h1', rc);
      await gone(t, 'h1', '127.100.0.10');
      await balanced(t, 'h1', '127.100.0.11');
      await balanced(t, 'h1', '127.100.0.12');
      const log = agent.stderr().slice(mark);
      assert.doesNotMatch(log, /agent: store: /, `no store failure, no backoff:\n${log}`);
      assert.doesNotMatch(log, /Watcher canceled/);
    });
  },
);
