import type { ErrorRequestHandler, Response } from 'express';
import { ZodError } from 'zod';
import { BrokerError, badRequest, tooLarge, unsupportedMediaType } from '../errors.ts';
import type { Logger } from '../logger.ts';

/** Writes an RFC 9457 problem document. */
export function sendProblem(res: Response, err: BrokerError): void {
  if (err.status === 401) res.setHeader('WWW-Authenticate', `Bearer error="invalid_token"`);
  res
    .status(err.status)
    .type('application/problem+json')
    .send(
      JSON.stringify({
        type: `urn:jit-broker:problem:${err.code}`,
        title: err.title,
        status: err.status,
        detail: err.message,
        code: err.code,
        ...(err.extra ?? {}),
      }),
    );
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

/** The one error handler: known errors become problems; anything else is a logged 500 that reveals nothing. */
export function problemHandler(logger: Logger): ErrorRequestHandler {
  return (err, req, res, _next) => {
    let problem: BrokerError | undefined;
    if (err instanceof BrokerError) problem = err;
    else if (err instanceof ZodError) problem = fromZod(err);
    else problem = fromBodyParser(err);
    if (!problem) {
      logger.error({ err, path: req.path, method: req.method }, 'unhandled error');
      problem = new BrokerError('internal_error', 'The broker failed to handle the request.');
    } else if (problem.status >= 500) {
      logger.warn({ code: problem.code, cause: (problem.cause as Error | undefined)?.message, path: req.path }, 'request failed upstream');
    }
    if (res.headersSent) return;
    sendProblem(res, problem);
  };
}
