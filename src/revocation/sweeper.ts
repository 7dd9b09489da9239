import type { AuditEvent } from '../audit/record.ts';
import type { Deps } from '../deps.ts';
import { LeaseStore } from '../leases/lease-store.ts';
import type { LeaseRecord, RevokeReason } from '../leases/types.ts';
import { script } from '../redis/scripts.ts';
import type { TaskEndReason } from '../tasks/types.ts';
import { endLeases, localKinds } from './ending.ts';

const sweepScript = script('sweep');

/** How long a due lease handed to the worker waits before the sweeper hands it over again. */
const HANDOFF_RETRY_MS = 15_000;

/**
 * Turns time into revocation, and catches what was lost.
 *
 * - Every `sweepMs` (default 100 ms), per bucket, one Lua script decides on
 *   Redis's clock: open tasks past their deadline end `expired` (with their
 *   subtrees); due leases of the broker's own JWTs end `expired` in bulk;
 *   other due leases (upstream TTL expiry, interrupted issuances) become
 *   lease-end jobs. Safe to run in every worker at once: each due item is
 *   taken by exactly one script run.
 * - Every `reconcileIntervalMs`: walks every live lease and finishes what a
 *   lost job (a crash, a Redis failover) left undone: leases of ended tasks,
 *   revocations in progress.
 */
export class Sweeper {
  private readonly deps: Deps;
  private sweepTimer: NodeJS.Timeout | undefined;
  private reconcileTimer: NodeJS.Timeout | undefined;
  /** Buckets whose sweep is running: a tick skips those (a busy bucket does not hold up the others). */
  private readonly busy = new Set<number>();
  /** Per bucket: the audit records of its last round, being written (resolves when durable, never rejects). */
  private readonly writing = new Map<number, Promise<void>>();
  private reconciling = false;
  private readonly localKinds: string;

  constructor(deps: Deps) {
    this.deps = deps;
    this.localKinds = localKinds(deps);
  }

  start(): void {
    this.sweepTimer = setInterval(() => void this.tick(), this.deps.config.revocation.sweepMs);
    this.reconcileTimer = setInterval(() => void this.reconcile(), this.deps.config.revocation.reconcileIntervalMs);
    this.sweepTimer.unref();
    this.reconcileTimer.unref();
  }

  stop(): void {
    clearInterval(this.sweepTimer);
    clearInterval(this.reconcileTimer);
  }

  /** One pass over every bucket; resolves once the pass's audit records are durable. */
  async sweep(): Promise<void> {
    await this.tick();
    await Promise.all(this.writing.values());
  }

  /** What the timer runs: every bucket not still busy with the previous tick, in parallel. */
  private async tick(): Promise<void> {
    await Promise.all(
      Array.from({ length: this.deps.keys.buckets }, async (_, b) => {
        if (this.busy.has(b)) return;
        this.busy.add(b);
        try {
          await this.sweepBucket(b);
        } catch (err) {
          this.deps.logger.warn({ err: (err as Error).message, bucket: b }, 'sweep failed');
        } finally {
          this.busy.delete(b);
        }
      }),
    );
  }

  /**
   * Sweeps one bucket. The leases end in the script (introspection answers
   * inactive from then on); their audit records follow. A round does not wait
   * for its own records before the next round or tick runs the script again,
   * only for the previous round's: a burst of expiries is ended on time while
   * the chain catches up, and at most two rounds of records are in flight.
   */
  private async sweepBucket(bucket: number): Promise<void> {
    const { keys, redis, leases, queue, metrics } = this.deps;
    for (let round = 0; round < 20; round++) {
      const [now, expired, handoff, groups] = (await sweepScript.run(
        redis,
        [keys.liveLeases(bucket), keys.openTasks(bucket)],
        [keys.base(bucket), 1000, 200, leases.retentionMs, HANDOFF_RETRY_MS, this.localKinds],
      )) as [number, string[], string[], string[][]];
      const events: AuditEvent[] = [];
      for (let i = 0; i + 3 < expired.length; i += 4) {
        const [leaseId, taskId, role, expiresAt] = [expired[i]!, expired[i + 1]!, expired[i + 2]!, Number(expired[i + 3])];
        metrics.revocationLag.observe({ reason: 'ttl_expired' }, Math.max(0, now - expiresAt) / 1000);
        events.push({ action: 'lease.expire', actor: 'broker', decision: 'ok', taskId, role, leaseId, reason: 'ttl_expired' });
      }
      if (events.length > 0) metrics.revocations.inc({ result: 'expired', reason: 'ttl_expired', provider: 'jwt' }, events.length);
      for (const ids of groups) {
        const [root, ...children] = ids as [string, ...string[]];
        events.push({ action: 'task.expire', actor: 'broker', decision: 'ok', taskId: root });
        for (const c of children) {
          events.push({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: c, reason: 'parent_task_expired' });
        }
        await queue.endTasks(root, ids, 'task_expired', now);
      }
      await queue.endLeases(handoff.map((leaseId) => ({ leaseId, reason: 'ttl_expired' as const, requestedAt: now })));
      if (events.length > 0) await this.record(bucket, events);
      // A full page means more may be due right now: go again rather than wait for the next tick.
      if (expired.length / 4 + handoff.length < 1000 && groups.length < 200) return;
    }
  }

  /** Queues a round's records behind the bucket's previous round, then waits for that previous round. */
  private async record(bucket: number, events: AuditEvent[]): Promise<void> {
    const previous = this.writing.get(bucket);
    const mine = this.deps.audit.appendAll(events).catch((err: Error) => {
      this.deps.logger.error({ err: err.message, bucket, records: events.length }, 'sweep: audit records could not be written');
    });
    this.writing.set(bucket, mine);
    void mine.then(() => {
      if (this.writing.get(bucket) === mine) this.writing.delete(bucket);
    });
    await previous;
  }

  /** Finds live leases whose revocation should have happened and finishes it. Returns how many. */
  async reconcile(): Promise<number> {
    if (this.reconciling) return 0;
    this.reconciling = true;
    let requeued = 0;
    try {
      for (let b = 0; b < this.deps.keys.buckets; b++) requeued += await this.reconcileBucket(b);
    } catch (err) {
      this.deps.logger.warn({ err: (err as Error).message }, 'reconcile failed');
    } finally {
      this.reconciling = false;
    }
    return requeued;
  }

  private async reconcileBucket(bucket: number): Promise<number> {
    const { leases, tasks, queue } = this.deps;
    let n = 0;
    for await (const ids of leases.live(bucket)) {
      const records = (await leases.getMany(ids)).filter((l) => !LeaseStore.isEnded(l.status) && l.status !== 'issuing');
      const taskIds = [...new Set(records.map((l) => l.taskId))];
      const found = await tasks.getMany(taskIds);
      const byId = new Map(found.map((t) => [t.taskId, t]));
      const ofEndedTasks = new Map<TaskEndReason, LeaseRecord[]>();
      const inProgress: LeaseRecord[] = [];
      for (const l of records) {
        const t = byId.get(l.taskId);
        if (t?.status !== 'open') {
          const reason = (t?.reason as TaskEndReason | undefined) ?? (t?.status === 'expired' ? 'task_expired' : 'task_completed');
          const list = ofEndedTasks.get(reason);
          if (list) list.push(l);
          else ofEndedTasks.set(reason, [l]);
        } else if (l.status === 'revoking' || l.status === 'revoke_failed') {
          inProgress.push(l);
        }
      }
      const now = this.deps.clock.now();
      for (const [reason, list] of ofEndedTasks) n += await endLeases(this.deps, list, reason, now);
      await queue.endLeases(
        inProgress.map((l) => ({ leaseId: l.leaseId, reason: (l.reason ?? 'revoked_by_caller') as RevokeReason, requestedAt: now })),
      );
      n += inProgress.length;
    }
    return n;
  }
}
