import type { PolicyJson } from '@cedar-policy/cedar-wasm/nodejs';

/**
 * The first string literal of a policy's conditions that is not in Unicode NFC, if any.
 *
 * Tenants, purposes, label values and the string values of `principal.claims` reach Cedar in NFC
 * (src/tasks/nfc.ts), so a literal in another form can never equal them: `forbid ... when
 * { context.task.tenant == "café" }` written with a decomposed é (as text pasted from a file name on
 * macOS often is) would never apply, silently. Such a policy set is refused instead.
 *
 * Entity ids (`Workload::"..."`) are left alone: identity strings are compared as the token states them,
 * not normalised. Attribute names are too (claim names are not normalised either).
 */
export function firstNonNfcLiteral(policy: PolicyJson): string | undefined {
  return firstOf(policy.conditions ?? [], (c) => inExpr(c.body));
}

const notNfc = (s: string) => s !== s.normalize('NFC');

/** The first defined answer of `f` over `items`. */
function firstOf<T>(items: Iterable<T>, f: (x: T) => string | undefined): string | undefined {
  for (const x of items) {
    const found = f(x);
    if (found !== undefined) return found;
  }
  return undefined;
}

/** A string in an expression's literal values (`Value`) or `like` patterns that is not NFC. */
function inExpr(e: unknown): string | undefined {
  if (Array.isArray(e)) return firstOf(e, inExpr);
  if (e === null || typeof e !== 'object') return undefined;
  return firstOf(Object.entries(e), ([k, v]) => {
    if (k === 'Value') return inValue(v);
    if (k === 'like' && v && typeof v === 'object') return inPattern((v as { pattern?: unknown }).pattern) ?? inExpr(v);
    return inExpr(v);
  });
}

/** A literal value (string, set, record) holding a non-NFC string; entity ids and extension calls skipped. */
function inValue(v: unknown): string | undefined {
  if (typeof v === 'string') return notNfc(v) ? v : undefined;
  if (Array.isArray(v)) return firstOf(v, inValue);
  if (v === null || typeof v !== 'object') return undefined;
  if ('__entity' in v || '__extn' in v) return undefined;
  return firstOf(Object.values(v), inValue);
}

/** A `like` pattern's literal text (Cedar gives it a character at a time between wildcards) that is not NFC. */
function inPattern(p: unknown): string | undefined {
  if (!Array.isArray(p)) return undefined;
  let run = '';
  for (const part of [...p, 'Wildcard']) {
    if (part && typeof part === 'object' && typeof (part as { Literal?: unknown }).Literal === 'string') {
      run += (part as { Literal: string }).Literal;
      continue;
    }
    if (notNfc(run)) return run;
    run = '';
  }
  return undefined;
}
