import type { AuditEvent } from '../audit/record.ts';
import { roleOf } from '../config/roles.ts';
import type { Deps } from '../deps.ts';
import { LeaseStore } from '../leases/lease-store.ts';
import type { LeaseRecord, RevokeReason } from '../leases/types.ts';

/**
 * Ends the given live leases for `reason`: those whose provider has nothing
 * upstream (the broker's JWTs) at once, in bulk, with their audit records;
 * the others get one lease-end job each. Leases still `issuing` are left to
 * their activation, which sees the task closed (or the end requested) and
 * hands them to revocation itself. Returns how many were ended or queued.
 */
export async function endLeases(deps: Deps, leases: readonly LeaseRecord[], reason: RevokeReason, requestedAt: number): Promise<number> {
  const local = new Map<number, LeaseRecord[]>();
  const upstream: LeaseRecord[] = [];
  for (const l of leases) {
    if (LeaseStore.isEnded(l.status) || l.status === 'issuing') continue;
    if (deps.providers.get(l.provider)?.upstream === false) {
      const b = deps.keys.bucketOfId(l.leaseId)!;
      local.set(b, [...(local.get(b) ?? []), l]);
    } else {
      upstream.push(l);
    }
  }
  let n = 0;
  for (const [bucket, list] of local) {
    const byId = new Map(list.map((l) => [l.leaseId, l]));
    const { now, ended } = await deps.leases.endMany(
      bucket,
      list.map((l) => l.leaseId),
      'revoked',
      reason,
    );
    const events: AuditEvent[] = [];
    for (const id of ended) {
      const l = byId.get(id)!;
      deps.metrics.revocationLag.observe({ reason }, Math.max(0, now - requestedAt) / 1000);
      deps.metrics.revocations.inc({ result: 'revoked', reason, provider: l.provider });
      events.push({ action: 'lease.revoke', actor: 'broker', decision: 'ok', taskId: l.taskId, role: l.role, leaseId: id, reason });
    }
    await deps.audit.appendAll(events);
    n += ended.length;
  }
  for (const l of upstream) await deps.leases.requestEnd(l.leaseId, reason);
  await deps.queue.endLeases(upstream.map((l) => ({ leaseId: l.leaseId, reason, requestedAt })));
  return n + upstream.length;
}

/** The live leases of some tasks (one bucket). */
export async function liveLeasesOf(deps: Deps, taskIds: readonly string[]): Promise<LeaseRecord[]> {
  const ids = (await Promise.all(taskIds.map((t) => deps.tasks.leaseIds(t)))).flat();
  return (await deps.leases.getMany(ids)).filter((l) => !LeaseStore.isEnded(l.status));
}

/** The role config of a lease (own property lookup; undefined if the role was removed from config). */
export function roleOfLease(deps: Deps, lease: Pick<LeaseRecord, 'role'>) {
  return roleOf(deps.config.roles, lease.role);
}
