/**
 * The native addon against the kernel. Every case runs in a child process in a fresh network
 * namespace (`unshare -n -- node fixture.js`, see netns-child.ts); the test process itself never
 * touches netfilter. Skipped, with the reason, when not root or the addon is not built.
 * IPTLB_SOAK=1 runs the long versions (10,000 contended commits, 100,000 memory cycles).
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { EQUIVALENCE_SETS, checkEquivalence, fixture, kernelSkip, runInNetns } from './netns-child.js';

const SKIP = kernelSkip();
const SOAK = !!process.env.IPTLB_SOAK;
// In /tmp itself (not the run's TMPDIR, which is root's alone): the EPERM case opens it as nobody.
// Removed when the file's tests end.
const lockFiles: string[] = [];
const lockFile = (): string => {
  const p = `/tmp/iptlb-test-xtables-${process.pid}-${Math.random().toString(36).slice(2)}.lock`;
  lockFiles.push(p);
  return p;
};
after(() => {
  for (const p of lockFiles) rmSync(p, { force: true });
});

describe('native addon in the kernel (fresh network namespaces)', { skip: SKIP }, () => {
  test('fixed plan: save identical to iptables-legacy-restore, read() round trip, reset in place, delete by owner, foreign rules untouched', async () => {
    const r = await runInNetns<{ failures: string[] }>(fixture('fixed-set'), [], { timeoutMs: 120_000 });
    assert.deepEqual(r.failures, []);
  });

  test(`${EQUIVALENCE_SETS} random profile sets from the planner: save identical to iptables-legacy-restore of the rendered plan; read() decodes them`, async () => {
    await checkEquivalence('ipv4');
  });

  test(`while iptables-legacy -w hammers a foreign chain, ${SOAK ? '10,000' : '2,000'} commits lose no foreign rule and none of their own`, async () => {
    const n = SOAK ? 10_000 : 2_000;
    const r = await runInNetns<{
      commits: number;
      foreignFixed: number;
      foreignJump: boolean;
      foreignPost: boolean;
      wrong: string[];
      hammerRounds: number;
    }>(fixture('contention'), [String(n)], { timeoutMs: 600_000 });
    assert.ok(r.commits >= n, `${r.commits} commits`);
    assert.ok(r.hammerRounds >= 10, `the other writer ran concurrently (${r.hammerRounds} rounds)`);
    assert.equal(r.foreignFixed, 20, 'all 20 fixed foreign rules survive');
    assert.ok(r.foreignJump, 'the foreign jump in OUTPUT survives');
    assert.ok(r.foreignPost, 'the foreign rule in POSTROUTING survives');
    assert.deepEqual(r.wrong, [], 'every profile is as its last commit left it');
  });

  test('500 commits and 50 reads in flight at once: all succeed, serialised in call order', async () => {
    const r = await runInNetns<{ rejected: string[]; present: string[]; expected: string[] }>(
      fixture('inflight'),
      ['500'],
      { timeoutMs: 120_000 },
    );
    assert.deepEqual(r.rejected, []);
    assert.deepEqual(r.present, r.expected);
  });

  test("refusals: EKERNEL with errno and libiptc's message, nothing changed; held xtables lock: ELOCK in time, event loop free", async () => {
    const r = await runInNetns<Record<string, any>>(fixture('errors'), [], {
      env: { XTABLES_LOCKFILE: lockFile() },
      timeoutMs: 60_000,
    });
    const d = r.dnatFromInput;
    assert.equal(d.ok, false);
    assert.equal(d.code, 'EKERNEL');
    assert.equal(d.errno, 22);
    assert.match(d.message, /^iptc_commit: .+ \(errno 22\) while committing table nat$/);
    assert.ok(d.unchanged, 'the table is unchanged after a refused commit');
    assert.equal(r.deleteReferenced.code, 'EKERNEL');
    assert.match(r.deleteReferenced.message, /deleting chain IPTLB_WEB: .*\(errno \d+\)/);
    assert.ok(r.deleteReferenced.unchanged);
    assert.equal(r.jumpMissing.code, 'EKERNEL');
    assert.equal(typeof r.jumpMissing.errno, 'number');
    assert.ok(r.jumpMissing.unchanged);
    assert.equal(r.lockTimeout.code, 'ELOCK');
    assert.ok(r.lockWaitedMs >= 290, `gave up after ${r.lockWaitedMs} ms, before lockWaitMs 300`);
    assert.equal(r.loopRanWhileWaiting, true, 'the event loop ran while the commit waited');
    assert.equal(r.lockThenRelease.ok, true, JSON.stringify(r.lockThenRelease));
    assert.ok(r.lockReleaseWaitedMs >= 150, 'the commit waited for the holder');
    assert.ok(r.finalHasWeb);
  });

  test('without CAP_NET_ADMIN: EPERM, saying so', async () => {
    const r = await runInNetns<{ uid: number; commit: any; read: any }>(fixture('eperm'), [], {
      env: { XTABLES_LOCKFILE: lockFile() },
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
  });

  test(`memory: ${SOAK ? '100,000' : '10,000'} apply/read/delete cycles grow RSS by less than 5 MB`, async () => {
    const n = SOAK ? 100_000 : 10_000;
    const r = await runInNetns<{ rssGrowthMB: number; msPerCycle: number }>(fixture('rss'), [String(n)], {
      timeoutMs: 1_800_000,
      nodeArgs: ['--expose-gc'],
    });
    assert.ok(r.rssGrowthMB < 5, `RSS grew ${r.rssGrowthMB.toFixed(2)} MB over ${n} cycles`);
  });
});

describe('commit with append (the state journal written right after the kernel commit)', { skip: kernelSkip() }, () => {
  test('the bytes are written after a commit that succeeded, never after one refused; a failed write comes back in appended', async () => {
    const r = await runInNetns<Record<string, unknown>>(fixture('append'), [], { timeoutMs: 60_000 });
    assert.deepEqual(r, {
      firstAppended: { written: 6, errno: 0 },
      firstInKernel: true,
      fileAfterFirst: 'first\n',
      refused: 'EKERNEL',
      fileAfterRefused: 'first\n',
      withoutAppend: false,
      readOnlyAppended: { written: 0, errno: 9 },
      thirdInKernel: true,
      fileAtEnd: 'first\n',
    });
  });
});

describe('gate set (legacy): what a commit sends to the set', { skip: kernelSkip() }, () => {
  test("its rules' elements added (one deleted by hand put back), stale ones deleted, a set created anew filled with every dispatch rule's element", async () => {
    const r = await runInNetns<Record<string, unknown>>(fixture('gate-set'), [], { timeoutMs: 60_000 });
    assert.deepEqual(r, {
      two: ['127.100.0.20,tcp:8080', '127.100.0.21,tcp:8080'],
      afterChurn: ['127.100.0.20,tcp:8080', '127.100.0.21,tcp:8080'],
      newPort: ['127.100.0.20,tcp:8081', '127.100.0.21,tcp:8080'],
      deletedByHand: ['127.100.0.20,tcp:8081'],
      readDeletedByHand: ['127.100.0.20,tcp:8081'],
      putBack: ['127.100.0.20,tcp:8081', '127.100.0.21,tcp:8080'],
      readPutBack: ['127.100.0.20,tcp:8081', '127.100.0.21,tcp:8080'],
      destroyed: null,
      refilled: ['127.100.0.20,tcp:8081', '127.100.0.21,tcp:8080'],
      gates: 1,
      oneLeft: ['127.100.0.21,tcp:8080'],
      atEnd: null,
      gatesAtEnd: 0,
    });
  });
});

describe(
  "holds (legacy): whether the nat table holds any of iptlb's objects, without libiptc",
  { skip: kernelSkip() },
  () => {
    test("answers as a read does, both families, a big foreign table with and without one iptlb rule; read() reports the original iptlb's jumps", async () => {
      const r = await runInNetns<Record<string, unknown>>(fixture('holds'), [], { timeoutMs: 60_000 });
      const want = (h: boolean) => ({ holds: h, read: h });
      // read(): the original's jumps, in table order (built-in chains first); not another tool's (its comment),
      // not one in a user chain, not one to a chain that is not a profile's (X, IPTLB_NAT_web).
      // Each with its rule (address, protocol, port: ABI 23), as the spawn executor's parse gives it.
      const bareWant = (dst: string) => {
        const jump = (chain: string, target: string) => ({
          chain,
          target,
          rule: { dst, proto: 'tcp', matches: [{ name: 'tcp', dport: 80 }], target: { name: 'jump', chain: target } },
        });
        return {
          none: null,
          some: [
            jump('PREROUTING', 'IPTLB_NAT_OLD'),
            jump('OUTPUT', 'IPTLB_NAT_WEB'),
            jump('POSTROUTING', 'IPTLB_NAT_WEB'),
          ],
        };
      };
      const table = {
        empty: want(false),
        'foreign rules only': want(false),
        'a foreign chain holding a rule commented iptlb:': want(false),
        'a chain named IPTLB_ that is not a profile chain': want(false),
        'an empty dispatch chain': want(false),
        'a profile chain alone': want(true),
        'a jump behind the gate': want(true),
        'a masquerade rule in POSTROUTING': want(true),
        'an older jump in OUTPUT itself, another comment first': want(false),
        'an older jump in PREROUTING': want(true),
      };
      assert.deepEqual(r, {
        ipv4: table,
        ipv6: table,
        bigForeign: want(false),
        bigWithOne: want(true),
        bad: 'family: must be "ipv4" or "ipv6"',
        bare: { ipv4: bareWant('127.100.0.1/32'), ipv6: bareWant('2001:db8::1/128') },
      });
    });
  },
);

describe('sockets kept between commits', { skip: kernelSkip() }, () => {
  test('are not inherited by child processes (the nft shared socket, the ipset socket)', async () => {
    const r = await runInNetns<Record<string, unknown>>(fixture('cloexec'), [], { timeoutMs: 60_000 });
    assert.deepEqual(r, { before: [], nft: [], legacy: [] });
  });
});

describe('prefetch (the next legacy commit prepared while JavaScript plans)', { skip: kernelSkip() }, () => {
  test('holds the xtables lock until a commit uses it or it is released; never waits for the lock; others wait for it', async () => {
    const r = await runInNetns<Record<string, unknown>>(fixture('prefetch'), [], { timeoutMs: 60_000 });
    assert.deepEqual(r, {
      freeAtStart: true,
      prefetched: true,
      heldAfterPrefetch: true,
      secondPrefetch: true,
      released: true,
      freeAfterRelease: true,
      releaseWithNothing: false,
      commitAttempts: 1,
      freeAfterCommit: true,
      ruleCommitted: true,
      otherWaited: true,
      otherExit: 0,
      bothLanded: true,
      busyPrefetch: false,
      freeAtEnd: true,
    });
  });
});
