#!/usr/bin/env node
// Makes the man page dist/iptlb.1 (package.json "man") from the CLI's own help: `iptlb --help` and
// `iptlb <command> --help` for every command it lists (and `iptlb fleet <subcommand> --help` for each
// subcommand), verbatim in .nf blocks, so the page says exactly what --help says. Run by `npm run build`
// (scripts/bundle.js) after the CLI bundle is made.
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
// The commands a help text lists under "Commands:" (commander's own `help` left out).
const listed = (text) => {
  const at = text.indexOf('\nCommands:\n');
  if (at < 0) return [];
  const end = text.indexOf('\n\n', at + 1);
  const section = text.slice(at, end < 0 ? undefined : end);
  return [...section.matchAll(/^ {2}([a-z][\w-]*)\b/gm)].map((m) => m[1]).filter((c) => c !== 'help');
};
const top = help([]);
// Each command, and each subcommand of one that has them (`fleet apply`, …), with its own --help.
const commands = listed(top).flatMap((c) => [[c], ...listed(help([c])).map((sub) => [c, sub])]);
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
for (const c of commands) out.push(`.SS ${c.join(' ')}`, '.nf', esc(help(c)), '.fi');
out.push(
  '.SH SEE ALSO',
  '\\fBiptlb doctor\\fR, \\fBiptlb completion bash\\fR, iptables(8), nft(8); docs/install.md in the package.',
  '',
);
writeFileSync(path.join(root, 'dist', 'iptlb.1'), out.join('\n'));
