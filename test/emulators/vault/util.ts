import { randomBytes, randomUUID } from 'node:crypto';

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** `n` random base62 characters, the alphabet Vault uses for token bodies, accessors and lease suffixes. */
export function base62(n: number): string {
  const bytes = randomBytes(n * 2);
  let out = '';
  // 248 = 4 * 62: rejecting bytes above it keeps the distribution uniform.
  for (let i = 0; i < bytes.length && out.length < n; i++) if (bytes[i]! < 248) out += BASE62[bytes[i]! % 62];
  return out.length === n ? out : out + base62(n - out.length);
}

export const uuid = (): string => randomUUID();

/**
 * An error the emulator answers with: `{"errors":[...]}` and the status Vault
 * uses for that class of failure (protocols.md 1.3).
 */
export class VaultHttpError extends Error {
  readonly status: number;
  readonly errors: string[];
  constructor(status: number, errors: string[]) {
    super(errors.join('; ') || `status ${status}`);
    this.name = 'VaultHttpError';
    this.status = status;
    this.errors = errors;
  }
}

/** Vault wraps most logical errors as a go-multierror string. */
export const multiError = (...messages: string[]): string =>
  `${messages.length} error${messages.length === 1 ? '' : 's'} occurred:\n${messages.map((m) => `\t* ${m}\n`).join('')}\n`;

export const badRequest = (message: string) => new VaultHttpError(400, [message]);
export const permissionDenied = () => new VaultHttpError(403, [multiError('permission denied')]);
export const invalidToken = () => new VaultHttpError(403, [multiError('permission denied', 'invalid token')]);
export const unsupportedPath = () => new VaultHttpError(404, [multiError('unsupported path')]);
export const unsupportedOperation = () => new VaultHttpError(405, [multiError('unsupported operation')]);
export const notFound = () => new VaultHttpError(404, []);
export const sealed = () => new VaultHttpError(503, ['Vault is sealed']);

/**
 * Parses a Vault duration: an integer number of seconds (number or numeric
 * string) or a Go-style duration string such as "90s", "2m", "1h30m".
 * Anything else is a 400, as on a real server.
 */
export function parseDuration(value: unknown, field: string): number {
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0) throw badRequest(`invalid ${field}: ${value}`);
    return value;
  }
  if (typeof value !== 'string') throw badRequest(`invalid type for ${field}: expected a duration`);
  if (/^\d+$/.test(value)) return Number(value);
  const m = /^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?$/.exec(value);
  if (!m || value === '') throw badRequest(`error parsing ${field}: time: invalid duration "${value}"`);
  return Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3] ?? 0);
}

/** RFC 3339 with nanosecond-free precision, as Vault prints times. */
export const rfc3339 = (ms: number): string => new Date(ms).toISOString();
