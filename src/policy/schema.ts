import { readFileSync } from 'node:fs';
import { schemaToJson, type SchemaJson } from '@cedar-policy/cedar-wasm/nodejs';
import type { AttrPath } from './policy-ast.ts';

/** Where the broker's Cedar schema lives (shipped next to this file). */
export const SCHEMA_FILE = new URL('./schema.cedarschema', import.meta.url);

type Json = Record<string, unknown>;

let baseSchema: SchemaJson<string> | undefined;

/** The shipped schema as Cedar JSON, parsed once per process. */
export function loadBaseSchema(): SchemaJson<string> {
  if (baseSchema) return baseSchema;
  const answer = schemaToJson(readFileSync(SCHEMA_FILE, 'utf8'));
  if (answer.type !== 'success') {
    throw new Error(`${SCHEMA_FILE.pathname}: ${answer.errors.map((e) => e.message).join('; ')}`);
  }
  baseSchema = answer.json;
  return baseSchema;
}

/** Claim and label names the policies mention (the open maps, see schema.cedarschema). */
export interface OpenMapNames {
  claims: Set<string>;
  labels: Set<string>;
}

/** Collects `principal.claims.<name>` and `context.task.labels.<name>` (read or `has`). */
export function openMapNames(paths: Iterable<AttrPath>): OpenMapNames {
  const names: OpenMapNames = { claims: new Set(), labels: new Set() };
  for (const { root, attrs } of paths) {
    if (root === 'principal' && attrs[0] === 'claims' && attrs[1] !== undefined) names.claims.add(attrs[1]);
    if (root === 'context' && attrs[0] === 'task' && attrs[1] === 'labels' && attrs[2] !== undefined) names.labels.add(attrs[2]);
  }
  return names;
}

/**
 * The two schemas policies are validated against.
 *
 * `strict` is the shipped schema with the named claims and labels added as
 * optional Strings: exactly what a request can contain. `lenient` makes every
 * attribute required and gives every action the union of all contexts.
 *
 * Why two: a policy that reads a possibly absent attribute without `has`
 * (`principal.claims.team == "x"`, `context.task.tenant` in a policy for every
 * action) is legal Cedar and safe at run time (the read errors, so that permit
 * does not apply and the engine treats an erroring forbid as forbidding).
 * Refusing such a policy set would stop a broker over a style problem, so only
 * what fails `lenient` (unknown attributes, wrong types, unknown entity types or
 * actions) refuses the set; what fails only `strict` is reported as a warning.
 */
export function buildSchemas(names: OpenMapNames): { strict: SchemaJson<string>; lenient: SchemaJson<string> } {
  const strict = structuredClone(loadBaseSchema()) as unknown as Record<string, Json>;
  const ns = strict[''] as Json;
  const claims = dig(ns, ['entityTypes', 'Workload', 'shape', 'attributes', 'claims', 'attributes']);
  const labels = dig(ns, ['commonTypes', 'TaskContext', 'attributes', 'labels', 'attributes']);
  for (const n of names.claims) setOwn(claims, n, { type: 'String', required: false });
  for (const n of names.labels) setOwn(labels, n, { type: 'String', required: false });
  return { strict: strict as unknown as SchemaJson<string>, lenient: lenientCopy(strict) };
}

function lenientCopy(strict: Record<string, Json>): SchemaJson<string> {
  const copy = structuredClone(strict);
  const actions = (copy[''] as Json).actions as Record<string, { appliesTo: { context: { attributes: Json } } }>;
  const union: Json = Object.create(null);
  for (const a of Object.values(actions)) Object.assign(union, a.appliesTo.context.attributes);
  for (const a of Object.values(actions)) a.appliesTo.context.attributes = structuredClone(union);
  dropOptional(copy);
  return copy as unknown as SchemaJson<string>;
}

function dropOptional(v: unknown): void {
  if (v === null || typeof v !== 'object') return;
  const o = v as Json;
  if (o.required === false) delete o.required;
  for (const child of Object.values(o)) dropOptional(child);
}

function dig(o: Json, keys: string[]): Json {
  let cur: Json = o;
  for (const k of keys) {
    const next = cur[k];
    if (next === null || typeof next !== 'object') throw new Error(`schema.cedarschema: missing ${keys.join('.')}`);
    cur = next as Json;
  }
  return cur;
}

// A claim may be called `__proto__`; plain assignment would change the prototype instead.
function setOwn(o: Json, key: string, value: unknown): void {
  Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
}
