/**
 * Multi-host cases with `ip netns` and veth pairs (documentation addresses only):
 *  - proxy: client (192.0.2.2) → proxy (192.0.2.1 | 198.51.100.1) → backend (198.51.100.2), virtual
 *    address 203.0.113.10:80 balanced on the proxy, with and without -masquerade;
 *  - server: client (192.0.2.2) → server (192.0.2.1), the virtual address is the server's own.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { NetnsTopology } from '../harness/netns.js';
import { CLI_PATH } from '../harness/env.js';
import { assertSplit } from '../harness/stats.js';
import { PAIRS } from './common.js';
import { pairOf } from '../harness/pair.js';

const fixture = (f: string): string => new URL(`./fixtures/${f}`, import.meta.url).pathname;
const BACKEND_PORTS = [8080, 8081, 8082];

/**
 * client (192.0.2.2) → proxy (192.0.2.1 | 198.51.100.1, forwarding) → backend (198.51.100.2); no route back from the
 * backend.
 */
async function proxyTopology(): Promise<NetnsTopology> {
  const t = await NetnsTopology.create(['client', 'proxy', 'backend']);
  try {
    await t.link('client', 'proxy', { aAddr: '192.0.2.2/24', bAddr: '192.0.2.1/24' });
    await t.link('proxy', 'backend', { aAddr: '198.51.100.1/24', bAddr: '198.51.100.2/24' });
    await t.sysctl('proxy', 'net.ipv4.ip_forward', '1');
    await t.route('client', '203.0.113.0/24', '192.0.2.1');
  } catch (e) {
    await t.destroy();
    throw e;
  }
  return t;
}

for (const { name: ex, skip } of PAIRS) {
  describe(`topologies over ${ex}`, { skip }, () => {
    for (const masquerade of [false, true]) {
      test(`proxy mode ${masquerade ? 'with' : 'without'} -masquerade: every backend answers; the backend sees ${masquerade ? "the proxy's" : "the client's"} address`, async () => {
        const t = await proxyTopology();
        try {
          // Without masquerade the backend must route replies back through the proxy itself.
          if (!masquerade) await t.route('backend', '192.0.2.0/24', '198.51.100.1');
          const backends = t.spawn('backend', [
            process.execPath,
            fixture('backend-host.js'),
            '198.51.100.2',
            BACKEND_PORTS.join(','),
          ]);
          await backends.waitFor(/ready/);
          const dest = BACKEND_PORTS.map((p) => `198.51.100.2:${p}`).join(',');
          const applied = await t.exec('proxy', [
            process.execPath,
            CLI_PATH,
            ...pairOf(ex).flags,
            `-state-file=${mkdtempSync(path.join(tmpdir(), 'iptlb-topo-'))}/state.db`,
            '-run',
            '-profile=px',
            '-rules-backend=proxy',
            ...(masquerade ? ['-masquerade'] : []),
            '-src-addr=203.0.113.10:80',
            `-dest-addr=${dest}`,
          ]);
          assert.equal(applied.code, 0, applied.stderr);
          const r = await t.exec('client', [process.execPath, fixture('client-host.js'), '203.0.113.10', '80', '300']);
          const split = JSON.parse(r.stdout.trim());
          assert.equal(split.failures, 0, JSON.stringify(split.errors));
          assertSplit(
            BACKEND_PORTS.map((p) => split.counts[`backend:${p}`] ?? 0),
            [1, 1, 1],
          );
          const peers = JSON.parse((await backends.kill('SIGTERM')).stdout.trim().split('\n').pop()!);
          const all = Object.values(peers).flat() as string[];
          assert.equal(all.length, 300);
          assert.deepEqual([...new Set(all)], [masquerade ? '198.51.100.1' : '192.0.2.2']);
        } finally {
          await t.destroy();
        }
      });
    }

    test('proxy mode without -masquerade and no return route: the backend cannot answer (why -masquerade exists)', async () => {
      const t = await proxyTopology();
      try {
        const backends = t.spawn('backend', [process.execPath, fixture('backend-host.js'), '198.51.100.2', '8080']);
        await backends.waitFor(/ready/);
        const applied = await t.exec('proxy', [
          process.execPath,
          CLI_PATH,
          ...pairOf(ex).flags,
          `-state-file=${mkdtempSync(path.join(tmpdir(), 'iptlb-topo-'))}/state.db`,
          '-run',
          '-profile=px',
          '-rules-backend=proxy',
          '-src-addr=203.0.113.10:80',
          '-dest-addr=198.51.100.2:8080',
        ]);
        assert.equal(applied.code, 0, applied.stderr);
        const r = await t.exec('client', [process.execPath, fixture('client-host.js'), '203.0.113.10', '80', '5']);
        assert.equal(JSON.parse(r.stdout.trim()).failures, 5);
      } finally {
        await t.destroy();
      }
    });

    test("server mode: traffic for the server's own address is balanced over local backends (PREROUTING + addrtype LOCAL)", async () => {
      const t = await NetnsTopology.create(['client', 'server']);
      try {
        await t.link('client', 'server', { aAddr: '192.0.2.2/24', bAddr: '192.0.2.1/24' });
        const backends = t.spawn('server', [
          process.execPath,
          fixture('backend-host.js'),
          '192.0.2.1',
          '9001,9002,9003',
        ]);
        await backends.waitFor(/ready/);
        const applied = await t.exec('server', [
          process.execPath,
          CLI_PATH,
          ...pairOf(ex).flags,
          `-state-file=${mkdtempSync(path.join(tmpdir(), 'iptlb-topo-'))}/state.db`,
          '-run',
          '-profile=srv',
          '-rules-backend=server',
          '-src-addr=192.0.2.1:80',
          '-dest-addr=192.0.2.1:9001,192.0.2.1:9002,192.0.2.1:9003',
        ]);
        assert.equal(applied.code, 0, applied.stderr);
        const r = await t.exec('client', [process.execPath, fixture('client-host.js'), '192.0.2.1', '80', '300']);
        const split = JSON.parse(r.stdout.trim());
        assert.equal(split.failures, 0, JSON.stringify(split.errors));
        assertSplit(
          [9001, 9002, 9003].map((p) => split.counts[`backend:${p}`] ?? 0),
          [1, 1, 1],
        );
      } finally {
        await t.destroy();
      }
    });
  });
}
