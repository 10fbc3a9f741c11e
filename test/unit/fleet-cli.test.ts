/** The agent's metric families (no etcd, no root). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
test('agent metrics: applied revision, owned and refused profiles, one watch state set', async () => {
  const { agentMetrics } = await import('../../src/cli/commands/agent.js');
  const text = agentMetrics({ revision: 42, profiles: 3, refused: [{}], refusedCount: 1, watch: 'watching' });
  assert.match(text, /^iptlb_agent_applied_revision 42$/m);
  assert.match(text, /^iptlb_agent_profiles 3$/m);
  assert.match(text, /^iptlb_agent_refused_profiles 1$/m);
  assert.deepEqual(text.match(/^iptlb_agent_watch_state\{state="(\w+)"\} 1$/gm), [
    'iptlb_agent_watch_state{state="watching"} 1',
  ]);
  for (const family of ['applied_revision', 'profiles', 'refused_profiles', 'watch_state'])
    assert.match(text, new RegExp(`^# TYPE iptlb_agent_${family} gauge$`, 'm'));
});

test('fleet commands: etcd unreachable (or refusing) is one line naming the endpoints, exit 1, not an internal error', async () => {
  const { mock } = await import('node:test');
  const { EtcdStore } = await import('../../src/fleet/store.js');
  const { main } = await import('../../src/cli/main.js');
  const connect = mock.method(EtcdStore, 'connect', async () => {
    throw new Error(
      '14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: \nmore',
    );
  });
  try {
    for (const args of [
      ['fleet', 'status'],
      ['fleet', 'list'],
      ['fleet', 'delete', 'a'],
      ['fleet', 'apply', '-profile=a', '-src-addr=127.100.0.1:80', '-dest-addr=127.0.0.1:9001'],
    ]) {
      let err = '';
      const code = await main([...args, '--etcd', '127.0.0.1:1'], { out: () => {}, err: (s) => (err += s + '\n') });
      assert.equal(code, 1, args.join(' '));
      assert.equal(
        err,
        'iptlb: error: etcd 127.0.0.1:1: 14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1.\n',
        args.join(' '),
      );
    }
  } finally {
    connect.mock.restore();
  }
});

test('agent metrics: each committed batch is a sync (commits counted, last sync 1); a kernel refusal a failed one, once', async () => {
  const { wireAgentSyncs } = await import('../../src/cli/commands/agent.js');
  const { ProcessStats } = await import('../../src/metrics/server.js');
  const { EventEmitter } = await import('node:events');
  const agent = new EventEmitter();
  const stats = new ProcessStats();
  wireAgentSyncs(agent, (r) => stats.observeSync(r));
  agent.emit('applied', { upserted: 2, removed: 1, commitMs: 1.5 });
  assert.equal(stats.commits, 1);
  assert.equal(stats.lastSync?.ok, true);
  for (let i = 0; i < 3; i++) agent.emit('status', { error: 'kernel: EKERNEL refused' });
  assert.equal(stats.syncFailures, 1);
  assert.equal(stats.lastSync?.ok, false);
  agent.emit('status', {});
  agent.emit('applied', { upserted: 0, removed: 0, commitMs: 0 });
  assert.deepEqual([stats.commits, stats.lastSync?.ok], [1, true]);
});

test('agent: a metrics address that cannot be listened on fails before the agent connects or lists (nothing reaches the kernel or the state file)', async () => {
  const { mock } = await import('node:test');
  const net = await import('node:net');
  const { mkdtempSync, existsSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const { Agent } = await import('../../src/fleet/agent.js');
  const { main } = await import('../../src/cli/main.js');
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  const port = (busy.address() as import('node:net').AddressInfo).port;
  const dir = mkdtempSync(path.join(tmpdir(), 'iptlb-agent-'));
  const stateFile = path.join(dir, 'state.db');
  const start = mock.method(Agent.prototype, 'start', async () => {});
  try {
    let err = '';
    const code = await main(
      ['agent', '--etcd', '127.0.0.1:1', '--state-file', stateFile, '--metrics-address', `127.0.0.1:${port}`, '-q'],
      { out: () => {}, err: (s) => (err += s + '\n') },
    );
    assert.notEqual(code, 0);
    assert.match(err, new RegExp(`127\\.0\\.0\\.1:${port}`), err);
    assert.equal(err.trim().split('\n').length, 1, err);
    assert.equal(start.mock.callCount(), 0, 'the agent was not started');
    assert.equal(existsSync(stateFile), false, 'no state file written');
  } finally {
    start.mock.restore();
    await new Promise((r) => busy.close(r));
    rmSync(dir, { recursive: true, force: true });
  }
});

test('agent command: SIGHUP, SIGTERM and SIGINT have a listener while the services and the agent start and while the agent stops (a SIGHUP there killed it, exit 129); SIGTERM while they start stops them, the agent not started', async () => {
  const { EventEmitter } = await import('node:events');
  const { runAgentCommand } = await import('../../src/cli/commands/agent.js');
  // A real process with no listener for a signal dies of it; emit() says whether one took it.
  const proc = new EventEmitter() as InstanceType<typeof EventEmitter> & Pick<NodeJS.Process, 'on' | 'removeListener'>;
  const gate = () => {
    let open!: () => void;
    const p = new Promise<void>((r) => (open = r));
    return { p, open };
  };
  const signals = ['SIGHUP', 'SIGTERM', 'SIGINT'];
  const calls: string[] = [];
  let starting = gate();
  let agentStarting = gate();
  let agentStopping = gate();
  const services = {
    start: async () => {
      calls.push('services start');
      await starting.p;
    },
    stop: async () => void calls.push('services stop'),
  };
  const agent = {
    start: async () => {
      calls.push('agent start');
      await agentStarting.p;
    },
    stop: async (why?: string) => {
      calls.push(`agent stop ${why}`);
      await agentStopping.p;
    },
    checkNow: async (why?: string) => void calls.push(`check ${why}`),
  };
  const tick = () => new Promise((r) => setImmediate(r));

  // 1. SIGHUP, then SIGTERM while the services start: they stop once started; the agent never starts.
  let done = runAgentCommand(proc, services, agent);
  await tick();
  assert.ok(proc.emit('SIGHUP'), 'SIGHUP while the services start');
  assert.ok(proc.emit('SIGTERM'), 'SIGTERM while the services start');
  starting.open();
  await done;
  assert.deepEqual(calls, ['services start', 'services stop']);
  for (const s of signals) assert.equal(proc.listenerCount(s), 0, `${s} listener removed`);

  // 2. SIGINT while the agent starts: it is stopped once started.
  calls.length = 0;
  starting = gate();
  starting.open();
  agentStarting = gate();
  agentStopping = gate();
  agentStopping.open();
  done = runAgentCommand(proc, services, agent);
  await tick();
  assert.deepEqual(calls, ['services start', 'agent start']);
  assert.ok(proc.emit('SIGHUP'), 'SIGHUP while the agent starts');
  assert.ok(proc.emit('SIGINT'), 'SIGINT while the agent starts');
  agentStarting.open();
  await done;
  assert.deepEqual(calls, ['services start', 'agent start', 'agent stop SIGINT']);
  for (const s of signals) assert.equal(proc.listenerCount(s), 0, `${s} listener removed`);

  // 3. Running: SIGHUP checks; SIGTERM stops; SIGHUP and SIGTERM while it stops are taken, not fatal.
  calls.length = 0;
  agentStarting = gate();
  agentStarting.open();
  agentStopping = gate();
  done = runAgentCommand(proc, services, agent);
  await tick();
  assert.ok(proc.emit('SIGHUP'));
  assert.ok(proc.emit('SIGTERM'));
  await tick();
  assert.ok(proc.emit('SIGHUP'), 'SIGHUP while the agent stops');
  assert.ok(proc.emit('SIGTERM'), 'SIGTERM while the agent stops');
  agentStopping.open();
  await done;
  assert.deepEqual(calls, ['services start', 'agent start', 'check SIGHUP', 'agent stop SIGTERM']);
  for (const s of signals) assert.equal(proc.listenerCount(s), 0, `${s} listener removed`);
});
