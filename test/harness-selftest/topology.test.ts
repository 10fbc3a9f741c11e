/**
 * NetnsTopology, WITHOUT iptlb: namespaces and veth links appear and disappear; spawned children
 * die with the topology; stale namespaces are cleaned up; and with plain iptables-legacy on a proxy,
 * DNAT without a return path fails while MASQUERADE makes it work (the backend then sees the
 * proxy's address).
 *
 *   client 192.0.2.2 ── 192.0.2.1 proxy 198.51.100.1 ── 198.51.100.2 backend
 *   virtual address 203.0.113.10:80 (DNAT in the proxy's PREROUTING) → 198.51.100.2:8080
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { skipReason } from '../harness/env.js';
import { NETNS_PREFIX, NetnsTopology } from '../harness/netns.js';
import type { Split } from '../harness/traffic.js';

const execFileP = promisify(execFile);
const skip = skipReason();
const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;

async function netnsList(): Promise<string[]> {
  const { stdout } = await execFileP('ip', ['netns', 'list']);
  return stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean);
}

function hostLinks(): string[] {
  return (JSON.parse(execFileSync('ip', ['-j', 'link', 'show'], { encoding: 'utf8' })) as { ifname: string }[])
    .map((l) => l.ifname)
    .sort();
}

describe('NetnsTopology', { skip }, () => {
  test(
    'create, link, exec, destroy (idempotent); nothing appears in the initial namespace',
    { timeout: 60_000 },
    async () => {
      const linksBefore = hostLinks();
      const t = await NetnsTopology.create(['a', 'b']);
      let names: string[] = [];
      try {
        names = t.hosts.map((h) => t.ns(h));
        assert.ok(names.every((n) => n.startsWith(NETNS_PREFIX)));
        const listed = await netnsList();
        for (const n of names) assert.ok(listed.includes(n), `${n} not in ${listed.join(' ')}`);
        const { aDev, bDev } = await t.link('a', 'b', { aAddr: '192.0.2.1/24', bAddr: '192.0.2.2/24' });
        assert.deepEqual([aDev, bDev], ['to-b', 'to-a']);
        assert.deepEqual(hostLinks(), linksBefore, 'no interface was created in the initial namespace');
        const addrs = JSON.parse((await t.exec('b', ['ip', '-j', '-4', 'addr', 'show', 'dev', 'to-a'])).stdout) as {
          addr_info: { local: string }[];
        }[];
        assert.deepEqual(
          addrs[0].addr_info.map((x) => x.local),
          ['192.0.2.2'],
        );
        // Real traffic over the link (TCP with node on both ends: no dependence on ping being installed).
        const server = t.exec(
          'b',
          [
            process.execPath,
            '-e',
            "const s = require('net').createServer((c) => { c.end('pong'); s.close(); }).listen(7777, '192.0.2.2')",
          ],
          { timeoutMs: 20_000 },
        );
        const client = `const net = require('net'); let n = 0; (function go() { const c = net.connect(7777, '192.0.2.2'); let d = ''; c.on('data', (x) => (d += x)); c.on('end', () => { process.stdout.write(d); }); c.on('error', () => { if (++n > 100) process.exit(1); setTimeout(go, 50); }); })();`;
        const [answer] = await Promise.all([
          t.exec('a', [process.execPath, '-e', client], { timeoutMs: 20_000 }),
          server,
        ]);
        assert.equal(answer.stdout, 'pong');
        await assert.rejects(t.exec('a', ['false']), /exited 1/);
        assert.equal((await t.exec('a', ['false'], { allowFail: true })).code, 1);
        await assert.rejects(t.sysctl('a', 'kernel.hostname', 'x'), /only per-namespace net/);
        assert.throws(() => t.ns('nope'), /no host nope/);
      } finally {
        await t.destroy();
        await t.destroy();
      }
      const listed = await netnsList();
      for (const n of names) assert.ok(!listed.includes(n), `${n} left behind`);
    },
  );

  test('destroy kills spawned children, also ones that ignore SIGTERM', { timeout: 60_000 }, async () => {
    const t = await NetnsTopology.create(['h']);
    let pid = 0;
    try {
      const s = t.spawn('h', [
        process.execPath,
        '-e',
        "process.on('SIGTERM', () => {}); console.log('up'); setInterval(() => {}, 1000)",
      ]);
      await s.waitFor(/^up$/, 10_000);
      pid = s.child.pid!;
      await assert.rejects(s.waitFor(/never/, 300), /timed out after 300 ms/);
    } finally {
      await t.destroy();
    }
    const running = (): boolean => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 50 && running(); i++) await new Promise((res) => setTimeout(res, 50));
    assert.equal(running(), false, `spawned child ${pid} survived destroy()`);
  });

  test('cleanupStale removes iptlb-t namespaces of dead runs, keeps live ones', { timeout: 60_000 }, async () => {
    // A pid that is certainly gone: a process that has exited and been reaped.
    const dead = execFileSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' }).trim();
    const stale = `${NETNS_PREFIX}${Number(dead).toString(36)}.abcdef-stale`;
    await execFileP('ip', ['netns', 'add', stale]);
    const t = await NetnsTopology.create(['live']); // create() runs cleanupStale() first
    try {
      const listed = await netnsList();
      assert.ok(!listed.includes(stale), `${stale} should be gone`);
      assert.deepEqual(await NetnsTopology.cleanupStale(), []);
      assert.ok((await netnsList()).includes(t.ns('live')));
    } finally {
      await execFileP('ip', ['netns', 'del', stale]).catch(() => {});
      await t.destroy();
    }
  });

  test(
    'proxy with plain iptables-legacy: DNAT without MASQUERADE times out, with MASQUERADE works and the backend sees the proxy',
    { timeout: 120_000 },
    async () => {
      await NetnsTopology.with(['client', 'proxy', 'backend'], async (t) => {
        await t.link('client', 'proxy', { aAddr: '192.0.2.2/24', bAddr: '192.0.2.1/24' });
        await t.link('proxy', 'backend', { aAddr: '198.51.100.1/24', bAddr: '198.51.100.2/24' });
        await t.sysctl('proxy', 'net.ipv4.ip_forward', 1);
        await t.route('client', '198.51.100.0/24', '192.0.2.1');
        await t.route('client', '203.0.113.0/24', '192.0.2.1');
        // Deliberately no route on the backend back to 192.0.2.0/24.
        const ipt = (...args: string[]): Promise<unknown> =>
          t.exec('proxy', ['iptables-legacy', '-w', '10', '-t', 'nat', ...args]);
        const client = async (count: number, timeoutMs: number): Promise<Split> =>
          JSON.parse(
            (
              await t.exec(
                'client',
                [process.execPath, fixture('topo-client.js'), '203.0.113.10', '80', String(count), String(timeoutMs)],
                { timeoutMs: 60_000 },
              )
            ).stdout
              .trim()
              .split('\n')
              .pop()!,
          );

        const backend = t.spawn('backend', [process.execPath, fixture('topo-backend.js'), '198.51.100.2', '8080']);
        await backend.waitFor(/^ready$/, 15_000);

        await ipt(
          '-A',
          'PREROUTING',
          '-d',
          '203.0.113.10/32',
          '-p',
          'tcp',
          '--dport',
          '80',
          '-j',
          'DNAT',
          '--to-destination',
          '198.51.100.2:8080',
        );
        const without = await client(5, 1000);
        assert.equal(without.failures, 5, `without MASQUERADE every connection must fail: ${JSON.stringify(without)}`);
        assert.ok(
          without.errors.every((e) => /no complete answer within 1000 ms/.test(e)),
          without.errors.join('\n'),
        );

        await ipt('-A', 'POSTROUTING', '-d', '198.51.100.2/32', '-p', 'tcp', '--dport', '8080', '-j', 'MASQUERADE');
        const withMasq = await client(100, 2000);
        assert.equal(withMasq.failures, 0, withMasq.errors.join('\n'));
        assert.deepEqual(withMasq.counts, { 'backend:8080': 100 });

        const peers = JSON.parse((await backend.kill('SIGTERM')).stdout.trim().split('\n').pop()!) as Record<
          string,
          string[]
        >;
        // The 5 SYNs of the failed attempts reached the backend (from the client) but never completed
        // a connection, so only the masqueraded ones show up: all from the proxy's address.
        assert.equal(peers['8080'].length, 100);
        assert.deepEqual([...new Set(peers['8080'])], ['198.51.100.1']);
      });
    },
  );
});
