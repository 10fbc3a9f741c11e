/**
 * Capabilities and engine selection without root: the legacy engine needs CAP_NET_RAW too and a
 * permission failure names the capability missing; a selection that cannot read the kernel says so
 * instead of taking it for "no rules"; with nothing of iptlb in the kernel an engine that cannot run
 * gives way to one that can; the original's chains in iptables-nft's nat tables are found.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { capsMessage, effectiveCapsOf, missingCaps, type Capability } from '../../src/platform/caps.js';
import { legacyPermissionMessage } from '../../src/engines/legacy/executor.js';
import { engineNeeds } from '../../src/engines/registry.js';
import { parseOriginalNftChains, selectEngine, type HostFacts } from '../../src/engines/select.js';

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
