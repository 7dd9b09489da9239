import { deny } from '../authz.ts';
import type { Deps } from '../deps.ts';
import { conflict, forbidden, notFound } from '../errors.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { ApprovalRecord } from './approval-store.ts';

/** Approvers deciding on pending credential requests (contract section 3). */
export class ApprovalService {
  private readonly deps: Deps;
  constructor(deps: Deps) {
    this.deps = deps;
  }

  /** Visible to approvers, admins, the requesting agent and the task's orchestrator. */
  async get(who: WorkloadIdentity, approvalId: string): Promise<ApprovalRecord> {
    const r = await this.deps.approvals.get(approvalId);
    if (!r) throw notFound('approval_not_found', `No approval ${approvalId}.`);
    const { approvers, admins } = this.deps.patterns;
    if (who.id !== r.agent && !approvers.matches(who.id) && !admins.matches(who.id)) {
      const task = await this.deps.tasks.get(r.taskId);
      if (who.id !== task?.openedBy) throw forbidden('not_approval_party', 'Not allowed to read this approval.');
    }
    return r;
  }

  async decide(who: WorkloadIdentity, approvalId: string, decision: 'approve' | 'reject', reason?: string): Promise<ApprovalRecord> {
    if (!this.deps.patterns.approvers.matches(who.id)) {
      await deny(this.deps, who, 'not_approver', 'Only an identity listed in `approvers` may decide approvals.', {
        action: 'approval.decide',
        detail: { approvalId },
      });
    }
    const r = await this.deps.approvals.get(approvalId);
    if (!r) throw notFound('approval_not_found', `No approval ${approvalId}.`);
    if (who.id === r.agent) throw forbidden('self_approval', 'An agent cannot approve its own request.');
    const task = await this.deps.tasks.get(r.taskId);
    if (r.status === 'expired' || !task || task.status !== 'open' || Date.now() >= task.expiresAt)
      throw conflict('approval_expired', 'The approval ended with its task.');
    if (r.status !== 'pending') throw conflict('approval_decided', `The approval is already ${r.status}.`);
    const status = decision === 'approve' ? 'approved' : 'rejected';
    if (!(await this.deps.approvals.decide(approvalId, status, who.id, reason)))
      throw conflict('approval_decided', 'The approval was decided concurrently.');
    await this.deps.audit.append({
      action: 'approval.decide',
      actor: who.id,
      decision: decision === 'approve' ? 'allow' : 'deny',
      taskId: r.taskId,
      role: r.role,
      ...(reason ? { reason } : {}),
      detail: { approvalId },
    });
    return (await this.deps.approvals.get(approvalId))!;
  }
}
