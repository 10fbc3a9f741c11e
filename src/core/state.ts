/**
 * The state file: the original iptlb's YAML (one top-level key per profile, keys sorted), read and
 * written byte-compatibly. Reading refuses symlinks, non-regular files, aliases and wrong types;
 * writing goes through a 0600 temp file + fsync + rename + directory fsync.
 */
import { constants as C, lstatSync, type BigIntStats, type Stats } from 'node:fs';
import * as fsp from '../platform/fsp.js';
import * as path from 'node:path';
import { IptlbError } from '../model/errors.js';
import { checkDirChain, checkTrusted } from '../platform/fsafety.js';
import {
  EXISTING_NAME,
  PLAIN_UNICAST_V4_LINE,
  checkSet,
  plainProfile,
  show,
  validateProfile,
} from '../model/profile.js';
import type { Profile } from '../model/types.js';
import { HEALTH_KEYS_SORTED } from '../health/config.js';
import {
  applyRecords,
  baseIdentity,
  decodeJournal,
  journalPath,
  type JournalAt,
  type JournalRecord,
  type RawState,
} from './journal.js';
import { MAX_STATE_BYTES, readCappedBytes } from '../model/limits.js';
import { loadAddon } from '../platform/addon.js';

export const DEFAULT_STATE_FILE = 'local/state.db';
export { MAX_STATE_BYTES };

/**
 * `IPTLB_STATE_FILE`, else `local/state.db` relative to the working directory (as the original).
 * The variable set but empty (`IPTLB_STATE_FILE=$UNSET_VAR`) is a usage error, as `-state-file=` is,
 * not the default in whatever directory the command runs in.
 */
export function resolveStatePath(explicit?: string): string {
  if (!explicit && process.env.IPTLB_STATE_FILE === '')
    throw new IptlbError('EUSAGE', 'IPTLB_STATE_FILE: must not be empty (unset it for the default ./local/state.db)', {
      field: 'IPTLB_STATE_FILE',
    });
  const p = explicit || process.env.IPTLB_STATE_FILE || DEFAULT_STATE_FILE;
  return path.resolve(p);
}

// Plain scalars that YAML 1.1 (Go's yaml.v2) would read as something other than a string.
const YAML11_NON_STRING = [
  /^(y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|null|Null|NULL|~)$/,
  /^[-+]?(0|[1-9][0-9_]*)$/,
  /^[-+]?0b[01_]+$/,
  /^[-+]?0[0-7_]+$/,
  /^[-+]?0x[0-9a-fA-F_]+$/,
  /^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$/,
  // A date as the `yaml` package reads one, also where no such day exists (2021-02-29).
  /^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}$/,
];
/** yaml.v2's resolve table: the first characters whose plain scalars may be something other than a string. */
const GO_HINT = /^[-+.0-9yYnNtTfFoO~]/;
const GO_WORDS = new Set(
  'y Y yes Yes YES true True TRUE on On ON n N no No NO false False FALSE off Off OFF ~ null Null NULL .nan .NaN .NAN .inf .Inf .INF +.inf +.Inf +.INF -.inf -.Inf -.INF'.split(
    ' ',
  ),
);
const U64_MAX = (1n << 64n) - 1n;
const I64_MAX = (1n << 63n) - 1n;

/** Whether Go's `strconv.ParseInt(s, 0, 64)` or `ParseUint(s, 0, 64)` accepts `s` (no underscores in it). */
function goInt(s: string): boolean {
  const sign = s[0] === '-' || s[0] === '+' ? s[0] : '';
  const t = s.slice(sign.length);
  if (t === '') return false;
  let digits = t;
  let radix = '';
  if (t[0] === '0') {
    const p = t.length >= 3 ? t[1]!.toLowerCase() : '';
    if (p === 'b' || p === 'o' || p === 'x') [radix, digits] = [`0${p}`, t.slice(2)];
    else [radix, digits] = ['0o', t.slice(1)];
  }
  const ok = { '': /^[0-9]+$/, '0b': /^[01]+$/, '0o': /^[0-7]*$/, '0x': /^[0-9a-fA-F]+$/ }[radix]!;
  if (!ok.test(digits)) return false;
  const v = digits === '' ? 0n : BigInt(radix + digits);
  // ParseInt takes a sign and int64; ParseUint no sign, and uint64.
  return sign === '-' ? v <= I64_MAX + 1n : sign === '+' ? v <= I64_MAX : v <= U64_MAX;
}

/** Whether Go's `time.Parse("2006-1-2", s)` accepts `s` (yaml.v2's one timestamp form without ':' or a space). */
function goDate(s: string): boolean {
  const m = /^([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})$/.exec(s);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  return (
    mo >= 1 && mo <= 12 && d >= 1 && d <= new Date(Date.UTC(2000, mo, 0)).getUTCDate() - (mo === 2 && !leap(y) ? 1 : 0)
  );
}
const leap = (y: number): boolean => (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;

/**
 * Whether Go's yaml.v2 (2.4, `resolve`) reads plain scalar `s` as something other than a string:
 * a bool or null word, an int as Go's `strconv.ParseInt(_, 0, 64)` reads one after removing every
 * `_` (`0x1F`, `0X1F`, `0o17`, `017`, `0b1`, in 64 bits), a float, or a date (`2021-1-2`). For the
 * characters iptlb writes plain (letters, digits, `_ . : -`; no space).
 */
export function goYamlNonString(s: string): boolean {
  if (!GO_HINT.test(s)) return false;
  if (GO_WORDS.has(s)) return true;
  const c = s[0]!;
  if (c === '.') return /^\.[0-9]+([eE][-+]?[0-9]+)?$/.test(s) && Number.isFinite(Number(s));
  if (!/[-+0-9]/.test(c)) return false;
  if (goDate(s)) return true;
  const plain = s.replace(/_/g, '');
  if (goInt(plain)) return true;
  return /^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$/.test(plain) && Number.isFinite(Number(plain));
}

/** What a reader's fast path leaves to the general one: anything YAML 1.1 or yaml.v2 may read as a non-string. */
const nonString = (s: string): boolean => YAML11_NON_STRING.some((re) => re.test(s)) || goYamlNonString(s);

/**
 * Writes a scalar the way Go's yaml.v2 does for the values iptlb stores: plain unless it would not read back as a
 * string.
 */
function scalar(s: string): string {
  // An IPv6 endpoint starts with a flow indicator, so yaml.v2 single-quotes it (it holds no quote).
  if (s.charCodeAt(0) === 91 /* [ */ && /^\[[0-9a-f:.]+\]:[0-9]+$/.test(s)) return `'${s}'`;
  // (Also where the `yaml` package, the general reader, would not read a string: hex, octal and
  // binary integers beyond 64 bits, which yaml.v2 reads as strings. Quoted, yaml.v2 reads them too.)
  if (s === '' || s === '-' || /[^A-Za-z0-9_.:-]/.test(s) || nonString(s)) return JSON.stringify(s);
  return s;
}

/**
 * A string of a profile's `health` as written: single-quoted when it holds a ':' (an IPv6 address, an http path),
 * its own single quotes doubled as YAML wants (a path such as `/a:'b` quoted as it was made the whole state file
 * unreadable); else as {@link scalar}.
 */
function healthScalar(s: string): string {
  return s.includes(':') ? `'${s.replace(/'/g, "''")}'` : scalar(s);
}

const chunks = new WeakMap<Profile, string>();
/** The text of a profile's logLevel as the file had it, where that is a level's name (see toProfiles). */
const levelText = new WeakMap<Profile, string>();

/** The writer's order of profiles: by name, as JavaScript compares strings. */
function byName(a: Profile, b: Profile): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * Serialises profiles exactly as the original (Go yaml.v2) writes them. Profiles are treated as immutable: each one's
 * text is cached.
 */
export function serializeState(profiles: Iterable<Profile>): string {
  const list = [...profiles].sort(byName);
  if (list.length === 0) return '{}\n';
  let text = '';
  for (const p of list) {
    let c = chunks.get(p);
    if (c === undefined) {
      c = serializeOne(p);
      chunks.set(p, c);
    }
    text += c;
  }
  return text;
}

/** One profile's block of the file, as {@link serializeState} writes it. */
export function serializeOne(p: Profile): string {
  const out: string[] = [];
  {
    out.push(`${scalar(p.name)}:`);
    if (p.affinity) out.push(`  affinity: ${p.affinity}`);
    out.push('  destination:');
    for (const d of p.destination) out.push(`  - ${scalar(d)}`);
    if (p.health) {
      // Only when a check is configured: files without one stay byte-identical (Go's yaml.v2 ignores the key).
      out.push('  health:');
      const h = p.health as unknown as Record<string, string | number | undefined>;
      for (const k of HEALTH_KEYS_SORTED)
        if (h[k] !== undefined) out.push(`    ${k}: ${typeof h[k] === 'number' ? h[k] : healthScalar(String(h[k]))}`);
    }
    out.push(`  logEnabled: ${p.logEnabled ? 'true' : 'false'}`);
    const level = levelText.get(p);
    out.push(`  logLevel: ${level !== undefined ? scalar(level) : JSON.stringify(p.logLevel)}`);
    if (p.masquerade) out.push('  masquerade: true');
    out.push(`  protocol: ${p.protocol}`);
    out.push(`  rulesBackend: ${p.rulesBackend}`);
    if (p.scheduler) out.push(`  scheduler: ${p.scheduler}`);
    out.push(`  source: ${scalar(p.source)}`);
    if (p.weights) {
      out.push('  weights:');
      for (const d of p.destination) if (p.weights[d] !== undefined) out.push(`    ${scalar(d)}: ${p.weights[d]}`);
    }
  }
  return out.join('\n') + '\n';
}

/**
 * Identity of the state's current version, the YAML's and its journal's: changes whenever either is
 * replaced, edited or appended to. Null when neither exists.
 */
export async function stateVersion(file: string): Promise<string | null> {
  const [y, j] = await Promise.all([fileVersion(file), fileVersion(journalPath(file))]);
  return y === null && j === null ? null : `${y ?? '-'}|${j ?? '-'}`;
}

/**
 * {@link stateVersion} without the thread pool (two lstat calls on this thread, microseconds on a local
 * file system): for a writer that holds the state-file lock across a run of commits.
 */
export function stateVersionSync(file: string): string | null {
  const one = (f: string): string | null => {
    try {
      return fileVersionOf(lstatSync(f, { bigint: true }));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  };
  const y = one(file);
  const j = one(journalPath(file));
  return y === null && j === null ? null : `${y ?? '-'}|${j ?? '-'}`;
}

/** One file's part of {@link stateVersion}, from its stat. */
export function fileVersionOf(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.mode}`;
}

async function fileVersion(file: string): Promise<string | null> {
  try {
    return fileVersionOf(await fsp.lstat(file, { bigint: true }));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

function stateError(file: string, message: string, field?: string): IptlbError {
  return new IptlbError('ESTATE', `state file ${file}: ${message}`, field !== undefined ? { field } : {});
}

const HEADER = /^(?:([A-Za-z0-9_-]+)|"([A-Za-z0-9_-]+)"):$/;
// A plain scalar cannot end with ':' (YAML reads that as a key).
// Nor can an item be a number (`- 1`) or YAML 1.1's base 60 (`1:20`): a dot comes before the first ':'.
const ITEM = /^  - ([0-9]+\.[0-9.]*:[0-9.:]*[0-9.])$/;
const KEY =
  /^  (affinity|destination|logEnabled|logLevel|masquerade|protocol|rulesBackend|scheduler|source|weights):(?: (.*))?$/;
/** YAML 1.1's base-60 numbers (`1:20`), which the `yaml` package reads as numbers. */
const SEXAGESIMAL = /^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$/;
const WEIGHT = /^    ([0-9.:]+): (0|[1-9][0-9]{0,6})$/;
// An IPv6 endpoint as serializeState writes it: single-quoted (a plain `[` would start a YAML flow sequence).
// Nothing in it needs escaping, so the quoted text is the string YAML reads. Without these the yaml package
// read every file with an IPv6 profile: a 64 MiB file took 35 s and 1.8 GB for `iptlb list`.
const ITEM6 = /^  - '(\[[0-9a-fA-F:.]+\]:[0-9]+)'$/;
const WEIGHT6 = /^    '(\[[0-9a-fA-F:.]+\]:[0-9]+)': (0|[1-9][0-9]{0,6})$/;
const VALUE6 = /^'(\[[0-9a-fA-F:.]+\]:[0-9]+)'$/;

const STATE_KEYS = [
  'affinity',
  'destination',
  'health',
  'logEnabled',
  'logLevel',
  'masquerade',
  'protocol',
  'rulesBackend',
  'scheduler',
  'source',
  'weights',
];

/**
 * Fast path for the canonical layout this module (and the original) writes: returns the raw
 * mappings, or null as soon as a line is not in that exact layout, so the full YAML parser (with all
 * its checks and messages) takes over. Keeps the `yaml` module off the CLI's start-up path.
 */
export function parseCanonical(text: string): Record<string, Record<string, unknown>> | null {
  if (text === '{}\n' || text === '') return {};
  if (!text.endsWith('\n')) return null;
  return parseExact(text) ?? parseLines(text);
}

/**
 * One profile exactly as {@link serializeOne} writes it (keys sorted, every key present). Anything
 * else fails the match and {@link parseLines} takes over. Protocol and rules backend are limited to
 * their valid values and the source must hold a ':', so no value here is a YAML 1.1 non-string.
 */
const BLOCK =
  /(?:([A-Za-z0-9_-]+)|"([A-Za-z0-9_-]+)"):\n  destination:\n((?:  - [0-9]+\.[0-9.]*:[0-9.:]*[0-9.]\n)+)  logEnabled: (true|false)\n  logLevel: "([a-z0-9]+)"\n(?:  masquerade: (true|false)\n)?  protocol: (tcp|udp|sctp)\n  rulesBackend: (client|proxy|server)\n  source: ([0-9.]*:[0-9.:]*[0-9.])\n/y;

/** The file as this module writes it, one regular-expression match per profile (a bulk load reads
 * thousands; per line, cold JavaScript is what the CLI's start-up pays for). Null when any profile
 * is laid out otherwise. */
function parseExact(text: string): Record<string, Record<string, unknown>> | null {
  const out: Record<string, Record<string, unknown>> = Object.create(null);
  BLOCK.lastIndex = 0;
  while (BLOCK.lastIndex < text.length) {
    const m = BLOCK.exec(text);
    if (m === null) return null;
    const name = m[1] ?? m[2];
    if (name in out || (m[1] !== undefined && (name === '-' || nonString(name)))) return null;
    const body: Record<string, unknown> = {
      destination: m[3].slice(4, -1).split('\n  - '),
      logEnabled: m[4] === 'true',
      logLevel: m[5],
    };
    if (m[6] !== undefined) body.masquerade = m[6] === 'true';
    body.protocol = m[7];
    body.rulesBackend = m[8];
    body.source = m[9];
    out[name] = body;
  }
  return out;
}

/** Names whose plain form YAML 1.1 might read as something else start with one of these. */
export const YAML11_FIRST = /^[-+.0-9~yYnNtTfFoO]/;

/**
 * One plain profile exactly as serializeOne writes it, its name and addresses checked by the
 * pattern itself (what validateProfile accepts of them, in canonical text): the checks run in the
 * regular expression engine's native code, which matters for a one-shot process, whose JavaScript
 * is still cold.
 */
export const PLAIN_BLOCK = new RegExp(
  `("?)(${EXISTING_NAME})\\1:\\n  destination:\\n((?:  - ${PLAIN_UNICAST_V4_LINE})+)  logEnabled: (true|false)\\n  logLevel: "([0-7])"\\n(  masquerade: true\\n)?  protocol: (tcp|udp|sctp)\\n  rulesBackend: (client|proxy|server)\\n  source: (${PLAIN_UNICAST_V4_LINE})`,
  'y',
);

/**
 * The profiles of a file laid out exactly as {@link serializeState} writes it, every profile a plain
 * one ({@link plainProfile}: IPv4, no weights, scheduler, affinity or health): one match of
 * {@link PLAIN_BLOCK} per profile, then the checks between fields (no destination twice or the
 * source itself; masquerade only with proxy). Each profile keeps its block as its serialised text,
 * so writing the file back costs a concatenation. Null as soon as anything is laid out or written
 * otherwise (the general path then reads the file, with its messages). Conflicts between profiles
 * are not checked here.
 */
function loadExact(text: string): Map<string, Profile> | null {
  const out = new Map<string, Profile>();
  if (text === '{}\n') return out;
  const subject = matchSubject(text);
  PLAIN_BLOCK.lastIndex = 0;
  while (PLAIN_BLOCK.lastIndex < text.length) {
    const m = PLAIN_BLOCK.exec(subject);
    if (m === null) return null;
    const p = plainBlockProfile(m);
    if (p === null || out.has(p.name)) return null;
    out.set(p.name, p);
  }
  return out;
}

/**
 * The string to run the block patterns ({@link PLAIN_BLOCK}, the index's) on for `text`: V8 runs a
 * pattern on a subject shorter than 1,000 characters in its bytecode interpreter first, and these cost
 * about 2.5 ms there, then 0.7 ms more to compile to native code at the second match: 10 % of a bare
 * Node start. On a longer subject V8 compiles native code at once (0.7 ms). So a short text is matched
 * with NULs after it, which no block can take in (a block ends with a newline; loops stop at the
 * text's own length).
 */
export function matchSubject(text: string): string {
  return text.length < 1024 ? text.padEnd(1024, '\0') : text;
}

/**
 * Whether a {@link PLAIN_BLOCK} match's name is quoted exactly when YAML 1.1 would read it plain as
 * something else (as scalar() writes it).
 */
export function plainNameQuoting(quote: string, name: string): boolean {
  return quote !== '' ? scalar(name) !== name : !YAML11_FIRST.test(name) || scalar(name) === name;
}

/**
 * The profile of one {@link PLAIN_BLOCK} match (its name's quoting and the checks between fields:
 * {@link plainProfile}), its block kept as its serialised text; null when the general path must read it.
 */
export function plainBlockProfile(m: RegExpExecArray): Profile | null {
  const name = m[2];
  if (!plainNameQuoting(m[1], name)) return null;
  const p = plainProfile(
    name,
    m[9].slice(0, -1),
    m[3].slice(4, -1).split('\n  - '),
    m[7],
    m[8],
    m[4] === 'true',
    m[5],
    m[6] !== undefined,
    true,
  );
  if (p !== null) chunks.set(p, m[0]);
  return p;
}

/** The canonical layout line by line: keys in any order, any of them missing. */
function parseLines(text: string): Record<string, Record<string, unknown>> | null {
  const out: Record<string, Record<string, unknown>> = Object.create(null);
  let cur: Record<string, unknown> | null = null;
  let list: string[] | null = null;
  let weights: Record<string, number> | null = null;
  // Lines are told apart by how they start (a name, "  - " or "  key:"), so each is matched against
  // one pattern only.
  for (let at = 0; at < text.length;) {
    const nl = text.indexOf('\n', at);
    const line = text.slice(at, nl);
    at = nl + 1;
    let m: RegExpExecArray | null;
    if (line.charCodeAt(0) !== 32) {
      if (!(m = HEADER.exec(line))) return null;
      const name = m[1] ?? m[2];
      if (m[1] !== undefined && (name === '-' || nonString(name))) return null;
      if (name in out) return null;
      cur = out[name] = {};
      list = null;
      weights = null;
    } else if (line.startsWith('  - ')) {
      if (!cur || !list || !(m = ITEM.exec(line) ?? ITEM6.exec(line))) return null;
      list.push(m[1]);
    } else if (line.startsWith('    ')) {
      if (!weights || !(m = WEIGHT.exec(line) ?? WEIGHT6.exec(line)) || !m[1].includes(':') || m[1] in weights)
        return null;
      weights[m[1]] = Number(m[2]);
    } else if (cur && (m = KEY.exec(line))) {
      const [, key, value] = m;
      if (key in cur) return null;
      list = null;
      weights = null;
      if (key === 'destination') {
        if (value !== undefined) return null;
        cur[key] = list = [];
      } else if (key === 'weights') {
        if (value !== undefined) return null;
        cur[key] = weights = Object.create(null) as Record<string, number>;
      } else if (key === 'affinity') {
        if (value === undefined || !/^(0|[1-9][0-9]{0,5})$/.test(value)) return null;
        cur[key] = Number(value);
      } else if (key === 'scheduler') {
        if (value !== 'random' && value !== 'round-robin') return null;
        cur[key] = value;
      } else if (value === undefined) {
        return null;
      } else if (key === 'logEnabled' || key === 'masquerade') {
        if (value !== 'true' && value !== 'false') return null;
        cur[key] = value === 'true';
      } else if (key === 'logLevel') {
        const q = /^"([a-z0-9]+)"$/.exec(value);
        if (!q) return null;
        cur[key] = q[1];
      } else if ((m = VALUE6.exec(value))) {
        cur[key] = m[1];
      } else {
        // No YAML 1.1 non-string form has a ':' (the common case: an address), so those skip the list.
        if (
          !/^[a-z0-9.:]*[a-z0-9.]$/.test(value) ||
          SEXAGESIMAL.test(value) ||
          (!value.includes(':') && nonString(value))
        )
          return null;
        cur[key] = value;
      }
    } else {
      return null;
    }
  }
  for (const name in out) {
    // A name with nothing under it (`web:` then another name, or the end) is null in YAML, not an
    // empty mapping; so is `destination:` or `weights:` with nothing under it, not an empty list or map.
    // The general path says so.
    if (Object.keys(out[name]).length === 0) return null;
    const { weights: w, destination: d } = out[name];
    if (w && Object.keys(w).length === 0) return null;
    if (Array.isArray(d) && d.length === 0) return null;
  }
  return out;
}

/**
 * Parses state-file text into validated profiles (a map by name). Types must be the original's:
 * `logLevel` a string, `logEnabled` a boolean, `destination` a list of strings.
 */
export async function parseState(text: string, file = '<state>'): Promise<Map<string, Profile>> {
  const exact = loadExact(text);
  if (exact !== null) return checkedSet(exact, file);
  return toProfiles(await parseRaw(text, file), file);
}

/**
 * The reference reading of state-file text: the `yaml` package and the general validation, no fast
 * path. The tests hold every fast path to it.
 */
export async function parseStateReference(text: string, file = '<state>'): Promise<Map<string, Profile>> {
  return toProfiles(await parseYaml(text, file), file);
}

/** {@link loadExact}, for the tests: the profiles when `text` is read without the general path, else null. */
export function parseExactProfiles(text: string): Map<string, Profile> | null {
  return loadExact(text);
}

async function parseRaw(text: string, file: string): Promise<unknown> {
  const lines = parseCanonical(text);
  if (lines !== null) return lines;
  const tidied = tidy(text);
  return (tidied !== null ? parseCanonical(tidied) : null) ?? (await parseYaml(text, file));
}

/**
 * The text without what a hand edit adds and YAML ignores: a byte-order mark, the CR of CRLF line
 * ends (an editor on Windows; a CR alone, an old Mac's line end, is a line end too), blank and comment
 * lines, trailing spaces and comments, a missing last newline. Null when there is none of them. Only
 * for the line reader ({@link parseCanonical}), which
 * takes nothing but one-line scalars without a quote left open, a space or a `#` in them, so what it
 * reads of the tidied text is what YAML reads of the text; anything else it leaves to the `yaml`
 * package, with the text as it is. (That package takes 10 to 30 times the time, and 50 to 100 times the
 * file's size in memory: a 64 MiB file with one comment ran Node out of its heap.)
 */
function tidy(text: string): string | null {
  let t = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  t = t
    .replace(/\r\n?/g, '\n')
    .replace(/[ \t]+(?:#.*)?$/gm, '')
    .replace(/^(?:#.*)?\n/gm, '');
  if (t !== '' && !t.endsWith('\n')) t += '\n';
  return t === text ? null : t;
}

/** How often the `yaml` package read a state (for the tests: which files the line reader leaves to it). */
export const yamlReads = { count: 0 };

async function parseYaml(text: string, file: string): Promise<unknown> {
  yamlReads.count++;
  // A line break is CRLF, LF or a CR alone (YAML 1.1 and 1.2; Go's yaml.v2 reads them so), and reads as LF
  // wherever it is. The `yaml` package takes a CR alone for no break: a file with the old Mac line ends, which
  // the original read, was refused with a message about nested mappings on line 1.
  if (text.includes('\r')) text = text.replace(/\r\n?/g, '\n');
  const YAML = await import('yaml');
  let doc;
  const lines = new YAML.LineCounter();
  try {
    // Keys are compared by their text below (uniqueKeys compares what they resolve to).
    doc = YAML.parseDocument(text, { version: '1.1', uniqueKeys: false, prettyErrors: false, lineCounter: lines });
  } catch (e) {
    throw stateError(file, `is not valid YAML (${yamlProblem(e)})`);
  }
  // Where the parser stopped: the line, or the end of the file (a quote never closed runs to it).
  const at = (offset: number | undefined): string =>
    offset === undefined
      ? ''
      : offset >= text.length
        ? 'at the end of the file: '
        : `line ${lines.linePos(offset).line}: `;
  if (doc.errors.length > 0) {
    const offset = doc.errors[0].pos?.[0];
    throw stateError(
      file,
      `is not valid YAML (${at(offset)}${yamlProblem(doc.errors[0])}${bracketHint(text, lines, offset)})`,
    );
  }
  keysAsText(YAML, doc.contents, [], file, (offset) => lines.linePos(offset).line);
  // An alias (`*x`, or a merge `<<: *x`) is refused with its line, before toJS says only that aliases are off.
  let alias: { source: string; offset?: number } | undefined;
  YAML.visit(doc, {
    Alias(_, node) {
      alias = { source: node.source, offset: node.range?.[0] };
      return YAML.visit.BREAK;
    },
  });
  if (alias)
    throw stateError(
      file,
      `is not usable YAML (${at(alias.offset)}an alias, *${alias.source}: a state file holds every profile written out; copy it there)`,
    );
  try {
    return doc.toJS({ maxAliasCount: 0 });
  } catch (e) {
    throw stateError(file, `is not usable YAML (${yamlProblem(e)})`);
  }
}

/**
 * Gives every mapping key its text, as Go's yaml.v2 does when it decodes a key into a string (the
 * original's `map[string]…`: the scalar as written, not what it resolves to): a profile `0x1F:` is
 * named "0x1F", not "31"; `yes:` "yes", not "true". A key that reads as null (`~`, `null`, nothing),
 * which yaml.v2 makes an empty name, and a key given twice in one mapping (yaml.v2 keeps the last
 * silently) are refused with their lines.
 */
function keysAsText(
  YAML: typeof import('yaml'),
  node: unknown,
  where: string[],
  file: string,
  lineOf: (offset: number) => number,
): void {
  if (YAML.isSeq(node)) {
    for (const item of node.items) keysAsText(YAML, item, where, file, lineOf);
    return;
  }
  if (!YAML.isMap(node)) return;
  const inside =
    where.length === 0
      ? ''
      : `profile ${show(where[0])}: ${where
          .slice(1)
          .map((k) => `${k}: `)
          .join('')}`;
  const seen = new Map<string, number>();
  for (const pair of node.items) {
    const key = pair.key;
    let name: string | undefined;
    if (YAML.isScalar(key) && typeof key.value !== 'symbol' /* a merge key, `<<` */) {
      const line = key.range ? lineOf(key.range[0]) : 0;
      if (key.value === null) {
        const text = key.source === '' || key.source === undefined ? 'an empty key' : `key ${show(key.source)}`;
        throw stateError(
          file,
          where.length === 0
            ? `line ${line}: ${text} reads as null in YAML, not a profile name (the original would read an empty name)`
            : `${inside}line ${line}: ${text} reads as null in YAML, not a key`,
        );
      }
      name = typeof key.value === 'string' ? key.value : (key.source ?? String(key.value));
      key.value = name;
      const first = seen.get(name);
      if (first !== undefined)
        throw stateError(
          file,
          where.length === 0
            ? `profile ${show(name)} appears twice (lines ${first} and ${line}); keep one of them`
            : `${inside}key ${show(name)} appears twice (lines ${first} and ${line}); keep one of them`,
          name,
        );
      seen.set(name, line);
    }
    keysAsText(YAML, pair.value, name === undefined ? where : [...where, name], file, lineOf);
  }
}

/**
 * What to do when the line the parser stopped at holds an IPv6 endpoint written plain: YAML reads its `[` as the
 * start of a list (`- [2001:db8::1]:80` is a list followed by `:80`), so it needs quotes, as iptlb writes it.
 */
function bracketHint(
  text: string,
  lines: { lineStarts: number[]; linePos(o: number): { line: number } },
  offset?: number,
): string {
  if (offset === undefined || offset >= text.length) return '';
  const start = lines.lineStarts[lines.linePos(offset).line - 1] ?? 0;
  const end = text.indexOf('\n', start);
  const m = /(?:^|[\s:-])(\[[^\]\s'"]*\]:[0-9]+)/.exec(text.slice(start, end < 0 ? text.length : end));
  return m ? `; an IPv6 endpoint is written in quotes: '${m[1]}'` : '';
}

/** The parser's complaint in the file's terms, not the library's (its API, its stack). */
function yamlProblem(e: unknown): string {
  const message = oneLine((e as Error).message);
  if (e instanceof RangeError || /Maximum call stack/.test(message)) return 'nested too deeply';
  return /multiple documents/.test(message) ? 'more than one document; a state file is one mapping' : message;
}

function toProfiles(data: unknown, file: string): Map<string, Profile> {
  const result = new Map<string, Profile>();
  if (data === null || data === undefined) return result;
  if (typeof data !== 'object' || Array.isArray(data))
    throw stateError(file, `must be a mapping of profile names, got ${show(data)}`);
  for (const [name, body] of Object.entries(data as Record<string, unknown>)) {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw stateError(file, `profile ${show(name)}: must be a mapping, got ${show(body)}`, name);
    }
    const b = body as Record<string, unknown>;
    for (const k of Object.keys(b)) {
      if (!STATE_KEYS.includes(k))
        throw stateError(
          file,
          `profile ${show(name)}: unknown key ${show(k)} (a profile's keys are ${STATE_KEYS.join(', ')}; the original ignored others, iptlb refuses them so that a misspelt key is not a profile without it: correct or remove it)`,
          k,
        );
    }
    if (b.logLevel !== undefined && typeof b.logLevel !== 'string') {
      throw stateError(
        file,
        `profile ${show(name)}: logLevel must be a quoted string such as "4", got ${show(b.logLevel)}`,
        'logLevel',
      );
    }
    if (
      b.destination !== undefined &&
      (!Array.isArray(b.destination) || b.destination.some((d) => typeof d !== 'string'))
    ) {
      throw stateError(
        file,
        `profile ${show(name)}: destination must be a list of "ipv4:port" strings, got ${show(b.destination)}`,
        'destination',
      );
    }
    if (b.weights !== undefined) {
      const w = b.weights;
      if (
        w === null ||
        typeof w !== 'object' ||
        Array.isArray(w) ||
        Object.values(w).some((v) => typeof v !== 'number' || !Number.isInteger(v))
      ) {
        throw stateError(
          file,
          `profile ${show(name)}: weights must be a mapping of "ipv4:port" to integer weights, got ${show(w)}`,
          'weights',
        );
      }
    }
    if (b.affinity !== undefined && (typeof b.affinity !== 'number' || !Number.isInteger(b.affinity))) {
      throw stateError(
        file,
        `profile ${show(name)}: affinity must be a whole number of seconds, got ${show(b.affinity)}`,
        'affinity',
      );
    }
    if (b.health !== undefined && (b.health === null || typeof b.health !== 'object' || Array.isArray(b.health))) {
      throw stateError(
        file,
        `profile ${show(name)}: health must be a mapping such as {kind: tcp}, got ${show(b.health)}`,
        'health',
      );
    }
    for (const k of ['source', 'protocol', 'rulesBackend', 'scheduler']) {
      if (b[k] !== undefined && typeof b[k] !== 'string') {
        throw stateError(file, `profile ${show(name)}: ${k} must be a string, got ${show(b[k])}`, k);
      }
    }
    let p: Profile;
    try {
      p = validateProfile({ ...b, name }, { existing: true });
    } catch (e) {
      if (e instanceof IptlbError)
        throw stateError(
          file,
          `profile ${show(name)}: ${e.message}${e.field === 'name' ? originalNameAdvice(name) : ''}`,
          e.field,
        );
      throw e;
    }
    // A level the original wrote as a name (`-log-level=warning`) is written back so (read as its number).
    if (typeof b.logLevel === 'string' && b.logLevel !== p.logLevel && /^[a-z]+$/.test(b.logLevel))
      levelText.set(p, b.logLevel);
    result.set(name, p);
  }
  return checkedSet(result, file);
}

/**
 * What to do with a profile of the original's whose name iptlb does not take (`web.v1`, `über`,
 * `my svc`, longer than 63): whether the original could have made its chain (`IPTLB_NAT_` + the name
 * upper-cased rune by rune as Go does, `-` as `_`; iptables takes up to 28 bytes, no space), so that
 * rules of it may be in the kernel.
 */
function originalNameAdvice(name: string): string {
  const chain = `IPTLB_NAT_${[...name.replace(/-/g, '_')].map((c) => (c.toUpperCase().length === c.length ? c.toUpperCase() : c)).join('')}`;
  const applied = Buffer.byteLength(chain) <= 28 && !/\s/.test(chain);
  return applied
    ? ` (iptlb cannot take this name: delete the profile with the original, \`-run -delete -profile=${name}\`, or take it out of the file and delete the original's chain ${chain} and its jump by hand; then add it under a valid name)`
    : ` (iptlb cannot take this name, and the original could not apply it either, iptables refuses its chain name ${show(chain)}: take it out of the file; then add it under a valid name)`;
}

/** `profiles` once checked for conflicts between them (a chain name or a source/protocol used twice). */
function checkedSet(profiles: Map<string, Profile>, file: string): Map<string, Profile> {
  try {
    checkSet(profiles.values());
  } catch (e) {
    if (!(e instanceof IptlbError)) throw e;
    // Which of two profiles a conflict names depends on the order they are met in, and readings
    // differ there: the yaml package puts names such as "123" first, the fast reader keeps the
    // file's order. So the error is the one met in the writer's order, whatever this reading's was.
    let err: IptlbError = e;
    try {
      checkSet([...profiles.values()].sort(byName));
    } catch (sorted) {
      if (sorted instanceof IptlbError) err = sorted;
    }
    throw stateError(file, err.message, err.field);
  }
  return profiles;
}

function oneLine(s: string): string {
  return s.split('\n')[0].slice(0, 160);
}

/**
 * Reads the state file (the YAML and its journal). A missing file is an empty state; anything unsafe or malformed is
 * an error.
 */
export async function readState(file: string): Promise<Map<string, Profile>> {
  return (await readStateFull(file)).profiles;
}

/** What {@link readStateFull} read: the profiles, and where the YAML and its journal stood. */
export interface StateRead {
  profiles: Map<string, Profile>;
  /** Identity of the YAML read ({@link baseIdentity}). */
  base: string;
  /** The valid journal over that YAML, null when there is none. */
  journal: JournalAt | null;
  /** Records of that journal applied. */
  records: number;
}

/**
 * Without opening it: whether the state file exists (false: ENOENT along the way); one that is not
 * a regular file is refused as reading it would refuse it (a directory, a device). Other failures
 * are left to the read. Before a lock is taken, so that bad input makes no directory or lock file.
 */
export function stateFileExists(file: string): boolean {
  let st: Stats;
  try {
    st = lstatSync(file);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ENOENT';
  }
  if (st.isSymbolicLink()) throw stateError(file, 'is a symbolic link; refusing to follow it');
  if (!st.isFile()) throw stateError(file, st.isDirectory() ? 'is a directory' : 'is not a regular file');
  return true;
}

/** Opens one of the state's files for reading, checked; null when absent. */
async function openChecked(file: string, what: string): Promise<{ fh: fsp.FileHandle; st: BigIntStats } | null> {
  // Said of the file it is about: the YAML, or its journal.
  const fault = (message: string): IptlbError => new IptlbError('ESTATE', `${what} ${file}: ${message}`);
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    // (The journal's directory not a directory: the YAML beside it says so, of itself.)
    if (err.code === 'ENOENT' || (err.code === 'ENOTDIR' && what !== 'state file')) return null;
    if (err.code === 'ELOOP') throw fault('is a symbolic link; refusing to follow it');
    if (err.code === 'EACCES' || err.code === 'EPERM')
      throw new IptlbError('EPERM', `${what} ${file}: permission denied`);
    throw fault(`cannot be opened (${err.code ?? err.message})`);
  }
  try {
    const st = await fh.stat({ bigint: true });
    if (!st.isFile()) throw fault(st.isDirectory() ? 'is a directory' : 'is not a regular file');
    // The file opened is the file checked (fstat of the descriptor), and so is the way to it.
    checkTrusted(file, { uid: Number(st.uid), mode: Number(st.mode) }, what);
    checkDirChain(file);
    if (st.size > BigInt(MAX_STATE_BYTES))
      throw fault(`is larger than ${MAX_STATE_BYTES} bytes (64 MiB, the limit of a state file)`);
    return { fh, st };
  } catch (e) {
    await fh.close();
    if (e instanceof IptlbError) throw e;
    const err = e as NodeJS.ErrnoException;
    throw fault(`cannot be read (${err.code ?? err.message})`);
  }
}

function tooBig(file: string): IptlbError {
  return stateError(file, `is larger than ${MAX_STATE_BYTES} bytes (64 MiB, the limit of a state file)`);
}

async function readOpened(file: string, fh: fsp.FileHandle): Promise<string> {
  return (await readOpenedBytes(file, fh)).toString('utf8');
}

/** {@link readOpened}'s bytes, undecoded; `size`: the file's, from its fstat (read in one buffer). */
async function readOpenedBytes(file: string, fh: fsp.FileHandle, size?: number): Promise<Buffer> {
  try {
    // Capped even so: the file may grow between the fstat and the read.
    return await readCappedBytes(fh, MAX_STATE_BYTES, () => tooBig(file), size);
  } catch (e) {
    if (e instanceof IptlbError) throw e;
    const err = e as NodeJS.ErrnoException;
    throw stateError(file, `cannot be read (${err.code ?? err.message})`);
  } finally {
    await fh.close();
  }
}

/** From this size on, the CLI's index reads the YAML through the addon ({@link readForIndex}). */
export const NATIVE_READ_MIN_BYTES = 256 * 1024;

/**
 * The YAML's bytes for the CLI's index, with their Latin-1 text when it comes free. A file of
 * {@link NATIVE_READ_MIN_BYTES} or more is read by the addon's `readText` when the addon loads: one
 * populated mapping seen as both the Buffer and the string, instead of Node's two fresh copies, whose
 * every page is a fault when first touched (about 12 µs each on the VMs measured: some 7 ms a MB).
 * Below it, or without the addon, or when the file grew since its fstat, the usual read.
 */
async function readForIndex(file: string, fh: fsp.FileHandle, size: number): Promise<{ bytes: Buffer; text?: string }> {
  if (size >= NATIVE_READ_MIN_BYTES) {
    const loaded = loadAddon('core');
    if (loaded.ok) {
      let r: { text: string; bytes: Buffer } | null;
      try {
        r = loaded.addon.readText(fh.fd, size);
      } catch (e) {
        await fh.close();
        const err = e as NodeJS.ErrnoException;
        throw stateError(file, `cannot be read (${err.code ?? err.message})`);
      }
      if (r) {
        await fh.close();
        return r;
      }
    }
  }
  return { bytes: await readOpenedBytes(file, fh, size) };
}

/**
 * Reads the YAML and the journal beside it (see journal.ts): the journal's records apply when its
 * header names the YAML version read. Needs no lock: a reader sees a complete version, whatever a
 * concurrent fold does. A fold replaces the YAML, then removes the journal; so the journal is opened
 * first. A journal opened first is over the YAML opened after it (its records apply) or over an
 * older one (void: the YAML opened already holds them); opened the other way round, a fold between
 * the two opens would leave the old YAML without its journal, and changes that had returned unseen.
 */
export async function readStateFull(
  file: string,
  /**
   * Reads the text of a file without a journal into a map instead of {@link loadExact} (the CLI's
   * index, see state-index.ts), which checks what {@link checkedSet} checks; null: the usual way.
   */
  indexed?: (bytes: Buffer, latin1?: string) => Map<string, Profile> | null,
): Promise<StateRead> {
  const jf = journalPath(file);
  const j = await openChecked(jf, 'state journal');
  let base: string;
  let read: { bytes: Buffer; text?: string };
  try {
    const y = await openChecked(file, 'state file');
    if (y && y.st.size === 0n) {
      // No writer leaves it empty (none of profiles is `{}`): a file cut short, as a rename without
      // fsync (the original's way) can leave after a power loss. Read as no profiles, a sync would
      // remove every rule.
      await y.fh.close();
      throw stateError(
        file,
        'is empty (0 bytes), which no writer leaves (a file cut short by a crash?): restore it, or remove it to start with no profiles',
      );
    }
    base = baseIdentity(y?.st ?? null);
    read = !y
      ? { bytes: Buffer.alloc(0) }
      : indexed
        ? await readForIndex(file, y.fh, Number(y.st.size))
        : { bytes: await readOpenedBytes(file, y.fh, Number(y.st.size)) };
  } catch (e) {
    if (j) await j.fh.close();
    throw e;
  }
  const bytes = read.bytes;
  // The journal's text is read after the YAML's: it only grows (a fold removes it, and a new
  // journal is a new file), so it holds at least the records it held when it was opened.
  const journalText = j ? await readOpened(jf, j.fh) : null;
  if (indexed && j === null) {
    const index = indexed(bytes, read.text);
    if (index) return { profiles: index, base, journal: null, records: 0 };
  }
  const text = bytes.toString('utf8');
  // The file as iptlb writes it: read without the general path (see loadExact).
  const exact = loadExact(text);
  let data: unknown = exact === null ? await parseRaw(text, file) : undefined;
  let journal: JournalAt | null = null;
  let records = 0;
  let replayed: { yaml: RawState; records: JournalRecord[] } | undefined;
  if (j) {
    const decoded = decodeJournal(journalText!, base);
    if (decoded.valid && decoded.intactAfter > 0) {
      const jf = journalPath(file);
      const n = decoded.records.length + 1;
      throw new IptlbError(
        'ESTATE',
        `state journal ${jf}: record ${n} (line ${n + 1}) is damaged and ${decoded.intactAfter} intact record(s) follow it, which a crash does not leave (it cuts only the last); nothing was read or changed: \`truncate -s ${decoded.validEnd} ${jf}\` keeps the ${n - 1} record(s) before it and drops the changes after, moving the journal aside drops all (\`iptlb sync\` then makes the kernel match)`,
      );
    }
    if (decoded.valid) {
      journal = { base, validEnd: decoded.validEnd, ino: j.st.ino };
      records = decoded.records.length;
      if (records > 0 && exact !== null) data = parseCanonical(text);
      if (records > 0 && (data === null || data === undefined)) data = {};
      if (records > 0 && typeof data === 'object' && !Array.isArray(data)) {
        replayed = { yaml: data as RawState, records: decoded.records };
        data = applyRecords(data as RawState, decoded.records);
      }
    }
  }
  try {
    const profiles = records === 0 && exact !== null ? checkedSet(exact, file) : toProfiles(data, file);
    return { profiles, base, journal, records };
  } catch (e) {
    if (replayed && e instanceof IptlbError) throw journalFault(e, file, replayed.yaml, replayed.records, journalText!);
    throw e;
  }
}

/**
 * The error of a state whose journal's records make it invalid, said of the journal: the record that
 * did it (the first whose replay fails validation) and how to read the state without it. When the
 * YAML alone is invalid too, its own error (`e`'s cause is the YAML then).
 */
function journalFault(e: IptlbError, file: string, yaml: RawState, records: JournalRecord[], text: string): IptlbError {
  const fails = (n: number): IptlbError | null => {
    try {
      toProfiles(n === 0 ? yaml : applyRecords(yaml, records.slice(0, n)), file);
      return null;
    } catch (err) {
      if (err instanceof IptlbError) return err;
      throw err;
    }
  };
  const alone = fails(0);
  if (alone) return alone;
  // The YAML alone is valid, all the records are not: the first record after which it is not.
  let [lo, hi] = [0, records.length];
  let err = e;
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    const f = fails(mid);
    if (f) [hi, err] = [mid, f];
    else lo = mid;
  }
  // Where record `hi` starts (the header is line 1): cutting the journal there keeps the records before it.
  let at = 0;
  for (let i = 0; i < hi; i++) at = text.indexOf('\n', at) + 1;
  const cut = Buffer.byteLength(text.slice(0, at));
  const jf = journalPath(file);
  const what = err.message.startsWith(`state file ${file}: `)
    ? err.message.slice(`state file ${file}: `.length)
    : err.message;
  const after = records.length - hi;
  return new IptlbError(
    'ESTATE',
    `state journal ${jf}: record ${hi} (line ${hi + 1}): ${what}; ${file} alone is valid: \`truncate -s ${cut} ${jf}\` drops this record${after ? ` and the ${after} after it` : ''}, moving the journal aside drops all ${records.length} (the changes since the last fold; \`iptlb sync\` then makes the kernel match)`,
    err.field !== undefined ? { field: err.field } : {},
  );
}

/** Creates the state file's directory (0700) when missing. */
export async function ensureStateDir(file: string): Promise<void> {
  await fsp.mkdirs(path.dirname(file), 0o700);
}

/**
 * Writes the whole state atomically: temp file (0600, O_EXCL) + fsync + rename + directory fsync.
 * Returns the new YAML's identity ({@link baseIdentity}). A journal beside it is void from then on.
 */
export async function writeState(
  file: string,
  profiles: Iterable<Profile>,
  /** The profiles already serialised (the CLI's splice of its change into the bytes read, see state-index.ts). */
  serialised?: readonly Buffer[],
): Promise<string> {
  const text = serialised ? undefined : serializeState(profiles);
  // A file longer than a reader accepts would make the state unreadable: refused (the caller undoes
  // the change's kernel commit, as for any failed write).
  const size = text === undefined ? serialised!.reduce((n, b) => n + b.length, 0) : Buffer.byteLength(text);
  if (size > MAX_STATE_BYTES)
    throw stateError(file, `would be ${size} bytes, more than ${MAX_STATE_BYTES} (64 MiB, the limit of a state file)`);
  await ensureStateDir(file);
  const st = await fsp.replaceFile(
    file,
    (fh) => (text === undefined ? writeAll(fh, serialised!) : fh.writeFile(text, 'utf8')),
    {
      beforeRename: async () => {
        const cur = await fsp.lstat(file).catch(() => null);
        if (cur && !cur.isFile())
          throw stateError(
            file,
            cur.isSymbolicLink() ? 'is a symbolic link; refusing to replace it' : 'is not a regular file',
          );
      },
    },
  );
  const base = baseIdentity(st);
  return base;
}

/** Writes every byte of `chunks` in order (a vectored write, again for whatever it left). */
export async function writeAll(fh: Pick<fsp.FileHandle, 'writev'>, chunks: readonly Buffer[]): Promise<void> {
  let rest = chunks.filter((c) => c.length > 0);
  while (rest.length) {
    let { bytesWritten: n } = await fh.writev(rest as Buffer[]);
    if (n === 0) throw new Error('writev wrote nothing');
    while (rest.length && n >= rest[0].length) {
      n -= rest[0].length;
      rest = rest.slice(1);
    }
    if (n > 0) rest = [rest[0].subarray(n), ...rest.slice(1)];
  }
}
