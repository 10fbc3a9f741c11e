/**
 * CLI side of health checks: the `-health*` profile flags (apply, plan and the original's flags),
 * in the original's single-dash style next to the other profile flags.
 */
import type { Command } from 'commander';
import type { HealthInput } from '../health/config.js';
import { IptlbError } from '../model/errors.js';

export const HEALTH_FLAGS = [
  'health',
  'health-interval',
  'health-timeout',
  'health-rise',
  'health-fall',
  'health-port',
  'health-address',
  'health-path',
  'health-expect',
  'health-all-down',
];

export interface HealthOpts {
  health?: string;
  healthInterval?: string;
  healthTimeout?: string;
  healthRise?: string;
  healthFall?: string;
  healthPort?: string;
  healthAddress?: string;
  healthPath?: string;
  healthExpect?: string;
  healthAllDown?: string;
}

export function addHealthFlags(cmd: Command): Command {
  return cmd
    .option(
      '--health <kind>',
      'health check of the destinations, run by `iptlb watch` (never by a one-shot command): tcp (connect), http (GET) or none (default)',
    )
    .option('--health-interval <ms>', 'time between two checks of one destination (10-3600000; default 2000)')
    .option('--health-timeout <ms>', 'a check not done after this long failed (at most the interval; default 1000)')
    .option('--health-rise <n>', 'consecutive successes that bring a down destination back (1-100; default 2)')
    .option(
      '--health-fall <n>',
      'consecutive failures that drain a destination: weight 0, no new connections (1-100; default 3)',
    )
    .option('--health-port <port>', "probe this port instead of each destination's own")
    .option('--health-address <ip>', "probe this address instead of each destination's own")
    .option('--health-path <url-path>', 'http: request path (default /)')
    .option('--health-expect <range>', 'http: accepted status codes, e.g. 200 or 200-299 (default 200-399)')
    .option(
      '--health-all-down <what>',
      'when every destination is down: keep (default: keep all of them) or drain (remove the profile from the kernel until one is back)',
    );
}

/** The `health` field from the flags; undefined when no health flag was given. */
export function healthInput(o: HealthOpts): HealthInput | undefined {
  const h: HealthInput = {};
  if (o.health !== undefined) h.kind = o.health;
  if (o.healthInterval !== undefined) h.intervalMs = o.healthInterval;
  if (o.healthTimeout !== undefined) h.timeoutMs = o.healthTimeout;
  if (o.healthRise !== undefined) h.rise = o.healthRise;
  if (o.healthFall !== undefined) h.fall = o.healthFall;
  if (o.healthPort !== undefined) h.port = o.healthPort;
  if (o.healthAddress !== undefined) h.address = o.healthAddress;
  if (o.healthPath !== undefined) h.path = o.healthPath;
  if (o.healthExpect !== undefined) h.expect = o.healthExpect;
  if (o.healthAllDown !== undefined) h.allDown = o.healthAllDown;
  // A setting of a check without the check: refused, not taken as `--health tcp` (a check that
  // drains destinations would start without having been asked for).
  if (h.kind === undefined && Object.keys(h).length) {
    const flag = {
      intervalMs: 'health-interval',
      timeoutMs: 'health-timeout',
      rise: 'health-rise',
      fall: 'health-fall',
      port: 'health-port',
      address: 'health-address',
      path: 'health-path',
      expect: 'health-expect',
      allDown: 'health-all-down',
    }[Object.keys(h)[0] as Exclude<keyof HealthInput, 'kind'>];
    throw new IptlbError('EUSAGE', `${flag}: needs --health tcp or --health http (the check it sets)`, { field: flag });
  }
  return Object.keys(h).length ? h : undefined;
}
