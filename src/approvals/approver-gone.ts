import type { Deps } from '../deps.ts';
import { isRedisUnavailable } from '../redis/unavailable.ts';
import type { ApprovalRecord } from './approval-store.ts';

/** Why an approval's approver no longer stands behind it. */
export type ApproverGone = { reason: 'approver_quarantined'; pattern: string } | { reason: 'approver_removed' };

/**
 * Why an approval decided by `by` no longer stands: `by` is quarantined (this instance's list), or no longer
 * matches `approvers` (the config changed since it decided). Undefined while it still stands.
 */
export function approverGone(deps: Pick<Deps, 'quarantine' | 'patterns'>, by: string): ApproverGone | undefined {
  const pattern = deps.quarantine.match(by);
  if (pattern !== undefined) return { reason: 'approver_quarantined', pattern };
  if (!deps.patterns.approvers.matches(by)) return { reason: 'approver_removed' };
  return undefined;
}

/**
 * Takes back an approval its approver can no longer stand behind (approved -> expired, the request index
 * cleared so the same request asks again), recorded as the broker's `approval.decide` denial in the same step
 * (approval-swap.lua). Only the call that swaps writes the record: one per voided approval, however many
 * reads and requests find it at once. False when lost to a concurrent use or void.
 */
export async function voidApproval(deps: Deps, record: ApprovalRecord, why: ApproverGone): Promise<boolean> {
  const res = await deps.approvals.void(record, {
    action: 'approval.decide',
    actor: 'broker',
    decision: 'deny',
    taskId: record.taskId,
    role: record.role,
    reason: why.reason,
    detail: {
      approvalId: record.approvalId,
      ...(record.decidedBy ? { decidedBy: record.decidedBy } : {}),
      ...('pattern' in why ? { pattern: why.pattern } : {}),
    },
  });
  if (!res) return false;
  await deps.audit.settleOutbox(deps.keys.bucketOfTask(record.taskId), [res.recorded.member], res.recorded.at);
  return true;
}

/**
 * Approvals as they stand, for reads and lists: an `approved` one whose approver no longer stands is voided
 * now, as the agent's next request would void it ({@link voidApproval}), so no read shows `approved` for an
 * approval that can no longer hand anything out. Updates `records` in place; one that lost its void to a
 * concurrent use or void is read again (`consumed`, or `expired`).
 */
export async function settleApprovals(deps: Deps, records: ApprovalRecord[]): Promise<void> {
  const gone = records.flatMap((r) => {
    const why = r.status === 'approved' && r.decidedBy !== undefined ? approverGone(deps, r.decidedBy) : undefined;
    return why ? [{ r, why }] : [];
  });
  if (gone.length === 0) return;
  await Promise.all(
    gone.map(async ({ r, why }) => {
      let voided: boolean;
      try {
        voided = await voidApproval(deps, r, why);
      } catch (err) {
        // Redis refusing writes (full, a failed save) must not take reads down with it: the approval is shown as
        // it stands, and the first call that can write voids it (the agent's request cannot be granted meanwhile).
        if (!isRedisUnavailable(err)) throw err;
        r.status = 'expired';
        return;
      }
      if (voided) {
        r.status = 'expired';
        return;
      }
      const now = await deps.approvals.get(r.approvalId, deps.clock.now());
      Object.assign(r, now ?? { status: 'expired' });
    }),
  );
}
