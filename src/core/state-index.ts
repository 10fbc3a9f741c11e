/**
 * The CLI's reading of a state file: an index of the text instead of a profile per block. A one-shot
 * change touches one profile of thousands, so the file is checked as {@link parseState} checks it (the
 * layout of each block, every name and address, the checks between fields and between profiles) in
 * one pass that builds no profile, and only the profiles looked up are built. The change is then
 * spliced into the text read: the file written is byte for byte what {@link serializeState} writes
 * for the profiles after it, without serialising or even building the others.
 *
 * It is a `Map` by its interface: whatever iterates it (list, sync, a base-chain rewrite) gets every
 * profile, built then from the text with the usual fast reader. What a change needs without
 * iterating is asked for explicitly: the profiles by shape ({@link IndexedState.shapes}, for the
 * planners' per-family and per-set counts), the conflicts of a candidate
 * ({@link IndexedState.conflictOf}) and the text after a change ({@link IndexedState.spliced}); each
 * answers only while the map is as read (null otherwise: the caller then iterates).
 */
import { IptlbError } from '../model/errors.js';
import { EXISTING_NAME, MAX_DESTINATIONS, PLAIN_UNICAST_V4_LINE, chainName, show } from '../model/profile.js';
import type { Profile } from '../model/types.js';
import type { Change } from '../engines/engine.js';
import {
  PLAIN_BLOCK,
  YAML11_FIRST,
  matchSubject,
  parseExactProfiles,
  plainBlockProfile,
  plainNameQuoting,
  serializeOne,
} from './state.js';

const TAIL = `  logEnabled: [a-z]+\\n  logLevel: "[0-7]"\\n(?:  masquerade: true\\n)?  protocol: [a-z]+\\n  rulesBackend: [a-z]+\\n  source: `;
/** A block of the index's patterns, with `destinations` the pattern of its destination lines (capture 4). */
const blockPattern = (destinations: string): RegExp =>
  new RegExp(
    `(?:(?![-+.0-9~yYnNtTfFoO])(?=[a-z0-9]{1,15}:|[a-z0-9]{17,18}:)([a-z0-9]+)|("?)(${EXISTING_NAME})\\2):\\n  destination:\\n` +
      `(${destinations})` +
      `(  logEnabled: (?:true|false)\\n  logLevel: "[0-7]"\\n(?:  masquerade: true\\n(?=  protocol: [a-z]+\\n  rulesBackend: proxy\\n))?` +
      `  protocol: (?:tcp|udp|sctp)\\n  rulesBackend: (?:client|proxy|server)\\n)  source: (${PLAIN_UNICAST_V4_LINE})`,
    'y',
  );
/** The most destinations a block {@link INDEX_BLOCK} takes. */
const NARROW = 32;
/**
 * {@link PLAIN_BLOCK} with plainProfile's checks between fields in it (no destination twice or the
 * source itself: each destination line is looked for among the lines after it and on the source
 * line; masquerade only with proxy), so that the regular expression engine runs them, not cold
 * JavaScript (per block, every call an interpreted loop makes costs). It matches the same span as
 * PLAIN_BLOCK does from the same place, or nothing, for a block of at most {@link NARROW} destinations:
 * those checks cost the square of their count (a file of 100 profiles of 1,024 destinations took 5.5 s to
 * index, against 0.14 s for the general reading; one profile of 32,000, which the file is refused for,
 * 41 s), so a block of more (seen by a look at its first lines) is matched by {@link WIDE_BLOCK} and
 * checked in JavaScript. Captures: 1 an ordinary name (letters `a-z`
 * and digits, 1 to 15 or 17 to 18 of them, not quoted and not starting as a YAML 1.1 non-string
 * may: the common case, which needs no check of its quoting or of its chain suffix), else 2 the
 * name's quote and 3 the name; 4 the destination lines, 5 (one of them); 6 the fields between the
 * destinations and the source (with the number of destinations: the shape); 7 the source line.
 */
const INDEX_BLOCK = blockPattern(
  `(?!(?:  - [^\\n]*\\n){${NARROW + 1}})(?:  - (${PLAIN_UNICAST_V4_LINE})(?!(?:  - [^\\n]*\\n)*  - \\5)(?!(?:  - [^\\n]*\\n)*${TAIL}\\5)){1,${NARROW}}`,
);
/**
 * {@link INDEX_BLOCK} for the blocks of more than {@link NARROW} destinations (and at most MAX_DESTINATIONS:
 * a file with more is left to the general reading, which refuses it), without the checks between destinations
 * and the source, which {@link wideBlockChecked} makes. Same captures.
 */
const WIDE_BLOCK = blockPattern(`(?:  - (${PLAIN_UNICAST_V4_LINE})){${NARROW + 1},${MAX_DESTINATIONS}}`);

/** Whether a {@link WIDE_BLOCK} match has no destination twice and none equal to its source (plainProfile's checks). */
function wideBlockChecked(m: RegExpExecArray): boolean {
  const lines = m[4].slice(4).split('  - ');
  return new Set(lines).size === lines.length && !lines.includes(m[7]);
}

/** The first of the sorted `names` not below `name` (in the writer's order). */
function lowerBound(names: readonly string[], name: string): number {
  let lo = 0;
  let hi = names.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (names[mid] < name) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The first of the sorted `xs` above `x`. */
function upperBound(xs: readonly number[], x: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (xs[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Where `name` is in the sorted `names`, or -1. */
function find(names: readonly string[], name: string): number {
  const i = lowerBound(names, name);
  return i < names.length && names[i] === name ? i : -1;
}

/** Whether two names' chain suffixes can only be equal when the names are (see {@link IndexedState}). */
function special(name: string): boolean {
  return name.length === 16 || name.length > 18 || /[A-Z_-]/.test(name);
}

/** The chain suffix of a name (chainName without its prefix; a long name's hash is cached there). */
function suffixOf(name: string): string {
  return chainName(name).slice(10);
}

/**
 * The profiles of a state file's text, indexed (see the module's comment). Built by
 * {@link indexState} only for a file laid out exactly as the writer lays it out, in name order, every
 * profile a plain one, no two in conflict.
 *
 * Chain names: a name of 18 characters or fewer has its upper-cased self (`-` as `_`) as suffix, a
 * longer one a 16-character hash. A name of letters `a-z` and digits only, of another length than
 * 16 and at most 18 ("ordinary"), shares its suffix with no other ordinary name; so only the other
 * names ("special") have their suffix kept (in a map), and an ordinary name's suffix is its name
 * upper-cased: looked up by binary search in the sorted names.
 */
export class IndexedState extends Map<string, Profile> {
  /** Every profile built (looked up), by block. */
  private readonly built = new Map<number, Profile>();
  /** Set and deleted since the index was read (null: none), a deleted one as null. */
  private edits: Map<string, Profile | null> | null = null;
  private count: number;
  /** Every profile built into the Map itself: from then on it is a plain Map. */
  private full = false;

  /** @internal use {@link indexState} */
  constructor(
    /** The file's text: only ever blocks {@link INDEX_BLOCK} matches. */
    private readonly text: string,
    /** The names, sorted (as the file is). */
    private readonly names: string[],
    /** Where each block starts; one more entry: the end of the text. */
    private readonly starts: number[],
    /** The chain suffix of each special name → its block. */
    private readonly suffixes: Map<string, number>,
    /** First block and number of blocks of each shape (see {@link shapes}). */
    private readonly shapeBlocks: readonly [number, number][],
    /** The bytes the text was read from (its Latin-1 encoding: it is ASCII), when there are. */
    private bytes?: Buffer,
  ) {
    super();
    this.count = names.length;
  }

  /** Whether nothing was set or deleted since the text was read (the fast answers hold). */
  get pristine(): boolean {
    return !this.full && this.edits === null;
  }

  /** Whether every profile has been built (the index is a plain Map from then on); for the tests. */
  get materialized(): boolean {
    return this.full;
  }

  /** The block of `name`, or -1. */
  private find(name: string): number {
    return find(this.names, name);
  }

  private lowerBound(name: string): number {
    return lowerBound(this.names, name);
  }

  private block(i: number): Profile {
    let p = this.built.get(i);
    if (p === undefined) {
      PLAIN_BLOCK.lastIndex = this.starts[i];
      const m = PLAIN_BLOCK.exec(matchSubject(this.text));
      p = m === null ? null! : plainBlockProfile(m)!;
      if (!p) throw new Error(`state index: block ${i} no longer reads`); // indexed from the same text
      this.built.set(i, p);
    }
    return p;
  }

  /** Builds every profile into the Map itself (the text's, then the edits). */
  private materialize(): void {
    if (this.full) return;
    const all = parseExactProfiles(this.text);
    if (all === null) throw new Error('state index: the text no longer reads');
    for (const [n, p] of all) super.set(n, this.built.get(this.find(n)) ?? p);
    for (const [n, p] of this.edits ?? []) {
      if (p === null) super.delete(n);
      else super.set(n, p);
    }
    this.edits = null;
    this.full = true;
  }

  override get size(): number {
    return this.full ? super.size : this.count;
  }
  override get(name: string): Profile | undefined {
    if (this.full) return super.get(name);
    const e = this.edits?.get(name);
    if (e !== undefined) return e ?? undefined;
    const i = this.find(name);
    return i < 0 ? undefined : this.block(i);
  }
  override has(name: string): boolean {
    return this.get(name) !== undefined;
  }
  override set(name: string, p: Profile): this {
    if (this.full) return super.set(name, p);
    if (this.get(name) === undefined) this.count++;
    (this.edits ??= new Map()).set(name, p);
    return this;
  }
  override delete(name: string): boolean {
    if (this.full) return super.delete(name);
    if (this.get(name) === undefined) return false;
    this.count--;
    (this.edits ??= new Map()).set(name, null);
    return true;
  }
  override clear(): void {
    this.materialize();
    super.clear();
  }
  override entries(): ReturnType<Map<string, Profile>['entries']> {
    this.materialize();
    return super.entries();
  }
  override keys(): ReturnType<Map<string, Profile>['keys']> {
    this.materialize();
    return super.keys();
  }
  override values(): ReturnType<Map<string, Profile>['values']> {
    this.materialize();
    return super.values();
  }
  override forEach(fn: (value: Profile, key: string, map: Map<string, Profile>) => void, thisArg?: unknown): void {
    this.materialize();
    super.forEach(fn, thisArg);
  }
  override [Symbol.iterator](): ReturnType<Map<string, Profile>['entries']> {
    return this.entries();
  }

  /**
   * The profiles grouped by shape (every field but the name and the addresses: the family, the
   * number of destinations, protocol, mode, logging, masquerade; none has weights, a scheduler,
   * affinity or a health check): one profile of each shape and how many have it. Null once the map
   * has changed.
   */
  shapes(): [Profile, number][] | null {
    if (!this.pristine) return null;
    return this.shapeBlocks.map(([first, n]) => [this.block(first), n]);
  }

  /**
   * What {@link checkConflicts} says of `candidate` against these profiles (those named in `skip`,
   * and its own name, left out): the error for the first profile in the file's order whose chain
   * name or source and protocol it shares, or null. Undefined once the map has changed.
   */
  conflictOf(candidate: Profile, skip?: ReadonlySet<string>): IptlbError | null | undefined {
    if (!this.pristine) return undefined;
    const mine = (i: number | undefined): i is number =>
      i !== undefined && i >= 0 && this.names[i] !== candidate.name && !skip?.has(this.names[i]);
    const chain = suffixOf(candidate.name);
    let byChain = this.suffixes.get(chain);
    if (!mine(byChain) && /^[A-Z0-9]+$/.test(chain) && chain.length !== 16 && chain.length <= 18)
      byChain = this.find(chain.toLowerCase());
    // Its source line (a line that starts so is one: the text is all blocks as the writer lays them out).
    let bySource: number | undefined;
    const line = `\n  source: ${candidate.source}\n`;
    for (let at = this.text.indexOf(line); at >= 0 && bySource === undefined; at = this.text.indexOf(line, at + 1)) {
      const i = upperBound(this.starts, at) - 1;
      if (this.block(i).protocol === candidate.protocol && mine(i)) bySource = i;
    }
    const c = mine(byChain) ? byChain : Infinity;
    const s = mine(bySource) ? bySource : Infinity;
    if (c === Infinity && s === Infinity) return null;
    if (c <= s)
      return new IptlbError(
        'ECONFLICT',
        `name: ${show(candidate.name)} maps to chain ${chainName(candidate.name)}, already used by profile ${show(this.names[c])}`,
        { field: 'name' },
      );
    return new IptlbError(
      'ECONFLICT',
      `source: ${show(candidate.source)}/${candidate.protocol} of profile ${show(candidate.name)} already belongs to profile ${show(this.names[s])}`,
      { field: 'source' },
    );
  }

  /**
   * The text {@link serializeState} writes for these profiles after `change` (removals, then the
   * upserts replacing or adding, as {@link ChangedProfiles} reads it): the blocks of the others as
   * read, the changed ones serialised, in name order. Null once the map has changed.
   */
  spliced(change: Change): string | null {
    const pieces = this.splice(change);
    return pieces && pieces.map((p) => (typeof p === 'string' ? p : this.text.slice(p[0], p[1]))).join('');
  }

  /**
   * {@link spliced} as the bytes to write: the others' blocks are the bytes read, not copied (the
   * text is ASCII: its offsets are the bytes').
   */
  splicedBytes(change: Change): Buffer[] | null {
    const pieces = this.splice(change);
    if (pieces === null) return null;
    const bytes = (this.bytes ??= Buffer.from(this.text, 'latin1'));
    return pieces.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : bytes.subarray(p[0], p[1])));
  }

  /** {@link spliced} as pieces: a range of the text read, or new text. */
  private splice(change: Change): ([number, number] | string)[] | null {
    if (!this.pristine) return null;
    const upserts = new Map<string, Profile>();
    for (const p of change.upsert) upserts.set(p.name, p);
    // Block → its new text ('' removed); insertions before a block (names in order).
    const replaced = new Map<number, string>();
    const inserted = new Map<number, Profile[]>();
    for (const n of change.remove) {
      const i = this.find(n);
      if (i >= 0 && !upserts.has(n)) replaced.set(i, '');
    }
    for (const p of upserts.values()) {
      const i = this.find(p.name);
      if (i >= 0) replaced.set(i, serializeOne(p));
      else {
        const at = this.lowerBound(p.name);
        const list = inserted.get(at);
        if (list) list.push(p);
        else inserted.set(at, [p]);
      }
    }
    const cuts = [...new Set([...replaced.keys(), ...inserted.keys()])].sort((a, b) => a - b);
    const out: ([number, number] | string)[] = [];
    let from = 0;
    for (const i of cuts) {
      const start = this.starts[i];
      if (start > from) out.push([from, start]);
      from = start;
      const before = inserted.get(i);
      if (before)
        for (const p of before.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)))
          out.push(serializeOne(p));
      const r = replaced.get(i);
      if (r !== undefined) {
        if (r !== '') out.push(r);
        from = this.starts[i + 1];
      }
    }
    if (this.text.length > from) out.push([from, this.text.length]);
    return out.length === 0 ? ['{}\n'] : out;
  }
}

/**
 * The index of a state file's text, or null when it is not exactly what the writer writes for
 * plain profiles in name order, or when two of them conflict (the general reading then reads it,
 * and says what is wrong). The checks are those of {@link parseState}'s fast reader (one
 * {@link PLAIN_BLOCK} match per profile, the name's quoting, the checks between fields of
 * {@link plainProfile}) and of {@link checkSet}, without building a profile.
 */
export function indexState(text: string, bytes?: Buffer): IndexedState | null {
  const names: string[] = [];
  const starts: number[] = [];
  const suffixes = new Map<string, number>();
  // Per protocol (tcp, udp, sctp), the source lines: none twice.
  const sources = [new Set<string>(), new Set<string>(), new Set<string>()];
  // Per distinct fields between destinations and source: their protocol, and per number of destinations the
  // first block and the number of blocks (so that a block costs two lookups, not the parsing of its fields).
  const tails = new Map<string, { protocol: number; counts: Map<number, [number, number]> }>();
  // An empty state: no block (and nothing of `{}` kept when a profile is added).
  if (text === '' || text === '{}\n') return new IndexedState('', names, [0], suffixes, []);
  let prev = '';
  let i = 0;
  const subject = matchSubject(text);
  INDEX_BLOCK.lastIndex = 0;
  while (INDEX_BLOCK.lastIndex < text.length) {
    const at = INDEX_BLOCK.lastIndex;
    let m = INDEX_BLOCK.exec(subject);
    if (m === null) {
      WIDE_BLOCK.lastIndex = at;
      m = WIDE_BLOCK.exec(subject);
      if (m === null || !wideBlockChecked(m)) return null;
      INDEX_BLOCK.lastIndex = WIDE_BLOCK.lastIndex;
    }
    let name = m[1];
    if (name === undefined) {
      name = m[3];
      // Quoted as the writer quotes; checkSet: no chain name twice (by suffix, see IndexedState).
      if ((m[2] !== '' || YAML11_FIRST.test(name)) && !plainNameQuoting(m[2], name)) return null;
      if (special(name)) {
        const s = suffixOf(name);
        if (suffixes.has(s)) return null;
        suffixes.set(s, i);
      }
    }
    // In the writer's order, no name twice.
    if (i > 0 && !(prev < name)) return null;
    const dests = m[4];
    let count = 0;
    for (let k = dests.indexOf('\n'); k >= 0; k = dests.indexOf('\n', k + 1)) count++;
    let tail = tails.get(m[6]);
    if (tail === undefined) {
      const protocol = /  protocol: (tcp|udp|sctp)\n/.exec(m[6])![1];
      tails.set(m[6], (tail = { protocol: protocol === 'tcp' ? 0 : protocol === 'udp' ? 1 : 2, counts: new Map() }));
    }
    // checkSet: no source and protocol twice.
    const bySource = sources[tail.protocol];
    const n = bySource.size;
    bySource.add(m[7]);
    if (bySource.size === n) return null;
    const shape = tail.counts.get(count);
    if (shape) shape[1]++;
    else if (count > MAX_DESTINATIONS) return null;
    else tail.counts.set(count, [i, 1]);
    names[i] = name;
    starts[i] = at;
    prev = name;
    i++;
  }
  starts.push(text.length);
  // A special name whose suffix is an ordinary name upper-cased shares that name's chain.
  for (const [s, j] of suffixes) {
    if (!/^[A-Z0-9]+$/.test(s) || s.length === 16 || s.length > 18) continue;
    const k = find(names, s.toLowerCase());
    if (k >= 0 && k !== j) return null;
  }
  const shapes: [number, number][] = [];
  for (const t of tails.values()) shapes.push(...t.counts.values());
  return new IndexedState(text, names, starts, suffixes, shapes, bytes);
}

/**
 * {@link indexState} of a file's bytes (as ASCII: a file with any other byte is not indexed); `latin1`:
 * their text, when the reader has it already (state.ts, readForIndex).
 */
export function indexStateBytes(bytes: Buffer, latin1?: string): IndexedState | null {
  return indexState(latin1 ?? bytes.toString('latin1'), bytes);
}
