import { DeleteRolePolicyCommand, PutRolePolicyCommand } from '@aws-sdk/client-iam';
import type { RedisClient } from '../../redis/scripts.ts';
import { RetryableUpstreamError, upstreamFailed } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import type { AwsClients } from './clients.ts';
import type { AwsSettings } from './config.ts';
import { denyPolicyDocument, isoSeconds } from './deny-policy.ts';
import { withRedisLock } from './redis-lock.ts';
import { roleNameFromArn, type RoleInfoCache } from './role-info.ts';
import { awsErrorCode, classify, isTransient } from './upstream.ts';

/** Reported when a role's deny list no longer fits and the broker falls back to a TokenIssueTime cut-off. */
export interface DenyFallbackEvent {
  roleArn: string;
  /** Every session of the role issued before this instant is now denied, revoked or not. */
  cutoff: string;
  /** Individual entries the cut-off replaced. */
  droppedEntries: number;
  reason: 'policy_size' | 'iam_limit';
}

export interface DenyListDeps {
  settings: AwsSettings;
  clients: AwsClients;
  roles: RoleInfoCache;
  redis: RedisClient;
  keyPrefix: string;
  logger: Logger;
  clock: () => number;
  onFallback?: (e: DenyFallbackEvent) => void | Promise<void>;
}

interface Cutoff {
  at: number;
  /** When every session the cut-off can affect has expired, so it can go. */
  until: number;
}

const LOCK = { ttlMs: 30_000, waitMs: 10_000 };
const STS_MAX_SESSION_SECONDS = 43_200;

/**
 * The per-role list of revoked sessions, and the inline Deny policy made from it.
 *
 * Redis holds the authoritative list (a sorted set per role of `ROLEID:<session>`
 * scored by the session's expiry) and every write replaces the whole IAM policy
 * from it, under a per-role Redis lock, so concurrent revocations on many
 * workers never lose an entry. A version counter is re-read after each write:
 * if someone added an entry meanwhile (a lapsed lock), the policy is written again.
 * Expired sessions are pruned on every write. When the list outgrows the size
 * budget (or IAM's per-role limit), it collapses into one `aws:TokenIssueTime`
 * cut-off, which also cuts off the role's *unrevoked* older sessions; that is
 * logged loudly and reported to `onFallback`.
 */
export class DenyList {
  private readonly d: DenyListDeps;

  constructor(deps: DenyListDeps) {
    this.d = deps;
  }

  private keys(roleArn: string) {
    const base = `${this.d.keyPrefix}:aws:deny:${roleArn}`;
    return { entries: base, cutoff: `${base}:cutoff`, version: `${base}:version`, lock: `${base}:lock` };
  }

  /** Denies one session (`ROLEID:<session>`) until `expiresAt`. Idempotent. */
  async deny(roleArn: string, userId: string, expiresAt: number): Promise<void> {
    const k = this.keys(roleArn);
    await this.locked(roleArn, async () => {
      await this.d.redis.multi().zadd(k.entries, expiresAt, userId).incr(k.version).exec();
      await this.sync(roleArn);
    });
  }

  /** Drops entries (and a cut-off) whose sessions have all expired; writes IAM only if something went. */
  async prune(roleArn: string): Promise<void> {
    const k = this.keys(roleArn);
    const now = this.d.clock();
    const [expired, cutoff] = await Promise.all([this.d.redis.zcount(k.entries, '-inf', now), this.readCutoff(roleArn)]);
    if (expired === 0 && !(cutoff && cutoff.until <= now)) return;
    await this.locked(roleArn, () => this.sync(roleArn));
  }

  /** The current entries (for tests and ops tooling). */
  async entries(roleArn: string): Promise<string[]> {
    return this.d.redis.zrange(this.keys(roleArn).entries, 0, '-1');
  }

  private async locked(roleArn: string, fn: () => Promise<void>): Promise<void> {
    const done = await withRedisLock(this.d.redis, this.keys(roleArn).lock, LOCK, fn);
    if (!done) throw new RetryableUpstreamError('revocation_busy', `the deny list of ${roleArn} is locked by another worker`);
  }

  private async readCutoff(roleArn: string): Promise<Cutoff | undefined> {
    const raw = await this.d.redis.get(this.keys(roleArn).cutoff);
    return raw ? (JSON.parse(raw) as Cutoff) : undefined;
  }

  /** Rewrites the role's policy from Redis until no entry was added behind our back (bounded). */
  private async sync(roleArn: string): Promise<void> {
    const { redis, clock } = this.d;
    const k = this.keys(roleArn);
    for (let round = 0; round < 3; round++) {
      const now = clock();
      await redis.zremrangebyscore(k.entries, '-inf', now);
      let cutoff = await this.readCutoff(roleArn);
      if (cutoff && cutoff.until <= now) {
        await redis.del(k.cutoff);
        cutoff = undefined;
      }
      const [ids, version] = await Promise.all([redis.zrange(k.entries, 0, '-1'), redis.get(k.version)]);
      // Sorted by expiry, so the last entry expires last.
      const lastExpiry = ids.length ? Number(await redis.zscore(k.entries, ids[ids.length - 1]!)) : 0;
      let doc = denyPolicyDocument(ids, cutoff?.at);
      if (doc && doc.length > this.d.settings.revocationPolicyMaxChars) {
        doc = denyPolicyDocument([], (await this.fallback(roleArn, ids, lastExpiry, 'policy_size')).at);
      }
      try {
        await this.write(roleArn, doc);
      } catch (err) {
        if (classify(err) !== 'limit' || ids.length === 0) throw this.failure(err, roleArn);
        // Other inline policies on the role leave less room than our budget assumed.
        await this.write(roleArn, denyPolicyDocument([], (await this.fallback(roleArn, ids, lastExpiry, 'iam_limit')).at)).catch((e) => {
          throw this.failure(e, roleArn);
        });
      }
      if ((await redis.get(k.version)) === version) return;
    }
  }

  /**
   * Replaces the individual entries by a cut-off just after now: every entry
   * is a session issued before now, so the cut-off covers them all.
   */
  private async fallback(roleArn: string, ids: string[], lastExpiry: number, reason: DenyFallbackEvent['reason']): Promise<Cutoff> {
    const k = this.keys(roleArn);
    const info = await this.d.roles.get(roleArn);
    // Rounded up, plus a second: TokenIssueTime has whole seconds and clocks differ a little.
    const at = Math.ceil(this.d.clock() / 1000) * 1000 + 1000;
    const old = await this.readCutoff(roleArn);
    const cutoff: Cutoff = {
      at: Math.max(at, old?.at ?? 0),
      until: Math.max(at + (info?.maxSessionDuration ?? STS_MAX_SESSION_SECONDS) * 1000, lastExpiry, old?.until ?? 0),
    };
    const tx = this.d.redis.multi().set(k.cutoff, JSON.stringify(cutoff));
    if (ids.length > 0) tx.zrem(k.entries, ...ids);
    await tx.exec();
    const event: DenyFallbackEvent = { roleArn, cutoff: isoSeconds(cutoff.at), droppedEntries: ids.length, reason };
    this.d.logger.error(
      event,
      'aws deny list overflowed: every session of this role issued before the cut-off is now denied, including unrevoked ones',
    );
    await this.d.onFallback?.(event);
    return cutoff;
  }

  private async write(roleArn: string, doc: string | undefined): Promise<void> {
    const RoleName = roleNameFromArn(roleArn);
    const PolicyName = this.d.settings.revocationPolicyName;
    if (doc === undefined) {
      await this.d.clients
        .run((c) => c.iam.send(new DeleteRolePolicyCommand({ RoleName, PolicyName })))
        .catch((err) => {
          if (classify(err) !== 'not_found') throw err; // already gone: fine
        });
      return;
    }
    await this.d.clients.run((c) => c.iam.send(new PutRolePolicyCommand({ RoleName, PolicyName, PolicyDocument: doc })));
  }

  /** Transient failures (and refused keys, which a rotation may fix) are retried by the worker; the rest are permanent. */
  private failure(err: unknown, roleArn: string): Error {
    const kind = classify(err);
    const code = awsErrorCode(err);
    this.d.logger.warn({ roleArn, code, kind }, 'iam PutRolePolicy for revocation failed');
    if (isTransient(kind) || kind === 'auth') {
      return new RetryableUpstreamError(
        kind === 'throttled' ? 'upstream_throttled' : kind === 'auth' ? 'upstream_auth_failed' : 'upstream_unavailable',
        `IAM ${code} while revoking on ${roleArn}`,
        { cause: err },
      );
    }
    if (kind === 'denied') return upstreamFailed('upstream_denied', "IAM refused to update the role's revocation policy.", { cause: err });
    return upstreamFailed('upstream_error', "IAM failed to update the role's revocation policy.", { cause: err });
  }
}
