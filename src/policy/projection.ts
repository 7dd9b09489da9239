import type { AttrPath, AttrRoot } from './policy-ast.ts';

/**
 * Which parts of a value policies can observe: `'all'`, or for a record, the
 * attributes (and recursively their parts) that some policy reads.
 *
 * Why: cedar-wasm serialises the whole request on every call and that cost
 * grows with every claim and label. Cedar has no way to enumerate a record's
 * keys, so an attribute that no policy names cannot change a decision (nor the
 * errors reported); leaving it out makes a decision cheaper without changing
 * it. A value used as a whole (`context.task.labels == {...}`) is kept whole.
 */
export type Projection = 'all' | Map<string, Projection>;

/** One projection per request variable. */
export type Projections = Record<AttrRoot, Projection>;

/** The projections that keep exactly what `paths` can observe. */
export function projectionsFor(paths: Iterable<AttrPath>): Projections {
  const roots: Projections = { principal: new Map(), resource: new Map(), context: new Map() };
  for (const p of paths) {
    // A bare `principal` / `resource` is an entity reference: comparing it or
    // testing `in` reads no attributes.
    if (p.attrs.length === 0 && p.root !== 'context') continue;
    roots[p.root] = mark(roots[p.root], p.attrs, p.whole);
  }
  return roots;
}

function mark(node: Projection, attrs: readonly string[], whole: boolean): Projection {
  if (node === 'all') return node;
  if (attrs.length === 0) return whole ? 'all' : node;
  const [head, ...rest] = attrs as [string, ...string[]];
  node.set(head, mark(node.get(head) ?? new Map(), rest, whole));
  return node;
}

/** True when the projection keeps nothing at all. */
export function isEmptyProjection(p: Projection): boolean {
  return p !== 'all' && p.size === 0;
}

/**
 * `value` reduced to what `p` keeps. Records come back as plain objects: JSON.stringify, which makes both
 * the decision cache's key and cedar-wasm's input, takes V8's fast path for those and not for
 * null-prototype ones (about 1 µs of the 2 µs per issuance request; docs/benchmarks.md, "Profile of the
 * 24-policy path"). A `__proto__` attribute is defined as an own property, never assigned (assignment
 * would set the prototype and drop the value): the only accessor on Object.prototype, so every other name
 * becomes an own data property by plain assignment.
 */
export function project(value: unknown, p: Projection): unknown {
  if (p === 'all' || value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  const src = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [key, sub] of p) {
    if (!Object.hasOwn(src, key) || src[key] === undefined) continue;
    const v = project(src[key], sub);
    if (key === '__proto__') Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
    else out[key] = v;
  }
  return out;
}
