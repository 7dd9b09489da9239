import { Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Deps } from '../deps.ts';
import { BrokerError, RetryableUpstreamError } from '../errors.ts';
import { LeaseStore } from '../leases/lease-store.ts';
import { QUEUE_NAME, type LeaseEndJob, type RevocationJob, type TaskEndJob } from './queue.ts';

/** A lease still being issued cannot be revoked yet (no handle); the job waits for it. */
class LeaseStillIssuing extends Error {}

/**
 * Processes revocation jobs: a task-end fans out into one lease-end per lease
 * (and a task-end per sub-task); a lease-end calls the provider and records
 * the outcome. Every step is idempotent, so a retried or duplicated job, or
 * one re-run after a worker crash, never revokes anything twice.
 */
export class RevocationWorker {
  readonly worker: Worker<RevocationJob>;
  private readonly deps: Deps;

  constructor(deps: Deps, connection: Redis) {
    this.deps = deps;
    this.worker = new Worker<RevocationJob>(QUEUE_NAME, (job) => this.process(job), {
      connection,
      prefix: deps.config.redis.prefix,
      concurrency: deps.config.revocation.concurrency,
      // Lock renewal keeps a slow upstream call from being handed to a second worker;
      // a worker that died loses its lock and the job is re-run elsewhere (maxStalledCount).
      lockDuration: deps.config.revocation.lockMs,
      stalledInterval: deps.config.revocation.stalledCheckMs,
      maxStalledCount: 5,
    });
    this.worker.on('failed', (job, err) => {
      if (job) void this.onFailed(job, err);
    });
    this.worker.on('error', (err) => deps.logger.error({ err }, 'revocation worker error'));
  }

  private async process(job: Job<RevocationJob>): Promise<void> {
    if (job.data.kind === 'task-end') await this.endTask(job.data);
    else await this.endLease(job.data, job.attemptsMade + 1);
  }

  private async endTask(data: TaskEndJob): Promise<void> {
    const { tasks, queue, audit } = this.deps;
    if (data.reason === 'task_expired') {
      const { changed } = await tasks.end(data.taskId, 'expired');
      if (changed) await audit.append({ action: 'task.expire', actor: 'broker', decision: 'ok', taskId: data.taskId });
    }
    const status = await tasks.status(data.taskId);
    if (status === 'open') return; // a premature expiry job (deadline not reached): nothing to do
    const leaseIds = await tasks.leaseIds(data.taskId);
    const live = (await this.deps.leases.getMany(leaseIds)).filter((l) => !LeaseStore.isEnded(l.status));
    await queue.endLeases(live.map((l) => ({ leaseId: l.leaseId, reason: data.reason, requestedAt: data.requestedAt })));
    // Completing or expiring a parent completes its sub-tasks.
    const children = await tasks.children(data.taskId);
    const toEnd: { taskId: string; reason: 'task_completed' }[] = [];
    for (const child of children) {
      const { changed } = await tasks.end(child, 'completed');
      if (changed)
        await audit.append({
          action: 'task.complete',
          actor: 'broker',
          decision: 'ok',
          taskId: child,
          reason: `parent_${data.reason}`,
          detail: { parentTaskId: data.taskId },
        });
      toEnd.push({ taskId: child, reason: 'task_completed' });
    }
    await queue.endTasks(toEnd, data.requestedAt);
  }

  private async endLease(data: LeaseEndJob, attempt: number): Promise<void> {
    const { leases, providers, config, audit, metrics } = this.deps;
    const lease = await leases.get(data.leaseId);
    if (!lease || LeaseStore.isEnded(lease.status)) return;
    if (lease.status === 'issuing') throw new LeaseStillIssuing(`lease ${lease.leaseId} is still being issued`);
    // The first reason recorded wins: a TTL sweep must not relabel a caller's revocation.
    const reason = lease.reason ?? data.reason;
    const role = config.roles[lease.role];
    const provider = providers.get(lease.provider);
    if (!provider) throw new RetryableUpstreamError('provider_unavailable', `provider ${lease.provider} is not configured in this worker`);
    if (reason === 'ttl_expired') {
      await provider.expire?.(lease, role as never);
    } else {
      if (lease.status === 'active') await leases.mark(lease.leaseId, { status: 'revoking', reason });
      await provider.revoke(lease, role as never, { reason });
    }
    const now = Date.now();
    const status = reason === 'ttl_expired' ? 'expired' : 'revoked';
    const before = await leases.end(lease.leaseId, status, { reason, revokedAt: now });
    if (before === undefined || LeaseStore.isEnded(before)) return; // someone else finished it first
    const started = reason === 'ttl_expired' ? lease.expiresAt : data.requestedAt;
    metrics.revocationLag.observe({ reason }, Math.max(0, now - started) / 1000);
    metrics.revocations.inc({ result: status, reason, provider: lease.provider });
    await audit.append({
      action: status === 'expired' ? 'lease.expire' : 'lease.revoke',
      actor: 'broker',
      decision: 'ok',
      taskId: lease.taskId,
      role: lease.role,
      leaseId: lease.leaseId,
      reason,
      detail: { attempt, upstream: lease.revocable },
    });
  }

  /** A failed attempt is never silent: the lease shows revoke_failed, metrics count it, the audit log says why. */
  private async onFailed(job: Job<RevocationJob>, err: Error): Promise<void> {
    if (job.data.kind !== 'lease-end' || err instanceof LeaseStillIssuing) {
      this.deps.logger.warn({ err: err.message, job: job.id }, 'revocation job failed');
      return;
    }
    const code = err instanceof BrokerError || err instanceof RetryableUpstreamError ? err.code : 'upstream_error';
    const final = job.attemptsMade >= (job.opts.attempts ?? 1);
    const lease = await this.deps.leases.get(job.data.leaseId);
    if (!lease || LeaseStore.isEnded(lease.status)) return;
    await this.deps.leases.mark(lease.leaseId, {
      status: 'revoke_failed',
      reason: lease.reason ?? job.data.reason,
      lastError: code,
      attempts: job.attemptsMade,
    });
    this.deps.metrics.revocations.inc({ result: 'failed', reason: lease.reason ?? job.data.reason, provider: lease.provider });
    this.deps.logger.warn(
      { leaseId: lease.leaseId, code, attempt: job.attemptsMade, final, err: err.message },
      'revocation attempt failed',
    );
    if (job.attemptsMade === 1 || final) {
      await this.deps.audit.append({
        action: 'lease.revoke_failed',
        actor: 'broker',
        decision: 'error',
        taskId: lease.taskId,
        role: lease.role,
        leaseId: lease.leaseId,
        reason: code,
        detail: { attempt: job.attemptsMade, final },
      });
    }
  }

  async close(): Promise<void> {
    await this.worker.close();
  }
}
