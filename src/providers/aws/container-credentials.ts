import { type ErrorRequestHandler, Router, type Request, type Response } from 'express';
import { BrokerError, type ErrorCode, fail } from '../../errors.ts';
import { fromHttpError, fromZod, sendProblem } from '../../http/problem.ts';
import { credentialRequestSchema, taskRefSchema } from '../../http/schemas.ts';
import type { Logger } from '../../logger.ts';
import { isRedisUnavailable, REDIS_RETRY_AFTER_S } from '../../redis/unavailable.ts';

/** What the core supplies: its normal credential path (`POST /v1/credentials`) as a function. */
export interface ContainerCredentialsDeps {
  /**
   * Issues a credential for `body` on behalf of the workload identity `identityToken` (a JWT): verifies it first,
   * then judges the role as POST /v1/credentials does (the task's agent, a granted role), and refuses a granted
   * role that is not an `aws` role (400 `not_an_aws_role`) before anything is issued, each refusal audited.
   */
  issue(
    identityToken: string,
    body: { taskId: string; role: string; scopes?: string[] },
  ): Promise<{ credentials?: Record<string, unknown> }>;
  logger?: Logger;
}

const ROLE = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * Errors are problems like on every /v1 route, with the `Code` and `Message` members the SDK's `fromHttp` reads
 * (it parses any 4xx body as JSON); the status decides retry vs fail.
 */
function sendError(res: Response, err: BrokerError): void {
  res.set('Cache-Control', 'no-store');
  sendProblem(res, err, { Code: err.code, Message: err.message });
}

const refuse = (res: Response, code: ErrorCode, message: string) => sendError(res, fail(code, message));

/** `?scope=a&scope=b` or `?scope=a b`; undefined = all of the grant's scopes. */
function scopesFrom(req: Request): string[] | undefined {
  const raw = req.query.scope;
  if (raw === undefined) return undefined;
  const list = (Array.isArray(raw) ? raw : [raw]).filter((s): s is string => typeof s === 'string');
  return list.flatMap((s) => s.split(' ')).filter((s) => s.length > 0);
}

/**
 * The container-credentials endpoint AWS SDKs poll
 * (`AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:<port>/v1/aws/container-credentials/<task>/<role>`,
 * with the workload JWT in `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`). The SDK
 * sends the file's content verbatim as `Authorization`, so both `<jwt>` and
 * `Bearer <jwt>` are accepted. Each poll is an ordinary credential request:
 * a new lease with the grant's TTL, same checks, same audit.
 */
export function containerCredentialsRouter(deps: ContainerCredentialsDeps): Router {
  const router = Router();
  router.get('/v1/aws/container-credentials/:taskId/:role', async (req: Request<{ taskId: string; role: string }>, res: Response) => {
    // Express hands HEAD to this GET route, body dropped: that issued a credential (an STS session, a lease, an issue
    // record) and threw the keys away. This GET is no read; no SDK sends HEAD: answered as a route the API does not have.
    if (req.method === 'HEAD') return refuse(res, 'route_not_found', 'No route HEAD here; AWS SDKs fetch credentials with GET.');
    const { taskId, role } = req.params;
    const auth = req.get('authorization')?.trim();
    if (!auth) return refuse(res, 'identity_missing', 'Set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE to a file holding the workload JWT.');
    const token = auth.replace(/^Bearer\s+/i, '');
    // Any task id the broker makes, sub-task ids (`<parent>~<name>`) included: the same schema as POST /v1/credentials.
    if (!taskRefSchema.safeParse(taskId).success || !ROLE.test(role)) return refuse(res, 'invalid_request', 'taskId or role is malformed.');
    // The role is judged by the core once the token is verified (`issue`), not here: answering `unknown_role` or
    // `not_an_aws_role` before that told anyone, token or not, which roles exist and which issue AWS keys, unaudited.
    const scopes = scopesFrom(req);
    // The body POST /v1/credentials would take, held to its schema: scopes well-formed, at most 100, none repeated
    // (a query of one granted scope a thousand times over made a lease and an issue record of them all).
    const body = credentialRequestSchema.safeParse({ taskId, role, ...(scopes ? { scopes } : {}) });
    if (!body.success) return sendError(res, fromZod(body.error));
    try {
      const { credentials: c } = await deps.issue(token, body.data);
      if (!c) return refuse(res, 'approval_pending', 'The credential is waiting for approval; retry once approved.');
      if (
        typeof c.AccessKeyId !== 'string' ||
        typeof c.SecretAccessKey !== 'string' ||
        typeof c.SessionToken !== 'string' ||
        typeof c.Expiration !== 'string'
      ) {
        throw new Error('an aws role answered without AWS credentials');
      }
      res
        .status(200)
        .set('Cache-Control', 'no-store')
        .json({ AccessKeyId: c.AccessKeyId, SecretAccessKey: c.SecretAccessKey, Token: c.SessionToken, Expiration: c.Expiration });
    } catch (err) {
      // A 429 keeps its Retry-After (sendProblem reads it from the error).
      if (err instanceof BrokerError) return sendError(res, err);
      // As everywhere (src/http/problem.ts): Redis out of reach is a 503 to retry, not a 500.
      if (isRedisUnavailable(err))
        return sendError(
          res,
          fail('not_ready', 'The broker cannot reach its data store right now; retry shortly.', { retryAfterSeconds: REDIS_RETRY_AFTER_S }),
        );
      deps.logger?.error({ err: (err as Error).message }, 'container credentials failed');
      refuse(res, 'internal_error', 'The broker failed to issue the credential.');
    }
  });
  // Express's own refusals on this route (a path that does not percent-decode) in the endpoint's shape too.
  router.use(((err, _req, res, next) => {
    const problem = err instanceof BrokerError ? err : fromHttpError(err as { status?: unknown });
    if (!problem || res.headersSent) return next(err);
    sendError(res, problem);
  }) as ErrorRequestHandler);
  return router;
}
