/**
 * A strict reader of the Prometheus text exposition format 0.0.4, for tests: it throws on the first line a
 * strict scraper would refuse or a careful one would flag, naming the line. What it checks, after
 * https://prometheus.io/docs/instrumenting/exposition_formats/:
 *
 * - the text ends with a newline; every line is a `# HELP`, a `# TYPE`, another comment, or a sample;
 * - metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*` (not `__`-prefixed), each label
 *   once per sample, label values quoted with only `\\`, `\"` and `\n` escaped (a raw newline cannot occur);
 * - `# HELP` escapes only `\\` and `\n`; HELP and TYPE at most once per family, TYPE before the family's first
 *   sample, and the samples of a family in one group (no family interleaved with another);
 * - values Go floats (`NaN`, `+Inf`, `-Inf` included), an optional integer timestamp;
 * - no series twice (name and label set, in any order);
 * - counters: names ending in `_total`, values finite and not negative; histograms: `_bucket` series with `le`,
 *   cumulative, a `+Inf` bucket equal to `_count`, `_sum` and `_count` present.
 */

export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface PromFamily {
  name: string;
  type: string;
  help?: string;
  samples: PromSample[];
}

const METRIC = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);
const FLOAT = /^(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|NaN|[+-]Inf)$/;

function parseFloatStrict(text: string, where: string): number {
  if (!FLOAT.test(text)) throw new Error(`${where}: value ${JSON.stringify(text)} is not a float`);
  if (text === 'NaN') return NaN;
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}

function unescapeHelp(text: string, where: string): string {
  return text.replace(/\\(.?)/g, (_m, c: string) => {
    if (c === '\\') return '\\';
    if (c === 'n') return '\n';
    throw new Error(`${where}: HELP has an escape other than \\\\ and \\n: \\${c}`);
  });
}

/** The family a sample belongs to: a histogram's `_bucket`, `_sum`, `_count` (a summary's `_sum`, `_count`) its own. */
function familyOf(name: string, types: Map<string, string>): string {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!name.endsWith(suffix)) continue;
    const base = name.slice(0, -suffix.length);
    const t = types.get(base);
    if (t === 'histogram' || (t === 'summary' && suffix !== '_bucket')) return base;
  }
  return name;
}

/** Parses `text` strictly; throws an Error naming the line on the first problem. */
export function parsePromText(text: string): Map<string, PromFamily> {
  if (text.length > 0 && !text.endsWith('\n')) throw new Error('the text does not end with a newline');
  const lines = text.split('\n');
  lines.pop();
  const families = new Map<string, PromFamily>();
  const types = new Map<string, string>();
  const helps = new Set<string>();
  const closed = new Set<string>(); // families whose group of samples has ended
  const series = new Set<string>();
  let current: string | undefined;
  const family = (name: string): PromFamily => {
    let f = families.get(name);
    if (!f) families.set(name, (f = { name, type: types.get(name) ?? 'untyped', samples: [] }));
    return f;
  };
  lines.forEach((line, i) => {
    const where = `line ${i + 1} ${JSON.stringify(line.length > 200 ? line.slice(0, 200) + '…' : line)}`;
    if (line.startsWith('#')) {
      const m = /^#[ \t]+(HELP|TYPE)[ \t]+(\S+)(?:[ \t](.*))?$/.exec(line);
      if (!m) return; // another comment
      const [, kind, name, rest = ''] = m;
      if (!METRIC.test(name)) throw new Error(`${where}: metric name ${JSON.stringify(name)} is not valid`);
      if (kind === 'HELP') {
        if (helps.has(name)) throw new Error(`${where}: a second HELP for ${name}`);
        helps.add(name);
        family(name).help = unescapeHelp(rest, where);
      } else {
        if (types.has(name)) throw new Error(`${where}: a second TYPE for ${name}`);
        if (families.get(name)?.samples.length) throw new Error(`${where}: TYPE after samples of ${name}`);
        if (!TYPES.has(rest.trim())) throw new Error(`${where}: unknown type ${JSON.stringify(rest)}`);
        types.set(name, rest.trim());
        family(name).type = rest.trim();
      }
      if (current !== undefined && current !== name) closed.add(current);
      current = name;
      return;
    }
    if (line.trim() === '') throw new Error(`${where}: empty line`);
    const nm = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nm) throw new Error(`${where}: no metric name`);
    const name = nm[0];
    let pos = name.length;
    const labels: Record<string, string> = {};
    if (line[pos] === '{') {
      pos++;
      for (;;) {
        while (line[pos] === ' ') pos++;
        if (line[pos] === '}') {
          pos++;
          break;
        }
        const ln = /^[^=\s]*/.exec(line.slice(pos))![0];
        if (!LABEL.test(ln) || ln.startsWith('__')) throw new Error(`${where}: label name ${JSON.stringify(ln)}`);
        if (ln in labels) throw new Error(`${where}: label ${ln} twice`);
        pos += ln.length;
        if (line[pos] !== '=' || line[pos + 1] !== '"') throw new Error(`${where}: label ${ln} without ="…"`);
        pos += 2;
        let v = '';
        for (;;) {
          const c = line[pos++];
          if (c === undefined) throw new Error(`${where}: label value of ${ln} not closed`);
          if (c === '"') break;
          if (c === '\\') {
            const e = line[pos++];
            if (e === '\\') v += '\\';
            else if (e === '"') v += '"';
            else if (e === 'n') v += '\n';
            else throw new Error(`${where}: label value of ${ln} has the escape \\${e ?? ''}`);
          } else v += c;
        }
        labels[ln] = v;
        while (line[pos] === ' ') pos++;
        if (line[pos] === ',') pos++;
        else if (line[pos] !== '}') throw new Error(`${where}: expected , or } after label ${ln}`);
      }
    }
    const rest = line.slice(pos);
    const vm = /^[ \t]+(\S+)(?:[ \t]+(-?[0-9]+))?$/.exec(rest);
    if (!vm) throw new Error(`${where}: no value (or more than a value and a timestamp)`);
    const value = parseFloatStrict(vm[1], where);
    const fam = familyOf(name, types);
    if (closed.has(fam)) throw new Error(`${where}: ${fam} continues after another family began`);
    if (current !== undefined && current !== fam) closed.add(current);
    current = fam;
    const key = `${name}{${Object.keys(labels)
      .sort()
      .map((k) => `${k}=${JSON.stringify(labels[k])}`)
      .join(',')}}`;
    if (series.has(key)) throw new Error(`${where}: series ${key} twice`);
    series.add(key);
    family(fam).samples.push({ name, labels, value });
  });
  for (const f of families.values()) {
    if (f.type === 'counter') {
      if (!f.name.endsWith('_total')) throw new Error(`counter ${f.name} does not end in _total`);
      for (const s of f.samples)
        if (!Number.isFinite(s.value) || s.value < 0)
          throw new Error(`counter ${f.name}${JSON.stringify(s.labels)} is ${s.value}`);
    }
    if (f.type === 'histogram') checkHistogram(f);
  }
  return families;
}

function checkHistogram(f: PromFamily): void {
  const groups = new Map<string, { buckets: [number, number][]; sum?: number; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const k = JSON.stringify(Object.entries(rest).sort());
    let g = groups.get(k);
    if (!g) groups.set(k, (g = { buckets: [] }));
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new Error(`histogram ${f.name}: a bucket without le`);
      g.buckets.push([parseFloatStrict(le, `${f.name} le`), s.value]);
    } else if (s.name === `${f.name}_sum`) g.sum = s.value;
    else if (s.name === `${f.name}_count`) g.count = s.value;
    else throw new Error(`histogram ${f.name}: sample ${s.name}`);
  }
  for (const g of groups.values()) {
    g.buckets.sort((a, b) => a[0] - b[0]);
    const inf = g.buckets.at(-1);
    if (!inf || inf[0] !== Infinity) throw new Error(`histogram ${f.name}: no +Inf bucket`);
    if (g.count === undefined || g.sum === undefined) throw new Error(`histogram ${f.name}: no _sum or _count`);
    if (inf[1] !== g.count) throw new Error(`histogram ${f.name}: +Inf bucket ${inf[1]} is not _count ${g.count}`);
    for (let i = 1; i < g.buckets.length; i++)
      if (g.buckets[i][1] < g.buckets[i - 1][1]) throw new Error(`histogram ${f.name}: buckets not cumulative`);
  }
}

/** The label sets (sorted label names) a family's samples have, for a check that a family's are consistent. */
export function labelSets(f: PromFamily): string[] {
  return [...new Set(f.samples.map((s) => Object.keys(s.labels).sort().join(',')))];
}
