// The test runner's reporter: node's TAP output, plus two lines before the closing summary:
// how many kernel cases ran per engine × executor pair, and every skipped test with its reason.
// As root (where every kernel test can run) a skip is a failure: the run exits 1 (see run-tests.js,
// which reads the verdict this reporter leaves in IPTLB_TEST_VERDICT).
import { tap } from 'node:test/reporters';
import { writeFileSync } from 'node:fs';

const PAIR = /\b(legacy|nft)\/(native|spawn)\b/;

async function* observe(source, tally) {
  // Names of the tests being reported, by nesting level; events of one file arrive in order.
  const stack = [];
  let summarised = false;
  for await (const event of source) {
    const { type, data } = event;
    if (type === 'test:start') stack[data.nesting] = data.name;
    // A file's own test (the runner's, named by its path; only a test:complete) ends with the file: its
    // duration is the file's.
    if (type === 'test:complete' && data.nesting === 0 && data.file && data.name === data.file)
      tally.files.push([data.file, data.details?.duration_ms ?? 0]);
    const skipped = data?.skip !== undefined;
    // Leaf tests, and suites skipped whole (their tests are never reported).
    if ((type === 'test:pass' || type === 'test:fail') && (data.details?.type !== 'suite' || skipped)) {
      const path = [...stack.slice(0, data.nesting), data.name].join(' > ');
      const pair = PAIR.exec(path)?.[0];
      if (pair) {
        const t = (tally.pairs[pair] ??= { ran: 0, skipped: 0 });
        if (skipped) t.skipped++;
        else t.ran++;
      }
      if (skipped) tally.skips.push(`${path}: ${data.skip === true ? 'skipped' : data.skip}`);
    }
    if (!summarised && type === 'test:diagnostic' && data.nesting === 0 && /^tests \d+$/.test(data.message)) {
      summarised = true;
      for (const message of summaryLines(tally))
        yield { type: 'test:diagnostic', data: { nesting: 0, message, file: data.file } };
    }
    yield event;
  }
}

function summaryLines(tally) {
  const pairs = Object.entries(tally.pairs).sort(([a], [b]) => a.localeCompare(b));
  const lines = [
    `kernel cases per pair: ${pairs.length ? pairs.map(([p, t]) => `${p} ${t.ran} ran, ${t.skipped} skipped`).join('; ') : 'none ran'}`,
  ];
  // The slowest files, where a shorter run would have to come from (their time counts waits for the
  // xtables lock and for the CPU: files run side by side). IPTLB_TEST_SLOWEST=N names N of them.
  const slow = [...tally.files].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.IPTLB_TEST_SLOWEST) || 8);
  if (slow.length) {
    const total = tally.files.reduce((t, [, ms]) => t + ms, 0);
    const name = (f) => f.replace(/^.*\/dist\/test\//, '');
    lines.push(
      `file time ${Math.round(total / 1000)} s in ${tally.files.length} files; slowest: ${slow.map(([f, ms]) => `${name(f)} ${Math.round(ms / 1000)} s`).join(', ')}`,
    );
  }
  for (const s of tally.skips) lines.push(`skipped: ${s}`);
  if (tally.skips.length && tally.root)
    lines.push(`FAIL: ${tally.skips.length} test(s) skipped as root, where every test can run`);
  return lines;
}

export default async function* reporter(source) {
  const tally = { pairs: {}, skips: [], files: [], root: process.getuid?.() === 0 };
  yield* tap(observe(source, tally));
  const verdict = process.env.IPTLB_TEST_VERDICT;
  if (verdict) writeFileSync(verdict, JSON.stringify({ ...tally, failed: tally.root && tally.skips.length > 0 }));
}
