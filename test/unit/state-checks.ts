/** Assertions the unit tests of the state file's keys share (weights, affinity, …). */
import assert from 'node:assert/strict';
import { IptlbError } from '../../src/model/errors.js';
import { parseCanonical, parseState, serializeState } from '../../src/core/state.js';
import type { Profile } from '../../src/model/types.js';
import { validateProfile } from '../../src/model/profile.js';

/**
 * The profile of `input` (its destinations already drawn) with the field its `kind` adds, validated;
 * null when the draw is not a valid profile.
 */
export function profileOfKind(input: Record<string, unknown>, kind: string): Profile | null {
  const dests = input.destination as string[];
  if (kind === 'weights') input.weights = { [dests[0]]: 3 };
  if (kind === 'scheduler') input.scheduler = 'round-robin';
  if (kind === 'affinity') input.affinity = 60;
  if (kind === 'health') input.health = { kind: 'tcp' };
  try {
    return validateProfile(input);
  } catch {
    return null;
  }
}

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
