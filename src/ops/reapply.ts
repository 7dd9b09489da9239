import type { AdminService } from '../admin/admin-service.ts';
import { keepFresh } from '../audit/outbox-intent.ts';
import { outboxMember } from '../audit/outbox-member.ts';
import type { AuditEvent, AuditRecord, OutboxEvent } from '../audit/record.ts';
import type { Deps } from '../deps.ts';
import { endOneLease } from '../leases/lease-service.ts';
import { LeaseStore } from '../leases/lease-store.ts';
import type { RevokeReason } from '../leases/types.ts';
import type { TaskService } from '../tasks/task-service.ts';

/** What telling a rolled-back Redis its lost endings again changed. */
export interface Reapplied {
  /** Tasks ended again (sub-tasks included). */
  tasks: number;
  /** Leases handed to revocation again (those of the tasks above included). */
  leases: number;
  /** Quarantines added again or lifted again. */
  quarantines: number;
}

const REVOKE_REASONS: ReadonlySet<string> = new Set<RevokeReason>([
  'task_completed',
  'task_expired',
  'ttl_expired',
  'revoked_by_caller',
  'revoked_by_admin',
]);

/**
 * The identity of the record an ending told again writes (AuditLog.appendOnce): the told record's seq and hash
 * in its chain, which is the chain the new record goes to (the same task's bucket, or `ops`).
 */
export function reappliedId(told: AuditRecord): string {
  return `reapplied:${told.seq}:${told.hash}`;
}

/**
 * Applies again the endings a Redis that went back in time (restarted from an
 * older snapshot) no longer holds, from their audit records (the export's, and
 * those this process remembers writing): a completed or admin-ended task is
 * ended again, which hands its leases to the worker to revoke upstream again;
 * a revoked lease is revoked again; a quarantine added is added again (and
 * what it ended is ended again), one lifted is lifted again. Each step is
 * idempotent (an ended task or lease is left alone), so records told twice
 * (by the export and by memory, or by two instances) do no harm. A task or
 * lease the snapshot never held (created after it) cannot be found: nothing
 * is done for it (docs/operations.md, *Redis went back in time*).
 *
 * `records`: in chain order within each chain (quarantine changes are all in
 * the ops chain, so their order holds).
 */
export async function reapplyEndings(
  deps: Deps,
  services: { tasks: TaskService; admin: AdminService },
  records: readonly AuditRecord[],
): Promise<Reapplied> {
  const out: Reapplied = { tasks: 0, leases: 0, quarantines: 0 };
  let quarantineChanged = false;
  for (const r of records) {
    const again = { reapplied: 'redis_rolled_back', originalSeq: r.seq, originalTime: r.time, originalActor: r.actor };
    if ((r.action === 'task.complete' || r.action === 'task.revoke') && r.taskId) {
      const byAdmin = r.action === 'task.revoke' || r.reason === 'revoked_by_admin';
      const record: OutboxEvent = {
        action: r.action,
        actor: 'broker',
        decision: 'ok',
        taskId: r.taskId,
        ...(byAdmin ? { reason: 'revoked_by_admin' } : {}),
        detail: again,
      };
      const res = await services.tasks.end(r.taskId, 'completed', byAdmin ? 'revoked_by_admin' : 'task_completed', undefined, {
        task: record,
      });
      if (res.kind === 'ended') {
        out.tasks += res.taskIds.length;
        out.leases += res.liveLeases;
        await deps.audit.appendOutbox(deps.keys.bucketOfTask(r.taskId), res.records, res.endedAt);
      }
    } else if (r.action === 'lease.revoke' && r.leaseId) {
      const lease = await deps.leases.get(r.leaseId);
      if (!lease || LeaseStore.isEnded(lease.status) || lease.status === 'revoking') continue;
      const reason = (REVOKE_REASONS.has(r.reason ?? '') ? r.reason : 'revoked_by_admin') as RevokeReason;
      // The intent before the side effect (the upstream revocation is never forgotten), once per ending told
      // again: an attempt that appended it and failed before ending the lease (the lease still live) must not
      // record the same revocation a second time at its retry (test/ops/reapply-revoke-retry.test.ts).
      const event: AuditEvent = {
        action: 'lease.revoke',
        actor: 'broker',
        decision: 'ok',
        taskId: lease.taskId,
        role: lease.role,
        leaseId: lease.leaseId,
        reason,
        detail: { ...again, stage: 'requested' },
      };
      await deps.audit.appendOnce(deps.audit.chainOf(event), event, reappliedId(r));
      await endOneLease(deps, lease, reason, deps.clock.now());
      out.leases += 1;
    } else if (r.action === 'quarantine.add' && r.decision === 'ok' && typeof r.detail?.pattern === 'string') {
      const pattern = r.detail.pattern;
      const at = typeof r.detail.at === 'string' ? r.detail.at : r.time;
      let added: { member: string; at: number } | undefined;
      if (!(await deps.redis.hexists(deps.keys.quarantine(), pattern))) {
        // Recorded in the step that puts it in force, as an admin's quarantine is (quarantine-add.lua): the
        // export is what restores quarantines after a data loss.
        const member = outboxMember({
          action: 'quarantine.add',
          actor: 'broker',
          decision: 'ok',
          reason: r.reason ?? '',
          detail: { pattern, at, ...again },
        });
        added = { member, at: (await deps.quarantine.add({ pattern, reason: r.reason ?? '', by: r.actor, at }, member))! };
        out.quarantines += 1;
        quarantineChanged = true;
      }
      // Its tasks may have come back open with the snapshot (their task.revoke records may never have been exported).
      // Ended before the record is appended, as an admin's quarantine does: a failed append must not leave them
      // open (the record waits in the outbox, and recovery ends them again before appending it). The record is
      // kept fresh meanwhile, as an admin's quarantine keeps its own: endings that outlast the grace period would
      // otherwise have another instance's recovery take it for a dead process's and run the same endings at once.
      const fresh = added === undefined ? undefined : keepFresh(deps, 'ops', added.member);
      let ended: { tasks: number; leases: number };
      try {
        ended = await services.admin.endQuarantined(pattern);
      } finally {
        fresh?.stop();
      }
      out.tasks += ended.tasks;
      out.leases += ended.leases;
      if (added !== undefined) await deps.audit.appendOutbox('ops', [added.member], added.at);
    } else if (r.action === 'quarantine.remove' && r.decision === 'ok' && typeof r.detail?.pattern === 'string') {
      const pattern = r.detail.pattern;
      if (await deps.redis.hexists(deps.keys.quarantine(), pattern)) {
        // Once per ending told again, as a revocation is (an attempt that failed before dropping it wrote it).
        const event: AuditEvent = { action: 'quarantine.remove', actor: 'broker', decision: 'ok', detail: { pattern, ...again } };
        await deps.audit.appendOnce('ops', event, reappliedId(r));
        await deps.redis.hdel(deps.keys.quarantine(), pattern);
        out.quarantines += 1;
        quarantineChanged = true;
      }
    }
  }
  if (quarantineChanged) await deps.quarantine.reload({ force: true });
  return out;
}
