import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { RevokeReason } from '../leases/types.ts';

export const QUEUE_NAME = 'revocation';

export type TaskEndJob = { kind: 'task-end'; taskId: string; reason: 'task_completed' | 'task_expired'; requestedAt: number };
export type LeaseEndJob = { kind: 'lease-end'; leaseId: string; reason: RevokeReason; requestedAt: number };
export type RevocationJob = TaskEndJob | LeaseEndJob;

/** BullMQ refuses ":" in custom ids; task ids may hold it. "%" is not in the id charset, so this stays injective. */
const safeId = (id: string) => id.replaceAll(':', '%3A');

/** Deterministic job ids: enqueueing the same revocation twice is a no-op while the first is pending. */
export const taskEndJobId = (taskId: string) => `task-end-${safeId(taskId)}`;
export const leaseEndJobId = (leaseId: string) => `lease-end-${safeId(leaseId)}`;

/** Enqueues revocation work. Retried with exponential, jittered backoff; finished jobs are removed so ids can be reused by the reconciler. */
export class RevocationQueue {
  readonly queue: Queue<RevocationJob>;
  private readonly opts: {
    attempts: number;
    backoff: { type: 'exponential'; delay: number; jitter: number };
    removeOnComplete: true;
    removeOnFail: true;
  };

  constructor(connection: Redis, prefix: string, retry: { attempts: number; backoffMs: number }) {
    this.queue = new Queue<RevocationJob>(QUEUE_NAME, { connection, prefix });
    this.opts = {
      attempts: retry.attempts,
      backoff: { type: 'exponential', delay: retry.backoffMs, jitter: 0.5 },
      removeOnComplete: true,
      removeOnFail: true,
    };
  }

  async endTask(taskId: string, reason: TaskEndJob['reason'], requestedAt = Date.now()): Promise<void> {
    await this.queue.add('task-end', { kind: 'task-end', taskId, reason, requestedAt }, { ...this.opts, jobId: taskEndJobId(taskId) });
  }

  async endTasks(items: { taskId: string; reason: TaskEndJob['reason'] }[], requestedAt = Date.now()): Promise<void> {
    if (items.length === 0) return;
    await this.queue.addBulk(
      items.map(({ taskId, reason }) => ({
        name: 'task-end',
        data: { kind: 'task-end' as const, taskId, reason, requestedAt },
        opts: { ...this.opts, jobId: taskEndJobId(taskId) },
      })),
    );
  }

  async endLeases(items: { leaseId: string; reason: RevokeReason; requestedAt?: number }[]): Promise<void> {
    if (items.length === 0) return;
    const now = Date.now();
    await this.queue.addBulk(
      items.map(({ leaseId, reason, requestedAt }) => ({
        name: 'lease-end',
        data: { kind: 'lease-end' as const, leaseId, reason, requestedAt: requestedAt ?? now },
        opts: { ...this.opts, jobId: leaseEndJobId(leaseId) },
      })),
    );
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}
