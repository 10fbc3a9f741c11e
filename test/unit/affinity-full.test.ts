/**
 * nft session affinity when the kernel's sets are full: the planned rules, run through a model of the kernel's
 * evaluation (`update @S` fails when S holds `size` elements and the client is not among them; the rule then stops
 * before its dnat and the next rule is tried), must translate every new client, at the profile's exact odds or
 * rotation, and keep a known client on its destination. Until the client set and the fallback rules, a full set
 * left a new client untranslated (refused) once every set it reached was full, and skewed the split before.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateProfile } from '../../src/model/profile.js';
import { planNftProfile } from '../../src/engines/nft/plan.js';
import { affinitySetSize, isAffinityClientSet, type NftRule } from '../../src/engines/nft/ops.js';

type Aff = Extract<NftRule, { kind: 'aff' }>;
type Sets = Map<string, Set<string>>;

const base = { name: 'web', source: '127.100.0.10:8081', affinity: 900 };

function affRules(p: ReturnType<typeof validateProfile>): Aff[] {
  return planNftProfile(p)
    .rules.map((r) => r.rule)
    .filter((r): r is Aff => r.kind === 'aff');
}

/** `update @name { saddr }` on a copy of `sets`: null when the set is full and the client not in it. */
function update(sets: Sets, name: string, client: string): Sets | null {
  const s = sets.get(name) ?? new Set<string>();
  if (s.has(client)) return sets;
  if (s.size >= affinitySetSize(name)) return null;
  return new Map([...sets, [name, new Set([...s, client])]]);
}

/** Where a new connection of `client` goes, with its probability (random picks only); 'none' = untranslated. */
function outcomes(rules: Aff[], sets: Sets, client: string, i = 0, p = 1, out = new Map<string, number>()) {
  if (i === rules.length) {
    out.set('none', (out.get('none') ?? 0) + p);
    return out;
  }
  const r = rules[i];
  const next = (q: number): void => void (q > 0 && outcomes(rules, sets, client, i + 1, q, out));
  if (r.pick.mode === 'hit' && !sets.get(r.set!)?.has(client)) return (next(p), out);
  let s: Sets | null = sets;
  if (r.gate !== undefined) s = update(s, r.gate, client);
  if (s === null) return (next(p), out);
  let take = p;
  if (r.pick.mode === 'random') {
    take = (p * r.pick.lt) / r.pick.mod;
    next(p - take);
  }
  if (r.set !== undefined && update(s, r.set, client) === null) return (next(take), out);
  const to = `${r.to.ip}:${r.to.port}`;
  out.set(to, (out.get(to) ?? 0) + take);
  return out;
}

/** Every affinity set the rules use, filled to its size with other clients (`full`), or left empty. */
function fill(rules: Aff[], full: (name: string) => boolean): Sets {
  const sets: Sets = new Map();
  for (const r of rules)
    for (const name of [r.gate, r.set])
      if (name !== undefined && !sets.has(name))
        sets.set(name, new Set(full(name) ? Array.from({ length: affinitySetSize(name) }, (_, k) => `x${k}`) : []));
  return sets;
}

const near = (a: number | undefined, b: number): boolean => Math.abs((a ?? 0) - b) < 1e-12;

test('nft affinity, sets full: every new client is translated at the weights odds; a known client keeps its destination', () => {
  process.env.IPTLB_TEST_AFFINITY_CLIENTS = '4';
  try {
    const D = ['127.0.0.1:9001', '127.0.0.1:9002*2', '127.0.0.1:9003*3'];
    const rules = affRules(validateProfile({ ...base, destination: D }));
    const names = [...fill(rules, () => false).keys()];
    const expect = { '127.0.0.1:9001': 1 / 6, '127.0.0.1:9002': 2 / 6, '127.0.0.1:9003': 3 / 6 };
    // nothing full, everything full, the client set full with one destination's set not (a destination's set holds
    // only clients of the client set and is twice its size: it is not full while the client set has room)
    const cases: { label: string; full: (n: string) => boolean }[] = [
      { label: 'empty', full: () => false },
      { label: 'all full', full: () => true },
      ...names
        .filter((n) => !isAffinityClientSet(n))
        .map((n) => ({ label: `full but ${n}`, full: (x: string) => x !== n })),
    ];
    for (const c of cases) {
      const o = outcomes(rules, fill(rules, c.full), 'new-client');
      assert.ok(near(o.get('none'), 0), `${c.label}: untranslated with probability ${o.get('none')}`);
      for (const [to, q] of Object.entries(expect)) assert.ok(near(o.get(to), q), `${c.label}: ${to} ${o.get(to)}`);
    }
    // a known client: in the client set and in 9002's set, both full
    const sets = fill(rules, () => true);
    for (const name of names) {
      const s = sets.get(name)!;
      if (name.endsWith('_C_900') || name.includes('_9002_')) s.add('known');
    }
    const o = outcomes(rules, sets, 'known');
    assert.ok(near(o.get('127.0.0.1:9002'), 1), JSON.stringify([...o]));
  } finally {
    delete process.env.IPTLB_TEST_AFFINITY_CLIENTS;
  }
});

test('nft affinity, round-robin, client set full: new clients follow the exact rotation, every one translated', () => {
  process.env.IPTLB_TEST_AFFINITY_CLIENTS = '3';
  try {
    const rules = affRules(
      validateProfile({ ...base, destination: ['127.0.0.1:9001', '127.0.0.1:9002*2'], scheduler: 'round-robin' }),
    );
    let sets = fill(rules, () => false);
    const counters = new Map<Aff, number>();
    const seen: string[] = [];
    for (let k = 0; k < 30; k++) {
      const client = `c${k}`;
      let to = 'none';
      for (const r of rules) {
        if (r.pick.mode === 'hit' && !sets.get(r.set!)?.has(client)) continue;
        let s: Sets | null = sets;
        if (r.gate !== undefined) s = update(s, r.gate, client);
        if (s === null) continue;
        if (r.pick.mode === 'inc') {
          const n = counters.get(r) ?? 0;
          counters.set(r, n + 1);
          if (n % r.pick.mod !== 0) continue;
        }
        if (r.set !== undefined) s = update(s, r.set, client);
        if (s === null) continue;
        sets = s;
        to = `${r.to.port}`;
        break;
      }
      seen.push(to);
    }
    assert.ok(!seen.includes('none'), seen.join(','));
    // the first 3 clients fill the client set (recorded, exact rotation); the next 27 are balanced unrecorded by the
    // fallback rules' own exact rotation
    assert.deepEqual(seen.slice(0, 3), ['9001', '9002', '9002']);
    const rest = seen.slice(3);
    assert.deepEqual(
      [rest.filter((x) => x === '9001').length, rest.filter((x) => x === '9002').length],
      [9, 18],
      rest.join(','),
    );
  } finally {
    delete process.env.IPTLB_TEST_AFFINITY_CLIENTS;
  }
});
