/**
 * One error type for everything the broker reports to a caller. Each has a
 * stable machine-readable `code`, an HTTP `status` and a client-safe `detail`.
 * The real cause (an upstream message, a stack) travels in `cause` and is only
 * ever logged, never returned: callers learn the class of failure, not our
 * internals.
 */
export class BrokerError extends Error {
  readonly code: string;
  readonly status: number;
  readonly title: string;
  /** Extra members for the problem document (never secrets). */
  readonly extra: Record<string, unknown> | undefined;

  constructor(
    code: string,
    status: number,
    title: string,
    detail: string,
    opts: { cause?: unknown; extra?: Record<string, unknown> } = {},
  ) {
    super(detail, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'BrokerError';
    this.code = code;
    this.status = status;
    this.title = title;
    this.extra = opts.extra;
  }
}

type ErrorOpts = { cause?: unknown; extra?: Record<string, unknown> };

const make = (status: number, title: string) => (code: string, detail: string, opts?: ErrorOpts) =>
  new BrokerError(code, status, title, detail, opts);

/** 400: the request is malformed or invalid. */
export const badRequest = make(400, 'Bad Request');
/** 401: missing or invalid workload identity. */
export const unauthenticated = make(401, 'Unauthorized');
/** 403: denied by task ceiling or policy. */
export const forbidden = make(403, 'Forbidden');
/** 404: unknown task, lease or approval. */
export const notFound = make(404, 'Not Found');
/** 409: conflicts with the current state (task not open, different body for an id). */
export const conflict = make(409, 'Conflict');
/** 413: body too large. */
export const tooLarge = make(413, 'Content Too Large');
/** 415: wrong content type. */
export const unsupportedMediaType = make(415, 'Unsupported Media Type');
/** 429: rate limited. */
export const tooManyRequests = make(429, 'Too Many Requests');
/** 502: an upstream (Vault, STS, IAM) failed. */
export const upstreamFailed = make(502, 'Bad Gateway');
/** 503: not ready (Redis down, upstream sealed). */
export const unavailable = make(503, 'Service Unavailable');

/**
 * Raised at startup for a bad config. `path` is the dotted key path so the
 * operator sees exactly which key is wrong.
 */
export class ConfigError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(path ? `config ${path}: ${message}` : `config: ${message}`);
    this.name = 'ConfigError';
    this.path = path;
  }
}

/**
 * Thrown by a provider when an upstream call failed in a way that may succeed
 * later (throttling, 5xx, sealed, connection refused). The revocation worker
 * retries these with backoff; anything else is permanent.
 */
export class RetryableUpstreamError extends Error {
  readonly code: string;
  constructor(code: string, message: string, opts: { cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'RetryableUpstreamError';
    this.code = code;
  }
}
