import { AssumeRoleCommand } from '@aws-sdk/client-sts';
import { upstreamFailed } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import type { IssueRequest, IssueResult } from '../types.ts';
import type { AwsClients } from './clients.ts';
import type { AwsRoleConfig, AwsSettings } from './config.ts';
import type { RoleInfoCache } from './role-info.ts';
import { sessionNameFor, sourceIdentityFor, tagValue } from './session-name.ts';
import { sessionPolicy } from './session-policy.ts';
import { awsErrorCode, classify } from './upstream.ts';

/** STS AssumeRole bounds on DurationSeconds. */
export const STS_MIN_DURATION = 900;
const STS_MAX_DURATION = 43_200;

export interface IssueDeps {
  settings: AwsSettings;
  clients: AwsClients;
  roles: RoleInfoCache;
  logger: Logger;
}

/**
 * One credential: STS AssumeRole from the broker's own identity, scoped down
 * by a session policy built from the scopes, named after the lease, tagged
 * with task/tenant/agent. The lease keeps { roleArn, roleId, sessionName,
 * expiresAt }, which is all revoke needs; the keys go only to the caller.
 */
export async function issueAwsCredential(deps: IssueDeps, req: IssueRequest<AwsRoleConfig>): Promise<IssueResult> {
  const { settings, clients, logger } = deps;
  const policy = sessionPolicy(req.scopes, req.role.resources);
  const roleArn = req.role.roleArn;
  const info = await deps.roles.get(roleArn);
  // The core clamps to the configured role max; the IAM role's own MaxSessionDuration may be lower.
  const maxDuration = Math.min(STS_MAX_DURATION, info?.maxSessionDuration ?? STS_MAX_DURATION);
  const duration = Math.max(STS_MIN_DURATION, Math.min(req.ttlSeconds, maxDuration));
  const sessionName = sessionNameFor(req.leaseId);
  const tags = [
    { Key: 'task', Value: tagValue(req.task.taskId) },
    { Key: 'tenant', Value: tagValue(req.task.tenant) },
    { Key: 'agent', Value: tagValue(req.agent) },
  ];
  const input = {
    RoleArn: roleArn,
    RoleSessionName: sessionName,
    DurationSeconds: duration,
    Policy: policy,
    ...(settings.sessionTags ? { Tags: tags, TransitiveTagKeys: tags.map((t) => t.Key) } : {}),
    ...(settings.sourceIdentity ? { SourceIdentity: sourceIdentityFor(req.agent) } : {}),
    ...(req.role.externalId ? { ExternalId: req.role.externalId } : {}),
  };
  let out;
  try {
    out = await clients.run((c) => c.sts.send(new AssumeRoleCommand(input)));
  } catch (err) {
    throw issueError(err, roleArn, req.leaseId, logger);
  }
  const c = out.Credentials;
  const assumedRoleId = out.AssumedRoleUser?.AssumedRoleId;
  if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration || !assumedRoleId) {
    throw upstreamFailed('upstream_error', 'STS returned an incomplete AssumeRole response.');
  }
  const expiresAt = c.Expiration.getTime();
  logger.info(
    { leaseId: req.leaseId, roleArn, sessionName, durationSeconds: duration, requestId: out.$metadata.requestId },
    'aws session issued',
  );
  return {
    credentials: {
      AccessKeyId: c.AccessKeyId,
      SecretAccessKey: c.SecretAccessKey,
      SessionToken: c.SessionToken,
      Expiration: c.Expiration.toISOString(),
    },
    handle: { roleArn, roleId: assumedRoleId.split(':')[0]!, sessionName, expiresAt },
    expiresAt,
  };
}

/** Maps an AssumeRole failure to a stable, client-safe code; the AWS message goes to the log only. */
function issueError(err: unknown, roleArn: string, leaseId: string, logger: Logger): Error {
  const kind = classify(err);
  const code = awsErrorCode(err);
  logger.warn(
    { leaseId, roleArn, code, kind, requestId: (err as { $metadata?: { requestId?: string } }).$metadata?.requestId },
    'sts AssumeRole failed',
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
