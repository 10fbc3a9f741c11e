/**
 * Health checks and metrics (issue 15) with real TCP and HTTP backends in a fresh network namespace,
 * on the native pairs of both engines (every pair with IPTLB_SOAK=1: the checker and the overlay are a
 * layer above the executor, see aboveExecutor in common.ts): see fixtures/health.ts for the scenario.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { runJsonInFreshNetns } from '../harness/netns.js';
import { ABOVE_EXECUTOR_PAIRS } from './common.js';

const FX = new URL('./fixtures/health.js', import.meta.url).pathname;
const STOPPED = new URL('./fixtures/health-stopped.js', import.meta.url).pathname;
const ok = (r: { code: number; stderr: string }, what: string): void => assert.equal(r.code, 0, `${what}: ${r.stderr}`);

for (const pair of ABOVE_EXECUTOR_PAIRS) {
  describe(`health checks and metrics over ${pair.name}`, { skip: pair.skip }, () => {
    test('stopped backend drained, no failed connection after; back when started; http 500 drained; separate check port; all down kept or drained; /metrics and /healthz', async () => {
      const r: any = await runJsonInFreshNetns(FX, [pair.name], { timeoutMs: 240_000 });
      const ctx = `\n--- watch log:\n${r.log}`;
      assert.match(r.log, /health: tcp checks sent by the native prober/, 'the native prober is the default' + ctx);
      for (const k of ['applyWeb', 'applyApi', 'applySep', 'applyDr']) ok(r[k], k);
      assert.equal(r.badFileWatch.running, true, 'a watch of a file that does not parse keeps running');
      assert.equal(r.badFileWatch.code, 0, 'and stops cleanly on SIGTERM' + r.badFileWatch.log);
      assert.match(r.badFileWatch.log, /is not applied: .*the kernel is left as it is/);
      assert.equal(r.badFlag.code, 2);
      assert.match(r.badFlag.stderr, /^iptlb: error: health\.fall: "0" must be a whole number from 1 to 100\n$/);
      assert.deepEqual(r.oneShotNoProbe, ['unchecked', 'unchecked', 'unchecked'], 'a one-shot CLI never probes');
      // Drained: shown by status, which stays in sync (exit 0); sync leaves it drained.
      assert.equal(r.drained.health, 'down');
      assert.match(r.drained.lastError, /ECONNREFUSED/);
      assert.deepEqual(r.statusDrained, { code: 0, inSync: true });
      assert.equal(r.secondWatch.killed, false, 'a second watch of the state file does not run' + r.secondWatch.stderr);
      assert.notEqual(r.secondWatch.code, 0);
      assert.match(
        r.secondWatch.stderr,
        /^iptlb: error: health checks: process \d+ already checks the destinations of \S+ \(it holds \S+\.health\.lock\); one process checks a state file, two would undo each other's drains: stop that one, or run this one without health checks\n$/,
      );
      assert.equal(r.drainedAfterSecond, 0, 'the first watch keeps its drain');
      ok(r.sync, 'sync');
      assert.equal(r.splitDown.failures, 0, JSON.stringify(r.splitDown.errors) + ctx);
      assert.equal(r.splitDown.counts['backend:9002'] ?? 0, 0, 'no new connection to the stopped backend');
      assert.equal((r.splitDown.counts['backend:9001'] ?? 0) + (r.splitDown.counts['backend:9003'] ?? 0), 300);
      assert.match(r.statusText, /127\.0\.0\.1:9002\t0\t0\tdown \(drained; last check [^;]+; ECONNREFUSED/);
      assert.match(
        r.log,
        /health web 127\.0\.0\.1:9002: down after 2 failed check\(s\), last: ECONNREFUSED \(connect\); drained/,
      );
      // Back.
      assert.equal(r.splitUp.failures, 0, JSON.stringify(r.splitUp.errors));
      assert.ok(r.splitUpCounts[1] > 0, `9002 gets traffic again: ${r.splitUpCounts}`);
      // Metrics: counters since the last commit = the connections of the last split, per destination.
      assert.equal(r.metricsCode, 200);
      assert.deepEqual(r.metricWeb, r.splitUpCounts, 'iptlb_destination_packets_total = connections sent');
      assert.deepEqual(r.statusUp, r.splitUpCounts);
      assert.deepEqual(r.metricUp, [1, 1, 1]);
      for (const f of [
        'iptlb_destination_packets_total',
        'iptlb_destination_bytes_total',
        'iptlb_destination_health',
        'iptlb_destination_weight',
        'iptlb_destination_effective_weight',
        'iptlb_profiles',
        'iptlb_commits_total',
        'iptlb_commit_duration_seconds',
        'iptlb_drift_detected_total',
        'iptlb_drift_repaired_total',
        'iptlb_sync_failures_total',
        'iptlb_health_checks_total',
        'iptlb_health_check_failures_total',
      ]) {
        assert.ok(r.metricFamilies.includes(f), `metric family ${f}`);
      }
      assert.ok(r.metricCommits >= 2, `commits ${r.metricCommits}`);
      assert.equal(r.healthz.code, 200, r.healthz.body);
      // http 500.
      assert.match(r.api2.lastError, /HTTP 500 \(expected 200-399\)/);
      assert.equal(r.api1.health, 'up');
      assert.deepEqual(r.apiCounts, { 9101: 40, 9102: 0 });
      // Separate check port, all down: kept.
      assert.ok(
        r.sepDown.destinations.every((d: any) => d.effectiveWeight === undefined),
        'all down: every destination kept',
      );
      assert.equal(r.sepDown.detail, 'every destination is down: all kept (health.allDown: keep)');
      assert.equal(r.sepSplit.failures, 0);
      assert.ok(
        (r.sepSplit.counts['backend:9201'] ?? 0) > 0 && (r.sepSplit.counts['backend:9202'] ?? 0) > 0,
        JSON.stringify(r.sepSplit.counts),
      );
      assert.equal(r.sepUp, true);
      // allDown: drain.
      assert.equal(r.drStatus.status, 'in-sync');
      assert.match(r.drStatus.detail, /every destination is down: drained \(health\.allDown: drain\)/);
      assert.match(r.drProbe, /^error .*ECONNREFUSED/, 'no rules: the virtual address refuses');
      assert.equal(r.drDirect, 'backend:9401');
      assert.equal(r.statusAll.inSync, true, JSON.stringify(r.statusAll));
      // Stopped: configured weights back, nobody checks: unchecked, in sync.
      assert.equal(r.exit, 0);
      assert.equal(r.afterStop.inSync, true, JSON.stringify(r.afterStop) + ctx);
      assert.ok(
        r.afterStop.profiles.every((p: any) =>
          p.destinations.every((d: any) => d.health === 'unchecked' && d.effectiveWeight === undefined),
        ),
      );
      assert.equal(r.drAfterStop, 'backend:9401');
    });

    test('a watch stopped by SIGSTOP (pid alive, no timer running): once its health file is older than it promised, status and sync no longer follow its drain, and say so; continued, it says it did not run', async () => {
      const r: any = await runJsonInFreshNetns(STOPPED, [pair.name], { timeoutMs: 120_000 });
      const ctx = `\n--- watch log:\n${r.log}`;
      ok(r.apply, 'apply');
      assert.equal(r.drained.status, 'in-sync', 'drained while it runs' + ctx);
      // Stale: the kernel still holds the drain, the configured weights are the truth again.
      assert.equal(r.stopped.status, 'modified', JSON.stringify(r.stopped) + ctx);
      assert.ok(
        r.stopped.destinations.every((d: any) => d.health === 'unchecked'),
        JSON.stringify(r.stopped),
      );
      assert.match(
        r.stopped.stderr,
        /iptlb: health: not following \S+\.health\.json: process \d+ runs but has not written it for \d+\.\d s \(it writes it again within 10\.0 s while it checks: stopped, frozen or hung\); nobody checks the destinations, the configured weights hold\n/,
      );
      assert.equal(r.staleAfterMs, 10_000, 'the default publishMs (2 s): 10 s');
      // status --json says the file is not followed, and which drain no longer counts; the human status says it on
      // stdout under the table; drift is exit 3 because of the drain the kernel kept, not because of the file.
      assert.equal(r.stopped.code, 3);
      assert.equal(r.stopped.healthFile.state, 'stale', JSON.stringify(r.stopped.healthFile));
      assert.match(r.stopped.healthFile.file, /state\.db\.health\.json$/);
      assert.equal(r.stopped.healthFile.staleAfterMs, 10_000);
      assert.ok(r.stopped.healthFile.ageMs > 10_000, JSON.stringify(r.stopped.healthFile));
      assert.deepEqual(r.stopped.healthFile.drained, { web: ['127.0.0.1:9002'] });
      assert.match(
        r.stoppedText.stdout,
        /\nhealth: not following \S+\.health\.json: process \d+ runs but has not written it for \d+\.\d s \(it writes it within 10\.0 s while it checks: stopped, frozen or hung\); nobody checks the destinations, the configured weights hold; its drains no longer count: web 127\.0\.0\.1:9002\n$/,
      );
      // After the sync: in step with the configured weights; the file is still not followed (said, exit 0).
      assert.equal(r.afterSync.code, 0);
      assert.equal(r.afterSync.healthFile.state, 'stale');
      assert.equal(r.afterSyncText.code, 0, r.afterSyncText.stdout);
      assert.match(r.afterSyncText.stdout, /\nhealth: not following /);
      ok(r.sync, 'sync');
      assert.equal(
        r.afterSync.status,
        'in-sync',
        'sync gave 9002 its configured weight back' + JSON.stringify(r.afterSync),
      );
      assert.ok(r.afterSync.destinations.every((d: any) => d.effectiveWeight === undefined));
      assert.match(r.log, /health: this process did not run for \d+\.\d s \(stopped, frozen or hung\)/);
      assert.equal(r.exit, 0, ctx);
    });
  });
}
