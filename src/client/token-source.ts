import { readFile } from 'node:fs/promises';
import { ClientConfigError } from './errors.ts';

/** The caller's workload identity: a JWT, or a function returning the current one. */
export type TokenInput = string | (() => string | Promise<string>);

/** Returns the workload JWT to send on the next request. */
export type TokenSource = () => Promise<string>;

/**
 * Builds the token source: an explicit token or function first, then a file
 * (read on every call, because SPIRE agents and Kubernetes rewrite it before
 * it expires), then the `JIT_TOKEN` / `JIT_TOKEN_FILE` environment variables
 * in that order.
 */
export function tokenSource(opts: { token?: TokenInput; tokenFile?: string; env?: NodeJS.ProcessEnv }): TokenSource {
  const { token, tokenFile } = opts;
  const env = opts.env ?? process.env;
  if (typeof token === 'function') return async () => nonEmpty(await token(), 'the token function');
  if (typeof token === 'string') return async () => nonEmpty(token, 'the token');
  const file = tokenFile ?? (env.JIT_TOKEN ? undefined : env.JIT_TOKEN_FILE);
  if (file) return () => readTokenFile(file);
  const fromEnv = env.JIT_TOKEN;
  if (fromEnv) return async () => nonEmpty(fromEnv, 'JIT_TOKEN');
  return async () => {
    throw new ClientConfigError('no_identity', 'no workload identity: set JIT_TOKEN or JIT_TOKEN_FILE');
  };
}

async function readTokenFile(path: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new ClientConfigError('token_file_unreadable', `cannot read the token file ${path} (${why})`, { cause: err });
  }
  // A file written for AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE may hold "Bearer <jwt>".
  return nonEmpty(text.trim().replace(/^Bearer\s+/i, ''), `the token file ${path}`);
}

function nonEmpty(token: string, where: string): string {
  const t = token.trim();
  if (!t) throw new ClientConfigError('no_identity', `${where} is empty`);
  if (/\s/.test(t)) throw new ClientConfigError('no_identity', `${where} does not hold a single JWT`);
  return t;
}
