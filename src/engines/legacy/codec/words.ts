/**
 * The words of one rule as iptables-save prints them, read left to right by the codecs: each codec takes
 * the words of its own option and leaves the reader on the last one it used.
 */
export class Words {
  private i = 0;
  constructor(private readonly words: readonly string[]) {}
  /** The next word (consumed), or undefined at the end. */
  next(): string | undefined {
    return this.words[++this.i];
  }
  /** The word after the current one, without consuming it. */
  peek(): string | undefined {
    return this.words[this.i + 1];
  }
  /** Consumes the next word when it is `w`; false (nothing consumed) otherwise. */
  take(w: string): boolean {
    if (this.words[this.i + 1] !== w) return false;
    this.i++;
    return true;
  }
  /** The next word is `w` (consumed either way). */
  expect(w: string): boolean {
    return this.next() === w;
  }
  /** The next word as a whole number, or NaN. */
  int(): number {
    const v = this.next();
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : NaN;
  }
  /** The current word. */
  get word(): string | undefined {
    return this.words[this.i];
  }
  /** Moves past the current word; false at the end. */
  advance(): boolean {
    return ++this.i < this.words.length;
  }
  get done(): boolean {
    return this.i >= this.words.length;
  }
  get last(): boolean {
    return this.i === this.words.length - 1;
  }
}

/** Double-quoted as iptables-save quotes a comment or a log prefix. */
export function quote(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}
