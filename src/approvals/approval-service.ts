import { deny, denial, refuseControls } from '../authz.ts';
import { fieldWithControls } from '../http/schemas.ts';
import type { Deps } from '../deps.ts';
import { conflict, forbidden, notFound } from '../errors.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { ApprovalRecord } from './approval-store.ts';
import { approverGone, settleApprovals } from './approver-gone.ts';
import { agentInTree } from './tree-agents.ts';

/** An approval as the API shows it (ISO 8601 times, like tasks and leases). */
export function publicApproval(r: ApprovalRecord): Record<string, unknown> {
  return {
    approvalId: r.approvalId,
    taskId: r.taskId,
    role: r.role,
    scopes: r.scopes,
    ttlSeconds: r.ttlSeconds,
    ...(r.issuedTtlSeconds === undefined ? {} : { issuedTtlSeconds: r.issuedTtlSeconds }),
    agent: r.agent,
    purpose: r.purpose,
    status: r.status,
    requestedAt: new Date(r.requestedAt).toISOString(),
    expiresAt: new Date(r.expiresAt).toISOString(),
    ...(r.decidedBy ? { decidedBy: r.decidedBy } : {}),
    ...(r.decidedAt ? { decidedAt: new Date(r.decidedAt).toISOString() } : {}),
    ...(r.reason ? { reason: r.reason } : {}),
  };
}

/** Approvers deciding on pending credential requests (contract section 3). */
export class ApprovalService {
  private readonly deps: Deps;
  constructor(deps: Deps) {
    this.deps = deps;
  }

  /**
   * Whether `who` may read `r`: approvers, admins, the requesting agent, the task's orchestrator, and whoever reads
   * the task from above (a party to a task above a sub-task: src/tasks/readers.ts). Reading is not deciding.
   */
  mayRead(who: WorkloadIdentity, r: ApprovalRecord): boolean {
    const { approvers, admins } = this.deps.patterns;
    return (
      who.id === r.agent ||
      who.id === r.openedBy ||
      (r.readers?.includes(who.id) ?? false) ||
      approvers.matches(who.id) ||
      admins.matches(who.id)
    );
  }

  async get(who: WorkloadIdentity, approvalId: string): Promise<ApprovalRecord> {
    const r = await this.deps.approvals.get(approvalId, this.deps.clock.now());
    if (!r) throw notFound('approval_not_found', `No approval ${approvalId}.`);
    if (!this.mayRead(who, r)) {
      await deny(this.deps, who, 'not_approval_party', 'Not allowed to read this approval.', {
        action: 'access.deny',
        taskId: r.taskId,
        role: r.role,
        detail: { approvalId },
      });
    }
    // As it stands: an approval whose approver was quarantined or removed since reads `expired`, not `approved`.
    await settleApprovals(this.deps, [r]);
    return r;
  }

  /** `approvalId` undefined: the path named no id the broker could have issued (an unknown approval, once the caller may decide). */
  async decide(
    who: WorkloadIdentity,
    approvalId: string | undefined,
    decision: 'approve' | 'reject',
    reason?: string,
  ): Promise<ApprovalRecord> {
    if (!this.deps.patterns.approvers.matches(who.id)) {
      await deny(this.deps, who, 'not_approver', 'Only an identity listed in `approvers` may decide approvals.', {
        action: 'approval.decide',
        detail: approvalId === undefined ? {} : { approvalId },
      });
    }
    if (approvalId === undefined) throw notFound('approval_not_found', 'No such approval.');
    const r = await this.deps.approvals.get(approvalId, this.deps.clock.now());
    if (!r) throw notFound('approval_not_found', `No approval ${approvalId}.`);
    await settleApprovals(this.deps, [r]);
    // The reason is shown with the decision (approval lists, the console, its audit record).
    const refused = fieldWithControls([['reason', reason, 'text']]);
    if (refused !== undefined) {
      await refuseControls(this.deps, who, refused, { action: 'access.deny', taskId: r.taskId, detail: { approvalId } });
    }
    // Its own request, or one made inside a delegation it is part of: the sub-task's agent acts for it, and every
    // agent of one task tree works on one unit of work for the root's agent (who writes the sub-tasks' instructions),
    // so none of them is a second pair of eyes on another's request (src/approvals/tree-agents.ts).
    if (
      who.id === r.agent ||
      (await this.deps.tasks.fixed(r.taskId))?.delegators.includes(who.id) ||
      (await agentInTree(this.deps, who.id, r.taskId))
    ) {
      await deny(this.deps, who, 'self_approval', 'An agent cannot approve its own request, nor one made on its behalf.', {
        action: 'approval.decide',
        taskId: r.taskId,
        detail: { approvalId },
      });
    }
    const taskStatus = await this.deps.tasks.status(r.taskId);
    // Deciding on an ended task is a denial like the 403s (docs/audit.md: 409s on an ended task are records).
    if (r.status === 'expired' || taskStatus !== 'open') {
      // Taken back only when its approver no longer stands behind it (src/approvals/approver-gone.ts); an approval
      // past its own deadline reads `expired` too, while its task's record may still read `open` until swept.
      const why =
        taskStatus === 'open' && r.decidedBy && approverGone(this.deps, r.decidedBy)
          ? 'The approval was taken back: its approver no longer stands.'
          : 'The approval ended with its task.';
      throw await denial(this.deps, who, conflict('approval_expired', why), {
        action: 'approval.decide',
        taskId: r.taskId,
        detail: { approvalId },
      });
    }
    // Changing a decision made (approve after reject, or the reverse) is refused like any denial: audited.
    const decidedAlready = (detail: string) =>
      denial(this.deps, who, conflict('approval_decided', detail), { action: 'approval.decide', taskId: r.taskId, detail: { approvalId } });
    if (r.status !== 'pending') throw await decidedAlready(`The approval is already ${r.status}.`);
    const status = decision === 'approve' ? 'approved' : 'rejected';
    // The record goes to the bucket's audit outbox with the decision (approval-swap.lua): a process that
    // dies before appending it loses nothing.
    const decided = await this.deps.approvals.decide(r, status, who.id, reason, {
      action: 'approval.decide',
      actor: who.id,
      decision: decision === 'approve' ? 'allow' : 'deny',
      taskId: r.taskId,
      role: r.role,
      ...(reason ? { reason } : {}),
      detail: {
        approvalId,
        ttlSeconds: r.ttlSeconds,
        ...(r.issuedTtlSeconds === undefined ? {} : { issuedTtlSeconds: r.issuedTtlSeconds }),
        scopes: r.scopes,
      },
    });
    if (!decided) throw await decidedAlready('The approval was decided concurrently.');
    if (decided.recorded) {
      await this.deps.audit.settleOutbox(this.deps.keys.bucketOfTask(r.taskId), [decided.recorded.member], decided.recorded.at);
    }
    const after = await this.deps.approvals.get(approvalId, this.deps.clock.now());
    if (!after) throw forbidden('not_approval_party', 'The approval is gone.');
    return after;
  }
}
