import { readFileSync } from 'node:fs';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { parse } from 'yaml';
import { OPENAPI_YAML } from '../../src/http/routes/openapi.ts';

/**
 * Checks HTTP exchanges against docs/openapi.yaml: the operation (method and
 * path template, matched the way Express matches), the status, the required
 * headers, the content type and the body (Ajv, JSON Schema 2020-12, which is
 * what OpenAPI 3.1 schemas are). For a 2xx answer it also checks that what the
 * broker accepted (path and query parameters, the parsed body) is what the
 * document says it accepts, so the document cannot be narrower than the broker.
 *
 * Used by test/helpers/openapi-setup.ts on every response a broker sends in a
 * test, and by test/openapi/*.
 */

type Json = Record<string, any>;

/** One request and the broker's answer to it. */
export interface Exchange {
  method: string;
  /** Path and query exactly as sent (Express's `req.originalUrl`). */
  url: string;
  status: number;
  /** Response headers, lower-case names. */
  headers: Record<string, unknown>;
  body: Buffer;
  /** The request body as the broker parsed it (`req.body`), when it parsed one. */
  requestBody?: unknown;
  requestContentType?: string | undefined;
}

/** An operation of the document and where it lives. */
export interface Operation {
  id: string;
  method: string;
  template: string;
  op: Json;
  pointer: string;
  /** Parameters of the path item and the operation, resolved. */
  params: Json[];
}

export interface Verdict {
  /** The operation that answered, or undefined when no documented route matched. */
  operation?: Operation;
  /** Served under /console/api as the mirror of a /v1 operation. */
  console?: boolean;
  errors: string[];
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;
const esc = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1');
const DOC_ID = 'https://jit-broker.invalid/openapi.json';

/** The document's schemas live at `<DOC_ID>#/$defs/<name>` for Ajv: point every `#/components/schemas/` ref there. */
function rebase<T>(schema: T): T {
  return JSON.parse(JSON.stringify(schema).replaceAll('"$ref":"#/components/schemas/', `"$ref":"${DOC_ID}#/$defs/`));
}

interface Template {
  template: string;
  regex: RegExp;
  names: string[];
  literal: number;
}

function compileTemplate(template: string, multi: Set<string>): Template {
  const names: string[] = [];
  let source = '';
  let literal = 0;
  for (const part of template.split(/(\{[^}]+\})/)) {
    const m = /^\{([^}]+)\}$/.exec(part);
    if (m) {
      names.push(m[1]!);
      source += multi.has(m[1]!) ? '(.+)' : '([^/]+)';
    } else {
      literal += part.length;
      source += part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    }
  }
  // Express 5 (path-to-regexp 8): case-insensitive, one optional trailing slash.
  const trailing = template.endsWith('/') ? '' : '/?';
  return { template, regex: new RegExp(`^${source}${trailing}$`, 'i'), names, literal };
}

/** The media type without parameters, lower case. */
function mediaType(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  return value.split(';')[0]!.trim().toLowerCase() || undefined;
}

function matchesMedia(range: string, type: string): boolean {
  if (range === '*/*' || range === type) return true;
  return range.endsWith('/*') && type.startsWith(range.slice(0, -1));
}

const isJson = (type: string) => type === 'application/json' || type.endsWith('+json');

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Validates exchanges against one OpenAPI document. */
export class OpenApiChecker {
  readonly doc: Json;
  readonly operations: Operation[] = [];
  private readonly templates: (Template & { item: Json })[] = [];
  private readonly ajv: Ajv2020;
  /** Query and path parameters arrive as strings: this instance coerces them like the broker's zod schemas do. */
  private readonly ajvParams: Ajv2020;
  private readonly compiled = new Map<string, ValidateFunction>();

  constructor(doc: Json) {
    this.doc = doc;
    const make = (coerce: boolean) => {
      // Unknown keywords fail (a typo would otherwise check nothing); OpenAPI-style allOf + properties without `type` is fine.
      const ajv = new Ajv2020({
        strict: true,
        strictTypes: false,
        strictRequired: false,
        allErrors: true,
        coerceTypes: coerce ? 'array' : false,
      });
      addFormats.default(ajv);
      // OpenAPI's own schema keywords are annotations here.
      ajv.addVocabulary(['discriminator', 'xml', 'externalDocs', 'example']);
      ajv.addSchema(rebase({ $id: DOC_ID, $defs: doc.components.schemas }));
      return ajv;
    };
    this.ajv = make(false);
    this.ajvParams = make(true);
    for (const [template, item] of Object.entries(doc.paths as Json)) {
      const pathParams = ((item as Json).parameters ?? []).map((p: Json) => this.deref(p));
      const multi = new Set<string>();
      for (const method of METHODS) {
        const op = (item as Json)[method] as Json | undefined;
        if (!op) continue;
        const params = [...pathParams, ...(op.parameters ?? []).map((p: Json) => this.deref(p))];
        for (const p of params) if (p.in === 'path' && p['x-multi-segment']) multi.add(p.name);
        this.operations.push({ id: op.operationId, method, template, op, pointer: `#/paths/${esc(template)}/${method}`, params });
      }
      this.templates.push({ ...compileTemplate(template, multi), item: item as Json });
    }
    // Like a router: the most literal template wins (/console/api/session before /console/{page}).
    this.templates.sort((a, b) => b.literal - a.literal || a.names.length - b.names.length);
  }

  /** Resolves a local `$ref` (responses, parameters, headers, request bodies). */
  deref<T = Json>(node: Json): T {
    let n = node;
    for (let i = 0; n && typeof n.$ref === 'string' && i < 10; i++) {
      n = (n.$ref as string)
        .slice(2)
        .split('/')
        .reduce((o: Json, k) => o?.[k.replace(/~1/g, '/').replace(/~0/g, '~')], this.doc);
    }
    return n as T;
  }

  /** The schema validator for a JSON Schema embedded in the document (compiled once). */
  private validator(schema: Json, where: string, params = false): ValidateFunction {
    const key = `${params ? 'p' : 'b'}:${where}`;
    let v = this.compiled.get(key);
    if (!v) {
      const rebased = rebase(schema);
      v = (params ? this.ajvParams : this.ajv).compile(params ? { type: 'object', properties: { value: rebased } } : rebased);
      this.compiled.set(key, v);
    }
    return v;
  }

  private errorsOf(v: ValidateFunction): string {
    return (v.errors ?? [])
      .slice(0, 5)
      .map(
        (e) =>
          `${e.instancePath || '(root)'} ${e.message}${e.params && Object.keys(e.params).length ? ` ${JSON.stringify(e.params)}` : ''}`,
      )
      .join('; ');
  }

  /** The operation for `method` and `path`, with its decoded path parameters. */
  find(method: string, path: string): { operation: Operation; params: Record<string, string> } | undefined {
    const m = method.toLowerCase() === 'head' ? 'get' : method.toLowerCase();
    for (const t of this.templates) {
      const found = t.regex.exec(path);
      if (!found) continue;
      const operation = this.operations.find((o) => o.template === t.template && o.method === m);
      if (!operation) continue;
      const params: Record<string, string> = {};
      t.names.forEach((n, i) => {
        params[n] = decode(found[i + 1]!);
      });
      // A parameter that spans segments is bounded by its pattern (the console's pages exclude api/ and assets/).
      const excluded = operation.params.some(
        (p) => p.in === 'path' && p['x-multi-segment'] && p.schema?.pattern && !new RegExp(p.schema.pattern).test(params[p.name]!),
      );
      if (!excluded) return { operation, params };
    }
    return undefined;
  }

  /** Checks one exchange; `errors` is empty when it conforms. */
  check(x: Exchange): Verdict {
    // As Express parses it: a `#` ends the path and the query (clients never send one; raw requests may).
    const url = x.url.split('#')[0]!;
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
    // As the console's router does: everything below /console/api/v1/ is the /v1 handlers (or no route), never a page.
    const mirror = /^\/console\/api(\/v1\/.*)$/i.exec(path);
    const v1 = mirror ? this.find(x.method, mirror[1]!) : undefined;
    const console = mirror !== null;
    const found = mirror ? (v1?.operation.op['x-console-api'] ? v1 : undefined) : this.find(x.method, path);
    const where = `${x.method} ${x.url.slice(0, 200)} → ${x.status}`;
    if (!found) {
      const errors = this.checkResponse(this.deref(this.doc.components.responses.NoSuchRoute), '#/components/responses/NoSuchRoute', x);
      return { errors: errors.map((e) => `${where} (no documented route): ${e}`) };
    }
    const { operation, params } = found;
    const errors: string[] = [];
    const responses = operation.op.responses as Json;
    const key = [String(x.status), `${String(x.status)[0]}XX`, 'default'].find((k) => k in responses);
    if (!key) {
      errors.push(`status ${x.status} is not documented for ${operation.id}`);
    } else {
      errors.push(...this.checkResponse(this.deref(responses[key]), `${operation.pointer}/responses/${key}`, x));
      if (x.status >= 200 && x.status < 300) errors.push(...this.checkRequest(operation, params, query, x));
    }
    return { operation, console, errors: errors.map((e) => `${where} (${operation.id}): ${e}`) };
  }

  private checkResponse(response: Json, pointer: string, x: Exchange): string[] {
    const errors: string[] = [];
    for (const [name, h] of Object.entries((response.headers ?? {}) as Json)) {
      if (name.toLowerCase() === 'content-type') continue;
      const header = this.deref(h);
      const value = x.headers[name.toLowerCase()];
      if (value === undefined) {
        if (header.required) errors.push(`header ${name} is missing`);
        continue;
      }
      const v = this.validator(header.schema ?? {}, `${pointer}/headers/${esc(name)}`, true);
      if (!v({ value: String(value) })) errors.push(`header ${name}: ${this.errorsOf(v)}`);
    }
    const content = response.content as Json | undefined;
    const type = mediaType(x.headers['content-type']);
    if (!content) {
      if (x.body.length > 0) errors.push(`a body (${type ?? 'no content type'}) where the document has none`);
      return errors;
    }
    if (x.body.length === 0 && x.method.toUpperCase() === 'HEAD') return errors;
    if (!type) return [...errors, `no content type; the document says ${Object.keys(content).join(', ')}`];
    const range = Object.keys(content).find((r) => matchesMedia(r.toLowerCase(), type));
    if (!range) return [...errors, `content type ${type}; the document says ${Object.keys(content).join(', ')}`];
    const schema = content[range].schema as Json | undefined;
    if (!schema || !isJson(type)) return errors;
    let body: unknown;
    try {
      body = JSON.parse(x.body.toString('utf8'));
    } catch {
      return [...errors, `the ${type} body is not JSON`];
    }
    const v = this.validator(schema, `${pointer}/content/${esc(range)}/schema`);
    if (!v(body)) errors.push(`body: ${this.errorsOf(v)} in ${x.body.toString('utf8').slice(0, 600)}`);
    return errors;
  }

  /** What the broker accepted must be what the document says it accepts. */
  private checkRequest(operation: Operation, path: Record<string, string>, query: URLSearchParams, x: Exchange): string[] {
    const errors: string[] = [];
    for (const p of operation.params) {
      const raw = p.in === 'path' ? path[p.name] : p.in === 'query' ? query.getAll(p.name) : undefined;
      const value = Array.isArray(raw) ? (raw.length === 0 ? undefined : raw.length === 1 ? raw[0] : raw) : raw;
      if (value === undefined) {
        if (p.required) errors.push(`accepted without the required ${p.in} parameter ${p.name}`);
        continue;
      }
      const v = this.validator(p.schema ?? {}, `${operation.pointer}/parameters/${p.in}/${p.name}`, true);
      if (!v({ value })) errors.push(`accepted ${p.in} parameter ${p.name}=${JSON.stringify(value).slice(0, 100)}: ${this.errorsOf(v)}`);
    }
    if (x.requestBody === undefined) return errors;
    const rb = operation.op.requestBody ? this.deref(operation.op.requestBody) : undefined;
    const type = mediaType(x.requestContentType);
    if (!rb) {
      // A body on GET or DELETE means nothing in HTTP and is ignored; one the broker took on POST should be documented.
      const meaningful = ['POST', 'PUT', 'PATCH'].includes(x.method.toUpperCase());
      if (meaningful && x.requestBody !== null && typeof x.requestBody === 'object' && Object.keys(x.requestBody).length > 0)
        errors.push('accepted a request body where the document has none');
      return errors;
    }
    if (!type) return errors;
    const range = Object.keys(rb.content ?? {}).find((r) => matchesMedia(r.toLowerCase(), type));
    if (!range) return [...errors, `accepted a ${type} body; the document says ${Object.keys(rb.content ?? {}).join(', ')}`];
    const v = this.validator(rb.content[range].schema ?? {}, `${operation.pointer}/requestBody/content/${esc(range)}/schema`);
    if (!v(x.requestBody)) errors.push(`accepted a request body the document refuses: ${this.errorsOf(v)}`);
    return errors;
  }
}

let shared: OpenApiChecker | undefined;

/** docs/openapi.yaml, parsed. */
export function openApiDocument(): Json {
  return parse(readFileSync(OPENAPI_YAML, 'utf8')) as Json;
}

/** The checker for docs/openapi.yaml (built once per test file, on first use). */
export function openApiChecker(): OpenApiChecker {
  shared ??= new OpenApiChecker(openApiDocument());
  return shared;
}

/** A route Express has registered: its methods and its full path. */
export interface RegisteredRoute {
  methods: string[];
  path: string | RegExp;
}

/**
 * Every route registered on an Express 5 app, nested routers included, with
 * the mount paths prefixed (`router` 2 keeps them as `layer.rawPath`), and
 * each express.static mount as `<mount>/*`.
 */
export function registeredRoutes(app: { router: { stack: any[] } }): RegisteredRoute[] {
  const out: RegisteredRoute[] = [];
  const walk = (stack: any[], prefix: string) => {
    for (const layer of stack) {
      if (layer.route) {
        const methods = Object.keys(layer.route.methods).filter((m) => m !== '_all');
        const p = layer.route.path as string | RegExp;
        out.push({ methods, path: typeof p === 'string' ? prefix + p : p });
      } else {
        const mount = typeof layer.rawPath === 'string' && layer.rawPath !== '/' ? layer.rawPath : '';
        // A router behind a path guard (src/http/app.ts `under`) is listed as if mounted directly.
        const stack = layer.handle?.stack ?? layer.handle?.router?.stack;
        if (Array.isArray(stack)) walk(stack, prefix + mount);
        // express.static answers GET and HEAD for every file below its mount.
        else if (layer.handle?.name === 'serveStatic') out.push({ methods: ['get'], path: `${prefix}${mount}/*` });
      }
    }
  };
  walk(app.router.stack, '');
  return out;
}
