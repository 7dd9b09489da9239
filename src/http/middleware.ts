import { isUtf8 } from 'node:buffer';
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import type { ZodType } from 'zod';
import type { Deps } from '../deps.ts';
import { denial } from '../authz.ts';
import { BrokerError, badRequest, forbidden, unsupportedMediaType } from '../errors.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import { fromZod } from './problem.ts';
import { illFormedField } from './well-formed.ts';
import { RateLimited } from './rate-limit.ts';

/** The verified caller, set by `requireIdentity`. */
export function identityOf(res: Response): WorkloadIdentity {
  return res.locals.identity as WorkloadIdentity;
}

/**
 * Extracts the bearer token. No header, or another scheme (RFC 6750 3.1: the
 * client did not attempt bearer authentication), counts as missing; a bearer
 * token of any shape is handed to the verifier, which refuses it as malformed.
 */
export function bearerToken(req: Request): string | undefined {
  const h = req.headers.authorization;
  if (!h) return undefined;
  const m = /^Bearer +(\S.*)$/i.exec(h.trim());
  return m?.[1];
}

/**
 * Verifies a workload identity token and spends one request of its budget.
 * A failure is charged to the client address first: the failure that goes
 * over that budget answers 429 instead of 401.
 */
export async function authenticate(
  deps: Deps,
  req: Request,
  res: Response,
  token: string | undefined,
  budget: 'identity' | 'introspect' = 'identity',
): Promise<WorkloadIdentity> {
  let who: WorkloadIdentity;
  try {
    who = await deps.verifier.verify(token);
  } catch (err) {
    if (err instanceof BrokerError && err.status === 401 && deps.limits) {
      const over = await deps.limits.authFailed(req, res);
      if (over) throw over;
    }
    throw err;
  }
  await admitIdentity(deps, who, budget);
  return who;
}

/**
 * What every verified caller passes before its route runs (the /v1 API, the AWS container endpoint,
 * the console): not quarantined, and within its rate limit. Both refusals are audited denials (contract
 * section 7: every denial is a record, whatever the route); a flood's 429s fold into one record per
 * identity and minute.
 */
export async function admitIdentity(deps: Deps, who: WorkloadIdentity, budget: 'identity' | 'introspect' = 'identity'): Promise<void> {
  await refuseQuarantined(deps, who);
  await spendBudget(deps, who, budget, 1);
}

/**
 * Spends `points` of `who`'s rate-limit budget: 1 when it is admitted, more for an expensive read
 * (src/http/read-cost.ts). Over it: 429, an audited denial (`detail.points` when it cost more than 1).
 */
export async function spendBudget(
  deps: Pick<Deps, 'limits' | 'audit' | 'logger'>,
  who: WorkloadIdentity,
  budget: 'identity' | 'introspect',
  points: number,
): Promise<void> {
  try {
    await deps.limits?.spendIdentity(who.id, budget, points);
  } catch (err) {
    if (err instanceof RateLimited) {
      // Counted in metrics by the limiter already: only the record here. A record that cannot be written (Redis
      // down: the limiter fell back to its in-memory count) does not turn the 429 into another answer.
      await deps.audit
        .denial({
          action: 'access.deny',
          actor: who.id,
          decision: 'deny',
          reason: err.code,
          detail: { budget, ...(points > 1 ? { points } : {}) },
        })
        .catch((e: unknown) => deps.logger.warn({ err: (e as Error).message }, 'could not audit a rate-limit denial'));
    }
    throw err;
  }
}

/** Verifies `Authorization: Bearer <workload JWT>` and the caller's rate limit before anything else runs. */
export function requireIdentity(deps: Deps): RequestHandler {
  return async (req, res, next) => {
    res.locals.identity = await authenticate(deps, req, res, bearerToken(req));
    next();
  };
}

/** 403 identity_quarantined (audited) when an admin quarantined `who`. */
async function refuseQuarantined(deps: Deps, who: WorkloadIdentity): Promise<void> {
  const pattern = deps.quarantine.match(who.id);
  if (pattern === undefined) return;
  throw await denial(deps, who, forbidden('identity_quarantined', 'This identity is quarantined by an admin; every call is refused.'), {
    action: 'access.deny',
    detail: { pattern },
  });
}

/**
 * JSON bodies: `application/json` only (415 otherwise), size-limited (413),
 * a JSON object or nothing. A body-less POST is allowed where the route takes none.
 *
 * Parsed non-strictly, then refused unless an object: body-parser's strict
 * mode calls `null`, `"x"` or `1` malformed JSON (400 `malformed_json`) but
 * lets `[]` through to the route's schema (400 `invalid_request`). Every
 * well-formed JSON value that is not an object is a body of the wrong shape:
 * one answer for all of them, `invalid_request` naming `(body)` as `fromZod` does.
 */
export function jsonBody(limit: number): RequestHandler[] {
  const parse = express.json({ limit, strict: false, type: 'application/json', verify: refuseNonUtf8 });
  return [
    (req: Request, _res: Response, next: NextFunction) => {
      const hasBody = req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
      if (hasBody && !req.is('application/json'))
        throw unsupportedMediaType('unsupported_media_type', 'Send the body as application/json.');
      next();
    },
    (req: Request, res: Response, next: NextFunction) => parse(req, res, (err?: unknown) => next(bodyReadError(err))),
    (req: Request, _res: Response, next: NextFunction) => {
      // undefined: no body was sent (or none parsed, for a body-less route); `null` is a body that was.
      const body: unknown = req.body;
      if (body !== undefined && (body === null || typeof body !== 'object' || Array.isArray(body)))
        throw badRequest('invalid_request', '(body): must be a JSON object', { extra: { field: '(body)' } });
      const field = illFormedField(body);
      if (field !== undefined)
        throw badRequest('invalid_request', `${field}: not well-formed Unicode (an unpaired surrogate escape).`, { extra: { field } });
      next();
    },
  ];
}

const NOT_UTF8 = 'body.not_utf8';

/**
 * A UTF-8 body must be UTF-8: the decoder would put U+FFFD in place of bad
 * bytes, so two different byte strings would read as one value that the
 * caller never sent (a tenant or label no filter or kill switch could name
 * as sent). Other charsets body-parser accepts (utf-16, utf-32) are decoded as declared.
 */
function refuseNonUtf8(req: Request, _res: Response, buf: Buffer): void {
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.headers['content-type'] ?? '')?.[1]?.toLowerCase();
  if ((charset === undefined || charset === 'utf-8' || charset === 'utf8') && !isUtf8(buf))
    throw Object.assign(new Error('body is not UTF-8'), { type: NOT_UTF8 });
}

/**
 * The JSON parser's failures that are about the body's bytes: a body that is
 * not UTF-8, or that does not inflate (a zlib error carries no body-parser
 * `type`, so the error handler would otherwise take it for an undecodable URL).
 */
function bodyReadError(err: unknown): unknown {
  if (err === undefined || err === null || err instanceof BrokerError) return err;
  const e = err as { type?: unknown; status?: unknown };
  if (e.type === NOT_UTF8 || (e.status === 400 && e.type === undefined))
    return badRequest('malformed_body', 'The request body could not be read.');
  return err;
}

/** Validates `req.body` with a schema (unknown fields rejected) into res.locals.body. */
export function validBody<T>(schema: ZodType<T>, body: unknown): T {
  const r = schema.safeParse(body ?? {});
  if (!r.success) throw fromZod(r.error);
  return r.data;
}

/** Validates the query string (unknown parameters refused, like unknown body fields). */
export function validQuery<T>(schema: ZodType<T>, query: unknown): T {
  const r = schema.safeParse(query ?? {});
  if (!r.success) throw fromZod(r.error);
  return r.data;
}

/** Validates one path parameter. */
export function validParam<T>(schema: ZodType<T>, value: unknown, name: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw badRequest('invalid_id', `${name} ${r.error.issues[0]!.message}.`);
  return r.data;
}
