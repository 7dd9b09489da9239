import { performance } from 'node:perf_hooks';
import type { LeaseRecord } from '../../leases/types.ts';
import type { IssueIntent, IssueRequest, IssueResult, Provider, ProviderContext, RevokeContext, RotationResult } from '../types.ts';
import { GetCallerIdentityCommand } from '@aws-sdk/client-sts';
import { AwsClients } from './clients.ts';
import type { AwsRoleConfig, AwsSettings } from './config.ts';
import { DenyList, type DenyFallbackEvent, type DenyFoldEvent, type DenyUnit } from './deny-list.ts';
import { MAX_SESSION_MS } from './deny-policy.ts';
import { type AwsHandle, awsIntent, callAllowanceMs, issueAwsCredential, issueError, STS_MIN_DURATION } from './issue.ts';
import { RoleInfoCache } from './role-info.ts';
import { rotateAccessKey } from './rotate.ts';
import { sessionPolicy } from './session-policy.ts';
import { awsErrorCode, classify } from './upstream.ts';

/** Extras for embedding and tests; the registry passes `onDenyFallback` and `onDenyFold`. */
export interface AwsProviderOptions {
  /** Told when a role's deny list overflows into a role-wide TokenIssueTime cut-off (wire it to the audit log). */
  onDenyFallback?: (e: DenyFallbackEvent) => void | Promise<void>;
  /** Told when a role's deny list folds one task's or agent's revoked sessions into one entry (wire it to the audit log). */
  onDenyFold?: (e: DenyFoldEvent) => void | Promise<void>;
}

/** The AWS provider, with the deny list exposed for tests and ops tooling. */
export type AwsProvider = Provider<AwsRoleConfig> & {
  readonly denyList: DenyList;
  intent(req: IssueRequest<AwsRoleConfig>, opts?: { orphanMs?: number }): IssueIntent;
};

const READY_CACHE_MS = 30_000;

/** Reads the revoke handle off a lease (from `intent` or `issue`, or an older version's); undefined when nothing was planned. */
function handleOf(lease: LeaseRecord): AwsHandle | undefined {
  const h = lease.handle;
  const str = (v: unknown) => (typeof v === 'string' && v.length > 0 ? v : undefined);
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
  const roleArn = str(h.roleArn);
  const sessionName = str(h.sessionName);
  if (!roleArn || !sessionName) return undefined;
  const out: AwsHandle = { roleArn, sessionName, expiresAt: num(h.expiresAt) ?? lease.expiresAt };
  const taskDeadline = num(h.taskDeadline);
  const taskTag = str(h.taskTag);
  const sourceIdentity = str(h.sourceIdentity);
  const tokenIssuedAt = num(h.tokenIssuedAt);
  if (taskDeadline !== undefined) out.taskDeadline = taskDeadline;
  if (taskTag !== undefined) out.taskTag = taskTag;
  if (sourceIdentity !== undefined) out.sourceIdentity = sourceIdentity;
  if (tokenIssuedAt !== undefined) out.tokenIssuedAt = tokenIssuedAt;
  return out;
}

/**
 * The unit of revocation for a reason: a whole task when the task ended (one
 * statement however many sessions it had), the agent's sessions up to now
 * when an admin stopped it (the kill switch, quarantining it; issued before the
 * revocation was asked for), else the one session (an admin's DELETE of one
 * lease included). Without the tag or the
 * SourceIdentity on the session (disabled in settings), the session alone.
 */
function unitFor({ reason, adminScope, requestedAt }: RevokeContext, h: AwsHandle, now: number): DenyUnit {
  const taskEnded = reason === 'task_completed' || reason === 'task_expired' || (reason === 'revoked_by_admin' && adminScope === 'task');
  if (taskEnded && h.taskTag !== undefined) {
    // No session of the task outlives its deadline by more than STS's minimum, nor anything issued by now by more than 12 h.
    const bound = Math.min((h.taskDeadline ?? Number.POSITIVE_INFINITY) + STS_MIN_DURATION * 1000, now + MAX_SESSION_MS);
    return { kind: 'task', until: bound };
  }
  if (reason === 'revoked_by_admin' && adminScope === 'agent' && h.sourceIdentity !== undefined && h.tokenIssuedAt !== undefined)
    return { kind: 'agent', at: Math.min(requestedAt ?? now, now) };
  return { kind: 'session' };
}

/**
 * AWS STS provider: AssumeRole per credential, revocation by an inline Deny
 * on the role (`revocation: iam-deny`), rotation of the broker's own access
 * key. See docs/providers/aws.md.
 */
export function createAwsProvider(settings: AwsSettings, ctx: ProviderContext, opts: AwsProviderOptions = {}): AwsProvider {
  const logger = ctx.logger.child({ provider: 'aws' });
  // Decisions about expiry are shared by every worker: on the broker's Redis-time estimate, not this process's clock.
  const clock = ctx.clock ?? Date.now;
  const skewMs = settings.clockSkewSeconds * 1000;
  const clients = new AwsClients(settings);
  const roles = new RoleInfoCache(clients, logger);
  const denyList = new DenyList({
    settings,
    clients,
    redis: ctx.redis,
    keyPrefix: ctx.keyPrefix,
    logger,
    clock,
    ...(ctx.audit ? { audit: ctx.audit } : {}),
    ...(opts.onDenyFallback ? { onFallback: opts.onDenyFallback } : {}),
    ...(opts.onDenyFold ? { onFold: opts.onDenyFold } : {}),
  });
  // Until when a good GetCallerIdentity answers ready() (performance.now()). Monotonic: with Date.now(), a wall
  // clock stepped back an hour kept /readyz saying this instance's credentials work for that hour after AWS
  // refused them (test/providers/aws/caches-clock-step.test.ts).
  let readyUntil = Number.NEGATIVE_INFINITY;
  let refused = false;

  const prune = (roleArn: string) =>
    // Housekeeping only: the credential has expired upstream whatever happens here, and every write prunes too.
    denyList.prune(roleArn).catch((err) => logger.warn({ roleArn, code: awsErrorCode(err) }, 'pruning the aws deny list failed'));

  const provider: AwsProvider = {
    kind: 'aws',
    minTtlSeconds: STS_MIN_DURATION,
    upstream: true,
    denyList,
    // A role of another account than the broker's credentials': IAM cannot deny its sessions from here. The account
    // is asked (once per set of keys) before the first credential: taken for the role's own while unknown, a
    // cross-account role's first sessions were issued `revocable: true` and could never be denied
    // (test/blackbox/aws-cross-account.test.ts). STS failing to answer fails the request (502), as AssumeRole would.
    async revocable(role) {
      if (settings.revocation !== 'iam-deny') return false;
      try {
        return (await clients.ownsRole(role.roleArn)).owns;
      } catch (err) {
        throw issueError(err, role.roleArn, undefined, logger, 'GetCallerIdentity');
      }
    },

    intent(req, opts = {}) {
      const handle = awsIntent(settings, clock, req, opts.orphanMs);
      // A request that cannot be issued fails here, before anything is recorded.
      sessionPolicy(req.scopes, req.role.resources, handle.expiresAt + skewMs);
      // The orphan window: once the longest the STS call can take has passed, an unanswered issuance is revoked by its session name.
      return { handle: { ...handle }, orphanMs: callAllowanceMs(settings) };
    },

    issue: (req: IssueRequest<AwsRoleConfig>): Promise<IssueResult> => issueAwsCredential({ settings, clients, roles, logger, clock }, req),

    async revoke(lease, _role, ctx) {
      // Honest: issued `revocable: false`, the credential lives until it expires. A lease issued `revocable: true`
      // before an operator switched to `revocation: none` was promised its deny: without it, it ended `revoked`
      // while the session worked on (test/blackbox/aws-moved.test.ts).
      if (settings.revocation !== 'iam-deny' && !lease.revocable) return;
      const h = handleOf(lease);
      if (!h) return; // nothing was ever asked of STS
      const now = clock();
      if (h.expiresAt + skewMs <= now) return; // expired on its own, even by a clock behind AWS's
      if (ctx.reason === 'ttl_expired') {
        await prune(h.roleArn); // its TTL is the session's Expiration: nothing left to cut off
        return;
      }
      const unit = unitFor(ctx, h, now);
      const session = {
        userId: `*:${h.sessionName}`,
        // An interrupted issuance's session may be made late, valid until its session policy's deadline
        // (expiresAt + skew by AWS's clock): the deny lasts as long, whichever way the clocks differ.
        expiresAt: ctx.reason === 'issuance_interrupted' ? h.expiresAt + skewMs : h.expiresAt,
        taskTag: h.taskTag,
        sourceIdentity: h.sourceIdentity,
        tokenIssuedAt: h.tokenIssuedAt,
      };
      const outcome = await denyList.deny(h.roleArn, session, unit, { agent: lease.agent, taskId: lease.taskId });
      logger.info(
        { leaseId: lease.leaseId, roleArn: h.roleArn, sessionName: h.sessionName, reason: ctx.reason, unit: unit.kind, outcome },
        'aws session denied',
      );
    },

    async reconcile() {
      // Also with `revocation: none`: only roles with a ledger are looked at (denies of leases issued revocable).
      await denyList.verifyAll();
    },

    async expire(lease) {
      if (settings.revocation !== 'iam-deny' && !lease.revocable) return;
      const h = handleOf(lease);
      if (h) await prune(h.roleArn);
    },

    async ready() {
      if (readyUntil > performance.now()) return true;
      try {
        const pair = clients.current;
        const out = await pair.sts.send(new GetCallerIdentityCommand({}));
        if (out.Account) clients.learnAccount(out.Account, pair);
        readyUntil = performance.now() + READY_CACHE_MS;
        refused = false;
        return true;
      } catch (err) {
        refused = classify(err) === 'auth';
        logger.warn({ code: awsErrorCode(err) }, 'aws not ready');
        return false;
      }
    },

    credentialsRefused: () => refused,

    async close() {
      clients.close();
    },
  };
  if (clients.rotatable) {
    provider.rotate = (distribute, _opts, journal): Promise<RotationResult> =>
      rotateAccessKey({ settings, clients, logger, clock }, distribute, journal);
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
