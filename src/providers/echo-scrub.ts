/**
 * The one scrubber of a failed upstream answer (AWS: aws/bounded-answer.ts; Vault: vault/transport.ts). An
 * upstream, or a proxy in front of it, that echoes its input puts what it echoes in the error's message, which
 * is logged (the problem handler, the worker). Two passes:
 * - every secret the request carried, by value, in each form an echo may write it in (`formsOf`);
 * - whatever follows a name that only ever introduces a secret (`NAMED`), by name: a proxy's own
 *   `Proxy-Authorization` (the broker never sent it, so no value is known), a presigned-style URL's
 *   `X-Amz-Signature`, or an encoding of the broker's own token the first pass does not know.
 */
export const REDACTED = '[redacted]';

/** `%2f` for `%2F`: RFC 3986 lets an echo write percent-encodings in either case. */
const lowerHex = (s: string) => s.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());

/** `secret` as written, percent-encoded (a query), form-encoded (a form body: `+` for a space, `!'()~` escaped too), each in either hex case. */
function formsOf(secret: string): string[] {
  const uri = encodeURIComponent(secret);
  const form = new URLSearchParams({ x: secret }).toString().slice(2);
  return [secret, uri, lowerHex(uri), form, lowerHex(form)];
}

/**
 * Values redacted by the name before them, whatever they are: a header (`Name: value`, JSON's `"Name":"value"`)
 * or a parameter (`Name=value`, also percent-encoded), up to the end of the value (`&` also ends an XML `&amp;`).
 * - `(Proxy-)Authorization` with a Basic, Bearer or Negotiate credential (an AWS4-HMAC-SHA256 one is the next rule's);
 * - X-Amz-Security-Token, X-Amz-Signature, X-Amz-Credential (a presigned URL's), X-Vault-Token;
 * - SigV4's Credential= and Signature= (in an Authorization header, however it was quoted).
 */
const SEP = String.raw`["']?\s*(?::|=|%3a|%3d)\s*["']?`;
const VALUE = String.raw`[^\s&"'<>,;\\]+`;
const NAMED: RegExp[] = [
  new RegExp(String.raw`(\b(?:proxy-)?authorization${SEP}(?:basic|bearer|negotiate)(?:\s+|%20|\+))${VALUE}`, 'gi'),
  new RegExp(String.raw`(\b(?:x-amz-security-token|x-amz-signature|x-amz-credential|x-vault-token)${SEP})${VALUE}`, 'gi'),
  new RegExp(String.raw`(\b(?:Credential|Signature)(?:=|%3d))${VALUE}`, 'gi'),
];

/**
 * `text` with every form of every one of `secrets` (longest first, so a header goes whole before its parts) and
 * every value of a secret-bearing name replaced by [redacted]. For failed answers only: a success is where
 * credentials legitimately are.
 */
export function scrubEcho(text: string, secrets: readonly string[]): string {
  const forms = [...new Set(secrets.filter((s) => s.length > 0).flatMap(formsOf))].sort((a, b) => b.length - a.length);
  let out = text;
  for (const form of forms) out = out.split(form).join(REDACTED);
  for (const re of NAMED) out = out.replace(re, `$1${REDACTED}`);
  return out;
}
