import type { ZodType } from 'zod';

/** Edit distance, case-insensitive (a typo in case counts as one edit). */
function distance(a: string, b: string): number {
  const s = a.toLowerCase();
  const t = b.toLowerCase();
  const row = Array.from({ length: t.length + 1 }, (_, j) => j);
  for (let i = 1; i <= s.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= t.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (s[i - 1] === t[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[t.length]! + (a !== b && s === t ? 1 : 0);
}

/** The known key closest to `key` if it is close enough to be a typo of it. */
export function closest(key: string, known: readonly string[]): string | undefined {
  let best: { k: string; d: number } | undefined;
  for (const k of known) {
    const d = distance(key, k);
    if (!best || d < best.d) best = { k, d };
  }
  return best && best.d <= Math.max(2, Math.floor(key.length / 4)) ? best.k : undefined;
}

/** The keys an object schema at `path` defines (through optional/default/pipe wrappers), for suggestions. */
export function keysAt(schema: ZodType, path: readonly PropertyKey[]): string[] {
  let s: unknown = schema;
  const unwrap = (x: unknown): unknown => {
    for (let i = 0; i < 10; i++) {
      const def = (x as { _zod?: { def?: { innerType?: unknown; in?: unknown; schema?: unknown } } })?._zod?.def;
      const inner = def?.innerType ?? def?.in ?? def?.schema;
      if (!inner) return x;
      x = inner;
    }
    return x;
  };
  for (const p of path) {
    s = unwrap(s);
    const shape = (s as { shape?: Record<string, unknown> }).shape;
    const def = (s as { _zod?: { def?: { valueType?: unknown; element?: unknown } } })._zod?.def;
    s = shape?.[String(p)] ?? def?.valueType ?? def?.element;
    if (!s) return [];
  }
  const shape = (unwrap(s) as { shape?: Record<string, unknown> }).shape;
  return shape ? Object.keys(shape) : [];
}
