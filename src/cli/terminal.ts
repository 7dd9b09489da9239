/**
 * Characters that are valid in JSON but mislead a human reading text in a
 * terminal: C1 controls, zero-width and bidi controls, line/paragraph
 * separators, BOM. (Here, in the CLI's part of the code, because the `jit`
 * command is compiled on its own and may not import the server; the server's
 * log escaping uses the same set.)
 */
export const MISLEADING = /[\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]/g;
const CONTROL = /[\u0000-\u001f]/g;
const escaped = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

/**
 * A string as a terminal may show it: C0 and C1 controls, bidi and
 * zero-width characters escaped (`\u001b`), nothing cut. For what the CLI
 * prints from the broker's answers (audit records, task purposes, names as
 * callers sent them): an ESC sequence or a CR there must not repaint the
 * operator's screen or forge a line.
 */
export function terminalSafe(s: string): string {
  return s.replace(CONTROL, escaped).replace(MISLEADING, escaped);
}

/** The same two sets, not global (a global regex's `test` keeps state between calls). */
const ANY = new RegExp(`[\\u0000-\\u001f]|${MISLEADING.source}`);

/** Whether `s` holds a character {@link terminalSafe} would escape (checked on every request naming a role). */
export function hasControls(s: string): boolean {
  return ANY.test(s);
}
