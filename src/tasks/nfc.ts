/**
 * A tenant, a label value or a purpose is compared code point by code point (the kill switch by tenant,
 * `GET /v1/tasks?tenant=`, delegation, Cedar's `context.task` against literals and token claims), so "café"
 * composed (U+00E9) and decomposed (e, U+0301), one name to anyone reading it, were two tenants: a kill
 * switch naming one missed the tasks of the other. Such text is taken in NFC wherever the API accepts it
 * (src/http/schemas.ts `nfcText`); a value stored before that, and a token's claims, are normalised where
 * they are matched.
 */

const NON_ASCII = /[^\x00-\x7f]/;

/** `s` in NFC. ASCII is NFC already: the common case is one regex test, not an ICU call. */
export function nfc(s: string): string {
  return NON_ASCII.test(s) ? s.normalize('NFC') : s;
}

/** `values` with every value in NFC: `values` itself when they all are, else a copy with the same prototype. */
export function nfcValues<T extends Readonly<Record<string, string>>>(values: T): T {
  let out: Record<string, string> | undefined;
  for (const [k, v] of Object.entries(values)) {
    const n = nfc(v);
    if (n === v) continue;
    // Own data properties on a copy of the same prototype: a `__proto__` label stays a label.
    out ??= Object.assign(Object.create(Object.getPrototypeOf(values)) as Record<string, string>, values);
    out[k] = n;
  }
  return (out ?? values) as T;
}
