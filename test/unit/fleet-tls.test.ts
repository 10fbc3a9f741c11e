/** What `iptlb fleet` says when TLS or etcd's credentials fail (no etcd: the client's errors as they come). */
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { storeErrorMessage } from '../../src/fleet/store.js';

const UNAVAILABLE = '14 UNAVAILABLE: No connection established. Last error: Error: ';

test('storeErrorMessage: TLS failures say what to check, in one line without OpenSSL internals', () => {
  assert.equal(
    storeErrorMessage(new Error(`${UNAVAILABLE}unable to verify the first certificate. Resolution note: \nmore`)),
    "TLS: etcd's server certificate is not accepted (unable to verify the first certificate): check --etcd-ca (the CA certificate that signed etcd's server certificate)",
  );
  assert.match(storeErrorMessage(new Error(`${UNAVAILABLE}self-signed certificate.`)), /^TLS: .*--etcd-ca/);
  assert.equal(
    storeErrorMessage(
      new Error(
        `${UNAVAILABLE}Hostname/IP does not match certificate's altnames: IP: 127.0.0.2 is not in the cert's list: 127.0.0.1.`,
      ),
    ),
    "TLS: etcd's server certificate does not name the endpoint's host (IP: 127.0.0.2 is not in the cert's list: 127.0.0.1): use an endpoint the certificate names, or a certificate that names it",
  );
  assert.equal(
    storeErrorMessage(
      new Error(
        `${UNAVAILABLE.replace('Error: ', '')}80CC8196BB7F0000:error:0A000412:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1601:SSL alert number 42`,
      ),
    ),
    'TLS: etcd refused the client certificate (alert "bad certificate"): etcd checks client certificates (--client-cert-auth); give --etcd-cert and --etcd-key, a certificate signed by a CA that etcd trusts',
  );
  // Anything else is its first line, as before.
  assert.equal(
    storeErrorMessage(new Error(`${UNAVAILABLE}connect ECONNREFUSED 127.0.0.1:1. Resolution note: \nmore`)),
    `${UNAVAILABLE}connect ECONNREFUSED 127.0.0.1:1.`,
  );
});

test('fleet commands: refused credentials or permissions name the user and what to check (one line, exit 1)', async () => {
  const { EtcdStore } = await import('../../src/fleet/store.js');
  const { main } = await import('../../src/cli/main.js');
  const run = async (why: string, argv: string[]): Promise<{ code: number; err: string }> => {
    const connect = mock.method(EtcdStore, 'connect', async () => {
      throw new Error(why);
    });
    let err = '';
    try {
      const code = await main(argv, { out: () => {}, err: (s) => (err += s + '\n') });
      return { code, err };
    } finally {
      connect.mock.restore();
    }
  };
  const env = process.env.IPTLB_ETCD_PASSWORD;
  process.env.IPTLB_ETCD_PASSWORD = 'x';
  try {
    let r = await run('7 PERMISSION_DENIED: etcdserver: permission denied', [
      'fleet',
      'delete',
      'a',
      '--etcd',
      '127.0.0.1:1',
      '--etcd-user',
      'iptlb-agent-web1',
    ]);
    assert.equal(r.code, 1);
    assert.equal(
      r.err,
      'iptlb: error: etcd 127.0.0.1:1: 7 PERMISSION_DENIED: etcdserver: permission denied: the roles of etcd user "iptlb-agent-web1" do not allow this (fleet apply and delete need readwrite on /iptlb/v1/profiles/, list read on it, status read on it and on /iptlb/v1/hosts/)\n',
    );
    r = await run('3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password', [
      'fleet',
      'list',
      '--etcd',
      '127.0.0.1:1',
      '--etcd-user',
      'ops',
    ]);
    assert.equal(r.code, 1);
    assert.equal(
      r.err,
      'iptlb: error: etcd 127.0.0.1:1: 3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password: check --etcd-user and its password in IPTLB_ETCD_PASSWORD\n',
    );
  } finally {
    if (env === undefined) delete process.env.IPTLB_ETCD_PASSWORD;
    else process.env.IPTLB_ETCD_PASSWORD = env;
  }
});
