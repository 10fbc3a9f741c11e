/**
 * /metrics as a demanding scraper sees it: the exposition read by a strict parser of the text format 0.0.4
 * (test/harness/prom-text.ts). No root: a core on the fake kernel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { validateProfile } from '../../src/index.js';
import { Core } from '../../src/core/core.js';
import { FakeLegacyKernel } from '../harness/fake-kernel.js';
import { ProcessStats, renderMetrics } from '../../src/metrics/server.js';
import { agentMetrics } from '../../src/cli/commands/agent.js';
import { labelSets, parsePromText } from '../harness/prom-text.js';
import type { ProfileReport } from '../../src/model/report.js';

const D = ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.1:9003'];

test('the strict parser refuses what a strict scraper refuses', () => {
  const ok = '# HELP a_total x\n# TYPE a_total counter\na_total{p="a\\"b\\\\c\\nd"} 1\n';
  assert.equal(parsePromText(ok).get('a_total')!.samples[0].labels.p, 'a"b\\c\nd');
  const bad: [string, RegExp][] = [
    ['# TYPE a gauge\na 1', /newline/],
    ['# TYPE a gauge\n# TYPE a gauge\na 1\n', /second TYPE/],
    ['# HELP a x\n# HELP a y\na 1\n', /second HELP/],
    ['a 1\n# TYPE a gauge\n', /TYPE after samples/],
    ['a{p="x"} 1\na{p="x"} 2\n', /twice/],
    ['a{p="x",q="y"} 1\na{q="y",p="x"} 2\n', /twice/],
    ['a{p="x\\t"} 1\n', /escape/],
    ['a{p="x} 1\n', /not closed|no value/],
    ['# TYPE a counter\na 1\n', /_total/],
    ['# TYPE a_total counter\na_total -1\n', /-1/],
    ['a 1\nb 1\na{x="1"} 1\n', /continues after/],
    ['a one\n', /not a float/],
    ['# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', /cumulative/],
    ['a{__x="1"} 1\n', /label name/],
  ];
  for (const [text, re] of bad) assert.throws(() => parsePromText(text), re, JSON.stringify(text));
});

test('the exposition of a core with profiles, health, orphans with quotes, backslashes and newlines, the process and agent families, parses strictly', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-metrics-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const kernel = new FakeLegacyKernel();
  const core = new Core({ stateFile: path.join(dir, 'state.db'), engine: 'legacy' }, { legacy: kernel } as never);
  await core.transact(
    () => ({
      upsert: [
        validateProfile({ name: 'web', source: '127.100.0.10:80', destination: [D[0], `${D[1]}*2`] }),
        validateProfile({ name: 'api', source: '127.100.0.11:80', destination: D, health: { kind: 'tcp' } }),
        validateProfile({ name: 'v6', source: '[fd00::10]:80', destination: ['[fd00::1]:80', '[fd00::2]:80'] }),
      ],
      remove: [],
    }),
    { run: true },
  );
  // Orphans whose names come from the kernel (another tool's, hand-made) are label values: escaped.
  const real = core.statusReport.bind(core);
  const odd = ['a"b', 'back\\slash', 'new\nline', 'tab\there', 'ünï'];
  core.statusReport = async (o) => {
    const r = await real(o);
    const orphan = (name: string): ProfileReport => ({
      name,
      status: 'orphaned',
      destinations: [],
      packets: 0,
      bytes: 0,
    });
    return { ...r, profiles: [...r.profiles, ...odd.map(orphan), orphan(odd[0])] };
  };
  const stats = new ProcessStats();
  stats.observeCommit(3);
  stats.observeCommit(3000);
  stats.observeSync({ drifted: 2, committed: true, commitMs: 0.4 });
  stats.observeSync(new Error('refused'), 1);
  const checker = {
    states: () => [],
    counters: { checks: new Map([['api', 7]]), failures: new Map([['api', 2]]) },
  } as never;
  const text = await renderMetrics({
    core,
    stats,
    checker,
    extra: () => agentMetrics({ revision: 12, profiles: 3, refused: [], watch: 'watching' }),
  });
  const families = parsePromText(text);
  const inSync = families.get('iptlb_profile_in_sync')!;
  assert.deepEqual(
    inSync.samples.filter((s) => s.labels.orphan !== undefined).map((s) => s.labels.orphan),
    odd,
    'each orphan once, its name read back as it was',
  );
  assert.deepEqual(
    families
      .get('iptlb_destination_packets_total')!
      .samples.map((s) => `${s.labels.profile} ${s.labels.destination}`)
      .sort(),
    ['api 127.0.0.1:9001', 'api 127.0.0.1:9002', 'api 127.0.0.1:9003', 'v6 [fd00::1]:80', 'v6 [fd00::2]:80'].concat([
      'web 127.0.0.1:9001',
      'web 127.0.0.1:9002',
    ]),
  );
  for (const f of families.values()) {
    // One label set per family, but for iptlb_profile_in_sync's orphans (documented: profile="" and orphan).
    if (f.name === 'iptlb_profile_in_sync') assert.deepEqual(labelSets(f), ['profile', 'orphan,profile']);
    else assert.equal(labelSets(f).length <= 1 || f.type === 'histogram', true, `${f.name}: ${labelSets(f)}`);
  }
  const h = families.get('iptlb_commit_duration_seconds')!;
  assert.equal(h.samples.find((s) => s.name.endsWith('_count'))!.value, 3);
  assert.equal(families.get('iptlb_health_checks_total')!.samples[0].value, 7);
  assert.equal(families.get('iptlb_agent_watch_state')!.samples.length, 4);
});
