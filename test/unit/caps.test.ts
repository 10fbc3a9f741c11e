/**
 * Capabilities and engine selection without root: the legacy engine needs CAP_NET_RAW too and a
 * permission failure names the capability missing; a selection that cannot read the kernel says so
 * instead of taking it for "no rules"; with nothing of iptlb in the kernel an engine that cannot run
 * gives way to one that can; the original's chains in iptables-nft's nat tables are found.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { hasCap } from '../../src/platform/caps.js';
import { findBinary } from '../../src/platform/spawn.js';
import { capsMessage, effectiveCapsOf, missingCaps, type Capability } from '../../src/platform/caps.js';
import { legacyPermissionMessage } from '../../src/engines/legacy/executor.js';
import { engineNeeds } from '../../src/engines/registry.js';
import { parseOriginalNftChains, selectEngine, type HostFacts } from '../../src/engines/select.js';
import { parseOriginalJumpsJson } from '../../src/engines/nft/original.js';

const only =
  (...caps: Capability[]) =>
  (c: Capability): boolean =>
    caps.includes(c);

test('capabilities: the legacy engine needs CAP_NET_RAW as well as CAP_NET_ADMIN, nft CAP_NET_ADMIN alone', () => {
  assert.deepEqual(engineNeeds('legacy').capabilities, ['CAP_NET_ADMIN', 'CAP_NET_RAW']);
  assert.deepEqual(engineNeeds('nft').capabilities, ['CAP_NET_ADMIN']);
  // CapEff as a systemd unit granting CAP_NET_ADMIN only leaves it (bit 12), and with CAP_NET_RAW (bit 13).
  assert.equal(effectiveCapsOf('Name:\tnode\nCapEff:\t0000000000001000\n'), 1n << 12n);
  assert.equal(effectiveCapsOf('CapEff:\t0000000000003000\n'), (1n << 12n) | (1n << 13n));
  assert.equal(effectiveCapsOf('Name:\tnode\n'), null);
  assert.deepEqual(missingCaps(engineNeeds('legacy').capabilities, only('CAP_NET_ADMIN')), ['CAP_NET_RAW']);
  assert.deepEqual(missingCaps(engineNeeds('nft').capabilities, only('CAP_NET_ADMIN')), []);
});

test('a permission failure of x_tables names the capability that is missing, not CAP_NET_ADMIN when that is present', () => {
  const native =
    'iptc_init: Permission denied (you must be root) (errno 1) while reading table nat (permission denied: changing netfilter rules needs CAP_NET_ADMIN (run as root))';
  const raw = legacyPermissionMessage(native, only('CAP_NET_ADMIN'));
  assert.match(
    raw,
    /^iptc_init: Permission denied \(you must be root\) \(errno 1\) while reading table nat \(permission denied: /,
  );
  assert.match(raw, /needs CAP_NET_RAW as well as CAP_NET_ADMIN/);
  assert.doesNotMatch(raw, /needs CAP_NET_ADMIN \(run/);
  assert.equal(raw.split('\n').length, 1);
  const spawn = 'iptables-legacy-restore: permission denied: changing netfilter rules needs root (CAP_NET_ADMIN)';
  assert.match(
    legacyPermissionMessage(spawn, only('CAP_NET_ADMIN')),
    /^iptables-legacy-restore: permission denied: .*CAP_NET_RAW as well/,
  );
  assert.match(
    legacyPermissionMessage(spawn, only()),
    /^iptables-legacy-restore: permission denied: changing netfilter rules needs CAP_NET_ADMIN and CAP_NET_RAW \(run iptlb as root\)$/,
  );
  // Both present: the failure is something else's (a user namespace, say): the message stays.
  assert.equal(legacyPermissionMessage(native, only('CAP_NET_ADMIN', 'CAP_NET_RAW')), native);
  assert.equal(
    capsMessage(['CAP_NET_ADMIN']),
    'permission denied: changing netfilter rules needs CAP_NET_ADMIN (run iptlb as root)',
  );
});

// Without capabilities: as root, through setpriv (util-linux).
const setpriv = hasCap('CAP_NET_ADMIN') ? findBinary('setpriv') : null;
const noSetpriv = hasCap('CAP_NET_ADMIN') && !setpriv ? 'setpriv is not installed (util-linux)' : false;

test(
  'a permission failure of the nft native executor names CAP_NET_ADMIN alone, never CAP_NET_RAW',
  { skip: noSetpriv },
  () => {
    // What the addon rejects with when netlink refuses (native/common/errors.h's hint).
    const message =
      'reading the nftables generation id: Operation not permitted (permission denied: changing netfilter rules needs CAP_NET_ADMIN (run as root))';
    // In a child without capabilities (as a non-root user runs iptlb): the executor maps the addon's rejection.
    const script = `import { NftNativeExecutor } from ${JSON.stringify(new URL('../../src/engines/nft/native.js', import.meta.url).href)};
    const e = Object.assign(new Error(${JSON.stringify(message)}), { code: 'EPERM', errno: 1 });
    const x = new NftNativeExecutor({ nftRead: () => Promise.reject(e) });
    x.read().then(() => process.exit(5), (err) => process.stdout.write(JSON.stringify({ code: err.code, message: err.message })));`;
    const argv = [process.execPath, '--input-type=module', '-e', script];
    const r = setpriv
      ? spawnSync(setpriv, ['--inh-caps=-all', '--bounding-set=-all', ...argv], { encoding: 'utf8' })
      : spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { code: string; message: string };
    assert.equal(out.code, 'EPERM');
    assert.equal(
      out.message,
      'reading the nftables generation id: Operation not permitted (permission denied: changing netfilter rules needs CAP_NET_ADMIN (run iptlb as root))',
    );
  },
);

const host = (h: Partial<HostFacts> = {}): HostFacts => ({
  xtables: [],
  ip6tables: [],
  flavour: 'legacy',
  xtablesAvailable: true,
  ...h,
});
const none = { legacyHasRules: async () => false, nftHasRules: async () => false };

test('auto: a table list this process may not read (not root) is "cannot tell", not "x_tables is not available"', async () => {
  await assert.rejects(
    selectEngine('auto', { ...none, host: host({ xtables: 'unreadable', ip6tables: 'unreadable' }) }),
    (e: Error & { code?: string }) =>
      e.code === 'EPERM' &&
      /^engine: cannot tell without root whether the x_tables nat table holds iptlb rules \(\/proc\/net\/ip_tables_names is not readable\)/.test(
        e.message,
      ),
  );
  // A probe that fails stops the choice (the core turns a failed read into such a rejection).
  const denied = Object.assign(new Error('denied'), { code: 'EPERM' });
  await assert.rejects(
    selectEngine('auto', {
      legacyHasRules: () => Promise.reject(denied),
      nftHasRules: async () => false,
      host: host({ xtables: ['nat'] }),
    }),
    /denied/,
  );
});

test('auto: with nothing of iptlb in the kernel, an engine that cannot run here gives way to one that can', async () => {
  const legacyCannot = {
    ...none,
    cannotRun: (n: string) => (n === 'legacy' ? 'iptables-legacy-save/-restore not found' : undefined),
  };
  const s = await selectEngine('auto', { ...legacyCannot, host: host({ flavour: 'none' }) });
  assert.equal(s.engine, 'nft');
  assert.match(
    s.reason,
    /^no iptlb rules yet, and this host's iptables is not installed, but the legacy engine cannot run here \(iptables-legacy-save\/-restore not found\): the nft engine can$/,
  );
  const nftCannot = { ...none, cannotRun: (n: string) => (n === 'nft' ? 'nft not found' : undefined) };
  assert.equal((await selectEngine('auto', { ...nftCannot, host: host({ flavour: 'nft' }) })).engine, 'legacy');
  // Neither can: the rule's engine, which then fails with its own reason.
  assert.equal((await selectEngine('auto', { ...none, cannotRun: () => 'no', host: host() })).engine, 'legacy');
  // iptlb's rules already in an engine keep it, runnable or not.
  const held = { ...legacyCannot, legacyHasRules: async () => true, host: host({ xtables: ['nat'] }) };
  assert.equal((await selectEngine('auto', held)).engine, 'legacy');
});

test("the original's chains in iptables-nft's nat tables are found in `nft list chains`; others' and iptlb's own are not", () => {
  const text = [
    'table ip nat {',
    '\tchain IPTLB_NAT_TEST {',
    '\t}',
    '\tchain OUTPUT {',
    '\t\ttype nat hook output priority -100; policy accept;',
    '\t}',
    '}',
    'table ip6 nat {',
    '\tchain IPTLB_NAT_V6 {',
    '\t}',
    '}',
    'table ip filter {',
    '\tchain IPTLB_NAT_NOT {',
    '\t}',
    '}',
    'table ip iptlb {',
    '\tchain output {',
    '\t}',
    '}',
  ].join('\n');
  assert.deepEqual(parseOriginalNftChains(text), [
    { table: 'ip nat', chain: 'IPTLB_NAT_TEST' },
    { table: 'ip6 nat', chain: 'IPTLB_NAT_V6' },
  ]);
  assert.deepEqual(parseOriginalNftChains(''), []);
});

test("the original's jumps in `nft -j list chain ip nat OUTPUT` (nft 1.0.6, rules written by iptables-nft 1.8.9): read whole, or with what is not read named; others' jumps and commented ones are not the original's", () => {
  // Written in a namespace with: iptables-nft -t nat -I OUTPUT 1 -p tcp -d 127.100.0.10 --dport 8081 -j IPTLB_NAT_TEST;
  // the same with -p sctp -d 127.100.0.12 --dport 99, -p tcp -d 127.100.0.14/31 --dport 100, -m comment --comment hi,
  // and -p udp -d 127.100.0.16 --dport 53 -j OTHER.
  const v4 =
    '{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "nat", "name": "OUTPUT", "handle": 2, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}, {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.100.0.16"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "OTHER"}}]}}, {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "handle": 6, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.100.0.15"}}, {"xt": {"type": "match", "name": "comment"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 100}}, {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "IPTLB_NAT_TEST"}}]}}, {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "127.100.0.14", "len": 31}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 100}}, {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "IPTLB_NAT_TEST"}}]}}, {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "sctp"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.100.0.12"}}, {"xt": {"type": "match", "name": "sctp"}}, {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "IPTLB_NAT_TEST"}}]}}, {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.100.0.10"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8081}}, {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "IPTLB_NAT_TEST"}}]}}]}\n';
  assert.deepEqual(parseOriginalJumpsJson(v4, 'ip', 'OUTPUT'), [
    { chain: 'OUTPUT', handle: 5, target: 'IPTLB_NAT_TEST', proto: 'tcp', port: 100, unknown: 'ip daddr' },
    {
      chain: 'OUTPUT',
      handle: 4,
      target: 'IPTLB_NAT_TEST',
      proto: 'sctp',
      ip: '127.100.0.12',
      unknown: 'xt match sctp',
    },
    { chain: 'OUTPUT', handle: 3, target: 'IPTLB_NAT_TEST', proto: 'tcp', ip: '127.100.0.10', port: 8081 },
  ]);
  // ip6tables-nft -t nat -I OUTPUT 1 -p udp -d 2001:db8::1 --dport 8081 -j IPTLB_NAT_SIX
  const v6 =
    '{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip6", "table": "nat", "name": "OUTPUT", "handle": 2, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}, {"rule": {"family": "ip6", "table": "nat", "chain": "OUTPUT", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "2001:db8::1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 8081}}, {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "IPTLB_NAT_SIX"}}]}}]}\n';
  assert.deepEqual(parseOriginalJumpsJson(v6, 'ip6', 'OUTPUT'), [
    { chain: 'OUTPUT', handle: 3, target: 'IPTLB_NAT_SIX', proto: 'udp', ip: '2001:db8::1', port: 8081 },
  ]);
  // Read as ip, an ip6 address is not one it reads; no rule at all, no text.
  assert.equal(parseOriginalJumpsJson(v6, 'ip', 'OUTPUT')[0]!.unknown, 'ip6 daddr');
  assert.deepEqual(parseOriginalJumpsJson('', 'ip', 'PREROUTING'), []);
});
