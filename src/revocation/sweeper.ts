import type { Deps } from '../deps.ts';
import { LeaseStore } from '../leases/lease-store.ts';

/** Upstream calls time out well before this; an `issuing` lease this old will never be activated. */
const ISSUING_STUCK_MS = 5 * 60_000;

/**
 * Turns time into revocation jobs, and catches jobs that were lost.
 *
 * - Every `sweepMs` (default 100 ms): leases past their expiry and open tasks
 *   past their deadline become lease-end / task-end jobs. Deterministic job
 *   ids make this safe to run in every worker instance at once.
 * - Every `reconcileIntervalMs`: walks every live lease and re-enqueues the
 *   ones whose task has ended or whose last revocation failed for good: a
 *   job lost to a crash or a Redis failover is caught here.
 */
export class Sweeper {
  private readonly deps: Deps;
  private sweepTimer: NodeJS.Timeout | undefined;
  private reconcileTimer: NodeJS.Timeout | undefined;
  private sweeping = false;
  private reconciling = false;
  private readonly sweepMs: number;

  constructor(deps: Deps, opts: { sweepMs?: number } = {}) {
    this.deps = deps;
    this.sweepMs = opts.sweepMs ?? deps.config.revocation.sweepMs;
  }

  start(): void {
    this.sweepTimer = setInterval(() => void this.sweep(), this.sweepMs);
    this.reconcileTimer = setInterval(() => void this.reconcile(), this.deps.config.revocation.reconcileIntervalMs);
    this.sweepTimer.unref();
    this.reconcileTimer.unref();
  }

  stop(): void {
    clearInterval(this.sweepTimer);
    clearInterval(this.reconcileTimer);
  }

  /** One pass over what is due now. */
  async sweep(now = Date.now()): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      const { leases, tasks, queue } = this.deps;
      const due = await leases.due(now, 1000);
      await queue.endLeases(due.map((leaseId) => ({ leaseId, reason: 'ttl_expired' as const })));
      const overdue = await tasks.overdue(now, 200);
      await queue.endTasks(overdue.map((taskId) => ({ taskId, reason: 'task_expired' as const })));
    } catch (err) {
      this.deps.logger.warn({ err: (err as Error).message }, 'sweep failed');
    } finally {
      this.sweeping = false;
    }
  }

  /** Finds live leases whose revocation should have happened and re-enqueues it. Returns how many. */
  async reconcile(): Promise<number> {
    if (this.reconciling) return 0;
    this.reconciling = true;
    let requeued = 0;
    try {
      const { leases, tasks, queue } = this.deps;
      for await (const ids of leases.live()) {
        const records = await leases.getMany(ids);
        const taskIds = [...new Set(records.map((l) => l.taskId))];
        const statuses = new Map(await Promise.all(taskIds.map(async (t) => [t, await tasks.status(t)] as const)));
        // An `issuing` lease older than this had its issuing process die mid-call: record it as failed.
        const stuck = records.filter((l) => l.status === 'issuing' && Date.now() - l.issuedAt > ISSUING_STUCK_MS);
        for (const l of stuck) {
          await leases.end(l.leaseId, 'failed', { lastError: 'issuance_interrupted' });
          await this.deps.audit.append({
            action: 'credential.fail',
            actor: 'broker',
            decision: 'error',
            taskId: l.taskId,
            role: l.role,
            leaseId: l.leaseId,
            reason: 'issuance_interrupted',
          });
        }
        const work = records.filter(
          (l) =>
            !LeaseStore.isEnded(l.status) &&
            l.status !== 'issuing' &&
            (l.status === 'revoke_failed' || l.status === 'revoking' || statuses.get(l.taskId) !== 'open'),
        );
        await queue.endLeases(
          work.map((l) => ({
            leaseId: l.leaseId,
            reason: l.reason ?? (statuses.get(l.taskId) === 'expired' ? ('task_expired' as const) : ('task_completed' as const)),
          })),
        );
        requeued += work.length;
      }
    } catch (err) {
      this.deps.logger.warn({ err: (err as Error).message }, 'reconcile failed');
    } finally {
      this.reconciling = false;
    }
    return requeued;
  }
}
