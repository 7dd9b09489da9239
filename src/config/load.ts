import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ConfigError } from '../errors.ts';
import { configSchema, type BrokerConfig } from './schema.ts';
import { closest, keysAt } from './suggest.ts';

/** The validated config plus where it came from (relative paths resolve against `baseDir`). */
export type LoadedConfig = Readonly<BrokerConfig> & { readonly baseDir: string; readonly file: string };

/**
 * Replaces every `${NAME}` in string values with that environment variable.
 * A missing variable is a startup error naming it and the key that used it.
 */
export function substituteEnv(value: unknown, env: NodeJS.ProcessEnv, path: string[] = [], whole?: Set<string>): unknown {
  if (typeof value === 'string') {
    if (whole && WHOLE_REF.test(value)) whole.add(path.join('\u0000'));
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, name: string) => {
      const v = env[name];
      if (v === undefined) throw new ConfigError(path.join('.'), `environment variable ${name} is not set`);
      return v;
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substituteEnv(v, env, [...path, String(i)], whole));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substituteEnv(v, env, [...path, k], whole)]));
  }
  return value;
}

/** A value that is one `${NAME}` and nothing else. */
const WHOLE_REF = /^\$\{[A-Za-z_][A-Za-z0-9_]*\}$/;
const NUMBER_TEXT = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?$/;

/**
 * A YAML value that is only `${NAME}` is a string until it is replaced, but what it stands for is the value:
 * where the schema wants a number or a boolean (`port: ${BROKER_PORT}`), such a value whose text is one is
 * taken as it. Nothing else changes type: a string key keeps its text (a secret of digits stays a string).
 * Returns whether anything changed.
 */
function typeWholeRefs(
  doc: unknown,
  whole: Set<string>,
  issues: readonly { code: string; path: PropertyKey[]; expected?: unknown }[],
): boolean {
  let changed = false;
  for (const issue of issues) {
    if (issue.code !== 'invalid_type' || !whole.has(issue.path.map(String).join('\u0000'))) continue;
    const parent = issue.path.slice(0, -1).reduce<unknown>((o, k) => (o as Record<PropertyKey, unknown> | undefined)?.[k], doc) as
      | Record<PropertyKey, unknown>
      | undefined;
    const key = issue.path.at(-1)!;
    const text = parent?.[key];
    if (typeof text !== 'string') continue;
    if ((issue.expected === 'number' || issue.expected === 'int') && NUMBER_TEXT.test(text)) parent![key] = Number(text);
    else if (issue.expected === 'boolean' && (text === 'true' || text === 'false')) parent![key] = text === 'true';
    else continue;
    changed = true;
  }
  return changed;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

/** Validates a parsed config object; `PORT`, `HOST` and `REDIS_URL` from `env` override. */
export function validateConfig(raw: unknown, env: NodeJS.ProcessEnv, file: string): LoadedConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError('', `${file} must hold a YAML mapping`);
  const whole = new Set<string>();
  const doc = substituteEnv(raw, env, [], whole) as Record<string, Record<string, unknown> | undefined>;
  if (env.PORT !== undefined) {
    if (!/^\d{1,5}$/.test(env.PORT)) throw new ConfigError('server.port', `PORT="${env.PORT}" is not a port number`);
    doc.server = { ...(doc.server ?? {}), port: Number(env.PORT) };
  }
  if (env.HOST !== undefined) doc.server = { ...(doc.server ?? {}), host: env.HOST };
  if (env.REDIS_URL !== undefined) {
    // Silently preferring either would point a broker at a Redis its operator did not mean: refuse instead.
    const other = (['cluster', 'sentinel'] as const).find((k) => doc.redis?.[k] !== undefined);
    if (other) {
      throw new ConfigError(
        `redis.${other}`,
        `REDIS_URL is set, but ${file} configures redis.${other}; REDIS_URL replaces only redis.url, so unset REDIS_URL or remove redis.${other}`,
      );
    }
    doc.redis = { ...(doc.redis ?? {}), url: env.REDIS_URL };
  }
  // The iss of minted tokens defaults to where the broker listens, so PORT moves it too.
  if (doc.server?.publicUrl === undefined) {
    doc.server = { ...(doc.server ?? {}), publicUrl: `http://127.0.0.1:${(doc.server?.port as number | undefined) ?? 8080}` };
  }
  let parsed = configSchema.safeParse(doc);
  // Each pass types the `${NAME}` values the schema reported (a later key may only be reached once an earlier one parses).
  for (let pass = 0; !parsed.success && pass < 8 && typeWholeRefs(doc, whole, parsed.error.issues); pass++)
    parsed = configSchema.safeParse(doc);
  if (!parsed.success) {
    // A typo shows up twice (an unknown key, and the key it meant as missing): name the typo, with what it meant.
    const issue = parsed.error.issues.find((i) => i.code === 'unrecognized_keys') ?? parsed.error.issues[0]!;
    if (issue.code === 'unrecognized_keys') {
      const known = keysAt(configSchema, issue.path);
      const key = issue.keys[0]!;
      const guess = closest(key, known);
      const at = [...issue.path.map(String), key].join('.');
      throw new ConfigError(
        at,
        `unknown key '${key}'${guess ? ` (did you mean '${guess}'?)` : known.length ? ` (known keys: ${known.join(', ')})` : ''}`,
      );
    }
    const path = issue.path.map(String).join('.');
    throw new ConfigError(
      path,
      env.REDIS_URL !== undefined && path === 'redis.url' ? `${issue.message} (the value comes from REDIS_URL)` : issue.message,
    );
  }
  return deepFreeze({ ...parsed.data, baseDir: dirname(resolve(file)), file: resolve(file) });
}

/** Reads, substitutes and validates the config named by `BROKER_CONFIG` (default config/broker.yaml). */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, file = env.BROKER_CONFIG ?? 'config/broker.yaml'): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new ConfigError('', `${file} is not valid YAML: ${(err as Error).message}`);
  }
  return validateConfig(raw, env, file);
}

/** Relative paths in the config (jwks files, policies, secret files) resolve against the working directory. */
export function resolvePath(p: string): string {
  return resolve(process.cwd(), p);
}

/** Reads a secret given inline (after `${VAR}` substitution) or as `{ file }`. */
export function readSecret(source: string | { file: string }, keyPath: string): string {
  if (typeof source === 'string') return source;
  try {
    return readFileSync(resolvePath(source.file), 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new ConfigError(keyPath, `cannot read secret file ${source.file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}
