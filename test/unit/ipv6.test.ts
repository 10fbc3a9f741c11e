/**
 * IPv6 profiles without the kernel: endpoint parsing and canonical text, validation (one family per
 * profile), the state file (yaml.v2's quoting, round trip, the original's files unchanged), and how
 * a change is split per family.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalIpv6, formatEndpoint, parseEndpoint } from '../../src/model/address.js';
import { familyOfProfile, validateProfile, checkSet } from '../../src/model/profile.js';
import { parseState, serializeState } from '../../src/core/state.js';
import { changeOfFamily } from '../../src/core/core.js';
import { IptlbError } from '../../src/model/errors.js';
import type { KernelView, Profile, Transaction } from '../../src/model/types.js';
import type { LegacyExecutor } from '../../src/engines/legacy/executor.js';
import { open } from '../../src/index.js';

function rejects(input: unknown, field: string, re: RegExp): void {
  assert.throws(
    () => validateProfile(input),
    (e: unknown) => {
      assert.ok(e instanceof IptlbError, String(e));
      assert.equal(e.field, field, e.message);
      assert.ok(e.message.startsWith(`${field}: `), e.message);
      assert.ok(!e.message.includes('\n'));
      assert.match(e.message, re);
      return true;
    },
  );
}

test('IPv6 endpoints: any RFC 4291 form in, RFC 5952 canonical text out', () => {
  const cases: [string, string][] = [
    ['[2001:DB8:0:0:0:0:0:1]:80', '[2001:db8::1]:80'],
    ['[2001:db8::0001]:80', '[2001:db8::1]:80'],
    ['[::1]:9000', '[::1]:9000'],
    ['[2001:db8:0:0:1:0:0:1]:5', '[2001:db8::1:0:0:1]:5'],
    ['[2001:0:0:1:0:0:0:1]:5', '[2001:0:0:1::1]:5'],
    ['[2001:db8:1:2:3:4:5:6]:1', '[2001:db8:1:2:3:4:5:6]:1'],
    ['[2001:db8::192.0.2.1]:65535', '[2001:db8::c000:201]:65535'],
    ['[2001:db8:0:1:1:1:1:1]:7', '[2001:db8:0:1:1:1:1:1]:7'],
  ];
  for (const [input, want] of cases) {
    const e = parseEndpoint(input);
    assert.equal(typeof e, 'object', `${input}: ${String(e)}`);
    assert.equal(formatEndpoint(e as { ip: string; port: number }), want, input);
    assert.equal((e as { family: string }).family, 'ipv6');
  }
  for (const bad of [
    '[2001:db8::1]',
    '[2001:db8::1]:',
    '[2001:db8::1]:0',
    '[2001:db8::1]:65536',
    '[2001:db8::1:80',
    '[1::2::3]:4',
    '[12345::]:1',
    '[2001:db8::g]:1',
    '[1:2:3:4:5:6:7:8:9]:1',
    '[1:2:3:4:5:6:7]:1',
    '[fe80::1%eth0]:1',
    '2001:db8::1:80',
    '[]:80',
    '[::ffff:1.2.3]:1',
  ]) {
    assert.equal(typeof parseEndpoint(bad), 'string', bad);
  }
  assert.equal(canonicalIpv6('0:0:0:0:0:0:0:0'), '::');
  assert.equal(canonicalIpv6('1:0:0:2:0:0:0:3'), '1:0:0:2::3', 'the longest run of zeros is compressed');
  assert.equal(canonicalIpv6('1:0:0:2:0:0:3:4'), '1::2:0:0:3:4', 'the first of equal runs');
});

test('IPv6 profiles validate like IPv4 ones; families never mix; unusable addresses are refused', () => {
  const p = validateProfile({
    name: 'v6',
    source: '[2001:DB8::10]:80',
    destination: ['[2001:db8::1]:80*2', '[::1]:81'],
  });
  assert.deepEqual(
    { ...p },
    {
      name: 'v6',
      source: '[2001:db8::10]:80',
      destination: ['[2001:db8::1]:80', '[::1]:81'],
      protocol: 'tcp',
      rulesBackend: 'client',
      logEnabled: false,
      logLevel: '4',
      weights: { '[2001:db8::1]:80': 2 },
    },
  );
  assert.equal(familyOfProfile(p), 'ipv6');
  assert.equal(
    familyOfProfile(validateProfile({ name: 'v4', source: '127.0.0.1:1', destination: ['127.0.0.1:2'] })),
    'ipv4',
  );
  // The weights map accepts any spelling of a destination.
  assert.deepEqual(
    validateProfile({
      name: 'w',
      source: '[2001:db8::10]:80',
      destination: ['[2001:db8::1]:80'],
      weights: { '[2001:0db8:0::1]:80': 3 },
    }).weights,
    { '[2001:db8::1]:80': 3 },
  );
  rejects(
    { name: 'm', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:80', '192.0.2.1:80'] },
    'destination[1]',
    /is IPv4 but source "\[2001:db8::10\]:80" is IPv6; one profile balances one address family/,
  );
  rejects(
    { name: 'm', source: '192.0.2.10:80', destination: ['[2001:db8::1]:80'] },
    'destination[0]',
    /is IPv6 but source "192\.0\.2\.10:80" is IPv4/,
  );
  rejects(
    { name: 'x', source: '2001:db8::10:80', destination: ['[2001:db8::1]:80'] },
    'source',
    /without brackets; write it as \[ipv6\]:port/,
  );
  // Without brackets, however long; but text that holds no IPv6 address is not told to bracket it.
  for (const s of ['2001:db8::1', '2001:db8:0:0:1234:5678:9abc:def0:80', '::1:80'])
    rejects({ name: 'x', source: s, destination: ['[2001:db8::1]:80'] }, 'source', /without brackets/);
  for (const s of ['127.0.0.10:80:80', '10.0.0.1:80:', 'localhost:80:80']) {
    rejects({ name: 'x', source: s, destination: ['127.0.0.1:80'] }, 'source', /is not an ipv4:port or \[ipv6\]:port/);
    assert.doesNotMatch(String(parseEndpoint(s)), /without brackets/, s);
  }
  rejects({ name: 'x', source: '[::]:80', destination: ['[2001:db8::1]:80'] }, 'source', /unspecified/);
  rejects({ name: 'x', source: '[ff02::1]:80', destination: ['[2001:db8::1]:80'] }, 'source', /multicast/);
  rejects({ name: 'x', source: '[2001:db8::10]:80', destination: ['[fe80::1]:80'] }, 'destination[0]', /link-local/);
  rejects({ name: 'x', source: '[::ffff:192.0.2.1]:80', destination: ['[2001:db8::1]:80'] }, 'source', /IPv4-mapped/);
  rejects(
    { name: 'x', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:80', '[2001:db8:0::1]:80'] },
    'destination[1]',
    /listed twice/,
  );
  rejects(
    { name: 'x', source: '[2001:db8::10]:80', destination: ['[2001:db8:0::10]:80'] },
    'destination[0]',
    /virtual address itself/,
  );
  // Two spellings of one virtual address are one address.
  const a = validateProfile({ name: 'a', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:80'] });
  const b = validateProfile({ name: 'b', source: '[2001:db8:0:0::10]:80', destination: ['[2001:db8::2]:80'] });
  assert.throws(
    () => checkSet([a, b]),
    /source: "\[2001:db8::10\]:80"\/tcp of profile "b" already belongs to profile "a"/,
  );
});

test('state file: IPv6 endpoints single-quoted as yaml.v2 writes them; round trip; IPv4 files unchanged', async () => {
  const v6 = validateProfile({
    name: 'v6',
    source: '[2001:db8::10]:80',
    destination: ['[2001:db8::1]:80*2', '[::1]:81'],
    scheduler: 'round-robin',
  });
  const v4 = validateProfile({ name: 'v4', source: '127.100.0.10:80', destination: ['127.0.0.1:9001'] });
  const text = serializeState([v6, v4]);
  assert.equal(
    text,
    'v4:\n  destination:\n  - 127.0.0.1:9001\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n  rulesBackend: client\n  source: 127.100.0.10:80\n' +
      "v6:\n  destination:\n  - '[2001:db8::1]:80'\n  - '[::1]:81'\n  logEnabled: false\n  logLevel: \"4\"\n  protocol: tcp\n  rulesBackend: client\n  scheduler: round-robin\n  source: '[2001:db8::10]:80'\n  weights:\n    '[2001:db8::1]:80': 2\n",
  );
  const back = await parseState(text, 'state.db');
  assert.deepEqual(
    [...back.values()].map((p) => ({ ...p })),
    [{ ...v4 }, { ...v6 }].sort((x, y) => (x.name < y.name ? -1 : 1)),
  );
  // Hand-written: double quotes and a non-canonical spelling load, canonical.
  const hand = await parseState(
    'h:\n  destination: ["[2001:DB8::0:1]:80"]\n  source: "[2001:db8::a]:80"\n',
    'state.db',
  );
  assert.deepEqual(hand.get('h')!.destination, ['[2001:db8::1]:80']);
  assert.equal(hand.get('h')!.source, '[2001:db8::a]:80');
  await assert.rejects(
    parseState('h:\n  destination: ["192.0.2.1:80"]\n  source: "[2001:db8::a]:80"\n', 'state.db'),
    /destination\[0\]/,
  );
});

test('a change is split per family: profiles of one family, and the removal of those moving out of it', () => {
  const mk = (name: string, source: string, d: string): Profile => validateProfile({ name, source, destination: [d] });
  const state = new Map<string, Profile>([
    ['a4', mk('a4', '192.0.2.10:80', '192.0.2.1:80')],
    ['b6', mk('b6', '[2001:db8::10]:80', '[2001:db8::1]:80')],
    ['m', mk('m', '192.0.2.11:80', '192.0.2.1:80')],
  ]);
  const change = {
    upsert: [mk('m', '[2001:db8::11]:80', '[2001:db8::1]:80'), mk('n4', '192.0.2.12:80', '192.0.2.1:80')],
    remove: ['b6'],
  };
  const v4 = changeOfFamily(change, state, 'ipv4');
  const v6 = changeOfFamily(change, state, 'ipv6');
  assert.deepEqual(
    v4.upsert.map((p) => p.name),
    ['n4'],
  );
  assert.deepEqual(v4.remove, ['m'], 'm leaves the IPv4 table');
  assert.deepEqual(
    v6.upsert.map((p) => p.name),
    ['m'],
  );
  assert.deepEqual(v6.remove, ['b6']);
});

test('a change of both families is two commits, IPv4 first; when the IPv6 one fails, the IPv4 one is undone and nothing is recorded', async () => {
  const commits: Transaction[] = [];
  let failIpv6 = false;
  const ex: LegacyExecutor = {
    kind: 'native',
    engine: 'legacy',
    async commit(tx) {
      if (tx.family === 'ipv6' && failIpv6) throw new IptlbError('EKERNEL', 'refused (test)', { errno: 22 });
      commits.push(tx);
      return { durationMs: 0 };
    },
    async read(): Promise<KernelView> {
      return { chains: [], hookRules: [] };
    },
    async render() {
      return '';
    },
  };
  const lines: string[] = [];
  const lb = await open({ stateFile: false, log: (l) => lines.push(l) }, ex);
  const v4 = { name: 'a4', source: '192.0.2.10:80', destination: ['192.0.2.1:80'] };
  const v6 = { name: 'b6', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:80'] };
  await lb.apply([v4, v6]);
  assert.deepEqual(
    commits.map((t) => [t.family, t.chains.map((c) => c.name)]),
    [
      ['ipv4', ['IPTLB_NAT_A4']],
      ['ipv6', ['IPTLB_NAT_B6']],
    ],
  );
  assert.ok(
    lines.some((l) => /in 2 transactions \(nat table and ip6tables nat table,/.test(l)),
    lines.join('\n'),
  );
  // a4 moves to IPv6 and b6 changes: the IPv4 commit (a4 removed) lands, the IPv6 one fails, the IPv4 one is undone.
  commits.length = 0;
  failIpv6 = true;
  await assert.rejects(
    lb.apply([
      { ...v4, source: '[2001:db8::11]:80', destination: ['[2001:db8::2]:80'] },
      { ...v6, destination: ['[2001:db8::3]:80'] },
    ]),
    /refused \(test\)/,
  );
  assert.deepEqual(
    commits.map((t) => [t.family, t.owners, t.chains.map((c) => c.name)]),
    [
      ['ipv4', ['a4'], []],
      ['ipv4', ['a4'], ['IPTLB_NAT_A4']],
    ],
    'the IPv4 removal, then its undo',
  );
  assert.ok(
    lines.some((l) => /undid the nat table part of the change/.test(l)),
    lines.join('\n'),
  );
  assert.deepEqual(
    (await lb.list()).map((p) => [p.name, p.source]),
    [
      ['a4', '192.0.2.10:80'],
      ['b6', '[2001:db8::10]:80'],
    ],
    'nothing recorded',
  );
  await lb.close();
});

test('::1 in a proxy or server profile is refused (nat PREROUTING never balances to or from it); client takes it, and a state file that has one still loads', async () => {
  for (const rulesBackend of ['proxy', 'server']) {
    rejects(
      { name: 'x', source: '[::1]:80', destination: ['[2001:db8::1]:80'], rulesBackend },
      'source',
      new RegExp(
        `"\\[::1\\]:80" is the IPv6 loopback address: rulesBackend "${rulesBackend}" balances in nat PREROUTING`,
      ),
    );
    rejects(
      { name: 'x', source: '[2001:db8::10]:80', destination: ['[2001:db8::1]:80', '[0:0::1]:9001'], rulesBackend },
      'destination[1]',
      /"\[::1\]:9001" is the IPv6 loopback address: .*never routes a packet from another host to ::1/,
    );
  }
  assert.equal(validateProfile({ name: 'x', source: '[::1]:80', destination: ['[::1]:9001'] }).source, '[::1]:80');
  const text =
    'srv:\n  destination:\n  - \'[::1]:8080\'\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n' +
    "  rulesBackend: server\n  source: '[2001:db8::20]:80'\n";
  const state = await parseState(text);
  assert.deepEqual(state.get('srv')!.destination, ['[::1]:8080']);
  assert.equal(serializeState(state.values()), text);
});

test('a hand-edited state file with an IPv6 endpoint left unquoted: the line says to quote it', async () => {
  const body = (src: string, dst: string, extra = ''): string =>
    `w6:\n  destination:\n  - ${dst}\n  logEnabled: false\n  logLevel: "4"\n  protocol: tcp\n` +
    `  rulesBackend: client\n  source: ${src}\n${extra}`;
  const cases: [string, RegExp][] = [
    [
      body('[2001:DB8::10]:80', "'[2001:db8::1]:9001'"),
      /line 8: .*; an IPv6 endpoint is written in quotes: '\[2001:DB8::10\]:80'\)$/,
    ],
    [
      body("'[2001:db8::10]:80'", '[2001:db8::1]:9001'),
      /line 3: .*; an IPv6 endpoint is written in quotes: '\[2001:db8::1\]:9001'\)$/,
    ],
    [
      body("'[2001:db8::10]:80'", "'[2001:db8::1]:9001'", '  weights:\n    [2001:db8::1]:9001: 2\n'),
      /line 10: .*; an IPv6 endpoint is written in quotes: '\[2001:db8::1\]:9001'\)$/,
    ],
  ];
  for (const [text, re] of cases) {
    await assert.rejects(parseState(text, 'F'), (e: unknown) => {
      assert.ok(e instanceof IptlbError);
      assert.match(e.message, /^state file F: is not valid YAML \(/);
      assert.match(e.message, re);
      return true;
    });
  }
  // Another YAML mistake gets no such hint.
  await assert.rejects(parseState('a: [\n', 'F'), (e: unknown) => !String((e as Error).message).includes('IPv6'));
});
