import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { canonicalJson } from '../audit/record.ts';
import { authorize, deny, denial, refuseControls, taskContext } from '../authz.ts';
import { roleOf } from '../config/roles.ts';
import type { Deps } from '../deps.ts';
import { BrokerError, badRequest, conflict, forbidden, notFound } from '../errors.ts';
import { MAX_LABELS, type OpenTaskBody, textWithControls } from '../http/schemas.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { LeaseRecord } from '../leases/types.ts';
import { descriptorOf } from '../providers/index.ts';
import { attenuate } from './delegation.ts';
import { isTaskParty, readsAnAncestor } from './readers.ts';
import { StaleTask, type TaskStore } from './task-store.ts';
import { type Grant, rootTaskId, type TaskEndReason, type TaskFixed, type TaskRecord, type TaskStatus } from './types.ts';

/** Longest task id the broker makes (a root id plus `~<name>` per delegation level). */
const MAX_TASK_ID = 512;

/** A task as the API shows it. */
export function publicTask(t: TaskRecord): Record<string, unknown> {
  return {
    taskId: t.taskId,
    agent: t.agent,
    tenant: t.tenant,
    purpose: t.purpose,
    status: t.status,
    createdAt: new Date(t.createdAt).toISOString(),
    expiresAt: new Date(t.expiresAt).toISOString(),
    grants: t.grants,
    labels: t.labels,
    openedBy: t.openedBy,
    ...(t.parentTaskId ? { parentTaskId: t.parentTaskId, depth: t.depth } : {}),
    ...(t.delegators.length ? { delegators: t.delegators } : {}),
    ...(t.endedAt ? { endedAt: new Date(t.endedAt).toISOString() } : {}),
    ...(t.reason && t.status !== 'open' ? { reason: t.reason } : {}),
  };
}

/** A lease as the API shows it: never the handle, never a secret. */
export function publicLease(l: LeaseRecord, taskStatus?: string): Record<string, unknown> {
  // A live lease of a task that has ended is on its way out: say so rather than "active".
  const status = l.status === 'active' && taskStatus && taskStatus !== 'open' ? 'revoking' : l.status;
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

/** Opening, reading and ending tasks (contract section 3), including sub-tasks. */
export class TaskService {
  private readonly deps: Deps;
  constructor(deps: Deps) {
    this.deps = deps;
  }

  /** Opens a task; `created: false` means the same request was repeated (200). */
  async open(who: WorkloadIdentity, body: OpenTaskBody): Promise<{ created: boolean; task: TaskRecord }> {
    // A sub-task's parent may come from the cache: decided again if it was an earlier incarnation of its id.
    return body.parentTaskId ? this.deps.tasks.onCurrent(body.parentTaskId, () => this.openOnce(who, body)) : this.openOnce(who, body);
  }

  private async openOnce(who: WorkloadIdentity, body: OpenTaskBody): Promise<{ created: boolean; task: TaskRecord }> {
    const { config } = this.deps;
    const refused = textWithControls(body);
    if (refused !== undefined) {
      // Recorded where the other refusals of an open are: under the parent for a sub-task, under the task only when
      // the caller named it (an id never used names nothing).
      await refuseControls(
        this.deps,
        who,
        refused,
        body.parentTaskId
          ? {
              action: 'access.deny',
              taskId: body.parentTaskId,
              detail: body.taskId !== undefined ? { subtask: `${body.parentTaskId}~${body.taskId}` } : {},
            }
          : { action: 'access.deny', ...(body.taskId !== undefined ? { taskId: body.taskId } : {}) },
      );
    }
    if (body.ttlSeconds > config.tasks.maxTtlSeconds)
      throw badRequest('ttl_too_long', `ttlSeconds may be at most ${config.tasks.maxTtlSeconds}.`);
    if (body.grants.length > config.tasks.maxGrants)
      throw badRequest('too_many_grants', `A task may have at most ${config.tasks.maxGrants} grants.`);
    const { taskId: _omit, ...rest } = body;
    const requestHash = createHash('sha256')
      .update(canonicalJson({ ...rest, openedBy: who.id }))
      .digest('base64url');
    const { task, parentCreatedAt } = body.parentTaskId
      ? await this.subtask(who, body, requestHash)
      : { task: await this.root(who, body, requestHash), parentCreatedAt: undefined };
    // A refusal decided on a cached parent is made only once that parent is known to be current.
    const beforeDenial = async () => {
      if (
        task.parentTaskId &&
        parentCreatedAt !== undefined &&
        !(await this.deps.tasks.isCurrent({ taskId: task.parentTaskId, createdAt: parentCreatedAt }))
      )
        throw new StaleTask();
    };
    const policies = await authorize(
      this.deps,
      who,
      'openTask',
      { type: 'Task', id: task.taskId },
      // The contract's openTask context: the requested lifetime and the union of the grants' scopes.
      { task: taskContext(task), ttlSeconds: task.ttlSeconds, scopes: [...new Set(task.grants.flatMap((g) => g.scopes))] },
      // A sub-task's refusal is recorded under its parent, which exists (see openSubtask's refusals).
      task.parentTaskId ? { taskId: task.parentTaskId, detail: { subtask: task.taskId } } : { taskId: task.taskId },
      { beforeDenial },
    );
    // After policy: a caller policy refuses learns nothing about quarantines.
    await this.refuseQuarantinedAgent(who, task, body.taskId !== undefined, beforeDenial);
    const reserved = task.parentTaskId ? false : await this.reserveOpen(who, task, body.taskId !== undefined);
    // The record goes to the bucket's audit outbox with the task (task-open.lua): a process that dies before
    // appending it loses nothing (recovery appends it, once).
    const res = await this.openStored(task, reserved, {
      maxSubtasks: config.tasks.maxSubtasks,
      rootTaskId: rootTaskId(task.taskId),
      ...(parentCreatedAt === undefined ? {} : { parentCreatedAt }),
      audit: {
        action: 'task.open',
        actor: who.id,
        decision: 'allow',
        taskId: task.taskId,
        policies,
        detail: { agent: task.agent, tenant: task.tenant, roles: task.grants.map((g) => g.role), depth: task.depth },
      },
    });
    const d = (code: 'delegation_outlives_parent' | 'limit_exceeded', msg: string) =>
      deny(
        this.deps,
        who,
        code,
        msg,
        task.parentTaskId
          ? { action: 'access.deny', taskId: task.parentTaskId, detail: { subtask: task.taskId } }
          : { action: 'access.deny', taskId: task.taskId },
      );
    switch (res.kind) {
      case 'created':
        if (res.recorded) await this.deps.audit.settleOutbox(this.deps.keys.bucketOfTask(task.taskId), [res.recorded], res.task.createdAt);
        return { created: true, task: await this.afterQuarantine(who, res.task) };
      case 'exists':
        if (res.task.requestHash !== requestHash) {
          // A refusal like the others of an open (contract: every denial is a record): another orchestrator trying an
          // id one of its peers holds, or an agent reusing a sub-task name with other grants, is seen in the evidence.
          await beforeDenial();
          throw await denial(
            this.deps,
            who,
            conflict('task_id_conflict', `Task ${task.taskId} already exists with a different request.`),
            task.parentTaskId
              ? { action: 'access.deny', taskId: task.parentTaskId, detail: { subtask: task.taskId } }
              : { action: 'access.deny', taskId: task.taskId },
          );
        }
        return { created: false, task: res.task };
      case 'parent_missing':
        throw notFound('task_not_found', `No parent task ${body.parentTaskId}.`);
      case 'parent_not_open':
        // A 409 on an ended task is a denial like the 403s (docs/audit.md): recorded under the parent, as the others.
        throw await denial(this.deps, who, conflict('task_not_open', `Parent task ${body.parentTaskId} is not open.`), {
          action: 'access.deny',
          taskId: body.parentTaskId,
          detail: { subtask: task.taskId },
        });
      case 'parent_stale':
        throw new StaleTask();
      case 'outlives_parent':
        return d('delegation_outlives_parent', 'A sub-task must end no later than its parent.');
      case 'limit':
        return d('limit_exceeded', `A task tree may have at most ${config.tasks.maxSubtasks} sub-tasks over its life (tasks.maxSubtasks).`);
    }
  }

  /**
   * A top-level task's place among its opener's open tasks (`tasks.maxOpenTasks`; sub-tasks are bounded per tree by
   * `tasks.maxSubtasks`): 429 `limit_exceeded`, audited, when the opener has that many open. A repeated open of a
   * task that exists answers as it did (200, or 409 for another request) whatever the count: nothing new is stored.
   * Whether this call took the place (to give back if the task is not opened).
   */
  private async reserveOpen(who: WorkloadIdentity, task: TaskFixed, named: boolean): Promise<boolean> {
    const max = this.deps.config.tasks.maxOpenTasks;
    if (max === 0) return false;
    const got = await this.deps.tasks.reserveOpen(who.id, task.taskId, task.ttlSeconds, max);
    if (got !== 'limit') return got === 'added';
    if (named && (await this.deps.tasks.get(task.taskId))) return false;
    return deny(
      this.deps,
      who,
      'limit_exceeded',
      `An orchestrator may have at most ${max} open tasks at once (tasks.maxOpenTasks); complete one first.`,
      { action: 'access.deny', ...(named ? { taskId: task.taskId } : {}) },
    );
  }

  /**
   * TaskStore.open, giving back the place `reserveOpen` took when no task of this opener is open under the id.
   * Not when it found one (`exists`, open, this opener's): a concurrent open of the same id, finding the place
   * taken ('held'), may have stored the task first, and the place is that task's. Given back there, two opens
   * of one id sent at once left an open task uncounted, bypassing the bound. No race with an ending: it gives
   * the place back after its status change, which this open would have seen.
   */
  private async openStored(task: TaskFixed, reserved: boolean, opts: Parameters<TaskStore['open']>[1]) {
    let keep = false;
    try {
      const res = await this.deps.tasks.open(task, opts);
      keep = res.kind === 'created' || (res.kind === 'exists' && res.task.status === 'open' && res.task.openedBy === task.openedBy);
      return res;
    } finally {
      if (reserved && !keep) await this.deps.tasks.releaseOpen(task.openedBy, task.taskId).catch(() => {});
    }
  }

  /** The ids of a task and every task below it, in the order they were opened (TaskStore.subtree). */
  async subtreeIds(taskId: string): Promise<string[]> {
    return this.deps.tasks.subtree(taskId);
  }

  /** The status of each of these tasks, by id (a task whose record left Redis is left out). */
  async statusesOf(taskIds: readonly string[]): Promise<Map<string, TaskStatus>> {
    const unique = [...new Set(taskIds)];
    const got = await this.deps.tasks.statusesOf(unique);
    return new Map(unique.flatMap((id, i) => (got[i] ? [[id, got[i]] as const] : [])));
  }

  /** The task if `who` may read it (its orchestrator, its agent, an admin); denials are audited. */
  async readable(who: WorkloadIdentity, taskId: string): Promise<TaskRecord> {
    // The changing fields fresh, the immutable rest (up to ~36 KB) from the task cache: every read route
    // starts here, and a task's own agent may call them over and over.
    // Cached only for a caller who may read it: a stranger naming task ids does not fill the cache.
    const [task] = await this.deps.tasks.recordsOf([taskId], (t) => this.mayRead(who, t));
    if (!task) throw notFound('task_not_found', `No task ${taskId}.`);
    if (!this.mayRead(who, task) && !(await readsAnAncestor(this.deps, who, task))) {
      await deny(
        this.deps,
        who,
        'not_task_party',
        "Only the task's orchestrator, its agent, an admin, or whoever may read a task above it may read it.",
        {
          action: 'access.deny',
          taskId,
        },
      );
    }
    return task;
  }

  /** Whether `who` may read `task`. */
  mayRead(who: WorkloadIdentity, task: Pick<TaskFixed, 'openedBy' | 'agent'>): boolean {
    return isTaskParty(this.deps, who, task);
  }

  /**
   * Completes a task (and its sub-tasks); every lease is revoked by the worker. Idempotent.
   * `leases`: how many live leases this call is revoking (0 when the task had already ended).
   */
  async complete(who: WorkloadIdentity, taskId: string): Promise<{ taskId: string; status: 'completed'; leases: number }> {
    const { tasks, patterns } = this.deps;
    const task = await tasks.get(taskId);
    if (!task) throw notFound('task_not_found', `No task ${taskId}.`);
    if (who.id !== task.openedBy && !patterns.admins.matches(who.id)) {
      await deny(this.deps, who, 'not_task_orchestrator', 'Only the orchestrator that opened the task or an admin may complete it.', {
        action: 'access.deny',
        taskId,
      });
    }
    const policies = await authorize(this.deps, who, 'completeTask', { type: 'Task', id: taskId }, { task: taskContext(task) }, { taskId });
    // Completing a task that expired is refused on the task's state: a denial like the 403s (docs/audit.md).
    const expired = async () =>
      denial(this.deps, who, conflict('task_expired', `Task ${taskId} already expired; its leases were revoked.`), {
        action: 'access.deny',
        taskId,
      });
    if (task.status === 'expired') throw await expired();
    // Only the leases this call takes away: live when the task ended (its subtree's too). A repeat revokes none.
    let revoking = 0;
    if (task.status === 'open') {
      // The record goes to the outbox with the ending (task-end.lua): it is appended even if this process dies now.
      const res = await this.end(taskId, 'completed', 'task_completed', undefined, {
        task: { action: 'task.complete', actor: who.id, decision: 'ok', taskId, policies },
        counts: true,
      });
      if (res.kind === 'ended') {
        revoking = res.liveLeases;
        await this.deps.audit.settleOutbox(this.deps.keys.bucketOfTask(taskId), res.records, res.endedAt);
      } else if (res.kind === 'already' && res.status === 'expired') {
        throw await expired();
      }
    }
    // The caller is told the task has ended: a failover must not reopen it with its leases live.
    await this.deps.replicas.after([this.deps.keys.replicaFenceOfTask(taskId)]);
    return { taskId, status: 'completed', leases: revoking };
  }

  /**
   * Deny by default: no task is opened for an agent an admin has quarantined (its every call would be
   * refused anyway, and a task for it is a grant nobody may use). Decided on this instance's list (up to
   * 2 s old); a quarantine written since is caught once the task exists (afterQuarantine). A sub-task's
   * refusal is recorded under its parent, as its other refusals are; a task's under its id only when the
   * caller named one (a generated id names nothing).
   */
  private async refuseQuarantinedAgent(
    who: WorkloadIdentity,
    task: TaskFixed,
    named: boolean,
    beforeDenial: () => Promise<void>,
  ): Promise<void> {
    const pattern = this.deps.quarantine.match(task.agent);
    if (pattern === undefined) return;
    // A replay of an open that created its task answers as opens of an existing id do (200 with that task,
    // or 409 for another request): nothing new is created, and a client retrying sees what it made.
    if (named && (await this.deps.tasks.get(task.taskId))) return;
    await beforeDenial();
    await deny(
      this.deps,
      who,
      'identity_quarantined',
      `The task's agent ${task.agent} is quarantined by an admin; no task can be opened for it.`,
      task.parentTaskId
        ? { action: 'access.deny', taskId: task.parentTaskId, detail: { subtask: task.taskId, agent: task.agent, pattern } }
        : { action: 'access.deny', ...(named ? { taskId: task.taskId } : {}), detail: { agent: task.agent, pattern } },
    );
  }

  /**
   * A quarantine written between this caller's admission (checked on a list up to 2 s old) and its task's
   * creation: the admin's scan, which runs after the quarantine is written, may have missed the task. Read
   * again from Redis now that the task exists (one of the two reads sees the other's write): a quarantined
   * opener is refused and its task ended; a task of a quarantined agent is ended as the scan would have.
   */
  private async afterQuarantine(who: WorkloadIdentity, task: TaskRecord): Promise<TaskRecord> {
    await this.deps.quarantine.reload();
    const asOpener = this.deps.quarantine.match(who.id);
    const asAgent = this.deps.quarantine.match(task.agent);
    if (asOpener === undefined && asAgent === undefined) return task;
    // Recorded only by the call that ends it (the admin's scan may have ended it first, recorded there).
    const res = await this.end(task.taskId, 'completed', 'revoked_by_admin', asAgent === undefined ? 'task' : undefined, {
      task: { action: 'task.revoke', actor: 'broker', decision: 'ok', taskId: task.taskId, reason: 'revoked_by_admin' },
    });
    if (res.kind === 'ended') await this.deps.audit.settleOutbox(this.deps.keys.bucketOfTask(task.taskId), res.records, res.endedAt);
    if (asOpener !== undefined) {
      throw await denial(
        this.deps,
        who,
        forbidden('identity_quarantined', 'This identity is quarantined by an admin; every call is refused.'),
        {
          action: 'access.deny',
          taskId: task.taskId,
          detail: { pattern: asOpener },
        },
      );
    }
    return (await this.deps.tasks.get(task.taskId)) ?? task;
  }

  /**
   * Ends a task and its open subtree, then has the worker revoke their
   * leases. The status change comes first: from then on no lease can join
   * any of these tasks, so the job sees every lease they will ever have.
   * `audit`: the ending's records, put in the audit outbox with it (TaskStore.end); the caller appends them.
   */
  async end(
    taskId: string,
    status: 'completed' | 'expired',
    reason: TaskEndReason,
    adminScope?: 'task',
    audit?: Parameters<TaskStore['end']>[4],
  ) {
    const res = await this.deps.tasks.end(taskId, status, reason, adminScope, audit);
    if (res.kind === 'ended') await this.deps.queue.endTasks(taskId, res.taskIds, reason, res.endedAt);
    return res;
  }

  /**
   * A grant as stored: role configured, scopes literal and allowed by the role. What it omits comes from `inherit`
   * (a sub-task: the parent's grant of the same role, so omitting a value never widens), else from the role.
   */
  private grant(g: { role: string; scopes?: string[] | undefined; maxTtlSeconds?: number | undefined }, inherit?: Grant): Grant {
    const role = roleOf(this.deps.config.roles, g.role);
    if (!role) throw badRequest('unknown_role', `Role "${g.role}" is not configured.`);
    const d = descriptorOf(role.provider)!;
    const scopes = g.scopes ?? inherit?.scopes ?? d.defaultScopes(role as never);
    if (scopes === undefined) throw badRequest('scopes_empty', `A grant of ${role.provider} role "${g.role}" must list its scopes.`);
    d.checkScopes?.(scopes);
    const allowed = d.allowedScopes(role as never);
    const outside = allowed ? scopes.filter((s) => !allowed.includes(s)) : [];
    if (outside.length > 0) throw badRequest('scope_not_allowed', `Role "${g.role}" does not allow scopes ${outside.join(', ')}.`);
    return { role: g.role, scopes, maxTtlSeconds: g.maxTtlSeconds ?? inherit?.maxTtlSeconds ?? role.maxTtlSeconds };
  }

  private async root(who: WorkloadIdentity, body: OpenTaskBody, requestHash: string): Promise<TaskFixed> {
    const taskId = body.taskId ?? `t-${randomUUID()}`;
    // Before the grants are checked: a caller that may not open tasks learns nothing of which roles and
    // scopes are configured (unknown_role, scope_not_allowed), and its attempt is audited.
    if (!this.deps.patterns.orchestrators.matches(who.id)) {
      // Under the task only when the caller named one: an id generated for a refused open names nothing.
      await deny(this.deps, who, 'not_orchestrator', "Only an orchestrator may open a task (or a task's agent a sub-task).", {
        action: 'access.deny',
        ...(body.taskId !== undefined ? { taskId } : {}),
      });
    }
    if (body.tenant === undefined)
      throw badRequest('invalid_request', 'tenant: required for a task without parentTaskId', { extra: { field: 'tenant' } });
    if (body.purpose === undefined)
      throw badRequest('invalid_request', 'purpose: required for a task without parentTaskId', { extra: { field: 'purpose' } });
    const grants = body.grants.map((g) => this.grant(g));
    return {
      taskId,
      agent: body.agent,
      tenant: body.tenant,
      purpose: body.purpose,
      grants,
      labels: body.labels ?? {},
      openedBy: who.id,
      depth: 0,
      delegators: [],
      requestHash,
      ttlSeconds: body.ttlSeconds,
    };
  }

  /** Attenuation: a sub-task may only narrow its parent; its id lives in the parent's namespace. */
  private async subtask(
    who: WorkloadIdentity,
    body: OpenTaskBody,
    requestHash: string,
  ): Promise<{ task: TaskFixed; parentCreatedAt: number }> {
    const parentId = body.parentTaskId!;
    const taskId = `${parentId}~${body.taskId ?? `s-${randomBytes(6).toString('hex')}`}`;
    if (taskId.length > MAX_TASK_ID)
      throw badRequest('invalid_task_id', `Sub-task ids are at most ${MAX_TASK_ID} characters; use a shorter name.`);
    // Cached only for the parent's agent, the one caller that may delegate from it.
    const parent = await this.deps.tasks.fixed(parentId, (p) => p.agent === who.id);
    if (!parent) throw notFound('task_not_found', `No parent task ${parentId}.`);
    const d = async (code: 'not_parent_agent' | 'delegation_too_deep' | 'delegation_widens', msg: string): Promise<never> => {
      // The parent may come from the cache: refuse only on the parent as Redis holds it now.
      if (!(await this.deps.tasks.isCurrent(parent))) throw new StaleTask();
      // Recorded under the parent, which exists: its evidence shows the attempt whether or not the sub-task ever opens.
      return deny(this.deps, who, code, msg, { action: 'access.deny', taskId: parentId, detail: { subtask: taskId } });
    };
    if (who.id !== parent.agent) await d('not_parent_agent', "Only the parent task's agent may open a sub-task.");
    const depth = this.deps.config.tasks.maxDelegationDepth;
    if (parent.depth + 1 > depth) await d('delegation_too_deep', `Delegation depth is limited to ${depth}.`);
    // Omitted scopes and TTL ceilings are the parent grant's, as omitted labels are the parent's labels.
    const inherited = (role: string) => parent.grants.find((p) => p.role === role);
    // Any other refusal of the parent's agent (a role not configured, a grant the role's config refuses) is recorded
    // under the parent too, keeping its status: the parent's evidence shows every attempt to delegate from it.
    const refuse = async (err: BrokerError): Promise<never> => {
      if (!(await this.deps.tasks.isCurrent(parent))) throw new StaleTask();
      throw await denial(this.deps, who, err, { action: 'access.deny', taskId: parentId, detail: { subtask: taskId } });
    };
    const grants: Grant[] = [];
    for (const g of body.grants) {
      const pg = inherited(g.role);
      // Judged against the parent's grant before the role's config: a scope the parent lacks widens the delegation
      // (403, audited) whether or not the role is configured with it. Judged the other way round, a scope outside
      // the role's config answered 400 scope_not_allowed unaudited, and the two answers told the agent which scopes
      // the role has.
      if (pg && g.scopes && !g.scopes.every((s) => pg.scopes.includes(s)))
        await d('delegation_widens', `Grant "${g.role}" asks for scopes the parent's grant lacks.`);
      if (!pg && roleOf(this.deps.config.roles, g.role))
        await d('delegation_widens', `Role "${g.role}" is not granted to the parent task.`);
      try {
        grants.push(this.grant(g, pg));
      } catch (err) {
        if (err instanceof BrokerError) await refuse(err);
        throw err;
      }
    }
    const narrowed = attenuate(parent, { tenant: body.tenant, purpose: body.purpose, labels: body.labels, grants });
    if ('widens' in narrowed) return d('delegation_widens', narrowed.widens);
    // The request body allows 32 labels; inherited plus added ones are held to the same cap.
    if (Object.keys(narrowed.labels).length > MAX_LABELS) {
      throw badRequest('invalid_request', `labels: a task has at most ${MAX_LABELS} labels, inherited ones included`, {
        extra: { field: 'labels' },
      });
    }
    const task: TaskFixed = {
      taskId,
      agent: body.agent,
      ...narrowed,
      grants,
      openedBy: who.id,
      parentTaskId: parentId,
      depth: parent.depth + 1,
      delegators: [parent.agent, ...parent.delegators],
      requestHash,
      ttlSeconds: body.ttlSeconds,
    };
    return { task, parentCreatedAt: parent.createdAt };
  }
}
