import type { ApprovalRecord } from '../approvals/approval-store.ts';
import type { Deps } from '../deps.ts';
import type { IdentityPatterns } from '../identity/patterns.ts';
import { LeaseStore } from '../leases/lease-store.ts';
import type { LeaseRecord, LeaseStatus } from '../leases/types.ts';
import { TASK_TTL_CEILING_MS } from '../lists/index-window.ts';

/** Approvals read at once (one HMGET each, pipelined). */
const PAGE = 500;
/** Lease records read at once. */
const LEASE_READS = 200;

/**
 * The live leases of `bucket` issued under an approval that an identity matching `approver` approved, which the
 * index of approved leases (Keys.approvedLeases) does not hold: those issued before that index existed, and those
 * an instance of the previous release issues during a rolling upgrade. Neither release wrote the approval or its
 * approver into such a lease, so they are found from the other side: the bucket's approvals (Keys.approvals, kept
 * while their task may live: src/lists/index-window.ts) that are `consumed`, decided by a matching approver and
 * whose task's deadline has not passed; then, for each, its task's leases that name no approval, of its agent, role
 * and scopes, at most its TTL, issued at or after its decision, and not ended, unless issued after a later used
 * approval of the same request was decided (that one's: laterDecisions). An approval whose task holds a lease
 * naming it was used by this release (that lease is in the index) and is skipped.
 *
 * Bounded: its cost is the bucket's approvals of the last week or so (each one a human decision, or a request
 * bounded by `tasks.maxPendingApprovals`), read by status first, plus the lease ids of the few tasks with a
 * matching approval (and, for those with a candidate lease, their agent's approvals since). It over-reaches only
 * where the link is lost: a task holding two such leases of the same role and scopes but requested with different
 * TTLs, approved by two approvers one of whom is quarantined, may lose both (deny by default: its agent asks again). Needed while a lease of a release before the index can live: it may go once every
 * supported upgrade starts from a release that writes the index (test/helpers/old-release.ts PREVIOUS_RELEASE past
 * it) and a task's life has passed since.
 */
export async function* legacyApprovedIn(
  deps: Deps,
  bucket: number,
  approver: IdentityPatterns,
  now: number,
): AsyncGenerator<{ leaseId: string; status: LeaseStatus; approvedBy: string }[]> {
  const { redis, keys } = deps;
  const key = keys.approvals(bucket);
  // No task outlives its creation by more than the ceiling, and an approval is requested after its task opens.
  const since = now - TASK_TTL_CEILING_MS;
  let cursor = '0';
  do {
    const [next, flat] = await redis.zscan(key, cursor, 'COUNT', PAGE);
    cursor = next;
    const ids: string[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      if (keys.bucketOfId(flat[i]!) === bucket && Number(flat[i + 1]) >= since) ids.push(flat[i]!);
    }
    const heads = await Promise.all(ids.map((id) => redis.hmget(keys.approval(id), 'status', 'decidedBy', 'expiresAt')));
    const hits = ids.filter((_, i) => {
      const [status, by, expiresAt] = heads[i]!;
      return status === 'consumed' && by != null && approver.matches(by) && Number(expiresAt) > now;
    });
    if (hits.length === 0) continue;
    const found = new Map<string, { leaseId: string; status: LeaseStatus; approvedBy: string }>();
    // A task with several such approvals is read once.
    const ofTask = new Map<string, Promise<LeaseRecord[]>>();
    for (const a of await deps.approvals.getMany(hits, now)) {
      if (a.status !== 'consumed' || a.decidedBy === undefined) continue;
      const read = ofTask.get(a.taskId) ?? leasesOfTask(deps, a.taskId);
      ofTask.set(a.taskId, read);
      const leases = await read;
      if (leases.some((l) => l.approvalId === a.approvalId)) continue;
      const scopes = JSON.stringify([...a.scopes].sort());
      const candidates = leases.filter(
        (l) =>
          l.approvalId === undefined &&
          !LeaseStore.isEnded(l.status) &&
          l.agent === a.agent &&
          l.role === a.role &&
          JSON.stringify([...l.scopes].sort()) === scopes &&
          // Issued after the decision, for at most the TTL approved (a lease's TTL is the request's, clamped).
          (a.decidedAt === undefined || l.issuedAt >= a.decidedAt) &&
          l.ttlSeconds <= a.ttlSeconds,
      );
      if (candidates.length === 0) continue;
      const named = new Set(leases.flatMap((l) => (l.approvalId === undefined ? [] : [l.approvalId])));
      const later = await laterDecisions(deps, bucket, a, scopes, named, now);
      for (const l of candidates) {
        // Issued after a later approval of the same request was decided: that one's (see laterDecisions).
        if (later.some((at) => at <= l.issuedAt)) continue;
        found.set(l.leaseId, { leaseId: l.leaseId, status: l.status, approvedBy: a.decidedBy });
      }
    }
    if (found.size > 0) yield [...found.values()];
  } while (cursor !== '0');
}

/**
 * When the later used approvals of exactly `a`'s request were decided (Redis ms), those no lease names. The
 * approvals of one exact request come one after another: the next is asked for only once the last was used
 * (consuming clears the request index, approval-swap.lua), and a lease is recorded right after its approval is
 * used. So a lease issued after such a later decision is that approval's, not `a`'s: without this, a task that
 * asked twice for the same credential, the first approved by the quarantined approver (its lease since ended) and
 * the second by another, lost the other's live credential. (Another TTL is another request, whose approvals may be
 * decided in any order: not told apart, as the function's comment says.) Read only when `a` has a candidate lease.
 */
async function laterDecisions(
  deps: Deps,
  bucket: number,
  a: ApprovalRecord,
  scopes: string,
  named: ReadonlySet<string>,
  now: number,
): Promise<number[]> {
  if (a.decidedAt === undefined) return [];
  const decidedAt = a.decidedAt;
  // The agent's approvals in this bucket asked for since `a` (approval-request.lua, by request time).
  const ids = (await deps.redis.zrangebyscore(deps.keys.approvalsOf(bucket, a.agent), a.requestedAt, '+inf')).filter(
    (id) => id !== a.approvalId && !named.has(id),
  );
  const out: number[] = [];
  for (let i = 0; i < ids.length; i += LEASE_READS) {
    for (const b of await deps.approvals.getMany(ids.slice(i, i + LEASE_READS), now)) {
      if (b.status !== 'consumed' || b.decidedAt === undefined || b.decidedAt <= decidedAt) continue;
      if (b.taskId !== a.taskId || b.agent !== a.agent || b.role !== a.role || b.ttlSeconds !== a.ttlSeconds) continue;
      if (JSON.stringify([...b.scopes].sort()) === scopes) out.push(b.decidedAt);
    }
  }
  return out;
}

/**
 * Every lease of a task: this release's index of them and the plain set the previous release writes (an instance
 * of it during a rolling upgrade writes only that one; task-lease-page.lua copies it over only when a page is read).
 */
async function leasesOfTask(deps: Deps, taskId: string): Promise<LeaseRecord[]> {
  const { redis, keys } = deps;
  const [indexed, legacy] = await Promise.all([
    redis.zrange(keys.taskLeases(taskId), '0', '-1'),
    redis.smembers(keys.taskLeasesLegacy(taskId)),
  ]);
  const ids = [...new Set([...indexed, ...legacy])];
  const out: LeaseRecord[] = [];
  for (let i = 0; i < ids.length; i += LEASE_READS) out.push(...(await deps.leases.getMany(ids.slice(i, i + LEASE_READS))));
  return out;
}
