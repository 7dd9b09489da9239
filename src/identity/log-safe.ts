import { escapeChar, MISLEADING } from '../cli/terminal.ts';

// MISLEADING: what misleads a human reading a terminal (C1, bidi, zero-width, default-ignorable); JSON.stringify already
// escapes C0 controls and lone surrogates.

/**
 * Makes a value taken from unverified input (a token header, a claim, a
 * path) safe to log: at most `max` characters, escaped, with the length of
 * what was cut. An attacker controls these bytes, so they never reach a log
 * whole: a 8 KiB `kid` becomes 64 characters and a note.
 */
export function clip(value: unknown, max = 64): string {
  let s: string;
  if (typeof value === 'string') s = value;
  else {
    try {
      s = JSON.stringify(value) ?? String(value);
    } catch {
      s = Object.prototype.toString.call(value);
    }
  }
  const head = JSON.stringify(s.slice(0, max)).slice(1, -1).replace(MISLEADING, escapeChar);
  return s.length > max ? `${head}…(+${s.length - max} chars)` : head;
}
