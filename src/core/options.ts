/**
 * Validation of the options of `open()` (and of the core's): every option is checked before anything
 * is chosen or touched, and a bad one is a typed EUSAGE error naming it.
 */
import { inheritedKey, INHERITED, IptlbError } from '../model/errors.js';
import { validateCheckerOptions } from '../health/checker.js';

function usage(field: string, message: string): IptlbError {
  return new IptlbError('EUSAGE', `${field}: ${message}`, { field });
}

function shown(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'function') return 'a function';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return String(v);
}

/** The longest lock wait accepted, ms (one day): anything longer is a mistake, not a wait. */
export const MAX_LOCK_WAIT_MS = 86_400_000;

/** Refuses `o[field]` unless absent or a whole number of ms from 0 to {@link MAX_LOCK_WAIT_MS}. */
function wholeMs(o: Record<string, unknown>, field: string): void {
  const x = o[field];
  if (x === undefined) return;
  if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x > MAX_LOCK_WAIT_MS)
    throw usage(field, `${shown(x)} must be a whole number of ms from 0 to ${MAX_LOCK_WAIT_MS}`);
}

const CORE_KEYS = [
  'stateFile',
  'executor',
  'engine',
  'lockWaitMs',
  'log',
  'keepConntrack',
  'stateFoldMs',
  'stateRegistry',
];
const HANDLE_KEYS = ['coalesce', 'driftCheckMs', 'health'];

/**
 * Checks the options object of `open()` (`handle`: also the Iptlb-specific ones). Unknown keys are
 * refused too: a misspelt option silently ignored is the same class of bug as a bad value.
 */
export function validateOpenOptions(options: unknown, handle: boolean): void {
  if (options === undefined) return;
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new IptlbError('EUSAGE', `options: must be an object, got ${shown(options)}`, { field: 'options' });
  }
  const o = options as Record<string, unknown>;
  const known = handle ? [...CORE_KEYS, ...HANDLE_KEYS] : CORE_KEYS;
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) throw usage(k, `unknown option (known: ${known.join(', ')})`);
  }
  const inherited = inheritedKey(o, known);
  if (inherited !== undefined) throw usage(inherited, INHERITED);
  const v = o;
  if (v.stateFile !== undefined && v.stateFile !== false) {
    if (typeof v.stateFile !== 'string')
      throw usage('stateFile', `must be a path (a string) or false, got ${shown(v.stateFile)}`);
    if (v.stateFile === '')
      throw usage('stateFile', 'must not be empty (omit it for the default, or pass false for no file)');
    if (v.stateFile.includes('\0')) throw usage('stateFile', 'must not contain a NUL character');
  }
  if (v.executor !== undefined && !['auto', 'native', 'spawn'].includes(v.executor as string)) {
    throw usage('executor', `${shown(v.executor)} is not one of native, spawn, auto`);
  }
  if (v.engine !== undefined && !['auto', 'legacy', 'nft'].includes(v.engine as string)) {
    throw usage('engine', `${shown(v.engine)} is not one of legacy, nft, auto`);
  }
  wholeMs(v, 'lockWaitMs');
  if (v.log !== undefined && typeof v.log !== 'function')
    throw usage('log', `must be a function (line: string) => void, got ${shown(v.log)}`);
  if (v.keepConntrack !== undefined && typeof v.keepConntrack !== 'boolean')
    throw usage('keepConntrack', `must be true or false, got ${shown(v.keepConntrack)}`);
  if (
    v.stateRegistry !== undefined &&
    v.stateRegistry !== false &&
    (typeof v.stateRegistry !== 'string' || !v.stateRegistry.startsWith('/') || v.stateRegistry.includes('\0'))
  )
    throw usage('stateRegistry', `must be an absolute directory path or false, got ${shown(v.stateRegistry)}`);
  wholeMs(v, 'stateFoldMs');
  if (handle) {
    if (v.coalesce !== undefined && typeof v.coalesce !== 'boolean')
      throw usage('coalesce', `must be true or false, got ${shown(v.coalesce)}`);
    if (
      v.driftCheckMs !== undefined &&
      (typeof v.driftCheckMs !== 'number' ||
        !Number.isInteger(v.driftCheckMs) ||
        v.driftCheckMs < 10 ||
        v.driftCheckMs > MAX_LOCK_WAIT_MS)
    ) {
      // (Node's timers take at most 2^31-1 ms and fire every millisecond beyond it.)
      throw usage(
        'driftCheckMs',
        `${shown(v.driftCheckMs)} must be a whole number of ms from 10 to ${MAX_LOCK_WAIT_MS}`,
      );
    }
    if (
      v.health !== undefined &&
      typeof v.health !== 'boolean' &&
      (v.health === null || typeof v.health !== 'object' || Array.isArray(v.health))
    ) {
      throw usage('health', `must be true, false or the options of a HealthChecker, got ${shown(v.health)}`);
    }
    if (typeof v.health === 'object') validateCheckerOptions(v.health, 'health.');
  }
}
