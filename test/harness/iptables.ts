/** Normalising ruleset dumps so two can be compared byte for byte, counters aside. */

/** Drops `# Generated…`/`# Completed…` lines and zeroes counters of an iptables-save dump. */
export function normalizeSave(text: string): string {
  return text
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]'))
    .join('\n');
}

/** Zeroes `counter packets N bytes M` in `nft list` output. */
export function normalizeNft(text: string): string {
  return text.replace(/counter packets \d+ bytes \d+/g, 'counter packets 0 bytes 0');
}
