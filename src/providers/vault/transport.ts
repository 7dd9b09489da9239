import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Readable } from 'node:stream';
import { createBrotliDecompress, createUnzip } from 'node:zlib';
import { scrubEcho } from '../echo-scrub.ts';

/**
 * The most of one Vault answer the broker reads by default (`providers.vault.maxAnswerBytes`). Vault's answers to what the broker asks (a token, a
 * secret, a lookup, a list of secret-id accessors) are a few KiB; an answer past this is not Vault's, and
 * reading it whole (node-vault's axios did, 100 MiB and more) would let one upstream exhaust the broker's memory.
 */
export const MAX_VAULT_ANSWER_BYTES = 4 * 1024 * 1024;

/** What node-vault hands its `request-promise`: its own options, after it added the token and namespace headers. */
interface RpOptions {
  method: string;
  uri: string;
  headers?: Record<string, string>;
  json?: unknown;
  timeout?: number;
}

/** What node-vault expects back (it reads `request.path` to let sys/health answer with any status). */
interface RpResponse {
  statusCode: number;
  body: unknown;
  request: { path: string };
}

/** Request fields that hold a secret the broker sends: a secret-id (login, custom-secret-id), a token, a password. */
const SECRET_FIELD = /secret|token|password/i;

/**
 * The secrets a request carries: its X-Vault-Token, the string values of its secret fields (at any depth), and
 * the address's user-info password (sent as Basic authorization to a proxy in front of Vault), as written, as
 * decoded and as the header Node makes of it.
 */
function secretsOf(options: RpOptions, url: URL): string[] {
  const out: string[] = [];
  const token = options.headers?.['X-Vault-Token'];
  if (token) out.push(token);
  if (url.password) {
    const user = decodeURIComponent(url.username);
    const password = decodeURIComponent(url.password);
    out.push(url.password, password, Buffer.from(`${user}:${password}`).toString('base64'));
  }
  const walk = (v: unknown, key: string) => {
    if (typeof v === 'string') {
      if (SECRET_FIELD.test(key) && v.length > 0) out.push(v);
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) walk(x, Array.isArray(v) ? key : k);
    }
  };
  walk(options.json, '');
  return out;
}

/**
 * Whether VAULT_SKIP_VERIFY turns certificate checks off, read as Vault's own CLI reads it (Go's ParseBool):
 * node-vault took any non-empty value, so `VAULT_SKIP_VERIFY=false` (or `0`) turned verification *off*.
 * Anything but a true spelling leaves it on.
 */
export function skipVerify(env: NodeJS.ProcessEnv = process.env): boolean {
  return ['1', 't', 'T', 'true', 'TRUE', 'True'].includes(env.VAULT_SKIP_VERIFY ?? '');
}

/**
 * The answer's body, decoded as its content-encoding says: node-vault's axios asked for gzip, deflate and br
 * and decoded them, and a proxy in front of Vault may compress whatever was asked. Undecoded, a compressed
 * answer was taken for text, and a compressed error lost its `errors` (a 400 "invalid accessor" is how a
 * revocation learns a token is already gone). Other encodings are passed as they came, as axios did.
 */
function decoded(res: IncomingMessage): Readable {
  const encoding = String(res.headers['content-encoding'] ?? '')
    .trim()
    .toLowerCase();
  if (encoding === 'gzip' || encoding === 'x-gzip' || encoding === 'deflate') return res.pipe(createUnzip());
  if (encoding === 'br') return res.pipe(createBrotliDecompress());
  return res;
}

/** A failure carrying a code the error classification (errors.ts) knows: ETIMEDOUT is an unreachable Vault. */
function failure(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * node-vault's HTTP layer (its `request-promise` hook), replacing its axios one:
 * - `timeout` bounds the whole call (connecting, the answer's head and its whole body), where axios's is an idle
 *   timeout a body dripping a byte at a time never trips;
 * - an answer longer than `maxBytes` (providers.vault.maxAnswerBytes) is cut off and fails;
 * - a failed answer never repeats a secret the request carried (`scrubEcho`);
 * - redirects are not followed: a 3xx is an answer like any other (node-vault fails it as `Status 307`). Axios
 *   followed one to any host with X-Vault-Token and the request body (a secret-id, at login) attached, and took
 *   what that host answered for Vault's answer.
 * TLS is Node's default (the system's CAs plus NODE_EXTRA_CA_CERTS), with certificate checks off only for a
 * true VAULT_SKIP_VERIFY (`skipVerify`; node-vault's own `strictSSL` is not used). Connections are kept alive
 * (Node's global agent, as with axios). HTTP(S)_PROXY is not read (axios did): see docs/providers/vault.md.
 */
export function boundedRequest(_defaults: { strictSSL?: boolean }, maxBytes = MAX_VAULT_ANSWER_BYTES) {
  return (options: RpOptions): Promise<RpResponse> =>
    new Promise<RpResponse>((resolve, reject) => {
      const url = new URL(options.uri);
      const body = options.json !== undefined && typeof options.json === 'object' ? Buffer.from(JSON.stringify(options.json)) : undefined;
      const headers: Record<string, string | number> = { accept: 'application/json', ...options.headers };
      if (body) {
        headers['content-type'] ??= 'application/json';
        headers['content-length'] = body.length;
      }
      const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const done = (err: Error | undefined, out?: RpResponse) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          req.destroy();
          reject(err);
        } else resolve(out!);
      };
      const req = send(url, {
        method: options.method,
        headers,
        ...(url.protocol === 'https:' && skipVerify() ? { rejectUnauthorized: false } : {}),
      });
      const ms = options.timeout ?? 0;
      if (ms > 0) timer = setTimeout(() => done(failure(`Vault did not answer within ${ms} ms`, 'ETIMEDOUT')), ms);
      req.on('error', (err) => done(err));
      req.on('response', (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let size = 0;
        const tooLarge = () => done(failure(`Vault's answer exceeds ${maxBytes} bytes`, 'ERR_VAULT_ANSWER_TOO_LARGE'));
        // The cap holds for what came and for what it decodes to (a small gzip can decode to gigabytes).
        let raw = 0;
        res.on('data', (c: Buffer) => {
          raw += c.length;
          if (raw > maxBytes) tooLarge();
        });
        const body = decoded(res);
        body.on('data', (c: Buffer) => {
          size += c.length;
          if (size > maxBytes) {
            tooLarge();
            body.destroy();
            return;
          }
          chunks.push(c);
        });
        res.on('error', (err) => done(err));
        if (body !== res)
          body.on('error', (err) => done(failure(`Vault's answer did not decode: ${err.message}`, 'ERR_VAULT_ANSWER_ENCODING')));
        // A connection closed before the whole body came (a reset): never an answer.
        res.on('aborted', () => done(failure('Vault closed the connection mid-answer', 'ECONNRESET')));
        body.on('end', () => {
          if (!res.complete) return done(failure('Vault closed the connection mid-answer', 'ECONNRESET'));
          const status = res.statusCode ?? 0;
          const raw = Buffer.concat(chunks).toString('utf8');
          // A failed answer's body with every secret the request carried replaced (scrubEcho): node-vault makes its
          // `errors` the error's message, which is logged (safeCause), and an upstream that echoes its input (a proxy
          // repeating a header, a plugin quoting the request) would have put the broker's token or secret-id in the
          // log. A success is left whole: it is where credentials legitimately are.
          const text = status === 200 || status === 204 ? raw : scrubEcho(raw, secretsOf(options, url));
          // As axios did: JSON when it parses, else the text ('' for a 204, an HTML error page), which node-vault
          // then fails on the status code or the broker on the shape.
          let parsed: unknown = text;
          try {
            if (text.length > 0) parsed = JSON.parse(text);
          } catch {
            // Not JSON: kept as text.
          }
          done(undefined, { statusCode: status, body: parsed, request: { path: url.pathname } });
        });
      });
      req.end(body);
    });
}
