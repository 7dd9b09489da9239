import type { Job } from 'bullmq';
import { Worker } from '../redis/bullmq-worker.ts';
import type { Deps } from '../deps.ts';
import { BrokerError, RetryableUpstreamError } from '../errors.ts';
import { credentialEndsBy } from '../leases/credential-end.ts';
import { LeaseStore } from '../leases/lease-store.ts';
import type { LeaseRecord, RevokeReason } from '../leases/types.ts';
import type { RedisClient } from '../redis/scripts.ts';
import { endTaskLeases, roleOfLease } from './ending.ts';
import { cappedBackoff, type LeaseEndJob, QUEUE_NAME, type RevocationJob, type TaskEndJob } from './queue.ts';

/**
 * A TTL hand-over of a live lease whose expiry is further away than this (on this process's estimate of
 * Redis's clock, which can be off by milliseconds) is stale: the lease got its expiry after the job was made.
 */
const EXPIRY_SLACK_MS = 1000;

/**
 * Processes revocation jobs: a task-end revokes every lease of the tasks that
 * ended together (in bulk where nothing upstream needs a call); a lease-end
 * calls the provider and records the outcome. Every step is idempotent, so a
 * retried or duplicated job, or one re-run after a worker crash, never
 * revokes anything twice.
 *
 * Retry rule (contract section 5): an upstream "not found" is success (the
 * providers say so); every other failure is retried with capped backoff until
 * the upstream confirms or the credential's own expiry has passed on Redis's
 * clock; then the lease ends `expired` with the last error kept.
 */
export class RevocationWorker {
  readonly workers: Worker<RevocationJob>[];
  private readonly deps: Deps;

  constructor(deps: Deps, connection: (name: string) => RedisClient) {
    this.deps = deps;
    const r = deps.config.revocation;
    this.workers = deps.queue.queues.map(
      (_, g) =>
        new Worker<RevocationJob>(QUEUE_NAME, (job) => this.process(job), {
          connection: connection(`jit-worker-${g}`),
          prefix: deps.keys.queuePrefix(g),
          concurrency: r.concurrency,
          // Lock renewal keeps a slow upstream call from being handed to a second worker;
          // a worker that died loses its lock and the job is re-run elsewhere.
          lockDuration: r.lockMs,
          stalledInterval: r.stalledCheckMs,
          maxStalledCount: Number.MAX_SAFE_INTEGER,
          settings: { backoffStrategy: cappedBackoff(r.backoffMs, r.maxBackoffMs) },
        }),
    );
    for (const w of this.workers) w.on('error', (err) => deps.logger.error({ err }, 'revocation worker error'));
  }

  private async process(job: Job<RevocationJob>): Promise<void> {
    if (job.data.kind === 'task-end') await this.endTasks(job.data);
    else await this.endLease(job.data, job.attemptsMade + 1);
  }

  private async endTasks(data: TaskEndJob): Promise<void> {
    await endTaskLeases(this.deps, data.taskIds, data.reason, data.requestedAt);
  }

  private async endLease(data: LeaseEndJob, attempt: number): Promise<void> {
    const { leases, providers } = this.deps;
    const lease = await leases.get(data.leaseId);
    if (!lease || LeaseStore.isEnded(lease.status)) return;
    const provider = providers.get(lease.provider);
    // An issuance, or one given up earlier whose revoke failed (`revoke_failed`): the same path, whatever reason
    // the job carries (a DELETE, a task end or the reconciler asking again), for it ends `failed`, not revoked.
    if (lease.status === 'issuing' || lease.givenUp !== undefined) {
      if (!provider) return this.providerMissing(lease, attempt, 'issuance_interrupted');
      // Its issuing process died or stalled (the sweeper hands it over once the orphan window passed): give
      // it up in Redis, so a late activation is refused, then revoke with what was written down (the
      // intent, or what a late activation recorded) or let a short-lived credential die; hand out nothing.
      const given = await leases.giveUp(lease.leaseId);
      if (given.kind !== 'given_up') return; // not due yet, or activated first: the lease is live, not this job's
      const held: LeaseRecord = { ...lease, handle: JSON.parse(given.handle) };
      const role = roleOfLease(this.deps, held) as never;
      const revoke = () => provider.revoke(held, role, { reason: 'issuance_interrupted' });
      // Counted and ended as what it is, an issuance that failed: never as a TTL that ran out (nothing was
      // handed out), also when the revoke kept failing until the credential's own expiry.
      const fail = (lastError?: string) => this.failGivenUp(lease, given.handle, attempt, lastError);
      if ((await this.attempt(held, attempt, revoke, { reason: 'issuance_interrupted', expired: fail })) === 'settled') return;
      await fail();
      return;
    }
    const reason: RevokeReason = lease.reason ?? (data.reason === 'issuance_interrupted' ? 'ttl_expired' : data.reason);
    const expiry = reason === 'ttl_expired';
    // A hand-over that no longer applies (an issuance's, activated after all; or a retry's whose lease
    // got a new expiry): nothing is due before the credential's own expiry, when the sweeper hands it over again.
    if (expiry && lease.status === 'active' && lease.expiresAt - this.deps.clock.now() > EXPIRY_SLACK_MS) return;
    // After that check: a stale hand-over must not mark a live lease failed on a worker without its provider.
    if (!provider) return this.providerMissing(lease, attempt, reason);
    if (lease.status === 'active' && !expiry) await leases.mark(lease.leaseId, { status: 'revoking', reason });
    const role = roleOfLease(this.deps, lease) as never;
    const admin = reason === 'revoked_by_admin' ? await this.adminScope(lease.taskId) : undefined;
    // The kill's own time, also when the sweeper rebuilt a lost job (stamped with its own time then).
    const requestedAt = Math.min(data.requestedAt, admin?.endedAt ?? Number.POSITIVE_INFINITY);
    const call = () =>
      expiry
        ? (provider.expire?.(lease, role) ?? Promise.resolve())
        : provider.revoke(lease, role, { reason, requestedAt, ...(admin ? { adminScope: admin.scope } : {}) });
    if ((await this.attempt(lease, attempt, call, { reason })) === 'settled') return;
    await this.finish(lease, expiry ? 'expired' : 'revoked', reason, expiry ? lease.expiresAt : data.requestedAt, attempt);
  }

  /**
   * Ends a given-up issuance `failed` once the worker revoked what its handle names (`lastError` unset), or
   * once its credential expired while the revoke kept failing (`lastError`: the last failure's code). Its
   * record goes to the audit outbox with the ending (lease-fail-issuance.lua): only the call that ends it
   * records and counts it (the issuing process may have ended it `failed` first, recorded there), and a
   * crash loses nothing.
   */
  private async failGivenUp(lease: LeaseRecord, handle: string, attempt: number, lastError?: string): Promise<void> {
    const { leases, metrics } = this.deps;
    const ended = await leases.failIssuance(lease.leaseId, handle, 'issuance_interrupted', {
      action: 'credential.fail',
      actor: 'broker',
      decision: 'error',
      taskId: lease.taskId,
      role: lease.role,
      leaseId: lease.leaseId,
      reason: 'issuance_interrupted',
      ...(lastError ? { detail: { revoke: 'expired', lastError, attempt } } : {}),
    });
    // A late activation recorded another handle meanwhile: revoke again, with it.
    if (ended.kind === 'moved') throw new RetryableUpstreamError('upstream_error', 'a late activation recorded another handle');
    if (ended.kind !== 'ended_now') return;
    // From its orphan deadline, when it became due, to its ending.
    const due = lease.orphanAt ?? lease.givenUp;
    if (due !== undefined)
      metrics.revocationLag.observe({ reason: 'issuance_interrupted' }, Math.max(0, this.deps.clock.now() - due) / 1000);
    metrics.revocations.inc({ result: lastError ? 'expired' : 'revoked', reason: 'issuance_interrupted', provider: lease.provider });
    if (ended.recorded) await this.appendRecorded(lease.leaseId, ended.recorded);
  }

  /**
   * How far an admin's revocation of a lease of `taskId` reaches (RevokeContext.adminScope), and when the
   * task was ended: read from the task, so a lost job rebuilt by the sweeper decides the same. A task an
   * admin did not end: a DELETE.
   */
  private async adminScope(taskId: string): Promise<{ scope: 'agent' | 'task'; endedAt?: number } | undefined> {
    const [reason, scope, endedAt] = await this.deps.redis.hmget(this.deps.keys.task(taskId), 'reason', 'adminScope', 'endedAt');
    if (reason !== 'revoked_by_admin') return undefined;
    return { scope: scope === 'task' ? 'task' : 'agent', ...(endedAt ? { endedAt: Number(endedAt) } : {}) };
  }

  /**
   * The lease's provider was removed from this instance's configuration while the lease was live: a
   * revocation that cannot run is a failed one (`revoke_failed`, audited, counted), retried until the
   * provider is back or the credential expires. An issuance not given up stays `issuing`: it was not
   * given up here (that needs the provider), so its activation may still win.
   */
  private async providerMissing(lease: LeaseRecord, attempt: number, reason: LeaseEndJob['reason']): Promise<void> {
    const missing = new RetryableUpstreamError('provider_unavailable', `provider ${lease.provider} is not configured in this worker`);
    const keepStatus = lease.status === 'issuing' && lease.givenUp === undefined;
    const fail = () => Promise.reject(missing);
    if (reason !== 'issuance_interrupted') return void (await this.attempt(lease, attempt, fail, { keepStatus, reason }));
    // An issuance (given up or not) still ends `failed` at its credential's expiry, with the handle it holds.
    const expired = async (code: string) => {
      const handle = (await this.deps.redis.hget(this.deps.keys.lease(lease.leaseId), 'handle')) ?? '{}';
      await this.failGivenUp(lease, handle, attempt, code);
    };
    await this.attempt(lease, attempt, fail, { keepStatus, reason, expired });
  }

  /**
   * Runs one upstream attempt. On failure: once the credential's own expiry
   * has passed there is nothing left to cut off (the lease ends `expired`,
   * last error kept); before that it shows `revoke_failed` and is retried.
   */
  private async attempt(
    lease: LeaseRecord,
    attempt: number,
    call: () => Promise<void>,
    opts: { keepStatus?: boolean } & (
      | { reason: RevokeReason }
      // A given-up issuance: `expired` ends it (`failed`) once its credential's own expiry has passed.
      | { reason: 'issuance_interrupted'; expired: (lastError: string) => Promise<void> }
    ),
  ): Promise<'done' | 'settled'> {
    try {
      await call();
      return 'done';
    } catch (err) {
      const code = err instanceof BrokerError || err instanceof RetryableUpstreamError ? err.code : 'upstream_error';
      const { leases, metrics, logger } = this.deps;
      // The credential's own end, which a renewable upstream lease may put past the lease's `expiresAt`.
      if (this.deps.clock.now() >= credentialEndsBy(lease)) {
        if (opts.reason === 'issuance_interrupted') await opts.expired(code);
        else await this.finish(lease, 'expired', opts.reason, lease.expiresAt, attempt, code);
        return 'settled';
      }
      // A given-up issuance shows `revoke_failed` like any failing revocation (on the reconciler's work list,
      // as lease-update puts it there); its `givenUp` keeps activation refusing it and its retry on the
      // give-up path. Only an issuance not given up keeps `issuing` (providerMissing).
      // The first failure's record goes to the audit outbox with the change (lease-update.lua).
      const first = attempt === 1;
      const { recorded } = await leases.mark(
        lease.leaseId,
        { ...(opts.keepStatus ? {} : { status: 'revoke_failed' as const }), lastError: code, attempts: attempt },
        first
          ? {
              action: 'lease.revoke_failed',
              actor: 'broker',
              decision: 'error',
              taskId: lease.taskId,
              role: lease.role,
              leaseId: lease.leaseId,
              reason: code,
              detail: { attempt },
            }
          : undefined,
      );
      // The reason this revocation is for (the `lease` read before it was marked may not carry it yet).
      metrics.revocations.inc({ result: 'failed', reason: opts.reason, provider: lease.provider });
      logger.warn({ leaseId: lease.leaseId, code, attempt, err: (err as Error).message }, 'revocation attempt failed; retrying');
      if (recorded) await this.appendRecorded(lease.leaseId, recorded);
      throw err;
    }
  }

  private async finish(
    lease: LeaseRecord,
    status: 'revoked' | 'expired',
    reason: RevokeReason,
    startedAt: number,
    attempt: number,
    lastError?: string,
  ) {
    const { leases, metrics } = this.deps;
    // The record goes to the audit outbox with the ending (lease-update.lua): a worker that dies before
    // appending it loses nothing, and the job re-run after it finds the lease ended and records nothing twice.
    const { before, recorded } = await leases.end(
      lease.leaseId,
      status,
      { reason, lastError },
      {
        action: status === 'expired' ? 'lease.expire' : 'lease.revoke',
        actor: 'broker',
        decision: lastError ? 'error' : 'ok',
        taskId: lease.taskId,
        role: lease.role,
        leaseId: lease.leaseId,
        reason,
        detail: { attempt, upstream: lease.revocable, ...(lastError ? { lastError } : {}) },
      },
    );
    if (before === undefined || LeaseStore.isEnded(before)) return; // someone else finished it first
    const now = this.deps.clock.now();
    metrics.revocationLag.observe({ reason }, Math.max(0, now - startedAt) / 1000);
    metrics.revocations.inc({ result: status, reason, provider: lease.provider });
    if (recorded) await this.appendRecorded(lease.leaseId, recorded);
  }

  /** Appends a record a lease script put in its bucket's audit outbox. */
  private async appendRecorded(leaseId: string, recorded: { member: string; at: number }): Promise<void> {
    await this.deps.audit.appendOutbox(this.deps.keys.bucketOfId(leaseId)!, [recorded.member], recorded.at);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.close()));
  }
}
