import express, { Router, type Request, type Response } from 'express';
import type { Deps } from '../../deps.ts';
import { BrokerError } from '../../errors.ts';
import type { Services } from '../services.ts';
import { bearerToken, refuseQuarantined } from '../middleware.ts';
import { scopeSchema, roleNameSchema } from '../../config/common.ts';
import { taskRefSchema } from '../schemas.ts';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const SUBJECT_TYPES = new Set(['urn:ietf:params:oauth:token-type:jwt', 'urn:ietf:params:oauth:token-type:id_token']);
const ISSUABLE_TYPES = new Set(['urn:ietf:params:oauth:token-type:access_token', 'urn:ietf:params:oauth:token-type:jwt']);

/** An RFC 6749 section 5.2 error. */
class OAuthError extends Error {
  readonly error: string;
  readonly status: number;
  readonly extra: Record<string, unknown>;
  constructor(error: string, description: string, status = 400, extra: Record<string, unknown> = {}) {
    super(description);
    this.error = error;
    this.status = status;
    this.extra = extra;
  }
}

function sendOAuthError(res: Response, e: OAuthError): void {
  res.status(e.status).setHeader('Cache-Control', 'no-store');
  res.json({ error: e.error, error_description: e.message, ...e.extra });
}

/** Maps the broker's stable codes to the RFC 6749 / 8693 error vocabulary. */
function toOAuth(err: BrokerError): OAuthError {
  switch (err.code) {
    case 'identity_missing':
    case 'identity_invalid':
    case 'identity_expired':
    case 'identity_replayed':
      return new OAuthError('invalid_grant', 'The subject_token is not a valid workload identity.');
    case 'role_not_granted':
      return new OAuthError('invalid_target', err.message);
    case 'scope_not_granted':
      return new OAuthError('invalid_scope', err.message);
    case 'not_task_agent':
    case 'identity_quarantined':
    case 'policy_denied':
    case 'approval_rejected':
    case 'approval_expired':
      return new OAuthError('unauthorized_client', err.message);
    default:
      if (err.status >= 500)
        return new OAuthError(err.status === 503 ? 'temporarily_unavailable' : 'server_error', err.message, err.status);
      return new OAuthError('invalid_request', err.message);
  }
}

/** One value per parameter (RFC 6749 section 3.2: parameters must not repeat). */
function param(body: Record<string, unknown>, name: string): string | undefined {
  const v = body[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new OAuthError('invalid_request', `Parameter ${name} must appear once.`);
  return v;
}

function formBody(limit: number) {
  const parse = express.urlencoded({ extended: false, limit, type: 'application/x-www-form-urlencoded', parameterLimit: 50 });
  return [
    (req: Request, res: Response, next: () => void) => {
      if (!req.is('application/x-www-form-urlencoded')) {
        return sendOAuthError(res, new OAuthError('invalid_request', 'Send the request as application/x-www-form-urlencoded.', 415));
      }
      next();
    },
    parse,
  ];
}

/** POST /v1/token (RFC 8693), POST /v1/introspect (RFC 7662). */
export function oauthRoutes(deps: Deps, s: Services): Router {
  const r = Router();
  const limit = deps.config.server.bodyLimitBytes;

  r.post('/v1/token', ...formBody(limit), async (req, res) => {
    try {
      const b = (req.body ?? {}) as Record<string, unknown>;
      const grant = param(b, 'grant_type');
      if (grant !== TOKEN_EXCHANGE)
        throw new OAuthError(
          grant ? 'unsupported_grant_type' : 'invalid_request',
          grant ? `Only ${TOKEN_EXCHANGE} is supported.` : 'grant_type is required.',
        );
      const subject = param(b, 'subject_token');
      const subjectType = param(b, 'subject_token_type');
      if (!subject) throw new OAuthError('invalid_request', 'subject_token is required.');
      if (!subjectType || !SUBJECT_TYPES.has(subjectType))
        throw new OAuthError('invalid_request', 'subject_token_type must be urn:ietf:params:oauth:token-type:jwt.');
      if (b.actor_token !== undefined || b.actor_token_type !== undefined)
        throw new OAuthError('invalid_request', 'actor_token is not supported; delegate with a sub-task.');
      const requested = param(b, 'requested_token_type');
      if (requested !== undefined && !ISSUABLE_TYPES.has(requested))
        throw new OAuthError('invalid_request', 'requested_token_type must be an access token.');
      const audience = param(b, 'audience');
      if (!audience) throw new OAuthError('invalid_target', 'audience (a jwt role name) is required.');
      if (!roleNameSchema.safeParse(audience).success || deps.config.roles[audience]?.provider !== 'jwt')
        throw new OAuthError('invalid_target', `"${audience.slice(0, 64)}" is not a jwt role.`);
      const taskId = param(b, 'task_id');
      if (!taskId || !taskRefSchema.safeParse(taskId).success) throw new OAuthError('invalid_request', 'task_id is required (a task id).');
      const scopeParam = param(b, 'scope');
      const scopes = scopeParam === undefined ? undefined : scopeParam.split(' ').filter(Boolean);
      if (scopes && (!scopes.every((x) => scopeSchema.safeParse(x).success) || new Set(scopes).size !== scopes.length))
        throw new OAuthError('invalid_scope', 'scope is malformed.');
      const who = await deps.verifier.verify(subject);
      await refuseQuarantined(deps, who);
      const out = await s.credentials.request(who, { taskId, role: audience, ...(scopes ? { scopes } : {}) });
      if ('approvalId' in out)
        throw new OAuthError('authorization_pending', 'This role needs an approval; retry once it is approved.', 400, {
          approval_id: out.approvalId,
        });
      const c = out.credentials as { access_token: string; expires_in: number; scope: string };
      res.setHeader('Cache-Control', 'no-store');
      res.json({
        access_token: c.access_token,
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
        token_type: 'Bearer',
        expires_in: c.expires_in,
        scope: c.scope,
      });
    } catch (err) {
      if (err instanceof OAuthError) return sendOAuthError(res, err);
      if (err instanceof BrokerError) return sendOAuthError(res, toOAuth(err));
      throw err;
    }
  });

  r.post('/v1/introspect', ...formBody(limit), async (req, res) => {
    try {
      await deps.verifier.verify(bearerToken(req));
    } catch {
      res.setHeader('WWW-Authenticate', 'Bearer error="invalid_token"');
      return sendOAuthError(
        res,
        new OAuthError('invalid_client', 'A workload identity (Authorization: Bearer) is required to introspect.', 401),
      );
    }
    const b = (req.body ?? {}) as Record<string, unknown>;
    let token: string | undefined;
    try {
      token = param(b, 'token');
    } catch (err) {
      return sendOAuthError(res, err as OAuthError);
    }
    if (!token) return sendOAuthError(res, new OAuthError('invalid_request', 'token is required.'));
    res.setHeader('Cache-Control', 'no-store');
    res.json(await s.leases.introspect(token));
  });
  return r;
}
