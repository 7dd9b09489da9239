import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import type { ZodType } from 'zod';
import type { Deps } from '../deps.ts';
import { denial } from '../authz.ts';
import { badRequest, forbidden, unsupportedMediaType } from '../errors.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import { fromZod } from './problem.ts';

/** The verified caller, set by `requireIdentity`. */
export function identityOf(res: Response): WorkloadIdentity {
  return res.locals.identity as WorkloadIdentity;
}

/** Extracts the bearer token; malformed headers count as missing. */
export function bearerToken(req: Request): string | undefined {
  const h = req.headers.authorization;
  if (!h) return undefined;
  const m = /^Bearer ([A-Za-z0-9._~+/=-]+)$/i.exec(h.trim());
  return m?.[1];
}

/** Verifies `Authorization: Bearer <workload JWT>` before anything else runs; a quarantined identity stops here. */
export function requireIdentity(deps: Deps): RequestHandler {
  return async (req, res, next) => {
    let who: WorkloadIdentity;
    try {
      who = await deps.verifier.verify(bearerToken(req));
    } catch (err) {
      deps.metrics.denied.inc({ code: (err as { code?: string }).code ?? 'identity_invalid' });
      throw err;
    }
    await refuseQuarantined(deps, who);
    res.locals.identity = who;
    next();
  };
}

/** 403 identity_quarantined (audited) when an admin quarantined `who`. */
export async function refuseQuarantined(deps: Deps, who: WorkloadIdentity): Promise<void> {
  const pattern = deps.quarantine.match(who.id);
  if (pattern === undefined) return;
  throw await denial(deps, who, forbidden('identity_quarantined', 'This identity is quarantined by an admin; every call is refused.'), {
    action: 'access.deny',
    detail: { pattern },
  });
}

/**
 * JSON bodies: `application/json` only (415 otherwise), size-limited (413),
 * parsed strictly. A body-less POST is allowed where the route takes none.
 */
export function jsonBody(limit: number): RequestHandler[] {
  const parse = express.json({ limit, strict: true, type: 'application/json' });
  return [
    (req: Request, _res: Response, next: NextFunction) => {
      const hasBody = req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
      if (hasBody && !req.is('application/json'))
        throw unsupportedMediaType('unsupported_media_type', 'Send the body as application/json.');
      next();
    },
    parse,
  ];
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
