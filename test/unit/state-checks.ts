/** Assertions the unit tests of the state file's keys share (weights, affinity, …). */
import assert from 'node:assert/strict';
import { IptlbError } from '../../src/model/errors.js';
import { parseCanonical, parseState, serializeState } from '../../src/core/state.js';
import type { Profile } from '../../src/model/types.js';

/**
 * `text` (one profile, `p`, as serialiseState writes it) takes the fast path, parses back to `p`, is
 * written back byte for byte, and the full YAML parser (forced by a comment line) agrees.
 */
export async function assertCanonicalRoundTrip(text: string, p: Profile): Promise<void> {
  assert.notEqual(parseCanonical(text), null, 'the canonical layout takes the fast path');
  const back = (await parseState(text)).get(p.name)!;
  assert.deepEqual(back, p);
  assert.equal(serializeState([back]), text);
  // the same text through the full YAML parser (a comment line forces it off the fast path)
  const slow = (await parseState(`# hand-edited\n${text}`)).get(p.name)!;
  assert.deepEqual(slow, p);
}

/** Parsing `text` is refused with an ESTATE error naming `field`, its message matching `re`. */
export async function assertStateRefused(text: string, field: string, re: RegExp): Promise<void> {
  await assert.rejects(parseState(text), (e: unknown) => {
    assert.ok(e instanceof IptlbError);
    assert.equal(e.code, 'ESTATE');
    assert.equal(e.field, field, e.message);
    assert.match(e.message, re);
    return true;
  });
}
