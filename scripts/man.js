#!/usr/bin/env node
// Makes the man page dist/iptlb.1 (package.json "man") from the CLI's own help: `iptlb --help` and
// `iptlb <command> --help` for every command it lists, verbatim in .nf blocks, so the page says exactly
// what --help says. Run by `npm run build` (scripts/bundle.js) after the CLI bundle is made.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'bin', 'iptlb.cjs');
const help = (args) => {
  const r = spawnSync(process.execPath, [cli, ...args, '--help'], {
    encoding: 'utf8',
    env: { ...process.env, COLUMNS: '100' },
  });
  if (r.status !== 0) throw new Error(`iptlb ${args.join(' ')} --help exited ${r.status}: ${r.stderr}`);
  return r.stdout.trimEnd();
};
const esc = (s) =>
  s
    .replace(/\\/g, '\\e')
    .replace(/^([.'])/gm, '\\&$1')
    .replace(/-/g, '\\-');
const { version } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const top = help([]);
const section = top.slice(top.indexOf('\nCommands:\n'), top.indexOf('\n\n', top.indexOf('\nCommands:\n') + 1));
const commands = [...section.matchAll(/^ {2}([a-z][\w-]*)\b/gm)].map((m) => m[1]).filter((c) => c !== 'help');
const out = [
  `.TH IPTLB 1 "" "iptlb ${version}" "User Commands"`,
  '.SH NAME',
  'iptlb \\- Linux NAT load balancer (netfilter rules committed atomically)',
  '.SH SYNOPSIS',
  '.B iptlb',
  '[\\fIcommand\\fR] [\\fIoptions\\fR]',
  '.SH DESCRIPTION',
  "The text below is the output of \\fBiptlb \\-\\-help\\fR; each command's section is that of \\fBiptlb\\fR \\fIcommand\\fR \\fB\\-\\-help\\fR.",
  '.PP',
  '.nf',
  esc(top),
  '.fi',
  '.SH COMMANDS',
];
for (const c of commands) out.push(`.SS ${c}`, '.nf', esc(help([c])), '.fi');
out.push(
  '.SH SEE ALSO',
  '\\fBiptlb doctor\\fR, \\fBiptlb completion bash\\fR, iptables(8), nft(8); docs/install.md in the package.',
  '',
);
writeFileSync(path.join(root, 'dist', 'iptlb.1'), out.join('\n'));
