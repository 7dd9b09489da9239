import { roleOf } from '../config/roles.ts';
import type { Deps } from '../deps.ts';
import type { LeaseRecord, RevokeReason } from '../leases/types.ts';

/** Leases one leases-end call takes: ~10-20 ms of Redis time, so other clients are not held up long. */
const PAGE = 1000;

/** The provider kinds with nothing to call upstream (the broker's JWTs), as the Lua scripts take them. */
export function localKinds(deps: Pick<Deps, 'providers'>): string {
  return deps.providers
    .all()
    .filter(([, p]) => !p.upstream)
    .map(([k]) => k)
    .join(' ');
}

/**
 * Ends the given leases of one bucket for `reason`, a page per Lua call
 * (leases-end.lua), without reading them into the process first: those whose
 * provider has nothing upstream end at once, with their audit records; the
 * others are marked `revoking` in the same step (the intent, before any
 * upstream call) and get one lease-end job each (added in bulk). Leases still
 * `issuing` are left to their activation, which sees the task closed (or the
 * end requested) and hands them to revocation itself; ended ones are skipped.
 * Returns how many were ended or handed to the worker.
 *
 * Each page's script puts the audit records of the leases it ends in the
 * bucket's audit outbox in the same step (so they survive this process).
 * Pages go to Redis one after another without waiting for each page's
 * records to be appended: those are queued at once (the audit log batches
 * them per chain, in order) and awaited before returning, so a job is done
 * only once every record is durable; one left unwritten (a crash, a failed
 * append) is appended from the outbox by recovery (src/audit/outbox.ts).
 */
export async function endLeaseIds(
  deps: Deps,
  bucket: number,
  leaseIds: readonly string[],
  reason: RevokeReason,
  requestedAt: number,
): Promise<number> {
  const { leases, metrics, audit, queue } = deps;
  const kinds = localKinds(deps);
  const pending: Promise<void>[] = [];
  // Awaited together below; a handler now so an early failure is not an unhandled rejection meanwhile.
  const track = (p: Promise<void>) => {
    p.catch(() => {});
    pending.push(p);
  };
  let n = 0;
  for (let i = 0; i < leaseIds.length; i += PAGE) {
    const { now, providers, handoff, records } = await leases.endPage(bucket, leaseIds.slice(i, i + PAGE), 'revoked', reason, kinds);
    const lag = Math.max(0, now - requestedAt) / 1000;
    const perProvider = new Map<string, number>();
    for (const provider of providers) {
      metrics.revocationLag.observe({ reason }, lag);
      perProvider.set(provider, (perProvider.get(provider) ?? 0) + 1);
    }
    for (const [provider, count] of perProvider) metrics.revocations.inc({ result: 'revoked', reason, provider }, count);
    track(audit.appendOutbox(bucket, records, now));
    if (handoff.length > 0) track(queue.endLeases(handoff.map((leaseId) => ({ leaseId, reason, requestedAt }))));
    n += providers.length + handoff.length;
  }
  await Promise.all(pending);
  return n;
}

/** Ends the given leases (any buckets) for `reason`; see endLeaseIds. */
export async function endLeases(
  deps: Deps,
  leases: readonly Pick<LeaseRecord, 'leaseId'>[],
  reason: RevokeReason,
  requestedAt: number,
): Promise<number> {
  const byBucket = new Map<number, string[]>();
  for (const l of leases) {
    const b = deps.keys.bucketOfId(l.leaseId);
    if (b === undefined) continue;
    const list = byBucket.get(b);
    if (list) list.push(l.leaseId);
    else byBucket.set(b, [l.leaseId]);
  }
  const counts = await Promise.all([...byBucket].map(([b, ids]) => endLeaseIds(deps, b, ids, reason, requestedAt)));
  return counts.reduce((a, b) => a + b, 0);
}

/** Ends every lease of some tasks (one task tree: one bucket) for `reason`. */
export async function endTaskLeases(deps: Deps, taskIds: readonly string[], reason: RevokeReason, requestedAt: number): Promise<number> {
  if (taskIds.length === 0) return 0;
  const ids = (await Promise.all(taskIds.map((t) => deps.tasks.leaseIds(t)))).flat();
  return endLeaseIds(deps, deps.keys.bucketOfTask(taskIds[0]!), ids, reason, requestedAt);
}

/** The role config of a lease (own property lookup; undefined if the role was removed from config). */
export function roleOfLease(deps: Deps, lease: Pick<LeaseRecord, 'role'>) {
  return roleOf(deps.config.roles, lease.role);
}
