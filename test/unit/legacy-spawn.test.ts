/**
 * The legacy spawn executor against fake `iptables-legacy-save`/`-restore` and `ipset` (shell scripts
 * first in PATH, the table a file): what it does when another tool rewrites the nat table between its
 * read and its restore.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { SpawnExecutor } from '../../src/engines/legacy/spawn.js';
import { LegacyEngine } from '../../src/engines/legacy/index.js';
import { planTransaction } from '../../src/engines/legacy/plan.js';
import { validateProfile } from '../../src/model/profile.js';
import { IptlbError } from '../../src/model/errors.js';

const HEAD = '*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n';
/** Profile web (127.100.0.10:8081 → 127.0.0.1:9001) as iptlb wrote it, and that table after `iptables -t nat -F`. */
const WEB = `${HEAD}:IPTLB_NAT_WEB - [0:0]\n:IPTLB_OUTPUT - [0:0]
[5:300] -A OUTPUT -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT
[5:300] -A IPTLB_NAT_WEB -d 127.100.0.10/32 -p tcp -j DNAT --to-destination 127.0.0.1:9001
[5:300] -A IPTLB_OUTPUT -d 127.100.0.10/32 -p tcp -m comment --comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB
COMMIT\n`;
const FLUSHED = `${HEAD}:IPTLB_NAT_WEB - [0:0]\n:IPTLB_OUTPUT - [0:0]\nCOMMIT\n`;

/**
 * A directory of fake tools: save prints `table`; restore records its input (`restore.N`) and fails
 * as iptables-restore does on a `-D` of a rule the table lacks, after running `before-restore` once
 * (the other tool, racing); ipset records its input and says the set exists.
 */
function fakeTools(table: string): {
  dir: string;
  restores: () => string[];
  setTable: (t: string) => void;
  destroySet: () => void;
} {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-fake-legacy-'));
  const tool = (name: string, body: string): void => {
    writeFileSync(path.join(dir, name), `#!/bin/bash\nD=${dir}\n${body}\n`);
    chmodSync(path.join(dir, name), 0o755);
  };
  writeFileSync(path.join(dir, 'table'), table);
  writeFileSync(path.join(dir, 'set'), ''); // the gate's set exists
  tool('iptables-legacy-save', 'cat "$D/table"');
  tool(
    'iptables-legacy-restore',
    `if [ -f "$D/before-restore" ]; then cp "$D/before-restore" "$D/table"; rm "$D/before-restore"; fi
if [ -f "$D/destroy-set" ]; then rm -f "$D/set" "$D/destroy-set"; fi
N=$(ls "$D" | grep -c '^restore\\.'); cat > "$D/restore.$N"
if grep -q -- '--match-set' "$D/restore.$N" && [ ! -f "$D/set" ]; then
  echo "iptables-restore v1.8.9 (legacy): Set iptlb-vip-inet doesn't exist." >&2; exit 2; fi
L=0; while IFS= read -r line; do L=$((L+1)); case "$line" in -D*) rule="-A \${line#-D }"; if ! sed 's/^\\[[0-9]*:[0-9]*\\] //' "$D/table" | grep -qxF -- "$rule"; then echo "iptables-restore: line $L failed" >&2; exit 1; fi;; esac; done < "$D/restore.$N"
exit 0`,
  );
  tool(
    'ipset',
    `case "$1 $2" in
"-n list") [ -f "$D/set" ]; exit $?;;
"save iptlb-vip-inet") [ -f "$D/members" ] && sed 's/^/add iptlb-vip-inet /' "$D/members"; exit 0;;
"-exist restore") while read -r a rest; do case $a in
  create) touch "$D/set";;
  add|del) [ -f "$D/set" ] || { echo "ipset v7.17: Error in line 1: The set with the given name does not exist" >&2; exit 1; };;
  destroy) rm -f "$D/set";;
  esac; echo "$a $rest" >> "$D/ipset.in"; done; exit 0;;
esac
exit 0`,
  );
  return {
    dir,
    restores: () =>
      readdirSync(dir)
        .filter((f) => f.startsWith('restore.'))
        .sort()
        .map((f) => readFileSync(path.join(dir, f), 'utf8')),
    setTable: (t) => writeFileSync(path.join(dir, 'before-restore'), t),
    destroySet: () => writeFileSync(path.join(dir, 'destroy-set'), ''),
  };
}

async function withPath<T>(dir: string, f: () => Promise<T>): Promise<T> {
  const saved = process.env.PATH;
  process.env.PATH = `${dir}:${saved ?? ''}`;
  try {
    return await f();
  } finally {
    process.env.PATH = saved;
  }
}

const web2 = validateProfile({
  name: 'web',
  source: '127.100.0.10:8081',
  destination: ['127.0.0.1:9001', '127.0.0.1:9002'],
});

test('legacy spawn: a nat table flushed by another tool between the read and the restore: the change is rendered against the flushed table and committed (before: refused, "line 3 failed" on the -D of a flushed jump)', async () => {
  const fake = fakeTools(WEB);
  try {
    await withPath(fake.dir, async () => {
      const ex = new SpawnExecutor();
      fake.setTable(FLUSHED); // iptables -t nat -F, run while iptlb spawns its restore
      await ex.commit(planTransaction([web2], [], 'ipv4'));
    });
    const r = fake.restores();
    assert.equal(r.length, 2, 'one refused restore, then one against the table as it is now');
    assert.match(r[0]!, /^-D IPTLB_OUTPUT .*iptlb:web/m);
    assert.doesNotMatch(r[1]!, /^-D /m, 'nothing of the flushed rules is deleted again');
    assert.match(r[1]!, /^-I OUTPUT 1 -m set --match-set iptlb-vip-inet dst,dst -j IPTLB_OUTPUT$/m, 'the gate back');
    assert.match(r[1]!, /--comment "iptlb:web" -m tcp --dport 8081 -j IPTLB_NAT_WEB$/m);
    assert.match(r[1]!, /--to-destination 127\.0\.0\.1:9002$/m);
    assert.match(readFileSync(path.join(fake.dir, 'ipset.in'), 'utf8'), /add iptlb-vip-inet 127\.100\.0\.10,tcp:8081/);
  } finally {
    rmSync(fake.dir, { recursive: true, force: true });
  }
});

test('legacy spawn: a restore refused while the table stays as read is the error, once (no retry), naming the line', async () => {
  // The table lacks the jump the read saw only in what restore checks: the kernel refuses the same text again.
  const fake = fakeTools(WEB);
  try {
    writeFileSync(path.join(fake.dir, 'table'), WEB);
    const err = await withPath(fake.dir, async () => {
      const ex = new SpawnExecutor();
      // The save shows web; the restore checks against a table without it: refused, and a re-read shows no change.
      writeFileSync(
        path.join(fake.dir, 'iptables-legacy-restore'),
        `#!/bin/bash\nD=${fake.dir}\nN=$(ls "$D" | grep -c '^restore\\.'); cat > "$D/restore.$N"\necho "iptables-restore: line 3 failed" >&2; exit 1\n`,
      );
      return ex.commit(planTransaction([web2], [], 'ipv4')).then(
        () => null,
        (e: unknown) => e,
      );
    });
    assert.ok(err instanceof IptlbError, String(err));
    assert.equal(err.code, 'EKERNEL');
    assert.match(err.message, /line 3 failed at line 3: -D IPTLB_OUTPUT/);
    assert.equal(fake.restores().length, 1);
    assert.ok(!existsSync(path.join(fake.dir, 'before-restore')));
  } finally {
    rmSync(fake.dir, { recursive: true, force: true });
  }
});

test('legacy spawn: the gate\'s set destroyed by another tool between the read and the restore (after a flush left no rule referring to it): the set is made again and the change committed (before: refused, "Set iptlb-vip-inet doesn\'t exist")', async () => {
  // `iptables -t nat -F; iptables -t nat -X; ipset destroy iptlb-vip-inet`, with iptlb's read after the -X.
  const fake = fakeTools(`${HEAD}COMMIT\n`);
  try {
    await withPath(fake.dir, async () => {
      const ex = new SpawnExecutor();
      fake.destroySet();
      await ex.commit(planTransaction([web2], [], 'ipv4'));
    });
    const r = fake.restores();
    assert.equal(r.length, 2, 'one refused restore, then one after the set was made again');
    assert.equal(r[0], r[1], 'the same text: only the set was missing');
    const ipset = readFileSync(path.join(fake.dir, 'ipset.in'), 'utf8');
    assert.match(ipset, /^create iptlb-vip-inet hash:ip,port family inet/m);
    assert.ok(existsSync(path.join(fake.dir, 'set')));
  } finally {
    rmSync(fake.dir, { recursive: true, force: true });
  }
});

test("legacy spawn: an element another tool added to the gate's set (ipset add) is orphaned in status and deleted by sync, the profiles' elements kept (before: in sync, and left)", async () => {
  const fake = fakeTools(WEB);
  // `ipset save iptlb-vip-inet`: web's element and another tool's.
  writeFileSync(path.join(fake.dir, 'members'), '127.100.0.10,tcp:8081\n127.100.0.99,tcp:443\n');
  const web = validateProfile({ name: 'web', source: '127.100.0.10:8081', destination: ['127.0.0.1:9001'] });
  const state = new Map([['web', web]]);
  try {
    await withPath(fake.dir, async () => {
      const engine = new LegacyEngine(new SpawnExecutor());
      const view = await engine.read('ipv4');
      const reports = engine.compare(state, view);
      assert.deepEqual(
        reports.map((r) => [r.name, r.status]),
        [
          ['web', 'in-sync'],
          ['gate:127.100.0.99,tcp:443', 'orphaned'],
        ],
      );
      await engine.commit(engine.planReplace('ipv4', state, view));
    });
    const ipset = readFileSync(path.join(fake.dir, 'ipset.in'), 'utf8');
    assert.match(ipset, /^del iptlb-vip-inet 127\.100\.0\.99,tcp:443$/m, ipset);
    assert.doesNotMatch(ipset, /^del iptlb-vip-inet 127\.100\.0\.10/m, ipset);
    assert.doesNotMatch(ipset, /^destroy/m, ipset);
  } finally {
    rmSync(fake.dir, { recursive: true, force: true });
  }
});
