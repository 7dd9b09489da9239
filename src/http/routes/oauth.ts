import express, { type ErrorRequestHandler, Router, type RequestHandler, type Response } from 'express';
import type { LoadedConfig } from '../../config/load.ts';
import type { Deps } from '../../deps.ts';
import { BrokerError } from '../../errors.ts';
import { denial } from '../../authz.ts';
import type { WorkloadIdentity } from '../../identity/types.ts';
import type { Services } from '../services.ts';
import { authenticate, bearerToken } from '../middleware.ts';
import { bearerChallenge } from '../problem.ts';
import { sendSlowDown } from '../rate-limit.ts';
import { oauthDescription } from '../oauth-text.ts';
import { scopeSchema, roleNameSchema } from '../../config/common.ts';
import { taskRefSchema } from '../schemas.ts';
import { clip } from '../../identity/log-safe.ts';
import { isRedisUnavailable, REDIS_RETRY_AFTER_S } from '../../redis/unavailable.ts';

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

/** RFC 6749 5.1: token responses are never cached; `Pragma` for HTTP/1.0 caches. */
function noStore(res: Response): void {
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Pragma', 'no-cache');
}

function sendOAuthError(res: Response, e: OAuthError): void {
  noStore(res);
  res.status(e.status).json({ error: e.error, error_description: oauthDescription(e.message), ...e.extra });
}

/** Maps the broker's stable codes to the RFC 6749 / 8693 error vocabulary. */
function toOAuth(err: BrokerError): OAuthError {
  switch (err.code) {
    case 'identity_missing':
    case 'identity_invalid':
    case 'identity_expired':
    case 'identity_replayed':
      return new OAuthError('invalid_grant', `The subject_token is not a valid workload identity: ${err.message}`);
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
function param(body: Record<string, unknown>, name: string, error = 'invalid_request'): string | undefined {
  if (!Object.hasOwn(body, name)) return undefined;
  const v = body[name];
  if (typeof v !== 'string') throw new OAuthError(error, `Parameter ${name} must appear once.`);
  return v;
}

/** The form parser's failures, as RFC 6749 errors rather than problems (or a 500). */
function formParseError(err: { type?: string; status?: number }): OAuthError {
  switch (err.type) {
    case 'entity.too.large':
      return new OAuthError('invalid_request', 'The request body is too large.', 413);
    case 'parameters.too.many':
      return new OAuthError('invalid_request', `More than ${MAX_FORM_FIELDS} form fields.`);
    case 'charset.unsupported':
    case 'encoding.unsupported':
      return new OAuthError('invalid_request', 'Unsupported body charset or encoding.', 415);
    default:
      return new OAuthError('invalid_request', 'The request body could not be read.');
  }
}

const FORM = 'application/x-www-form-urlencoded';

/** No OAuth request here has anywhere near this many fields; more is refused before it is parsed further. */
const MAX_FORM_FIELDS = 50;

function formBody(limit: number): RequestHandler[] {
  const parse = express.urlencoded({ extended: false, limit, type: FORM, parameterLimit: MAX_FORM_FIELDS });
  return [
    (req, res, next) => {
      // req.is() is null without a body (HTTP/1.0, `curl -X POST`): then the declared type is what counts, and
      // a declared form with nothing in it goes on to say which parameter is missing.
      const declared = req.is(FORM) ?? (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase() === FORM;
      if (!declared) {
        return sendOAuthError(res, new OAuthError('invalid_request', 'Send the request as application/x-www-form-urlencoded.', 415));
      }
      parse(req, res, (err?: unknown) => {
        if (err) return sendOAuthError(res, formParseError(err as { type?: string }));
        next();
      });
    },
  ];
}

/**
 * The jwt role a token exchange asks for: `audience` (a role name) and/or
 * RFC 8707 `resource` (the role's audience URI, which must name exactly one
 * jwt role). With both, they must name the same role.
 */
function targetRole(roles: LoadedConfig['roles'], audience: string | undefined, resource: string | undefined): string {
  if (audience === undefined && resource === undefined)
    throw new OAuthError('invalid_target', 'audience (a jwt role name) or resource (its audience URI) is required.');
  let role: string | undefined;
  if (audience !== undefined) {
    if (!roleNameSchema.safeParse(audience).success || !Object.hasOwn(roles, audience) || roles[audience]!.provider !== 'jwt')
      throw new OAuthError('invalid_target', `"${audience.slice(0, 64)}" is not a jwt role.`);
    role = audience;
  }
  if (resource !== undefined) {
    const named = Object.entries(roles)
      .filter(([, r]) => r.provider === 'jwt' && r.audience === resource)
      .map(([name]) => name);
    if (named.length !== 1)
      throw new OAuthError(
        'invalid_target',
        named.length === 0 ? 'resource is not the audience of a jwt role.' : 'resource is the audience of more than one role.',
      );
    if (role !== undefined && role !== named[0]) throw new OAuthError('invalid_target', 'audience and resource name different roles.');
    role = named[0]!;
  }
  return role!;
}

/**
 * The target role, or invalid_target recorded as the denial it is: what POST /v1/credentials answers
 * 403 role_not_granted (audited), so an agent cannot probe role names and audiences unseen. Under the
 * task only when the caller is its agent: a stranger's refusals do not go into another task's evidence.
 */
async function refusedTarget(deps: Deps, who: WorkloadIdentity, taskId: string, audience: string | undefined, pick: () => string) {
  try {
    return pick();
  } catch (err) {
    if (!(err instanceof OAuthError)) throw err;
    const task = await deps.tasks.fixed(taskId, (t) => t.agent === who.id);
    const named = audience && roleNameSchema.safeParse(audience).success ? audience : undefined;
    await denial(deps, who, new BrokerError('role_not_granted', err.message), {
      action: 'credential.deny',
      ...(task && task.agent === who.id ? { taskId } : {}),
      ...(named ? { role: named } : {}),
      detail: { oauthError: 'invalid_target' },
    });
    throw err;
  }
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
      const taskId = param(b, 'task_id');
      if (!taskId || !taskRefSchema.safeParse(taskId).success) throw new OAuthError('invalid_request', 'task_id is required (a task id).');
      const scopeParam = param(b, 'scope');
      const scopes = scopeParam === undefined ? undefined : scopeParam.split(' ').filter(Boolean);
      if (scopes && (!scopes.every((x) => scopeSchema.safeParse(x).success) || new Set(scopes).size !== scopes.length))
        throw new OAuthError('invalid_scope', 'scope is malformed.');
      // Which roles exist is said only to a verified caller, and only it spends an identity budget.
      const who = await authenticate(deps, req, res, subject);
      // RFC 8693 allows audience and resource to repeat; asking for more than one target is invalid_target (its 2.2.2),
      // read here so that it is audited as any other refused target.
      const audience = typeof b.audience === 'string' ? b.audience : undefined;
      const role = await refusedTarget(deps, who, taskId, audience, () =>
        targetRole(deps.config.roles, param(b, 'audience', 'invalid_target') || undefined, param(b, 'resource', 'invalid_target')),
      );
      const out = await s.credentials.request(who, { taskId, role, ...(scopes ? { scopes } : {}) });
      if ('approvalId' in out)
        throw new OAuthError('authorization_pending', 'This role needs an approval; retry once it is approved.', 400, {
          approval_id: out.approvalId,
        });
      const c = out.credentials as { access_token: string; expires_in: number; scope: string };
      noStore(res);
      res.json({
        access_token: c.access_token,
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
        token_type: 'Bearer',
        expires_in: c.expires_in,
        scope: c.scope,
      });
    } catch (err) {
      // Any limit (this identity's rate, a task's lease ceiling) is slow_down here (contract section 2).
      if (err instanceof BrokerError && err.status === 429) return sendSlowDown(res, err);
      if (err instanceof OAuthError) return sendOAuthError(res, err);
      if (err instanceof BrokerError) return sendOAuthError(res, toOAuth(err));
      throw err;
    }
  });

  // The caller is authenticated before its body is parsed, as on every other /v1 route.
  r.post(
    '/v1/introspect',
    async (req, res, next) => {
      try {
        await authenticate(deps, req, res, bearerToken(req), 'introspect');
      } catch (err) {
        if (!(err instanceof BrokerError)) throw err;
        if (err.status === 429) return sendSlowDown(res, err);
        // Contract: every /v1 call of a quarantined identity is 403 identity_quarantined; only /v1/token
        // (where the identity is the subject_token) answers 400 unauthorized_client. Still OAuth-shaped here.
        if (err.code === 'identity_quarantined')
          return sendOAuthError(res, new OAuthError('access_denied', err.message, 403, { code: 'identity_quarantined' }));
        if (err.status !== 401) return sendOAuthError(res, toOAuth(err));
        res.setHeader('WWW-Authenticate', bearerChallenge(err.code));
        return sendOAuthError(
          res,
          new OAuthError('invalid_client', `A workload identity (Authorization: Bearer) is required to introspect: ${err.message}`, 401),
        );
      }
      next();
    },
    ...formBody(limit),
    async (req, res) => {
      const b = (req.body ?? {}) as Record<string, unknown>;
      let token: string | undefined;
      try {
        token = param(b, 'token');
        // Not used (the broker introspects only its own access tokens), but a parameter appears once (RFC 6749 3.2).
        param(b, 'token_type_hint');
      } catch (err) {
        return sendOAuthError(res, err as OAuthError);
      }
      if (!token) return sendOAuthError(res, new OAuthError('invalid_request', 'token is required.'));
      noStore(res);
      res.json(await s.leases.introspect(token));
    },
  );

  // Whatever else fails on these two endpoints (Redis unreachable, a bug) is an RFC 6749 error too, never a problem.
  r.use(((err, req, res, next) => {
    if (res.headersSent) return next(err);
    if (err instanceof BrokerError) return err.status === 429 ? sendSlowDown(res, err) : sendOAuthError(res, toOAuth(err));
    if (isRedisUnavailable(err)) {
      res.setHeader('Retry-After', String(REDIS_RETRY_AFTER_S));
      return sendOAuthError(
        res,
        new OAuthError('temporarily_unavailable', 'The broker cannot reach its data store right now; retry shortly.', 503),
      );
    }
    deps.logger.error({ err, path: clip(req.path, 200) }, 'unhandled error');
    sendOAuthError(res, new OAuthError('server_error', 'The broker failed to handle the request.', 500));
  }) as ErrorRequestHandler);
  return r;
}
