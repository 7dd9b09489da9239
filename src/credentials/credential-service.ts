import { randomBytes } from 'node:crypto';
import { authorize, deny, taskContext } from '../authz.ts';
import type { ApprovalRecord } from '../approvals/approval-store.ts';
import type { Deps } from '../deps.ts';
import { BrokerError, conflict, forbidden, notFound } from '../errors.ts';
import type { CredentialRequest } from '../http/schemas.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import { clampTtl } from '../leases/ttl.ts';
import type { LeaseRecord } from '../leases/types.ts';
import type { IssueResult } from '../providers/types.ts';

/** 201: a credential. */
export interface IssuedCredential {
  leaseId: string;
  taskId: string;
  role: string;
  provider: string;
  expiresAt: string;
  ttlSeconds: number;
  revocable: boolean;
  scopes: string[];
  credentials: Record<string, unknown>;
}

/** 202: the role needs an approver first. */
export interface PendingApproval {
  approvalId: string;
  status: 'pending';
}

/**
 * Turns a credential request into a credential, in this order: the task is
 * open and the caller is its agent; the role is granted and the scopes are
 * within the grant; the TTL is clamped; policy permits; an approval exists if
 * the role needs one; the lease is recorded; then the credential is made.
 */
export class CredentialService {
  private readonly deps: Deps;
  constructor(deps: Deps) {
    this.deps = deps;
  }

  async request(who: WorkloadIdentity, body: CredentialRequest): Promise<IssuedCredential | PendingApproval> {
    const { tasks, config, providers } = this.deps;
    // The cached immutable part: whether the task is still open is checked atomically when the lease is created.
    const task = await tasks.fixed(body.taskId);
    if (!task) throw notFound('task_not_found', `No task ${body.taskId}.`);
    const d = (code: string, msg: string) =>
      deny(this.deps, who, code, msg, { action: 'credential.deny', taskId: task.taskId, role: body.role });
    if (who.id !== task.agent) await d('not_task_agent', "Only the task's agent may request its credentials.");
    const now = Date.now();
    if (now >= task.expiresAt) throw conflict('task_not_open', `Task ${task.taskId} has expired.`);
    const grant = task.grants.find((g) => g.role === body.role);
    if (!grant) await d('role_not_granted', `Role "${body.role}" is not granted to this task.`);
    const role = config.roles[body.role];
    if (!role) await d('role_not_granted', `Role "${body.role}" is no longer configured.`);
    const scopes = body.scopes ?? grant!.scopes;
    const extra = scopes.filter((s) => !grant!.scopes.includes(s));
    if (extra.length > 0) await d('scope_not_granted', `Scopes not granted to this task: ${extra.join(', ')}.`);
    const provider = providers.forRole(role!);
    const ttl = clampTtl({
      requested: body.ttlSeconds,
      grantMax: grant!.maxTtlSeconds,
      roleMax: role!.maxTtlSeconds,
      taskLeftSeconds: (task.expiresAt - now) / 1000,
      upstreamMin: provider.minTtlSeconds,
    });
    // For a role that needs approval, policy is asked as if approved first: a request policy
    // would refuse anyway gets its 403 now instead of an approval nobody should grant.
    const needsApproval = role!.approval === 'required';
    const policies = await authorize(
      this.deps,
      who,
      'issue',
      { type: 'Role', id: body.role },
      { task: taskContext(task), ttlSeconds: ttl.ttlSeconds, scopes, approved: needsApproval },
      { taskId: task.taskId, role: body.role },
    );
    let approval: ApprovalRecord | undefined;
    if (needsApproval) {
      const found = await this.approvalFor(who, task.taskId, body, scopes, task.expiresAt);
      if ('pending' in found) return found.pending;
      approval = found.approved;
    }
    if (approval && !(await this.deps.approvals.consume(approval)))
      throw conflict('approval_consumed', 'That approval was already used; request again.');

    const lease: LeaseRecord = {
      leaseId: randomBytes(16).toString('hex'),
      taskId: task.taskId,
      role: body.role,
      provider: role!.provider,
      agent: who.id,
      scopes,
      status: 'issuing',
      issuedAt: now,
      expiresAt: now + ttl.ttlSeconds * 1000,
      revocable: provider.revocable(role!),
      handle: {},
    };
    const req = { leaseId: lease.leaseId, roleName: body.role, role: role!, task, agent: who.id, scopes, ttlSeconds: ttl.ttlSeconds };
    let result;
    if (role!.provider === 'jwt') {
      // Local signing has no upstream side effect, so sign first and record once; the token leaves only after the record is stored.
      result = await provider.issue(req);
      const created = await this.deps.leases.create({ ...lease, status: 'active', expiresAt: result.expiresAt });
      if (created === 'no_task') throw notFound('task_not_found', `No task ${task.taskId}.`);
      if (created !== 'ok') throw conflict('task_not_open', `Task ${task.taskId} is no longer open.`);
    } else {
      result = await this.issueUpstream(lease, () => provider.issue(req));
    }
    this.deps.metrics.issued.inc({ provider: role!.provider, role: body.role });
    await this.deps.audit.append({
      action: 'credential.issue',
      actor: who.id,
      decision: 'allow',
      taskId: task.taskId,
      role: body.role,
      leaseId: lease.leaseId,
      policies,
      detail: { ttlSeconds: ttl.ttlSeconds, ttlBoundBy: ttl.boundBy, scopes, ...(approval ? { approvalId: approval.approvalId } : {}) },
    });
    return {
      leaseId: lease.leaseId,
      taskId: task.taskId,
      role: body.role,
      provider: role!.provider,
      expiresAt: new Date(result.expiresAt).toISOString(),
      ttlSeconds: ttl.ttlSeconds,
      revocable: lease.revocable,
      scopes,
      credentials: result.credentials,
    };
  }

  /**
   * Record first, then act: the lease exists (as `issuing`) before the
   * upstream creates anything, so a crash in between leaves a record the
   * reconciler can see, never a dangling upstream credential we know nothing of.
   */
  private async issueUpstream(lease: LeaseRecord, call: () => Promise<IssueResult>): Promise<IssueResult> {
    const created = await this.deps.leases.create(lease);
    if (created !== 'ok') throw conflict('task_not_open', `Task ${lease.taskId} is no longer open.`);
    let result;
    try {
      result = await call();
    } catch (err) {
      const code = err instanceof BrokerError ? err.code : 'upstream_error';
      await this.deps.leases.end(lease.leaseId, 'failed', { lastError: code });
      await this.deps.audit.append({
        action: 'credential.fail',
        actor: lease.agent,
        decision: 'error',
        taskId: lease.taskId,
        role: lease.role,
        leaseId: lease.leaseId,
        reason: code,
      });
      throw err;
    }
    const activated = await this.deps.leases.activate(lease, { handle: result.handle, expiresAt: result.expiresAt });
    if (activated !== 'ok') {
      // The task ended while the upstream call was in flight: revoke what we just made, hand out nothing.
      await this.deps.queue.endLeases([{ leaseId: lease.leaseId, reason: 'task_completed' }]);
      throw conflict('task_not_open', `Task ${lease.taskId} ended while the credential was being issued; it has been revoked.`);
    }
    return result;
  }

  private async approvalFor(
    who: WorkloadIdentity,
    taskId: string,
    body: CredentialRequest,
    scopes: string[],
    expiresAt: number,
  ): Promise<{ pending: PendingApproval } | { approved: ApprovalRecord }> {
    const { record, created } = await this.deps.approvals.findOrCreate({
      taskId,
      role: body.role,
      agent: who.id,
      scopes,
      ttlSeconds: body.ttlSeconds,
      expiresAt,
    });
    if (created) {
      await this.deps.audit.append({
        action: 'credential.pending',
        actor: who.id,
        decision: 'ok',
        taskId,
        role: body.role,
        detail: { approvalId: record.approvalId },
      });
    }
    if (record.status === 'pending') return { pending: { approvalId: record.approvalId, status: 'pending' } };
    if (record.status === 'approved') return { approved: record };
    this.deps.metrics.denied.inc({ code: 'approval_rejected' });
    throw forbidden(
      record.status === 'rejected' ? 'approval_rejected' : 'approval_expired',
      `The approval for this request was ${record.status}.`,
      { extra: { approvalId: record.approvalId } },
    );
  }
}
