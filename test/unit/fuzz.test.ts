/**
 * Property-based tests: no input makes validation, the planner or the state parser throw anything but the typed error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { validateProfile, checkSet } from '../../src/model/profile.js';
import { planTransaction } from '../../src/engines/legacy/plan.js';
import { renderRestore, renderRule, parseRule, splitWords } from '../../src/engines/legacy/restore.js';
import { parseState, serializeState } from '../../src/core/state.js';
import { IptlbError } from '../../src/model/errors.js';
import type { Profile } from '../../src/model/types.js';

const RUNS = Number(process.env.IPTLB_FUZZ_RUNS ?? 500);

function typedOnly(fn: () => unknown, codes: string[]): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof IptlbError)) throw new Error(`untyped throw: ${String(e)}`);
    if (!codes.includes(e.code)) throw new Error(`unexpected code ${e.code}: ${e.message}`);
    if (e.message.includes('\n')) throw new Error(`multi-line message: ${JSON.stringify(e.message)}`);
  }
}

const octet = fc.integer({ min: 0, max: 255 });
const ip = fc.tuple(fc.integer({ min: 1, max: 223 }), octet, octet, octet).map((a) => a.join('.'));
const port = fc.integer({ min: 1, max: 65535 });
const endpoint = fc.tuple(ip, port).map(([i, p]) => `${i}:${p}`);
const nameArb = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$/);

/** Valid profiles (names unique per set are handled by the callers). */
export const validProfile = fc
  .record({
    name: nameArb,
    source: endpoint,
    destination: fc.uniqueArray(endpoint, { minLength: 1, maxLength: 64 }),
    protocol: fc.constantFrom('tcp', 'udp', 'sctp'),
    rulesBackend: fc.constantFrom('client', 'proxy', 'server'),
    logEnabled: fc.boolean(),
    logLevel: fc.constantFrom('0', '1', '2', '3', '4', '5', '6', '7'),
    masquerade: fc.boolean(),
    weights: fc.option(fc.array(fc.integer({ min: 0, max: 12 }), { minLength: 64, maxLength: 64 }), { nil: undefined }),
    scheduler: fc.constantFrom('random', 'round-robin'),
    affinity: fc.option(fc.integer({ min: 1, max: 86400 }), { nil: undefined }),
  })
  .filter((p) => !p.destination.includes(p.source))
  .map(({ weights, ...p }) => {
    const out: Record<string, unknown> = { ...p, masquerade: p.rulesBackend === 'proxy' && p.masquerade };
    if (p.affinity === undefined) delete out.affinity;
    if (weights) {
      const w = p.destination.map((_, i) => weights[i]);
      if (!w.some((x) => x > 0)) w[0] = 1;
      out.weights = Object.fromEntries(p.destination.map((d, i) => [d, w[i]]));
    }
    return out as typeof p & { weights?: Record<string, number> };
  });

const wild = fc.oneof(
  fc.string(),
  fc.fullUnicodeString(),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.constant(undefined),
  fc.array(fc.string()),
  fc.object(),
  fc.stringMatching(/^[0-9.:[\]a-f-]{0,30}$/),
);

test('validateProfile: any input yields a profile or a typed one-line EINVAL_PROFILE', () => {
  fc.assert(
    fc.property(
      fc.record(
        {
          name: wild,
          source: fc.oneof(wild, endpoint),
          destination: fc.oneof(
            wild,
            fc.array(
              fc.oneof(
                endpoint,
                wild,
                fc.tuple(endpoint, fc.integer({ min: -1, max: 1002 })).map(([e, w]) => `${e}*${w}`),
              ),
            ),
          ),
          protocol: wild,
          rulesBackend: wild,
          logEnabled: wild,
          logLevel: wild,
          masquerade: wild,
          weights: fc.oneof(wild, fc.dictionary(fc.oneof(endpoint, fc.string()), wild)),
          scheduler: wild,
          affinity: wild,
        },
        { requiredKeys: [] },
      ),
      (input) => typedOnly(() => validateProfile(input), ['EINVAL_PROFILE']),
    ),
    { numRuns: RUNS * 4 },
  );
  fc.assert(
    fc.property(wild, (input) => typedOnly(() => validateProfile(input), ['EINVAL_PROFILE'])),
    { numRuns: RUNS },
  );
});

test('valid profiles: validation is idempotent, every planned rule renders and parses back to itself', () => {
  fc.assert(
    fc.property(validProfile, (input) => {
      const p = validateProfile(input);
      assert.deepEqual(validateProfile(p), p);
      const tx = planTransaction([p], []);
      for (const r of [...tx.chains.flatMap((c) => c.rules), ...tx.hookRules.map((h) => h.rule)]) {
        const text = renderRule(r);
        assert.ok(!text.includes('\n'));
        assert.deepEqual(parseRule(splitWords(text)), r, text);
      }
      const restore = renderRestore(tx, { chains: [], hookRules: [] });
      assert.equal(restore.split('\n').filter((l) => l.startsWith('-A ')).length, tx.chains[0].rules.length);
    }),
    { numRuns: RUNS },
  );
});

test('state file: serialize → parse is the identity on valid sets; any text parses or fails with ESTATE', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.uniqueArray(validProfile, {
        minLength: 0,
        maxLength: 8,
        selector: (p) => p.name.toUpperCase().replace(/-/g, '_'),
      }),
      async (inputs) => {
        const seen = new Set<string>();
        const profiles: Profile[] = [];
        for (const i of inputs) {
          const p = validateProfile(i);
          if (seen.has(`${p.source}/${p.protocol}`)) continue;
          seen.add(`${p.source}/${p.protocol}`);
          profiles.push(p);
        }
        checkSet(profiles);
        const text = serializeState(profiles);
        const back = await parseState(text);
        assert.deepEqual(
          [...back.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
          [...profiles].sort((a, b) => (a.name < b.name ? -1 : 1)),
        );
        assert.equal(serializeState(back.values()), text);
      },
    ),
    { numRuns: RUNS / 2 },
  );
  const yamlish = fc
    .array(
      fc.oneof(
        fc.constantFrom(
          'a:',
          '  destination:',
          '  - 1.2.3.4:5',
          '  logLevel: "4"',
          '  logLevel: 4',
          '  source: 1.2.3.4:80',
          '&x',
          '*x',
          '- ',
          '{',
          '}',
          '[',
          ']',
          '"',
          "'",
          '  ',
          '\t',
          ': ',
          '#',
        ),
        fc.string(),
      ),
      { maxLength: 20 },
    )
    .map((a) => a.join('\n'));
  await fc.assert(
    fc.asyncProperty(fc.oneof(yamlish, fc.string(), fc.fullUnicodeString()), async (text) => {
      try {
        await parseState(text, 'f');
      } catch (e) {
        if (!(e instanceof IptlbError) || e.code !== 'ESTATE') throw new Error(`untyped: ${String(e)}`);
        if (e.message.includes('\n')) throw new Error(`multi-line: ${e.message}`);
      }
    }),
    { numRuns: RUNS },
  );
});
