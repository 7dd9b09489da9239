import type { LeaseRecord } from '../../leases/types.ts';
import type { IssueRequest, IssueResult, Provider, ProviderContext, RotationResult } from '../types.ts';
import { GetCallerIdentityCommand } from '@aws-sdk/client-sts';
import { AwsClients } from './clients.ts';
import type { AwsRoleConfig, AwsSettings } from './config.ts';
import { DenyList, type DenyFallbackEvent } from './deny-list.ts';
import { issueAwsCredential, STS_MIN_DURATION } from './issue.ts';
import { RoleInfoCache } from './role-info.ts';
import { rotateAccessKey } from './rotate.ts';
import { awsErrorCode } from './upstream.ts';

/** Extras for embedding and tests; the registry passes none. */
export interface AwsProviderOptions {
  /** Time source for deny-list pruning (default Date.now). */
  clock?: () => number;
  /** Told when a role's deny list overflows into a TokenIssueTime cut-off (wire it to the audit log). */
  onDenyFallback?: (e: DenyFallbackEvent) => void | Promise<void>;
}

/** The AWS provider, with the deny list exposed for tests and ops tooling. */
export type AwsProvider = Provider<AwsRoleConfig> & { readonly denyList: DenyList };

const READY_CACHE_MS = 30_000;

/** Reads the revoke handle off a lease; undefined when issuing never completed. */
function handleOf(lease: LeaseRecord): { roleArn: string; roleId: string; sessionName: string; expiresAt: number } | undefined {
  const { roleArn, roleId, sessionName, expiresAt } = lease.handle;
  if (typeof roleArn !== 'string' || typeof roleId !== 'string' || typeof sessionName !== 'string') return undefined;
  return { roleArn, roleId, sessionName, expiresAt: typeof expiresAt === 'number' ? expiresAt : lease.expiresAt };
}

/**
 * AWS STS provider: AssumeRole per credential, revocation by an inline Deny
 * on the role (`revocation: iam-deny`), rotation of the broker's own access
 * key. See docs/providers/aws.md.
 */
export function createAwsProvider(settings: AwsSettings, ctx: ProviderContext, opts: AwsProviderOptions = {}): AwsProvider {
  const logger = ctx.logger.child({ provider: 'aws' });
  const clock = opts.clock ?? Date.now;
  const clients = new AwsClients(settings);
  const roles = new RoleInfoCache(clients, logger);
  const denyList = new DenyList({
    settings,
    clients,
    roles,
    redis: ctx.redis,
    keyPrefix: ctx.keyPrefix,
    logger,
    clock,
    ...(opts.onDenyFallback ? { onFallback: opts.onDenyFallback } : {}),
  });
  let readyUntil = 0;

  const provider: AwsProvider = {
    kind: 'aws',
    minTtlSeconds: STS_MIN_DURATION,
    upstream: true,
    denyList,
    revocable: () => settings.revocation === 'iam-deny',

    issue: (req: IssueRequest<AwsRoleConfig>): Promise<IssueResult> => issueAwsCredential({ settings, clients, roles, logger }, req),

    async revoke(lease) {
      if (settings.revocation !== 'iam-deny') return; // honest: revocable=false, the credential lives until it expires
      const h = handleOf(lease);
      if (!h) return; // never issued upstream: nothing to cut off
      if (h.expiresAt <= clock()) return; // already expired on its own
      await denyList.deny(h.roleArn, `${h.roleId}:${h.sessionName}`, h.expiresAt);
      logger.info({ leaseId: lease.leaseId, roleArn: h.roleArn, sessionName: h.sessionName }, 'aws session denied');
    },

    async expire(lease) {
      if (settings.revocation !== 'iam-deny') return;
      const h = handleOf(lease);
      if (!h) return;
      // Housekeeping only; the credential has expired upstream whatever happens here, and the next write prunes too.
      await denyList
        .prune(h.roleArn)
        .catch((err) => logger.warn({ roleArn: h.roleArn, code: awsErrorCode(err) }, 'pruning the aws deny list failed'));
    },

    async ready() {
      if (readyUntil > Date.now()) return true;
      try {
        await clients.current.sts.send(new GetCallerIdentityCommand({}));
        readyUntil = Date.now() + READY_CACHE_MS;
        return true;
      } catch (err) {
        logger.warn({ code: awsErrorCode(err) }, 'aws not ready');
        return false;
      }
    },

    async close() {
      clients.close();
    },
  };
  if (clients.rotatable) {
    provider.rotate = (distribute): Promise<RotationResult> => rotateAccessKey({ settings, clients, logger }, distribute);
    provider.useSecret = async (secret) => {
      const { accessKeyId, secretAccessKey } = secret;
      if (!accessKeyId || !secretAccessKey) throw new Error('aws secret needs accessKeyId and secretAccessKey');
      if (accessKeyId === clients.staticKeys?.accessKeyId) return;
      clients.use({ accessKeyId, secretAccessKey });
      logger.info({ accessKeyId }, 'switched to the rotated aws access key');
    };
  }
  return provider;
}
