/**
 * Fleet control through a real etcd (Debian's etcd 3.4) as production fleets run it: TLS with a CA of
 * the test's own (openssl, made once for the file), client certificates required (`--client-cert-auth`),
 * then etcd's users and roles set up by the commands docs/fleet.md shows (read from the document).
 * etcd runs inside the simulated host's namespace on https://127.0.0.1:2379, beside the `iptlb agent`,
 * `iptlb fleet` and `etcdctl` processes that use it; the agent's rules are checked with `iptlb status`
 * and connections through the VIP.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { NetnsTopology, type Spawned, type ChildResult } from '../harness/netns.js';
import { CLI_PATH, PROJECT_ROOT } from '../harness/env.js';
import { PAIRS, KERNEL_SKIP, waitFor } from './common.js';
import type { Split } from '../harness/traffic.js';

const execFileP = promisify(execFile);
const ETCD = '/usr/bin/etcd';
const ETCDCTL = '/usr/bin/etcdctl';
const which = (tool: string): boolean =>
  (process.env.PATH ?? '/usr/bin:/bin').split(':').some((d) => existsSync(path.join(d, tool)));
const nftNative = PAIRS.find((p) => p.name === 'nft/native')!;
const SKIP =
  KERNEL_SKIP ||
  nftNative.skip ||
  (!existsSync(ETCD) || !existsSync(ETCDCTL)
    ? 'etcd is not installed (apt-get install etcd-server etcd-client)'
    : !which('openssl')
      ? 'openssl is not installed (apt-get install openssl)'
      : false);
const FIX = new URL('./fixtures/fleet-host.js', import.meta.url).pathname;
const EP = 'https://127.0.0.1:2379';
const DESTS = '127.0.0.1:9001,127.0.0.1:9002';

/** The test's PKI: a CA, etcd's server certificate (127.0.0.1, localhost), client certificates by common name. */
let pki = '';
const pem = (name: string): string => path.join(pki, `${name}.pem`);
const key = (name: string): string => path.join(pki, `${name}.key`);

before(async () => {
  if (SKIP) return;
  pki = mkdtempSync(path.join(tmpdir(), 'iptlb-pki-'));
  const ssl = (...args: string[]): Promise<unknown> => execFileP('openssl', args, { cwd: pki });
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  for (const ca of ['ca', 'other-ca'])
    await ssl('req', '-x509', ...newKey, '-keyout', key(ca), '-out', pem(ca), '-days', '2', '-subj', `/CN=${ca}`);
  const cert = async (name: string, cn: string, ext: string): Promise<void> => {
    writeFileSync(path.join(pki, `${name}.ext`), ext);
    await ssl('req', ...newKey, '-keyout', key(name), '-out', path.join(pki, `${name}.csr`), '-subj', `/CN=${cn}`);
    await ssl(
      'x509',
      '-req',
      '-in',
      path.join(pki, `${name}.csr`),
      '-CA',
      pem('ca'),
      '-CAkey',
      key('ca'),
      '-CAcreateserial',
      '-out',
      pem(name),
      '-days',
      '2',
      '-extfile',
      path.join(pki, `${name}.ext`),
    );
  };
  await cert('server', 'etcd', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  // Common names: "root" (etcdctl's setup), an operator's, and one that names no etcd user.
  for (const cn of ['root', 'iptlb-operator', 'client']) await cert(cn, cn, 'extendedKeyUsage=clientAuth\n');
});

/** etcd in h1's namespace: https on its 127.0.0.1, client certificates required; resolves once it answers. */
async function startEtcd(t: NetnsTopology, dir: string): Promise<void> {
  t.spawn('h1', [
    ETCD,
    '--name',
    'm1',
    '--data-dir',
    path.join(dir, 'etcd'),
    '--unsafe-no-fsync',
    '--listen-client-urls',
    EP,
    '--advertise-client-urls',
    EP,
    '--listen-peer-urls',
    'http://127.0.0.1:2380',
    '--initial-advertise-peer-urls',
    'http://127.0.0.1:2380',
    '--initial-cluster',
    'm1=http://127.0.0.1:2380',
    '--cert-file',
    pem('server'),
    '--key-file',
    key('server'),
    '--trusted-ca-file',
    pem('ca'),
    '--client-cert-auth',
    '--log-level',
    'error',
  ]);
  await waitFor('etcd answering', async () => (await ctl(t, ['get', '/'], true)).code === 0);
}

/** etcdctl in h1 with the "root" client certificate (before `auth enable`, any user; after, root). */
const ctl = (t: NetnsTopology, args: string[], allowFail = false): Promise<ChildResult> =>
  t.exec(
    'h1',
    [ETCDCTL, '--endpoints', EP, '--cacert', pem('ca'), '--cert', pem('root'), '--key', key('root'), ...args],
    { env: { ETCDCTL_API: '3' }, allowFail, timeoutMs: 10_000 },
  );

/** `iptlb <args>` in h1 (exit code checked by the caller). */
const cli = (t: NetnsTopology, args: string[], env: Record<string, string> = {}): Promise<ChildResult> =>
  t.exec('h1', [process.execPath, CLI_PATH, ...args], { env, allowFail: true, timeoutMs: 20_000 });

/** The TLS flags with client certificate `cn`. */
const tls = (cn = 'client', ca = 'ca'): string[] => [
  '--etcd',
  EP,
  '--etcd-ca',
  pem(ca),
  '--etcd-cert',
  pem(cn),
  '--etcd-key',
  key(cn),
];

/**
 * A refusal the agent keeps meeting (`said`, one line) is said at least once and not again while it
 * retries for that reason: between two of its lines there is another failure's (`agent: store: …`: on a
 * loaded host a call may end by its deadline before the TLS handshake or the authentication answers,
 * after which the refusal is said again).
 */
function saidOncePerSpell(stderr: string, said: RegExp): void {
  const lines = stderr.split('\n').filter((l) => said.test(l) || l.includes('agent: store: '));
  assert.ok(
    lines.some((l) => said.test(l)),
    `said at least once:\n${stderr}`,
  );
  for (let i = 1; i < lines.length; i++)
    assert.ok(!(said.test(lines[i]!) && said.test(lines[i - 1]!)), `said again while retrying:\n${stderr}`);
}

async function waitLog(a: Spawned, re: RegExp, what: string): Promise<void> {
  await waitFor(what, async () => re.test(a.stderr())).catch((e: Error) => {
    throw new Error(`${e.message}\nagent stderr:\n${a.stderr().slice(-3000)}`);
  });
}

function agent(t: NetnsTopology, dir: string, name: string, args: string[], env: Record<string, string> = {}): Spawned {
  return t.spawn(
    'h1',
    [
      process.execPath,
      CLI_PATH,
      'agent',
      '--host',
      'h1',
      '--state-file',
      path.join(dir, `${name}.db`),
      '--engine',
      'nft',
      '--executor',
      'native',
      '--min-sync-ms',
      '0',
      '--check-ms',
      '200',
      '--etcd-timeout-ms',
      '2000',
      '--backoff-max-ms',
      '1000',
      ...args,
    ],
    env,
  );
}

/** `fleet apply` of profile `name` on `vip`; returns its revision. */
async function put(t: NetnsTopology, auth: string[], name: string, vip: string, env = {}): Promise<number> {
  const r = await cli(
    t,
    ['fleet', 'apply', ...auth, '--profile', name, '--src-addr', `${vip}:8080`, '--dest-addr', DESTS],
    env,
  );
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /Warning/, 'no warning in front of the output');
  return Number(/ at revision (\d+)$/m.exec(r.stderr)![1]);
}

/**
 * Waits until h1's host key (read by etcdctl as root: a tenth of the time of a `fleet status`) holds revision `rev`
 * or later, h1 watching.
 */
async function applied(t: NetnsTopology, rev: number, a: Spawned): Promise<void> {
  await waitFor(`h1 at revision ${rev}`, async () => {
    const r = await ctl(t, ['get', '/iptlb/v1/hosts/h1', '--print-value-only'], true);
    const st = r.code === 0 && r.stdout.trim() ? (JSON.parse(r.stdout) as { revision: number; watch: string }) : null;
    return st && st.revision >= rev && st.watch === 'watching';
  }).catch((e: Error) => {
    throw new Error(`${e.message}\nagent stderr:\n${a.stderr().slice(-3000)}`);
  });
}

/** `fleet status --expect h1 --json` converged (exit 0) on h1 at revision `rev`. */
async function fleetConverged(t: NetnsTopology, auth: string[], rev: number, env = {}): Promise<void> {
  const r = await cli(t, ['fleet', 'status', '--expect', 'h1', '--json', ...auth], env);
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  const st = JSON.parse(r.stdout) as { target: number; converged: boolean; hosts: { host: string }[] };
  assert.equal(st.target, rev);
  assert.equal(st.converged, true);
  assert.deepEqual(
    st.hosts.map((h) => h.host),
    ['h1'],
  );
}

/** What the agent's state file and the kernel hold: `iptlb status --json` in h1, name → status. */
async function kernelStatus(t: NetnsTopology, dir: string, name: string): Promise<Record<string, string>> {
  const r = await cli(t, ['status', '--json', '--engine', 'nft', '--state-file', path.join(dir, `${name}.db`)]);
  assert.equal(r.code, 0, r.stderr);
  const rows = (JSON.parse(r.stdout) as { profiles: { name: string; status: string }[] }).profiles;
  return Object.fromEntries(rows.map((x) => [x.name, x.status]));
}

async function balanced(t: NetnsTopology, vip: string): Promise<void> {
  const r = await t.exec('h1', [process.execPath, FIX, 'probe', vip, '8080', '20']);
  const s = JSON.parse(r.stdout.trim().split('\n').pop()!) as Split;
  assert.equal(s.failures, 0, `${vip}: ${s.errors.join('; ')}`);
  assert.deepEqual(Object.keys(s.counts).sort(), ['backend:9001', 'backend:9002'], JSON.stringify(s.counts));
}

/** One line on stderr, exit 1. */
function refused(r: ChildResult, re: RegExp): void {
  assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
  assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  assert.match(r.stderr, re);
}

async function onEtcd(fn: (t: NetnsTopology, dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-etcd-tls-'));
  await NetnsTopology.with(['h1'], async (t) => {
    await startEtcd(t, dir);
    const b = t.spawn('h1', [process.execPath, FIX, 'backends', '9001,9002']);
    await b.waitFor(/ready/);
    await fn(t, dir);
  });
}

test(
  'fleet over TLS (etcd --client-cert-auth): fleet apply/list/status and an agent over https with CA, certificate and key (flags, environment); a wrong CA or no client certificate is one line for fleet, and said by the agent, which retries',
  { skip: SKIP, timeout: 90_000 },
  async () => {
    await onEtcd(async (t, dir) => {
      const rev = await put(t, tls(), 'web', '127.100.0.10');
      // The agent given everything by its environment, the endpoint by name.
      const a = agent(t, dir, 'agent', [], {
        IPTLB_ETCD_ENDPOINTS: 'https://localhost:2379',
        IPTLB_ETCD_CA: pem('ca'),
        IPTLB_ETCD_CERT: pem('client'),
        IPTLB_ETCD_KEY: key('client'),
      });
      await applied(t, rev, a);
      const [kernel, list, , , wrongCa, noCert] = await Promise.all([
        kernelStatus(t, dir, 'agent'),
        cli(t, ['fleet', 'list', '--json', ...tls()]),
        fleetConverged(t, tls(), rev),
        balanced(t, '127.100.0.10'),
        cli(t, ['fleet', 'list', ...tls('client', 'other-ca')]),
        cli(t, ['fleet', 'status', '--etcd', EP, '--etcd-ca', pem('ca')]),
      ]);
      assert.deepEqual(kernel, { web: 'in-sync' });
      assert.equal(list.code, 0, list.stderr);
      assert.deepEqual(
        (JSON.parse(list.stdout) as { profiles: { name: string }[] }).profiles.map((p) => p.name),
        ['web'],
      );
      assert.doesNotMatch(a.stderr(), /Warning|store: /);
      assert.equal((await a.kill('SIGTERM')).code, 0);

      // Misconfigured clients.
      refused(
        wrongCa,
        /^iptlb: error: etcd https:\/\/127\.0\.0\.1:2379: TLS: etcd's server certificate is not accepted \(unable to verify the first certificate\): check --etcd-ca/,
      );
      refused(
        noCert,
        /^iptlb: error: etcd https:\/\/127\.0\.0\.1:2379: TLS: etcd refused the client certificate \(alert "(bad certificate|certificate required)"\): .*give --etcd-cert and --etcd-key/,
      );
      const bad = agent(t, dir, 'bad', tls('client', 'other-ca'));
      await waitLog(bad, /agent: TLS: /, 'the wrong-CA agent saying why');
      await new Promise((r) => setTimeout(r, 1500)); // a few retries (backoff 200, 400, 800 ms): quiet
      saidOncePerSpell(
        bad.stderr(),
        /agent: TLS: etcd's server certificate is not accepted \(unable to verify the first certificate\): check --etcd-ca .*; the kernel holds no profile of this agent \(its state file holds none; no revision listed yet\); retrying with backoff/,
      );
      assert.doesNotMatch(bad.stderr(), /(agent: store|host status not written): TLS: /, 'the retries are quiet');
      assert.equal((await bad.kill('SIGTERM')).code, 0);
    });
  },
);

/** The role setup docs/fleet.md shows ("A role for agents"), its `etcdctl` commands for host h1. */
function documentedSetup(): string[][] {
  const doc = readFileSync(path.join(PROJECT_ROOT, 'docs', 'fleet.md'), 'utf8');
  const block = /A role for agents[\s\S]*?```sh\n([\s\S]*?)```/.exec(doc)![1]!;
  return block
    .split('\n')
    .flatMap((l) => l.split(' && '))
    .map((c) => c.replace(/#.*/, '').trim())
    .filter((c) => c.startsWith('etcdctl '))
    .map((c) => c.replaceAll('web1', 'h1').split(/\s+/).slice(1));
}

const PASSWORDS: Record<string, string> = { root: 'root-pw', 'iptlb-agent-h1': 'agent-pw', 'iptlb-operator': 'op-pw' };

test(
  "fleet with etcd's auth, roles as docs/fleet.md sets them up: the agent user applies, watches, checks and keeps its host key (lease revoked, then granted again); the operator writes; the agent user may not write profiles; a wrong password is one line for fleet, said once by the agent",
  { skip: SKIP, timeout: 90_000 },
  async () => {
    await onEtcd(async (t, dir) => {
      const setup = documentedSetup();
      assert.ok(
        setup.some((c) => c.join(' ') === 'auth enable'),
        `the documented setup enables auth: ${setup.join('; ')}`,
      );
      for (const c of setup) {
        // `user add NAME` asks for a password on a terminal: given here.
        const args = c[0] === 'user' && c[1] === 'add' ? [...c, `--new-user-password=${PASSWORDS[c[2]!]}`] : c;
        const r = await ctl(t, args);
        assert.equal(r.code, 0, `etcdctl ${args.join(' ')}: ${r.stderr}`);
      }
      const op = ['--etcd-user', 'iptlb-operator', ...tls()];
      const opEnv = { IPTLB_ETCD_PASSWORD: PASSWORDS['iptlb-operator']! };
      const ag = ['--etcd-user', 'iptlb-agent-h1', ...tls()];
      const agEnv = { IPTLB_ETCD_PASSWORD: PASSWORDS['iptlb-agent-h1']! };

      const rev = await put(t, op, 'web', '127.100.0.10', opEnv);
      // A long lease: the host key goes only when revoked.
      const a = agent(t, dir, 'agent', [...ag, '--lease-ttl', '600'], agEnv);
      await applied(t, rev, a);
      const rev2 = await put(t, op, 'api', '127.100.0.11', opEnv); // by the agent's watch
      await applied(t, rev2, a);

      // Its lease revoked (as a restored or cleaned-up etcd would lose it): the agent's check, a linearizable
      // read of the profiles with read permission only, then a read of its key, finds the key gone and
      // writes it under a new lease (the first write, under the revoked lease, fails).
      const got = await ctl(t, ['get', '/iptlb/v1/hosts/h1', '-w', 'json']);
      const lease = BigInt(/"lease":(\d+)/.exec(got.stdout)?.[1] ?? 0); // 64 bits: not a JSON number for JS
      assert.ok(lease > 0n, `the host key has a lease: ${got.stdout}`);
      await ctl(t, ['lease', 'revoke', lease.toString(16)]);
      await waitLog(a, /host key \/iptlb\/v1\/hosts\/h1 is gone \(its lease lost\); writing it again/, 'key repair');
      await applied(t, rev2, a);

      const agentEvil = ['--profile', 'evil', '--src-addr', '127.100.0.12:8080', '--dest-addr', DESTS];
      const [kernel, , , agentList, agentApply, byCert, wrongPw] = await Promise.all([
        kernelStatus(t, dir, 'agent'),
        Promise.all(['127.100.0.10', '127.100.0.11'].map((vip) => balanced(t, vip))),
        fleetConverged(t, op, rev2, opEnv),
        // The agent's user reads the profiles but may not change them.
        cli(t, ['fleet', 'list', ...ag], agEnv),
        cli(t, ['fleet', 'apply', ...agentEvil, ...ag], agEnv),
        // Without --etcd-user, the certificate's common name is the user.
        cli(t, ['fleet', 'list', ...tls('iptlb-operator')]),
        cli(t, ['fleet', 'list', ...op], { IPTLB_ETCD_PASSWORD: 'wrong' }),
      ]);
      assert.deepEqual(kernel, { web: 'in-sync', api: 'in-sync' });
      assert.doesNotMatch(
        a.stderr(),
        /linearizable read failed|refused this agent's credentials|store: |permission denied|PERMISSION_DENIED/,
      );
      assert.equal(agentList.code, 0, agentList.stderr);
      assert.match(agentList.stdout, /^api\t127\.100\.0\.11:8080\/tcp.*\nweb\t127\.100\.0\.10:8080\/tcp/m);
      refused(
        agentApply,
        /^iptlb: error: etcd https:\/\/127\.0\.0\.1:2379: 7 PERMISSION_DENIED: etcdserver: permission denied: the roles of etcd user "iptlb-agent-h1" do not allow this \(fleet apply and delete need readwrite on \/iptlb\/v1\/profiles\//,
      );
      assert.equal(byCert.code, 0, byCert.stderr);
      assert.equal(byCert.stdout, agentList.stdout, 'nothing changed');
      refused(
        wrongPw,
        /^iptlb: error: etcd https:\/\/127\.0\.0\.1:2379: 3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password: check --etcd-user and its password in IPTLB_ETCD_PASSWORD\n$/,
      );

      // SIGTERM: the agent user may revoke its own lease: the key goes at once (not after 600 s).
      assert.equal((await a.kill('SIGTERM')).code, 0);
      assert.equal((await ctl(t, ['get', '/iptlb/v1/hosts/h1'])).stdout, '', 'host key revoked at stop');

      const wrong = agent(t, dir, 'wrong', ag, { IPTLB_ETCD_PASSWORD: 'wrong' });
      await waitLog(wrong, /refused this agent's credentials/, 'the agent with a wrong password saying why');
      await new Promise((r) => setTimeout(r, 1500)); // a few retries (backoff 200, 400, 800 ms): quiet
      saidOncePerSpell(
        wrong.stderr(),
        /agent: etcd refused this agent's credentials \(3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password\): check --etcd-user and IPTLB_ETCD_PASSWORD/,
      );
      assert.doesNotMatch(
        wrong.stderr(),
        /(agent: store|host status not written): 3 INVALID_ARGUMENT/,
        'the retries are quiet',
      );
      assert.equal((await wrong.kill('SIGTERM')).code, 0);
    });
  },
);
