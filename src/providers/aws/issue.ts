import { AssumeRoleCommand } from '@aws-sdk/client-sts';
import { upstreamFailed } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import type { IssueRequest, IssueResult } from '../types.ts';
import type { AwsClients } from './clients.ts';
import type { AwsRoleConfig, AwsSettings } from './config.ts';
import type { RoleInfoCache } from './role-info.ts';
import { sessionNameFor, sourceIdentityFor, tagValue, taskTagValue } from './session-name.ts';
import { sessionPolicy } from './session-policy.ts';
import { awsErrorCode, classify } from './upstream.ts';

/** STS AssumeRole bounds on DurationSeconds. */
export const STS_MIN_DURATION = 900;
const STS_MAX_DURATION = 43_200;
/** A credential may outlive its task by at most this much (beyond STS's 900 s minimum), so a task's sessions end by its deadline + 900 s. */
const TASK_OVERRUN_SECONDS = 60;

export interface IssueDeps {
  settings: AwsSettings;
  clients: AwsClients;
  roles: RoleInfoCache;
  logger: Logger;
  clock: () => number;
}

/**
 * The revoke handle of a lease: identifiers and instants, no secret.
 * - `sessionName` (`jit-<agent key>-<task key>-<leaseId>`) names exactly this session, known before STS is called;
 * - `taskTag` / `sourceIdentity`: the `task` tag and SourceIdentity the session carries (absent when not sent);
 * - `taskDeadline`: the task's deadline (no session of the task outlives it by more than 900 s);
 * - `expiresAt`: STS's Expiration, or before the call the latest it can be;
 * - `tokenIssuedAt`: the session's TokenIssueTime (Expiration - DurationSeconds), once STS has answered.
 */
export interface AwsHandle {
  roleArn: string;
  sessionName: string;
  expiresAt: number;
  taskDeadline?: number;
  taskTag?: string;
  sourceIdentity?: string;
  tokenIssuedAt?: number;
}

/** DurationSeconds before the IAM role's MaxSessionDuration: the TTL, within STS's bounds and the task's deadline. */
function plannedDuration(req: IssueRequest<AwsRoleConfig>, now: number): number {
  const left = Math.ceil((req.task.expiresAt - now) / 1000) + TASK_OVERRUN_SECONDS;
  return Math.max(STS_MIN_DURATION, Math.min(req.ttlSeconds, STS_MAX_DURATION, left));
}

/** The longest an AssumeRole call can take with our retries (and one retry after a key switch), plus time to start it. */
export function callAllowanceMs(settings: AwsSettings): number {
  return 2 * settings.maxAttempts * (settings.requestTimeoutMs + 5000) + 2000 + 60_000;
}

/** The parts of the handle that do not depend on STS's answer. */
function baseHandle(settings: AwsSettings, req: IssueRequest<AwsRoleConfig>): Omit<AwsHandle, 'expiresAt'> {
  return {
    roleArn: req.role.roleArn,
    sessionName: sessionNameFor(req.leaseId, req.agent, req.task.taskId),
    taskDeadline: req.task.expiresAt,
    ...(settings.sessionTags ? { taskTag: taskTagValue(req.task.taskId) } : {}),
    ...(settings.sourceIdentity ? { sourceIdentity: sourceIdentityFor(req.agent) } : {}),
  };
}

/**
 * What revoke needs, known before STS is called: the session name is derived
 * from the lease id, and `expiresAt` is the latest the session can expire if
 * STS is called now: the planned duration after the longest the call can take,
 * or after the configured orphan window (`orphanMs`) when that is longer, since
 * an answer within it is handed out.
 */
export function awsIntent(settings: AwsSettings, clock: () => number, req: IssueRequest<AwsRoleConfig>, orphanMs = 0): AwsHandle {
  const now = clock();
  return {
    ...baseHandle(settings, req),
    expiresAt: now + plannedDuration(req, now) * 1000 + Math.max(callAllowanceMs(settings), orphanMs),
  };
}

/**
 * One credential: STS AssumeRole from the broker's own identity, scoped down
 * by a session policy built from the scopes, named after the lease, tagged
 * with task/tenant/agent. The lease keeps the AwsHandle, which is all revoke
 * needs; the keys go only to the caller.
 */
export async function issueAwsCredential(deps: IssueDeps, req: IssueRequest<AwsRoleConfig>): Promise<IssueResult> {
  const { settings, clients, logger } = deps;
  // The deadline the recorded intent promised (a late call keeps it; see sessionPolicy).
  const planned = typeof req.intent?.expiresAt === 'number' ? req.intent.expiresAt : awsIntent(settings, deps.clock, req).expiresAt;
  // Never past the task's deadline either (on the broker's clock, hence the skew margin): a session that STS's
  // 900-s minimum lets outlive its task holds no permission once the task is over, even if IAM is unreachable
  // when the task ends and its deny cannot be written.
  const notAfter = Math.min(planned, req.task.expiresAt) + settings.clockSkewSeconds * 1000;
  const policy = sessionPolicy(req.scopes, req.role.resources, notAfter);
  const roleArn = req.role.roleArn;
  const base = baseHandle(settings, req);
  const info = await deps.roles.get(roleArn);
  // The core clamps to the configured role max; the IAM role's own MaxSessionDuration may be lower.
  const duration = Math.max(STS_MIN_DURATION, Math.min(plannedDuration(req, deps.clock()), info?.maxSessionDuration ?? STS_MAX_DURATION));
  const tags = [
    // One-to-one with the task id: revoking a task denies this tag.
    { Key: 'task', Value: taskTagValue(req.task.taskId) },
    // One-to-one too: an operator may grant by them (ABAC), so two tenants or agents never share a value.
    { Key: 'tenant', Value: tagValue(req.task.tenant) },
    { Key: 'agent', Value: tagValue(req.agent) },
  ];
  const input = {
    RoleArn: roleArn,
    RoleSessionName: base.sessionName,
    DurationSeconds: duration,
    Policy: policy,
    ...(settings.sessionTags ? { Tags: tags, TransitiveTagKeys: tags.map((t) => t.Key) } : {}),
    ...(base.sourceIdentity ? { SourceIdentity: base.sourceIdentity } : {}),
    ...(req.role.externalId ? { ExternalId: req.role.externalId } : {}),
  };
  let out;
  try {
    out = await clients.run((c) => c.sts.send(new AssumeRoleCommand(input)));
  } catch (err) {
    throw issueError(err, roleArn, req.leaseId, logger);
  }
  const c = out.Credentials;
  if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
    throw upstreamFailed('upstream_error', 'STS returned an incomplete AssumeRole response.');
  }
  const expiresAt = c.Expiration.getTime();
  logger.info(
    { leaseId: req.leaseId, roleArn, sessionName: base.sessionName, durationSeconds: duration, requestId: out.$metadata.requestId },
    'aws session issued',
  );
  const handle: AwsHandle = { ...base, expiresAt, tokenIssuedAt: expiresAt - duration * 1000 };
  // The lease ends on the broker's clock, Expiration is on AWS's: with AWS's clock behind, the lease would
  // end (and a task's end revoke nothing) while the session still works. STS made the session before its
  // answer arrived and gives exactly DurationSeconds, so it is gone by now + duration here, whatever
  // AWS's clock says (+1 s: Expiration is to the second).
  const leaseExpiresAt = Math.max(expiresAt, deps.clock() + duration * 1000 + 1000);
  return {
    credentials: {
      AccessKeyId: c.AccessKeyId,
      SecretAccessKey: c.SecretAccessKey,
      SessionToken: c.SessionToken,
      Expiration: c.Expiration.toISOString(),
    },
    handle: { ...handle },
    expiresAt: leaseExpiresAt,
  };
}

/**
 * Maps an STS failure on the way to a credential (AssumeRole, or the GetCallerIdentity that `revocable` needs)
 * to a stable, client-safe code; the AWS message goes to the log only.
 */
export function issueError(err: unknown, roleArn: string, leaseId: string | undefined, logger: Logger, call = 'AssumeRole'): Error {
  const kind = classify(err);
  const code = awsErrorCode(err);
  logger.warn(
    { leaseId, roleArn, code, kind, requestId: (err as { $metadata?: { requestId?: string } }).$metadata?.requestId },
    `sts ${call} failed`,
  );
  const opts = { cause: err };
  switch (kind) {
    case 'denied':
      return upstreamFailed('upstream_denied', 'AWS STS refused to assume the role for this credential.', opts);
    case 'rejected':
      return upstreamFailed('upstream_rejected', 'AWS STS rejected the request for this credential.', opts);
    case 'throttled':
      return upstreamFailed('upstream_throttled', 'AWS STS is throttling requests; try again shortly.', opts);
    case 'unavailable':
      return upstreamFailed('upstream_unavailable', 'AWS STS is unavailable; try again shortly.', opts);
    case 'auth':
      return upstreamFailed('upstream_auth_failed', "The broker's own AWS credentials were refused.", opts);
    default:
      return upstreamFailed('upstream_error', 'AWS STS failed to issue the credential.', opts);
  }
}
