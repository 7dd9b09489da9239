import type { TokenEntry, VaultState } from './state.ts';
import { badRequest, parseDuration, uuid } from './util.ts';

export type Operation = 'read' | 'write' | 'list' | 'delete';

/** One request, after namespace resolution, authentication and body parsing. */
export interface RequestContext {
  state: VaultState;
  /** Namespace the path resolved into ('' = root). */
  ns: string;
  /** Path relative to the namespace, without `/v1/` or the query. */
  path: string;
  op: Operation;
  /** Named captures of the route pattern. */
  params: Record<string, string>;
  body: Record<string, unknown>;
  query: URLSearchParams;
  /** The calling token (absent on unauthenticated routes). */
  token?: TokenEntry;
  strictParams: boolean;
  warnings: string[];
}

/** What a handler answers: a full JSON envelope, a raw body (sys/health), or 204. */
export type Reply = { status: number; envelope: Partial<Envelope>; sys?: boolean } | { status: number; raw: unknown } | { status: 204 };

export interface Envelope {
  request_id: string;
  lease_id: string;
  renewable: boolean;
  lease_duration: number;
  data: Record<string, unknown> | null;
  wrap_info: null;
  warnings: string[] | null;
  auth: Record<string, unknown> | null;
  mount_type: string;
}

export type Handler = (ctx: RequestContext) => Reply;

/** A route: a path pattern, the handlers per operation, whether it needs a token. */
export interface Route {
  pattern: RegExp;
  ops: Partial<Record<Operation, Handler>>;
  unauthenticated?: boolean;
}

export const noContent = (): Reply => ({ status: 204 });
export const ok = (envelope: Partial<Envelope>, sys = false): Reply => ({ status: 200, envelope, sys });

/**
 * Renders the envelope with every key present (nulls where absent), the way
 * `sdk/logical/translate_response.go` does. `sys/*` responses also get their
 * `data` keys copied to the top level (HTTPSysInjector). Vault writes those
 * keys *before* the envelope's, so where a name clashes (`renewable`) a JSON
 * parser keeps the envelope's value; the emulator renders that outcome.
 */
export function renderEnvelope(e: Partial<Envelope>, warnings: string[], sys: boolean): Record<string, unknown> {
  const all = [...(e.warnings ?? []), ...warnings];
  const body: Record<string, unknown> = {
    request_id: uuid(),
    lease_id: '',
    renewable: false,
    lease_duration: 0,
    data: null,
    wrap_info: null,
    warnings: all.length ? all : null,
    auth: null,
    mount_type: '',
    ...e,
  };
  body.warnings = all.length ? all : null;
  if (sys && e.data) for (const [k, v] of Object.entries(e.data)) if (!(k in body)) body[k] = v;
  return body;
}

/**
 * node-vault commands without a request schema send their whole argument
 * object as the body, path arguments included (`revokePrefix` sends
 * `path_prefix`). Vault ignores them; so does the strict mode, since they are
 * the client library's quirk rather than a caller's mistake.
 */
const NODE_VAULT_PATH_ARGS = new Set(['path_prefix', 'mount_point', 'role_name']);

type FieldType = 'string' | 'int' | 'bool' | 'strings' | 'map' | 'duration' | 'any';

/**
 * Reads the request parameters a handler accepts, with Vault's types. A value
 * of the wrong type is a 400. Unknown parameters are a 400 in strict mode (the
 * default, so a provider sending a misspelt field fails loudly) and a warning
 * otherwise, as on a real server ("Endpoint ignored these unrecognized parameters").
 */
export function fields<S extends Record<string, FieldType>>(ctx: RequestContext, schema: S): { [K in keyof S]?: FieldValue<S[K]> } {
  const unknown = Object.keys(ctx.body).filter((k) => !(k in schema) && !NODE_VAULT_PATH_ARGS.has(k));
  if (unknown.length) {
    if (ctx.strictParams) throw badRequest(`unrecognized parameters: ${unknown.sort().join(', ')}`);
    ctx.warnings.push(`Endpoint ignored these unrecognized parameters: [${unknown.join(' ')}]`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, type] of Object.entries(schema)) {
    const v = ctx.body[key];
    if (v === undefined || v === null) continue;
    out[key] = coerce(key, type, v);
  }
  return out as { [K in keyof S]?: FieldValue<S[K]> };
}

type FieldValue<T extends FieldType> = T extends 'string'
  ? string
  : T extends 'int'
    ? number
    : T extends 'bool'
      ? boolean
      : T extends 'strings'
        ? string[]
        : T extends 'map'
          ? Record<string, string>
          : T extends 'duration'
            ? number
            : unknown;

function coerce(key: string, type: FieldType, v: unknown): unknown {
  const wrong = () => badRequest(`error converting input ${JSON.stringify(v)} for field "${key}"`);
  switch (type) {
    case 'string':
      if (typeof v === 'string') return v;
      if (typeof v === 'number' || typeof v === 'boolean') return String(v);
      throw wrong();
    case 'int':
      if (typeof v === 'number' && Number.isInteger(v)) return v;
      if (typeof v === 'string' && /^-?\d+$/.test(v)) return Number(v);
      throw wrong();
    case 'bool':
      if (typeof v === 'boolean') return v;
      if (v === 'true' || v === 'false') return v === 'true';
      throw wrong();
    case 'strings':
      // Vault's TypeCommaStringSlice accepts an array or a comma-separated string.
      if (typeof v === 'string')
        return v
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
      if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v;
      throw wrong();
    case 'map':
      if (typeof v === 'object' && !Array.isArray(v) && Object.values(v as object).every((s) => typeof s === 'string')) return v;
      throw wrong();
    case 'duration':
      return parseDuration(v, key);
    default:
      return v;
  }
}
