/**
 * Node built-in modules that only some uses of the library need, loaded on first use: importing
 * `iptlb` should not pay for an HTTP server (metrics), sockets (health probes) or child processes
 * (the spawn executor, `conntrack -D`, the flock fallback) or hashing (only profile names longer than
 * 18 characters) that a process may never use. Each costs
 * MiBs of resident memory and milliseconds of start (node:child_process brings net, stream and dgram).
 */
import { createRequire } from 'node:module';
import type * as ChildProcess from 'node:child_process';
import type * as Crypto from 'node:crypto';
import type * as Http from 'node:http';
import type * as Net from 'node:net';
import type * as Os from 'node:os';

// Made on first use: in the CLI bundle import.meta.url is computed when read (scripts/bundle.js).
let req: NodeRequire | undefined;
const load = (id: string): unknown => (req ??= createRequire(import.meta.url))(id);
let cp: typeof ChildProcess | undefined;
let crypto: typeof Crypto | undefined;
let http: typeof Http | undefined;
let net: typeof Net | undefined;
let os: typeof Os | undefined;

export const childProcess = (): typeof ChildProcess => (cp ??= load('node:child_process') as typeof ChildProcess);
export const nodeCrypto = (): typeof Crypto => (crypto ??= load('node:crypto') as typeof Crypto);
export const nodeHttp = (): typeof Http => (http ??= load('node:http') as typeof Http);
export const nodeNet = (): typeof Net => (net ??= load('node:net') as typeof Net);
export const nodeOs = (): typeof Os => (os ??= load('node:os') as typeof Os);
