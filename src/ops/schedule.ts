import { Queue } from 'bullmq';
import { Worker } from '../redis/bullmq-worker.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { Deps } from '../deps.ts';
import type { RotationService } from './rotation.ts';

const QUEUE = 'rotation';

/** The period a scheduler's job stands for: BullMQ names it `repeat:<scheduler id>:<slot ms>`. */
function slotOf(jobId: string | undefined): string | undefined {
  const m = /:(\d{10,})$/.exec(jobId ?? '');
  return m ? new Date(Number(m[1])).toISOString() : undefined;
}

/**
 * Scheduled rotation: one BullMQ job scheduler per target in
 * `rotation.schedule` (seconds). BullMQ hands each firing to exactly one
 * worker, so with many instances exactly one rotates.
 */
export class RotationScheduler {
  private readonly deps: Deps;
  private readonly rotation: RotationService;
  private readonly queue: Queue;
  private worker: Worker | undefined;
  private readonly connection: RedisClient;

  constructor(deps: Deps, rotation: RotationService, connection: RedisClient) {
    this.deps = deps;
    this.rotation = rotation;
    this.connection = connection;
    this.queue = new Queue(QUEUE, { connection, prefix: deps.keys.queuePrefix('rotation') });
    this.queue.on('error', (err) => deps.logger.warn({ err: err.message }, 'rotation queue error'));
  }

  async start(): Promise<void> {
    const schedule = this.deps.config.rotation.schedule;
    const targets = Object.keys(schedule);
    if (targets.length === 0) return;
    for (const target of targets) {
      await this.queue.upsertJobScheduler(
        `rotate-${target}`,
        { every: schedule[target]! * 1000 },
        { name: 'rotate', data: { target }, opts: { removeOnComplete: true, removeOnFail: 100 } },
      );
    }
    this.worker = new Worker(
      QUEUE,
      async (job) => {
        await this.rotation.rotate('schedule', (job.data as { target: string }).target, { scheduledFor: slotOf(job.id) });
      },
      { connection: this.connection, prefix: this.deps.keys.queuePrefix('rotation'), concurrency: 1 },
    );
    this.worker.on('error', (err) => this.deps.logger.error({ err: err.message }, 'rotation scheduler error'));
  }

  async close(): Promise<void> {
    await this.worker?.close();
    await this.queue.close();
  }
}
