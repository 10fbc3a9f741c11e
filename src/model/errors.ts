/**
 * Typed errors. Every error iptlb raises is an {@link IptlbError} with a stable `code`, the offending
 * `field` where there is one, and a one-line message.
 */
export type ErrorCode =
  | 'EINVAL_PROFILE' // a profile field is invalid
  | 'EUSAGE' // flags or arguments that contradict each other
  | 'ECONFLICT' // the change conflicts with an existing profile
  | 'ENOTFOUND' // the named profile does not exist
  | 'ESTATE' // the state file is unreadable, malformed or unsafe
  | 'ELOCK' // a lock could not be taken in time
  | 'EKERNEL' // the kernel (or iptables-restore / nft) refused the change
  | 'ERESTART' // the nf_tables ruleset changed under a read-modify-write commit; retried, then reported
  | 'EPERM' // missing CAP_NET_ADMIN or file permission
  | 'ENATIVE' // the native addon cannot be used
  | 'EEXECUTOR' // no executor can run on this machine
  | 'ESTORE'; // the fleet's store (etcd) could not be reached or refused the request

export class IptlbError extends Error {
  readonly code: ErrorCode;
  // `declare`: set only when given. As plain class fields (ES2022) they were own properties holding undefined on
  // every error without them (`'errno' in e`, `Object.keys(e)`, `errno: undefined` in a printed error).
  /** The offending input: a profile's key, an option of `open()`, … (absent when there is none). */
  declare readonly field?: string;
  /** The kernel's errno, where it gave one (absent otherwise). */
  declare readonly errno?: number;
  /** Exit status for the CLI: 2 for usage errors (bad input), 1 for refusals. */
  readonly exitCode: 1 | 2;
  constructor(code: ErrorCode, message: string, opts: { field?: string; errno?: number; cause?: unknown } = {}) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'IptlbError';
    this.code = code;
    if (opts.field !== undefined) this.field = opts.field;
    if (opts.errno !== undefined) this.errno = opts.errno;
    this.exitCode = code === 'EINVAL_PROFILE' || code === 'EUSAGE' ? 2 : 1;
  }
}

/**
 * A field name taken from input (an unknown key of a profile) as an error message shows it: as it is when it is a
 * short plain word, else JSON-quoted (control characters escaped, so the message stays one line) and cut to a few
 * dozen characters (a 600 KB key made a 600 KB message, too large for the fleet agent's host key).
 */
export function fieldLabel(key: string): string {
  if (/^[A-Za-z0-9_.-]{1,40}$/.test(key)) return key;
  const q = JSON.stringify(key);
  return q.length > 44 ? `${q.slice(0, 40)}..."` : q;
}

/**
 * The first of `keys` that `o` holds only through its prototype chain (a getter of a class, or a property another
 * module put on `Object.prototype`), with a value; undefined when there is none. iptlb reads its inputs' own
 * properties only: a field inherited from a polluted `Object.prototype` would otherwise reach every profile and
 * option object of the process, silently (`Object.prototype.affinity = 600` gave every profile affinity).
 */
export function inheritedKey(o: object, keys: Iterable<string>): string | undefined {
  for (const k of keys) if (!Object.hasOwn(o, k) && (o as Record<string, unknown>)[k] !== undefined) return k;
  return undefined;
}
/** What a field {@link inheritedKey} found is told. */
export const INHERITED =
  "is inherited (a property of the object's prototype, not of the object): iptlb reads an object's own properties only; pass a plain object";

export function invalid(field: string, message: string): IptlbError {
  return new IptlbError('EINVAL_PROFILE', `${field}: ${message}`, { field });
}

/**
 * `fn` (a caller's `log` option) made safe to call from iptlb's own paths: a throw is thrown again on its own, as an
 * uncaught exception (as a throwing event listener's is), instead of failing the change it was logging (a `log` that
 * threw on "committed …" rejected the apply after its kernel commit, before its state write: an orphan).
 */
export function apart(fn: (line: string) => void): (line: string) => void {
  return (line) => callApart(() => fn(line));
}

/**
 * Calls `fn` (a caller's code: an event's listeners, a `log` option) so that its throw cannot change
 * iptlb's own work: thrown again on its own, as an uncaught exception.
 */
export function callApart(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    process.nextTick(() => {
      throw e;
    });
  }
}
