import { createHash } from 'node:crypto';
import { type JobsOptions, Queue } from 'bullmq';
import type { LeaseRecord, RevokeReason } from '../leases/types.ts';
import type { Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { TaskEndReason } from '../tasks/types.ts';

export const QUEUE_NAME = 'revocation';

/** The leases of tasks that just ended (one task tree, one bucket) are to be revoked. */
export type TaskEndJob = { kind: 'task-end'; taskIds: string[]; reason: TaskEndReason; requestedAt: number };
/** One lease with something upstream to end: a revocation, a TTL expiry, or an interrupted issuance. */
export type LeaseEndJob = { kind: 'lease-end'; leaseId: string; reason: RevokeReason | 'issuance_interrupted'; requestedAt: number };
export type RevocationJob = TaskEndJob | LeaseEndJob;

/** BullMQ refuses ":" in custom ids; lease ids are hex, task ids are hashed. */
export const leaseEndJobId = (leaseId: string) => `lease-end-${leaseId}`;
const taskEndJobId = (taskId: string, at: number) =>
  `task-end-${createHash('sha256').update(taskId).digest('base64url').slice(0, 22)}-${at}`;

/**
 * Enqueues revocation work. One BullMQ queue per group (`revocation.queues`),
 * each under its own hash tag, so on a Cluster the queues spread over the
 * masters; a task tree's jobs go to its bucket's group.
 *
 * Retries: a failed revocation is retried with capped exponential backoff
 * until the upstream confirms it or the credential's own expiry has passed
 * (the job decides that); the attempt budget is deliberately not a give-up
 * point. Deterministic job ids make enqueueing the same lease twice a no-op
 * while the first is pending; finished jobs are removed so the reconciler can
 * enqueue again if needed.
 */
export class RevocationQueue {
  readonly queues: Queue<RevocationJob>[];
  private readonly keys: Keys;
  private readonly redis: RedisClient;
  private readonly opts: JobsOptions;

  constructor(connection: RedisClient, keys: Keys, settings: { queues: number }, onError: (err: Error) => void = () => {}) {
    this.keys = keys;
    this.redis = connection;
    this.queues = Array.from({ length: settings.queues }, (_, g) => {
      const q = new Queue<RevocationJob>(QUEUE_NAME, { connection, prefix: keys.queuePrefix(g) });
      // An 'error' event without a listener would crash the process (a Redis failover emits some).
      q.on('error', onError);
      return q;
    });
    // Retried until the credential expires (thousands of attempts for a long-lived one): BullMQ appends each failed
    // attempt's stack trace to the job's hash unless told otherwise, so the job would grow with every retry. The
    // last one is kept (the lease records its last error anyway).
    this.opts = {
      attempts: Number.MAX_SAFE_INTEGER,
      backoff: { type: 'capped' },
      removeOnComplete: true,
      removeOnFail: true,
      stackTraceLimit: 1,
    };
  }

  /** The queue group of a bucket. */
  groupOf(bucket: number): number {
    return bucket % this.queues.length;
  }

  private queueOf(bucket: number): Queue<RevocationJob> {
    return this.queues[this.groupOf(bucket)]!;
  }

  /** The leases of `taskIds` (a subtree that just ended together) are to be revoked. */
  async endTasks(rootTaskId: string, taskIds: string[], reason: TaskEndReason, requestedAt: number): Promise<void> {
    const q = this.queueOf(this.keys.bucketOfTask(rootTaskId));
    await q.add(
      'task-end',
      { kind: 'task-end', taskIds, reason, requestedAt },
      { ...this.opts, jobId: taskEndJobId(rootTaskId, requestedAt) },
    );
  }

  /** One job per lease, in the lease's bucket group. */
  async endLeases(items: { leaseId: string; reason: LeaseEndJob['reason']; requestedAt: number }[]): Promise<void> {
    const byGroup = new Map<number, typeof items>();
    for (const it of items) {
      const b = this.keys.bucketOfId(it.leaseId);
      if (b === undefined) continue;
      const g = this.groupOf(b);
      const list = byGroup.get(g);
      if (list) list.push(it);
      else byGroup.set(g, [it]);
    }
    await Promise.all(
      [...byGroup].map(([g, list]) =>
        this.queues[g]!.addBulk(
          list.map(({ leaseId, reason, requestedAt }) => ({
            name: 'lease-end',
            data: { kind: 'lease-end' as const, leaseId, reason, requestedAt },
            opts: { ...this.opts, jobId: leaseEndJobId(leaseId) },
          })),
        ),
      ),
    );
  }

  /**
   * Runs now the pending retries of these leases that are due later than `latest` (epoch ms, Redis's clock);
   * returns how many. BullMQ schedules a failed job's retry on the failing worker's wall clock (its own
   * `Date.now()` plus the backoff, moveToDelayed), and workers promote a retry once their own clock reaches
   * it: a worker an hour fast, set right (or gone, its jobs left to workers with the right clock), left its
   * last retry an hour out, and re-enqueueing the lease is a no-op beside it (same job id), so a revocation
   * failing for a moment was not tried again for that hour while its credential worked. No retry is ever
   * meant to wait longer than `maxBackoffMs`: the reconciler brings forward those that would
   * (test/faults/clock-step.test.ts). A job promoted or finished meanwhile is left as it is.
   */
  async promoteFarRetries(leaseIds: readonly string[], latest: number): Promise<number> {
    const jobs = leaseIds.flatMap((leaseId) => {
      const b = this.keys.bucketOfId(leaseId);
      return b === undefined ? [] : [{ q: this.queueOf(b), id: leaseEndJobId(leaseId) }];
    });
    // A page's leases at once (one round trip's worth); the delayed set's score is the due time (ms) times
    // 0x1000, plus an ordering counter (BullMQ's getDelayedScore.lua).
    const scores = await Promise.all(jobs.map(({ q, id }) => this.redis.zscore(q.keys.delayed!, id)));
    let n = 0;
    for (const [i, { q, id }] of jobs.entries()) {
      const score = scores[i];
      if (score === null || score === undefined || Math.floor(Number(score) / 0x1000) <= latest) continue;
      try {
        await (await q.getJob(id))?.promote();
        n++;
      } catch {
        // No longer delayed: a worker took it, or it finished.
      }
    }
    return n;
  }

  /** Convenience for one lease. */
  async endLease(lease: Pick<LeaseRecord, 'leaseId'>, reason: LeaseEndJob['reason'], requestedAt: number): Promise<void> {
    await this.endLeases([{ leaseId: lease.leaseId, reason, requestedAt }]);
  }

  async close(): Promise<void> {
    await Promise.all(this.queues.map((q) => q.close()));
  }
}

/** Capped, jittered exponential backoff for the worker's `settings.backoffStrategy`. */
export function cappedBackoff(baseMs: number, maxMs: number): (attemptsMade: number) => number {
  return (attemptsMade) => {
    const cap = Math.min(maxMs, baseMs * 2 ** Math.min(30, Math.max(0, attemptsMade - 1)));
    return Math.round(cap / 2 + Math.random() * (cap / 2));
  };
}
