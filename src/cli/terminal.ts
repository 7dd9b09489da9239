/**
 * Characters that are valid in JSON but mislead a human reading text in a
 * terminal: C1 controls, line/paragraph separators, every default-ignorable
 * code point (Unicode's list of what renders as nothing: zero-width and bidi
 * controls, BOM, soft hyphen, variation selectors, tag characters, Hangul
 * fillers), every other format character (interlinear annotation marks, which
 * hide text; Arabic and hieroglyph format controls), lone surrogates, spaces
 * other than the ASCII one (NBSP looks like a space and is not), the blank
 * braille pattern, the Khitan filler and the musical null notehead (blank glyphs):
 * each would let one name pass for another. (Here, in the CLI's part
 * of the code, because the `jit` command is compiled on its own and may not
 * import the server; the server's log escaping uses the same set.)
 */
export const MISLEADING =
  /[\u007f-\u009f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u2800\u3000\u{16fe4}\u{1d159}\p{Default_Ignorable_Code_Point}\p{Cf}\p{Cs}]/gu;
const CONTROL = /[\u0000-\u001f]/g;

/** `\u001b`, or `\u{e0041}` beyond the 16-bit range. */
export function escapeChar(c: string): string {
  const code = c.codePointAt(0)!;
  return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * A string as a terminal may show it: C0 and C1 controls, bidi and
 * zero-width characters escaped (`\u001b`), nothing cut. For what the CLI
 * prints from the broker's answers (audit records, task purposes, names as
 * callers sent them): an ESC sequence or a CR there must not repaint the
 * operator's screen or forge a line.
 */
export function terminalSafe(s: string): string {
  return s.replace(CONTROL, escapeChar).replace(MISLEADING, escapeChar);
}

/** The same two sets, not global (a global regex's `test` keeps state between calls). */
const ANY = new RegExp(`[\\u0000-\\u001f]|${MISLEADING.source}`, 'u');

/** Whether `s` holds a character {@link terminalSafe} would escape (checked on every request naming a role). */
export function hasControls(s: string): boolean {
  return ANY.test(s);
}

/**
 * {@link terminalSafe} line by line, keeping the line breaks: for every message and line the CLI
 * prints, since most carry something the broker sent (ids, times, names), and a hostile or broken
 * broker must not reach the terminal with an escape sequence through any of them. What it escapes is
 * written as `\uXXXX`, which inside a JSON string reads back as the same character.
 */
export function terminalLines(s: string): string {
  return s.split('\n').map(terminalSafe).join('\n');
}
