/**
 * An example network agent: it watches a (simulated) service catalogue and keeps one iptlb profile
 * per service in step with the healthy instances. Run as root inside a network namespace:
 *
 *   unshare -n sh -c 'ip link set lo up && node dist/examples/agent.js'
 *
 * The test suite runs this file (test/kernel/agent.test.ts).
 */
import { createServer, connect, type Server } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
// In this repository the example runs against the sources; in your project: from 'iptlb'.
import { open, IptlbError, type ProfileInput } from '../src/index.js';

interface Instance {
  port: number;
  healthy: boolean;
}

/** A toy catalogue: one service whose instances come and go. */
const catalogue: Record<string, { vip: string; instances: Instance[] }> = {
  web: { vip: '127.100.0.20:8080', instances: [9101, 9102, 9103, 9104].map((port) => ({ port, healthy: true })) },
};

/** The profile iptlb should hold for a service: its healthy instances as destinations. */
function desired(name: string): ProfileInput | null {
  const svc = catalogue[name];
  const up = svc.instances.filter((i) => i.healthy).map((i) => `127.0.0.1:${i.port}`);
  return up.length ? { name, source: svc.vip, destination: up } : null;
}

function backend(port: number): Promise<Server> {
  return new Promise((resolve) => {
    const s = createServer((c) => c.end(`instance:${port}\n`));
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
}

function ask(vip: string): Promise<string> {
  const [host, port] = vip.split(':');
  return new Promise((resolve, reject) => {
    const c = connect(Number(port), host);
    let data = '';
    c.on('data', (d) => (data += d));
    c.on('end', () => resolve(data.trim()));
    c.on('error', reject);
    c.setTimeout(2000, () => c.destroy(new Error('timeout')));
  });
}

async function main(): Promise<void> {
  const servers = await Promise.all(catalogue.web.instances.map((i) => backend(i.port)));
  const dir = mkdtempSync(path.join(tmpdir(), 'agent-'));
  const lb = await open({ stateFile: path.join(dir, 'state.db') });
  lb.on('commit', (e) =>
    console.log(
      `commit: ${e.calls} call(s), ${e.size} profile change(s), ${e.durationMs.toFixed(2)} ms (${e.engine}/${e.executor})`,
    ),
  );

  // Health checks flap: every change is pushed to iptlb at once; concurrent calls are coalesced.
  const reconcile = async (name: string): Promise<void> => {
    const p = desired(name);
    try {
      if (p) await lb.apply(p);
      else if ((await lb.list()).some((x) => x.name === name)) await lb.delete(name);
    } catch (e) {
      if (e instanceof IptlbError) console.error(`iptlb refused ${name}: ${e.code} ${e.message}`);
      else throw e;
    }
  };

  await reconcile('web');
  const seen = new Set<string>();
  for (let i = 0; i < 60; i++) seen.add(await ask(catalogue.web.vip));
  console.log(`all healthy: answered by ${[...seen].sort().join(', ')}`);

  // Two instances fail their health check; the agent drains them.
  catalogue.web.instances[0].healthy = false;
  catalogue.web.instances[1].healthy = false;
  await Promise.all([reconcile('web'), reconcile('web'), reconcile('web')]);
  const after = new Set<string>();
  for (let i = 0; i < 60; i++) after.add(await ask(catalogue.web.vip));
  console.log(`after failures: answered by ${[...after].sort().join(', ')}`);

  const status = await lb.status();
  for (const s of status)
    console.log(
      `status ${s.name}: ${s.status}; ${s.destinations.map((d) => `${d.destination}=${d.packets}`).join(' ')}`,
    );

  // Everything fails: the profile is removed, the virtual address no longer answers.
  for (const i of catalogue.web.instances) i.healthy = false;
  await reconcile('web');
  const gone = await ask(catalogue.web.vip).then(
    () => 'answered',
    () => 'refused',
  );
  console.log(`all down: the virtual address is ${gone}`);

  await lb.close();
  rmSync(dir, { recursive: true, force: true }); // the example's own state file (a real agent keeps it)
  for (const s of servers) s.close();
  const ok = seen.size === 4 && after.size === 2 && !after.has('instance:9101') && gone === 'refused';
  console.log(ok ? 'agent example: OK' : 'agent example: FAILED');
  process.exitCode = ok ? 0 : 1;
}

await main();
