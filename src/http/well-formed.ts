/**
 * JSON can carry what UTF-8 cannot: a `\ud800` escape decodes to a lone surrogate. Such a string
 * compares unequal to itself once stored (Redis gets it as U+FFFD), so a tenant or label sent that way
 * escapes every later match on it (the kill switch by tenant, list filters). Bodies are refused with
 * the field's path instead.
 */

/** `String.prototype.isWellFormed` (ES2024; Node 20 and later have it, the compiler's lib does not yet). */
const wellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed();

/** The path of the first string (value or key) in `body` that is not well-formed Unicode, if any. */
export function illFormedField(body: unknown): string | undefined {
  return allWellFormed(body) ? undefined : firstIllFormed(body);
}

/**
 * Whether every string (value or key) in `body` is well-formed: the check every body passes, so it
 * builds no field paths (those are built only for a body that fails it, by {@link firstIllFormed}).
 */
function allWellFormed(body: unknown): boolean {
  if (typeof body === 'string') return wellFormed(body);
  if (body === null || typeof body !== 'object') return true;
  // Iterative: a deeply nested body must not exhaust the stack.
  const stack: object[] = [body];
  for (let value = stack.pop(); value !== undefined; value = stack.pop()) {
    if (Array.isArray(value)) {
      for (const v of value as unknown[]) {
        if (typeof v === 'string') {
          if (!wellFormed(v)) return false;
        } else if (v !== null && typeof v === 'object') stack.push(v);
      }
      continue;
    }
    for (const k of Object.keys(value)) {
      if (!wellFormed(k)) return false;
      const v = (value as Record<string, unknown>)[k];
      if (typeof v === 'string') {
        if (!wellFormed(v)) return false;
      } else if (v !== null && typeof v === 'object') stack.push(v);
    }
  }
  return true;
}

function firstIllFormed(body: unknown): string | undefined {
  // Iterative: a deeply nested body must not exhaust the stack.
  const stack: [unknown, string][] = [[body, '']];
  for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
    const [value, path] = item;
    if (typeof value === 'string') {
      if (!wellFormed(value)) return path || '(body)';
    } else if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) stack.push([value[i], path ? `${path}.${i}` : String(i)]);
    } else if (value !== null && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) {
        const at = path ? `${path}.${k}` : k;
        if (!wellFormed(k)) return path || '(body)';
        stack.push([v, at]);
      }
    }
  }
  return undefined;
}
