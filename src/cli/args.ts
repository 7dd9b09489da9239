import { parseArgs } from 'node:util';
import type { Grant } from '../client/types.ts';

/** Bad usage: a missing or malformed flag, an unknown command. Exit code 2. */
export class UsageError extends Error {
  /** The usage line of the command, shown under the message. */
  readonly usage: string | undefined;
  constructor(message: string, usage?: string) {
    super(message);
    this.usage = usage;
  }
}

export interface OptionSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
}
export type OptionSpecs = Record<string, OptionSpec>;

/** Flags every command takes. */
export const GLOBAL_OPTIONS = {
  json: { type: 'boolean' },
  broker: { type: 'string' },
  'token-file': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies OptionSpecs;

export type Values = Record<string, string | boolean | string[] | undefined>;

/** Parses a command's flags (plus the global ones); anything unknown is a UsageError. */
export function parseFlags(argv: string[], specs: OptionSpecs, usage: string): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      options: { ...GLOBAL_OPTIONS, ...specs },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Values, positionals };
  } catch (err) {
    // node:util's messages are good ("Unknown option '--x'", "Option '--ttl <value>' argument missing"), minus its hints.
    throw new UsageError((err as Error).message.split('. To specify')[0]!.replace(/\.$/, ''), usage);
  }
}

/** Reads typed flag values, naming the flag in every complaint. */
export class Flags {
  readonly values: Values;
  private readonly usage: string;
  constructor(values: Values, usage: string) {
    this.values = values;
    this.usage = usage;
  }

  fail(message: string): never {
    throw new UsageError(message, this.usage);
  }

  str(name: string): string | undefined {
    const v = this.values[name];
    return typeof v === 'string' ? v : undefined;
  }

  required(name: string): string {
    const v = this.str(name);
    if (v === undefined || v === '') this.fail(`--${name} is required`);
    return v;
  }

  bool(name: string): boolean {
    return this.values[name] === true;
  }

  list(name: string): string[] {
    const v = this.values[name];
    return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
  }

  /** A duration in seconds: `90`, `90s`, `15m`, `2h`, `1d`. */
  seconds(name: string): number | undefined {
    const v = this.str(name);
    if (v === undefined) return undefined;
    const s = parseDuration(v);
    if (s === undefined) this.fail(`--${name} must be a duration in seconds (90, 90s, 15m, 2h, 1d), not "${v}"`);
    return s;
  }

  /** One of `allowed`, or undefined when absent; anything else is bad usage (exit 2), not a broker refusal. */
  oneOf<T extends string>(name: string, allowed: readonly T[]): T | undefined {
    const v = this.str(name);
    if (v === undefined) return undefined;
    if (!(allowed as readonly string[]).includes(v)) this.fail(`--${name} must be one of ${allowed.join(', ')}, not "${v}"`);
    return v as T;
  }

  int(name: string, min: number, max: number): number | undefined {
    const v = this.str(name);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max) this.fail(`--${name} must be an integer from ${min} to ${max}`);
    return n;
  }

  /** A comma-separated list, the flag repeatable; `--scopes ''` is the empty list. Undefined when absent. */
  csv(name: string): string[] | undefined {
    const raw = this.list(name);
    if (raw.length === 0) return undefined;
    const out = raw.flatMap((r) => (r === '' ? [] : r.split(',')));
    if (out.some((s) => s.trim() === '')) this.fail(`--${name} has an empty item`);
    return out.map((s) => s.trim());
  }
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** `90`, `90s`, `15m`, `2h`, `1d` → seconds; undefined if malformed or zero. */
export function parseDuration(v: string): number | undefined {
  const m = /^(\d{1,9})([smhd]?)$/.exec(v.trim());
  if (!m) return undefined;
  const s = Number(m[1]) * UNITS[m[2] || 's']!;
  return s > 0 ? s : undefined;
}

const ROLE = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * `role[:scope,scope][@maxTtl]`: `tickets-api` (the role's scopes),
 * `tickets-api:` (no scope), `tickets-api:tickets:read,tickets:write@5m`.
 * The role ends at the first colon (scopes may hold colons); a trailing
 * `@<duration>` is the grant's maxTtlSeconds.
 */
export function parseGrant(spec: string): Grant {
  let rest = spec;
  let maxTtlSeconds: number | undefined;
  const at = /^(.*)@(\d{1,9}[smhd]?)$/.exec(rest);
  if (at) {
    rest = at[1]!;
    maxTtlSeconds = parseDuration(at[2]!);
    if (maxTtlSeconds === undefined) throw new UsageError(`--grant "${spec}": the max TTL after @ must be positive`);
  }
  const colon = rest.indexOf(':');
  const role = colon < 0 ? rest : rest.slice(0, colon);
  if (!ROLE.test(role)) throw new UsageError(`--grant "${spec}": "${role}" is not a role name (1-64 chars of [A-Za-z0-9._-])`);
  const grant: Grant = { role };
  if (colon >= 0) {
    const list = rest.slice(colon + 1);
    grant.scopes = list === '' ? [] : list.split(',');
    if (grant.scopes.some((s) => s === '')) throw new UsageError(`--grant "${spec}": empty scope in the list`);
  }
  if (maxTtlSeconds !== undefined) grant.maxTtlSeconds = maxTtlSeconds;
  return grant;
}

/** `--grant-json`: one grant object or an array of them, sent as written. */
export function parseGrantJson(text: string): Grant[] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new UsageError(`--grant-json is not valid JSON: ${text.slice(0, 80)}`);
  }
  const list = Array.isArray(v) ? v : [v];
  for (const g of list) {
    if (!g || typeof g !== 'object' || Array.isArray(g) || typeof (g as { role?: unknown }).role !== 'string')
      throw new UsageError('--grant-json must be an object with a "role" (or an array of them)');
  }
  return list as Grant[];
}

/** `--label k=v` (repeatable) → `{ k: v }`; a key given twice is bad usage (which value was meant is not known). */
export function parseLabels(items: string[]): Record<string, string> | undefined {
  if (items.length === 0) return undefined;
  // Null prototype: `--label __proto__=x` is a label like any other, not a prototype change.
  const out: Record<string, string> = Object.create(null);
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new UsageError(`--label "${item}" must be key=value`);
    const key = item.slice(0, eq);
    if (Object.hasOwn(out, key)) throw new UsageError(`--label key "${key}" is given twice`);
    out[key] = item.slice(eq + 1);
  }
  return out;
}
