/**
 * RFC 6749 section 5.2: `error_description` holds only %x20-21 / %x23-5B / %x5D-7E (printable ASCII
 * without `"` and `\`). The broker's texts quote names and can echo what the caller sent, so before
 * they go out: a double quote becomes an apostrophe, a backslash a slash, and anything else outside
 * the set (control characters, non-ASCII) a `?`, one per code point.
 */
export function oauthDescription(text: string): string {
  return text
    .replace(/"/g, "'")
    .replace(/\\/g, '/')
    .replace(/[^\x20-\x7E]/gu, '?');
}
