import type { ErrorRequestHandler, Response } from 'express';
import { ZodError } from 'zod';
import { BrokerError, badRequest, type ErrorCode, tooLarge, unavailable, unsupportedMediaType } from '../errors.ts';
import { isRedisUnavailable, REDIS_RETRY_AFTER_S } from '../redis/unavailable.ts';
import { clip } from '../identity/log-safe.ts';
import type { Logger } from '../logger.ts';
import { retryAfterOf } from './rate-limit.ts';

/**
 * The RFC 6750 3.1 challenge for a 401: a request without credentials gets
 * no error attribute, a request with a bad token `error="invalid_token"`.
 */
export function bearerChallenge(code: string): string {
  return code === 'identity_missing' ? 'Bearer' : 'Bearer error="invalid_token"';
}

/** The RFC 9457 problem document of `err`, serialised; `members` adds extension members (never secrets). */
export function problemJson(err: BrokerError, members?: Record<string, unknown>): string {
  return JSON.stringify({
    type: `urn:jit-broker:problem:${err.code}`,
    title: err.title,
    status: err.status,
    detail: err.message,
    code: err.code,
    ...(err.extra ?? {}),
    ...members,
  });
}

/** Writes an RFC 9457 problem document; `members` adds extension members (never secrets). */
export function sendProblem(res: Response, err: BrokerError, members?: Record<string, unknown>): void {
  if (err.status === 401) res.setHeader('WWW-Authenticate', bearerChallenge(err.code));
  if (err.status === 429 || err.retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(retryAfterOf(err)));
  res.status(err.status).type('application/problem+json').send(problemJson(err, members));
}

/** Turns a zod failure into a 400 naming the field (never echoing the value). */
export function fromZod(err: ZodError): BrokerError {
  const issue = err.issues[0]!;
  const path = issue.path.map(String).join('.') || '(body)';
  if (issue.code === 'unrecognized_keys')
    return badRequest('unknown_field', `Unknown field(s) ${issue.keys.map((k) => `"${[...issue.path, k].join('.')}"`).join(', ')}.`);
  return badRequest('invalid_request', `${path}: ${issue.message}`, { extra: { field: path } });
}

/** Maps body-parser failures to the contract's statuses. */
export function fromBodyParser(err: { type?: string; status?: number }): BrokerError | undefined {
  if (err.type === 'entity.too.large') return tooLarge('body_too_large', 'The request body is too large.');
  if (err.type === 'entity.parse.failed') return badRequest('malformed_json', 'The request body is not valid JSON.');
  if (err.type === 'encoding.unsupported' || err.type === 'charset.unsupported')
    return unsupportedMediaType('unsupported_encoding', 'Unsupported body encoding.');
  if (err.status === 400 && err.type) return badRequest('malformed_body', 'The request body could not be read.');
  return undefined;
}

const CLIENT_ERRORS: Record<number, [code: ErrorCode, detail: string]> = {
  // Body failures are typed (fromBodyParser); an untyped 400 is the URL: a path or query that does not decode.
  400: ['invalid_request', 'The request URL could not be read.'],
  404: ['route_not_found', 'No such route.'],
  413: ['body_too_large', 'The request is too large.'],
  415: ['unsupported_media_type', 'Unsupported content type or encoding.'],
};

/**
 * Errors Express and its parsers raise for bad input (a path that does not
 * decode, a body that does not inflate, too many parameters) carry a 4xx
 * `status`. They are the caller's fault, so they are the caller's 4xx, with
 * a fixed detail: their messages may quote the input.
 */
export function fromHttpError(err: { status?: unknown; statusCode?: unknown }): BrokerError | undefined {
  const status = typeof err.status === 'number' ? err.status : err.statusCode;
  if (typeof status !== 'number' || status < 400 || status > 499) return undefined;
  const [code, detail] = CLIENT_ERRORS[status] ?? CLIENT_ERRORS[400]!;
  return new BrokerError(code, detail);
}

/** The one error handler: known errors become problems; anything else is a logged 500 that reveals nothing. */
export function problemHandler(logger: Logger): ErrorRequestHandler {
  return (err, req, res, _next) => {
    let problem: BrokerError | undefined;
    if (err instanceof BrokerError) problem = err;
    else if (err instanceof ZodError) problem = fromZod(err);
    else if (isRedisUnavailable(err))
      problem = unavailable('not_ready', 'The broker cannot reach its data store right now; retry shortly.', {
        cause: err,
        retryAfterSeconds: REDIS_RETRY_AFTER_S,
      });
    else problem = fromBodyParser(err) ?? fromHttpError(err);
    if (!problem) {
      logger.error({ err, path: clip(req.path, 200), method: clip(req.method, 16) }, 'unhandled error');
      problem = new BrokerError('internal_error', 'The broker failed to handle the request.');
    } else if (problem.status >= 500) {
      logger.warn(
        { code: problem.code, cause: (problem.cause as Error | undefined)?.message, path: clip(req.path, 200) },
        'request failed upstream',
      );
    }
    if (res.headersSent) return;
    sendProblem(res, problem);
  };
}
