/**
 * One simulated host of `npm run bench -- fleet`, run by bench/fleet.ts inside a network namespace of
 * its own (lo up): TCP backends on 127.0.0.1:9001-9002 and an agent (the library's runAgent, nft
 * engine) reaching etcd over a unix socket. Prints one line per event on stdout:
 *   committed <revision> <profiles>     after each commit of the agent
 *   balanced <vip>                      the first connection through <vip> answered (asked on stdin: "probe <vip>")
 *   rss <bytes>                         when asked on stdin: "rss"
 */
import { createInterface } from 'node:readline';
import { connect, createServer } from 'node:net';
import { runAgent } from '../src/fleet/agent.js';

const [endpoint, host, stateFile, executor] = process.argv.slice(2);
for (const port of [9001, 9002]) createServer((s) => s.end(`backend:${port}\n`)).listen(port, '127.0.0.1');
const agent = await runAgent({
  etcd: { endpoints: [endpoint!] },
  host: host!,
  stateFile: stateFile!,
  engine: 'nft',
  executor: (executor as 'native' | 'spawn') ?? 'native',
  minSyncMs: 0,
  syncMs: 0,
  keepConntrack: true,
});
agent.on('applied', (a) =>
  process.stdout.write(`committed ${a.revision} ${a.upserted + a.removed} ${a.totalMs.toFixed(2)}\n`),
);

const tryOnce = (vip: string): Promise<boolean> =>
  new Promise((resolve) => {
    const [ip, port] = vip.split(':');
    const s = connect({ host: ip!, port: Number(port) });
    let data = '';
    s.setTimeout(200, () => (s.destroy(), resolve(false)));
    s.on('data', (d) => (data += d));
    s.on('error', () => resolve(false));
    s.on('close', () => resolve(data.startsWith('backend:')));
  });

for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, arg] = line.split(' ');
  if (cmd === 'probe') {
    void (async () => {
      const end = Date.now() + 10_000;
      while (!(await tryOnce(arg!)) && Date.now() < end) await new Promise((r) => setTimeout(r, 1));
      process.stdout.write(`balanced ${arg}\n`);
    })();
  } else if (cmd === 'rss') {
    process.stdout.write(`rss ${process.memoryUsage().rss}\n`);
  } else if (cmd === 'stop') break;
}
await agent.stop();
process.exit(0);
