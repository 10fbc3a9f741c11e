/**
 * What the fleet unit tests share: the key prefix, a profile value and its put, a fresh state file,
 * polling, and an agent over a fake store and fake nft kernel with fast timers (no root).
 */
import { afterEach, mock } from 'node:test';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Agent, type AgentOptions } from '../../src/fleet/agent.js';
import { profileKey } from '../../src/fleet/reconcile.js';
import { EtcdStore } from '../../src/fleet/store.js';
import { FakeNftKernel } from './fake-kernel.js';
import type { FakeStore } from './fake-store.js';

export const P = '/iptlb/v1/';

export const prof = (name: string, port: number, dest = 9000): Record<string, unknown> => ({
  name,
  source: `127.100.0.1:${port}`,
  destination: [`127.0.0.1:${dest}`, `127.0.0.1:${dest + 1}`],
});

export const putProf = (s: FakeStore, name: string, port: number, dest = 9000): number =>
  s.put(profileKey(P, name), JSON.stringify(prof(name, port, dest)));

export const stateFile = (): string => path.join(mkdtempSync(path.join(tmpdir(), 'iptlb-fleet-')), 'agent.db');

/** Polls `cond` (the agent works on microtasks and short timers); fails after `ms`. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** An agent of host h1 with fast timers; the caller stops it (keep it in a list stopped after each test). */
export function fastAgent(
  store: FakeStore,
  kernel: FakeNftKernel,
  file: string,
  extra: Partial<AgentOptions> = {},
): Agent {
  return new Agent({
    etcd: store,
    host: 'h1',
    executorInstance: kernel,
    stateFile: file,
    minSyncMs: 0,
    checkMs: 20,
    checkTimeoutMs: 200,
    syncMs: 0,
    backoffMs: 5,
    backoffMaxMs: 40,
    keepConntrack: true,
    ...extra,
  });
}

/** `iptlb <argv>` run in this process, with EtcdStore.connect handing out `store` (no etcd; none given: not mocked). */
export async function cliWithStore(
  store: FakeStore | undefined,
  ...argv: string[]
): Promise<{ code: number; out: string; err: string }> {
  const { main } = await import('../../src/cli/main.js');
  const connect = store ? mock.method(EtcdStore, 'connect', async () => store) : undefined;
  let out = '';
  let err = '';
  try {
    const code = await main(argv, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n') });
    return { code, out, err };
  } finally {
    connect?.mock.restore();
  }
}

/** Writes host `name`'s key as an agent would (`profileKeys` left out: an agent before 2026-12-06). */
export function putHostKey(store: FakeStore, name: string, revision: number, profileKeys?: number): void {
  const st = { host: name, revision, profiles: 0, refused: [], refusedCount: 0, watch: 'watching' };
  store.leased.set(`${P}hosts/${name}`, JSON.stringify(profileKeys === undefined ? st : { ...st, profileKeys }));
}

/**
 * `makeAgent(store, extra)`: an agent of {@link fastAgent} over a fresh fake nft kernel and state file, stopped after
 * each test of the file that calls this once at its top level.
 */
export function agentsStoppedAfterEach(): (store: FakeStore, extra?: Partial<AgentOptions>) => Agent {
  const agents: Agent[] = [];
  afterEach(async () => {
    for (const a of agents.splice(0)) await a.stop();
  });
  return (store, extra = {}) => {
    const a = fastAgent(store, new FakeNftKernel(), stateFile(), extra);
    agents.push(a);
    return a;
  };
}
