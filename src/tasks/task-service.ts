import { createHash, randomUUID } from 'node:crypto';
import { authorize, deny, taskContext } from '../authz.ts';
import { canonicalJson } from '../audit/record.ts';
import type { Deps } from '../deps.ts';
import { badRequest, conflict, forbidden, notFound } from '../errors.ts';
import type { OpenTaskBody } from '../http/schemas.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { LeaseRecord } from '../leases/types.ts';
import type { Grant, TaskRecord } from './types.ts';

/** A task as the API shows it. */
export function publicTask(t: TaskRecord): Record<string, unknown> {
  return {
    taskId: t.taskId,
    agent: t.agent,
    tenant: t.tenant,
    purpose: t.purpose,
    status: t.status,
    expiresAt: new Date(t.expiresAt).toISOString(),
    grants: t.grants,
    labels: t.labels,
    ...(t.parentTaskId ? { parentTaskId: t.parentTaskId, depth: t.depth } : {}),
    ...(t.endedAt ? { endedAt: new Date(t.endedAt).toISOString() } : {}),
  };
}

/** A lease as the API shows it: never the handle, never a secret. */
export function publicLease(l: LeaseRecord, taskStatus?: string): Record<string, unknown> {
  // A live lease of a task that has ended is on its way out: say so rather than "active".
  const status = (l.status === 'active' || l.status === 'issuing') && taskStatus && taskStatus !== 'open' ? 'revoking' : l.status;
  return {
    leaseId: l.leaseId,
    taskId: l.taskId,
    role: l.role,
    provider: l.provider,
    agent: l.agent,
    scopes: l.scopes,
    status,
    issuedAt: new Date(l.issuedAt).toISOString(),
    expiresAt: new Date(l.expiresAt).toISOString(),
    revocable: l.revocable,
    ...(l.revokedAt ? { revokedAt: new Date(l.revokedAt).toISOString() } : {}),
    ...(l.reason ? { reason: l.reason } : {}),
    ...(l.lastError ? { lastError: l.lastError } : {}),
  };
}

const isSubset = (a: readonly string[], b: readonly string[]) => a.every((x) => b.includes(x));

/** Opening, reading and completing tasks (contract section 3), including sub-tasks. */
export class TaskService {
  private readonly deps: Deps;
  constructor(deps: Deps) {
    this.deps = deps;
  }

  /** Opens a task; `created: false` means the same request was repeated (200). */
  async open(who: WorkloadIdentity, body: OpenTaskBody): Promise<{ created: boolean; task: TaskRecord }> {
    const { config, tasks, audit } = this.deps;
    if (body.ttlSeconds > config.tasks.maxTtlSeconds)
      throw badRequest('ttl_too_long', `ttlSeconds may be at most ${config.tasks.maxTtlSeconds}.`);
    if (body.grants.length > config.tasks.maxGrants)
      throw badRequest('too_many_grants', `A task may have at most ${config.tasks.maxGrants} grants.`);
    const grants = body.grants.map((g) => this.checkGrant(g));
    const now = Date.now();
    const taskId = body.taskId ?? `t-${randomUUID()}`;
    const { taskId: _omit, ...rest } = body;
    const requestHash = createHash('sha256')
      .update(canonicalJson({ ...rest, openedBy: who.id }))
      .digest('base64url');
    let task: TaskRecord = {
      taskId,
      agent: body.agent,
      tenant: body.tenant,
      purpose: body.purpose,
      grants,
      labels: body.labels ?? {},
      status: 'open',
      openedBy: who.id,
      createdAt: now,
      expiresAt: now + body.ttlSeconds * 1000,
      depth: 0,
      delegators: [],
      requestHash,
    };
    if (body.parentTaskId) task = await this.delegate(who, task, body.parentTaskId);
    else if (!this.deps.patterns.orchestrators.matches(who.id)) {
      await deny(this.deps, who, 'not_orchestrator', "Only an orchestrator may open a task (or a task's agent a sub-task).", {
        action: 'access.deny',
        taskId,
      });
    }
    const policies = await authorize(this.deps, who, 'openTask', { type: 'Task', id: taskId }, { task: taskContext(task) }, { taskId });
    const res = await tasks.create(task);
    if (!res.created) {
      if (res.existing.requestHash !== requestHash)
        throw conflict('task_id_conflict', `Task ${taskId} already exists with a different request.`);
      return { created: false, task: res.existing };
    }
    await audit.append({
      action: 'task.open',
      actor: who.id,
      decision: 'allow',
      taskId,
      policies,
      detail: { agent: task.agent, tenant: task.tenant, roles: grants.map((g) => g.role), depth: task.depth },
    });
    return { created: true, task };
  }

  /** Reads a task with its leases; for the orchestrator that opened it, its agent, or an admin. */
  async get(who: WorkloadIdentity, taskId: string): Promise<{ task: TaskRecord; leases: LeaseRecord[] }> {
    const task = await this.deps.tasks.get(taskId);
    if (!task) throw notFound('task_not_found', `No task ${taskId}.`);
    if (who.id !== task.openedBy && who.id !== task.agent && !this.deps.patterns.admins.matches(who.id)) {
      throw forbidden('not_task_party', "Only the task's orchestrator, its agent or an admin may read it.");
    }
    const leases = await this.deps.leases.getMany(await this.deps.tasks.leaseIds(taskId));
    leases.sort((a, b) => a.issuedAt - b.issuedAt);
    return { task, leases };
  }

  /** Completes a task; every lease is revoked by the worker. Idempotent. */
  async complete(who: WorkloadIdentity, taskId: string): Promise<{ taskId: string; status: 'completed'; leases: number }> {
    const { tasks, queue, audit, patterns } = this.deps;
    const task = await tasks.get(taskId);
    if (!task) throw notFound('task_not_found', `No task ${taskId}.`);
    if (who.id !== task.openedBy && !patterns.admins.matches(who.id)) {
      await deny(this.deps, who, 'not_task_orchestrator', 'Only the orchestrator that opened the task or an admin may complete it.', {
        action: 'access.deny',
        taskId,
      });
    }
    const policies = await authorize(this.deps, who, 'completeTask', { type: 'Task', id: taskId }, { task: taskContext(task) }, { taskId });
    if (task.status === 'expired') throw conflict('task_expired', `Task ${taskId} already expired; its leases were revoked.`);
    if (task.status === 'open') {
      const { changed, status } = await tasks.end(taskId, 'completed');
      if (changed) {
        // The status change came first: from here on no lease can join the task, so the job sees them all.
        await queue.endTask(taskId, 'task_completed');
        await audit.append({ action: 'task.complete', actor: who.id, decision: 'ok', taskId, policies });
      } else if (status === 'expired') {
        throw conflict('task_expired', `Task ${taskId} already expired; its leases were revoked.`);
      }
    }
    return { taskId, status: 'completed', leases: await tasks.leaseCount(taskId) };
  }

  /** A grant as stored: role known, scopes allowed by the role, TTL ceiling defaulted to the role's. */
  private checkGrant(g: { role: string; scopes: string[]; maxTtlSeconds?: number | undefined }): Grant {
    const role = this.deps.config.roles[g.role];
    if (!role) throw badRequest('unknown_role', `Role "${g.role}" is not configured.`);
    const allowed = role.provider === 'jwt' ? role.scopes : role.provider === 'vault' ? role.token?.policies : undefined;
    if (allowed && !isSubset(g.scopes, allowed))
      throw badRequest(
        'scope_not_allowed',
        `Role "${g.role}" does not allow scopes ${g.scopes.filter((s) => !allowed.includes(s)).join(', ')}.`,
      );
    if (role.provider === 'vault' && role.path && g.scopes.length > 0)
      throw badRequest('scope_not_allowed', `Role "${g.role}" is a dynamic secret and takes no scopes.`);
    return { role: g.role, scopes: g.scopes, maxTtlSeconds: g.maxTtlSeconds ?? role.maxTtlSeconds };
  }

  /** Attenuation: a sub-task may only narrow its parent (roles, scopes, TTLs, deadline, depth). */
  private async delegate(who: WorkloadIdentity, task: TaskRecord, parentId: string): Promise<TaskRecord> {
    const parent = await this.deps.tasks.get(parentId);
    if (!parent) throw notFound('task_not_found', `No parent task ${parentId}.`);
    const d = (code: string, msg: string) => deny(this.deps, who, code, msg, { action: 'access.deny', taskId: task.taskId });
    if (who.id !== parent.agent) await d('not_parent_agent', "Only the parent task's agent may open a sub-task.");
    if (parent.status !== 'open' || Date.now() >= parent.expiresAt) throw conflict('task_not_open', `Parent task ${parentId} is not open.`);
    if (parent.depth + 1 > this.deps.config.tasks.maxDelegationDepth)
      await d('delegation_too_deep', `Delegation depth is limited to ${this.deps.config.tasks.maxDelegationDepth}.`);
    if (task.tenant !== parent.tenant) await d('delegation_widens', "A sub-task must keep its parent's tenant.");
    for (const g of task.grants) {
      const pg = parent.grants.find((x) => x.role === g.role);
      if (!pg || !isSubset(g.scopes, pg.scopes) || g.maxTtlSeconds > pg.maxTtlSeconds) {
        await d('delegation_widens', `Grant "${g.role}" is not within the parent's grants.`);
      }
    }
    if (task.expiresAt > parent.expiresAt) await d('delegation_outlives_parent', 'A sub-task must end no later than its parent.');
    return { ...task, parentTaskId: parentId, depth: parent.depth + 1, delegators: [parent.agent, ...parent.delegators] };
  }
}
