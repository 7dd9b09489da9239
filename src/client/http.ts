import { BrokerResponseError, BrokerUnreachableError, ClientConfigError } from './errors.ts';
import type { TokenSource } from './token-source.ts';

/**
 * The most a broker answer may hold. Its largest pages (500 audit records, an evidence page with a ~2 MB
 * sub-task tree) are a few MB; a URL that answers more is not the broker, and reading on would hold it all.
 */
export const MAX_ANSWER_BYTES = 32 * 1024 * 1024;

/** What one call sends. */
export interface CallOptions {
  query?: Record<string, string | number | boolean | undefined>;
  /** Sent as JSON. */
  json?: unknown;
  /** Sent as application/x-www-form-urlencoded (the OAuth endpoints). */
  form?: Record<string, string | undefined>;
  /** Default true: send the workload identity as a bearer token. */
  auth?: boolean;
  /** Statuses that are answers rather than errors (default: every 2xx). */
  accept?: (status: number) => boolean;
  signal?: AbortSignal;
}

/** A parsed answer. */
export interface Answer<T> {
  status: number;
  body: T;
  headers: Headers;
}

/** The transport under BrokerClient: one fetch per call, JSON in and out, errors as typed exceptions. */
export class Transport {
  readonly baseUrl: string;
  private readonly token: TokenSource;
  private readonly fetchFn: typeof fetch;
  private readonly timeoutMs: number;
  private readonly userAgent: string;

  constructor(opts: { baseUrl: string; token: TokenSource; fetch?: typeof fetch; timeoutMs: number; userAgent: string }) {
    this.baseUrl = normalizeBaseUrl(opts.baseUrl);
    this.token = opts.token;
    this.fetchFn = opts.fetch ?? globalThis.fetch;
    this.timeoutMs = opts.timeoutMs;
    this.userAgent = opts.userAgent;
  }

  /** The workload JWT the next request would carry. */
  identity(): Promise<string> {
    return this.token();
  }

  async call<T>(method: string, path: string, opts: CallOptions = {}): Promise<Answer<T>> {
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined && v !== '') url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { accept: 'application/json, application/problem+json', 'user-agent': this.userAgent };
    if (opts.auth !== false) headers.authorization = `Bearer ${await this.identity()}`;
    let body: string | undefined;
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.json);
    } else if (opts.form) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      const form = new URLSearchParams();
      for (const [k, v] of Object.entries(opts.form)) if (v !== undefined) form.set(k, v);
      body = form.toString();
    }
    const timeout = AbortSignal.timeout(this.timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    let res: Response;
    let text: string;
    try {
      res = await this.fetchFn(url, { method, headers, body, signal, redirect: 'error' });
      text = await readBounded(res, performance.now() + this.timeoutMs);
    } catch (err) {
      if (err instanceof BrokerUnreachableError) throw err;
      if (opts.signal?.aborted) throw opts.signal.reason;
      const timedOut = timeout.aborted;
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = timedOut ? `no answer within ${this.timeoutMs} ms` : (cause?.code ?? cause?.message ?? (err as Error).message);
      throw new BrokerUnreachableError(timedOut ? 'timeout' : 'broker_unreachable', `cannot reach the broker at ${this.baseUrl}: ${why}`, {
        cause: err,
      });
    }
    const parsed = parseBody(text, res.headers.get('content-type'));
    const accept = opts.accept ?? ((s: number) => s >= 200 && s < 300);
    if (accept(res.status)) {
      if (parsed === undefined && text.length > 0)
        throw new BrokerUnreachableError(
          'bad_response',
          `${method} ${path}: the broker answered ${res.status} with a body that is not JSON`,
        );
      return { status: res.status, body: parsed as T, headers: res.headers };
    }
    throw toResponseError(res, parsed, text);
  }
}

/**
 * The body as text, at most {@link MAX_ANSWER_BYTES} and within the call's time: read chunk by chunk, because
 * `res.text()` holds an endless body in memory and (a chunk always being ready) never lets the timeout's timer
 * fire, so a hostile URL kept the CLI reading until the machine ran out of memory.
 */
async function readBounded(res: Response, deadline: number): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let bytes = 0;
  let text = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return text + decoder.decode();
    bytes += value.byteLength;
    const why =
      bytes > MAX_ANSWER_BYTES
        ? `answered more than ${MAX_ANSWER_BYTES / (1024 * 1024)} MiB`
        : performance.now() > deadline
          ? 'did not finish its answer in time'
          : undefined;
    if (why) {
      await reader.cancel().catch(() => undefined);
      throw new BrokerUnreachableError('bad_response', `${res.url ? new URL(res.url).origin : 'the broker'} ${why} (HTTP ${res.status})`);
    }
    text += decoder.decode(value, { stream: true });
  }
}

/**
 * The origin of a broker URL that is plain http to a host other than this one, else undefined: the identity token
 * goes out and the credentials come back readable by anyone on the path. A mesh or a TLS sidecar may encrypt it
 * underneath, which the client cannot see, so this is said, not refused (BrokerClientOptions.onPlainHttp).
 */
export function plainHttpOrigin(url: string): string | undefined {
  const u = new URL(url);
  if (u.protocol !== 'http:') return undefined;
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const loopback = host === 'localhost' || host.endsWith('.localhost') || host === '::1' || /^127\./.test(host);
  return loopback ? undefined : u.origin;
}

function normalizeBaseUrl(raw: string): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new ClientConfigError('bad_broker_url', `the broker URL "${raw}" is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new ClientConfigError('bad_broker_url', `the broker URL "${raw}" must be http or https`);
  // A password, or a secret in a query or fragment, would be printed in every error naming the broker (fetch
  // refuses a URL with credentials anyway, and a query would be glued in front of every path): refused, and
  // not echoed. The caller's identity goes in JIT_TOKEN / JIT_TOKEN_FILE.
  if (u.username || u.password || u.search || u.hash) {
    const bare = `${u.protocol}//${u.host}${u.pathname}`.replace(/\/+$/, '');
    throw new ClientConfigError(
      'bad_broker_url',
      `the broker URL ${bare} must not carry a user name, password, query or fragment (the identity goes in JIT_TOKEN or JIT_TOKEN_FILE)`,
    );
  }
  return u.href.replace(/\/+$/, '');
}

function parseBody(text: string, contentType: string | null): unknown {
  if (!text) return undefined;
  if (contentType && !/json/i.test(contentType)) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** A problem document, an OAuth error, or (from something that is not the broker) whatever came back. */
function toResponseError(res: Response, body: unknown, text: string): BrokerResponseError {
  const b = (body && typeof body === 'object' ? body : {}) as Record<string, unknown>;
  const str = (v: unknown) => (typeof v === 'string' && v ? v : undefined);
  const code = str(b.code) ?? str(b.error) ?? `http_${res.status}`;
  const detail =
    str(b.detail) ?? str(b.error_description) ?? str(b.title) ?? (text && !body ? text.slice(0, 200).trim() : undefined) ?? res.statusText;
  const retryAfter = Number(res.headers.get('retry-after'));
  return new BrokerResponseError(
    res.status,
    code,
    detail || 'no detail',
    body ?? text,
    Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : undefined,
  );
}
