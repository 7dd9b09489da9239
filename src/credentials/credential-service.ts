import { LRUCache } from 'lru-cache';
import type { ApprovalRecord } from '../approvals/approval-store.ts';
import { approverGone, voidApproval } from '../approvals/approver-gone.ts';
import { outboxMember } from '../audit/outbox-member.ts';
import type { AuditEvent, OutboxEvent } from '../audit/record.ts';
import { authorize, deny, denial, taskContext } from '../authz.ts';
import { roleOf } from '../config/roles.ts';
import type { RoleConfig } from '../config/schema.ts';
import type { Deps } from '../deps.ts';
import { BrokerError, badRequest, conflict, notFound, unavailable, upstreamFailed } from '../errors.ts';
import type { CredentialRequest } from '../http/schemas.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import { type ClampedTtl, clampTtl } from '../leases/ttl.ts';
import { endOneLease } from '../leases/lease-service.ts';
import { type CreateRefusal, LeaseStore } from '../leases/lease-store.ts';
import type { LeaseFixed, LeaseRecord } from '../leases/types.ts';
import { descriptorOf } from '../providers/index.ts';
import { type IssueRequest, type IssueResult, type Provider, type StartedIssue, wasUnanswered } from '../providers/types.ts';
import { Keys } from '../redis/keys.ts';
import { ancestorParties } from '../tasks/readers.ts';
import { StaleTask } from '../tasks/task-store.ts';
import type { Grant, TaskSnapshot } from '../tasks/types.ts';

/** Refusals decided on the task's or approval's state rather than by policy: audited as denials too. */
const STATE_REFUSALS: ReadonlySet<string> = new Set(['task_not_open', 'scopes_empty', 'approval_consumed', 'approval_expired']);

/** The answer to a credential issued under an approval whose approver was quarantined meanwhile (revoked, not handed out). */
function approvalTakenBack(fixed: LeaseFixed): BrokerError {
  return conflict('approval_expired', 'The approval for this request was taken back.', { extra: { approvalId: fixed.approvalId! } });
}

/**
 * Whether an upstream issuance error leaves open whether the credential was made: an attempt was sent and
 * got no answer understood (the provider marks its cause, `markUnanswered` in src/providers/types.ts), or an
 * answer came that the provider could not use (`upstream_error` of its own, e.g. an incomplete one).
 */
function outcomeUnknown(err: unknown): boolean {
  if (!(err instanceof BrokerError)) return true;
  if (wasUnanswered(err.cause)) return true;
  return err.code === 'upstream_error' && err.cause === undefined;
}

/** A credential already made, as a started one. */
const made = (r: IssueResult): StartedIssue => ({ handle: r.handle, expiresAt: r.expiresAt, done: Promise.resolve(r) });

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

/** Everything decided about a request before anything is recorded. */
interface Decided {
  task: TaskSnapshot;
  grant: Grant;
  role: RoleConfig;
  provider: Provider;
  scopes: string[];
  ttl: ClampedTtl;
  policies: string[];
  approval?: ApprovalRecord;
}

/**
 * How many times one request looks its approval up when the same request takes it first (takeApproval): the
 * second look finds the index cleared (a new pending approval); a third covers one give-back in between.
 */
const APPROVAL_LOOKUPS = 3;

/** Task incarnations the lease script found closed, remembered per process (the least recently asked leave first). */
const MAX_CLOSED = 10_000;

/**
 * Turns a credential request into a credential, in named steps:
 * 1. `loadTask`: the task exists and the caller is its agent;
 * 2. `resolveGrant`: the role is granted and configured;
 * 3. `resolveScopes`: literal scopes within the grant, non-empty where the provider needs one;
 * 4. `clamp`: the effective TTL;
 * 5. `authorize`: Cedar;
 * 6. `takeApproval`: an approval covering exactly this request, consumed for it, if the role needs one;
 * 7. `record` + `issue`: the lease is recorded (as the intent, before any
 *    upstream call), then the credential is made, the answer recorded, and
 *    a short-lived upstream credential extended (`confirm`).
 */
export class CredentialService {
  private readonly deps: Deps;
  /**
   * Task id -> createdAt of incarnations the lease script refused as closed: an agent still asking after its
   * task ended is refused here, before a lease script whose issue record (sent behind it) would be refused
   * too and take the records of other callers hashed on it along (docs/audit.md, Chains). Closed is final
   * for an incarnation; a task id opened again is another createdAt.
   */
  private readonly closed = new LRUCache<string, number>({ max: MAX_CLOSED });
  constructor(deps: Deps) {
    this.deps = deps;
  }

  /**
   * `only`: the provider kind the route can hand out (the AWS container endpoint: `aws`). A granted role of another
   * kind is refused (400 `not_an_aws_role`, audited) once the caller is known to be the task's agent and the role
   * granted, before anything is issued: which roles exist, and what they issue, is said to nobody else.
   */
  async request(who: WorkloadIdentity, body: CredentialRequest, only?: 'aws'): Promise<IssuedCredential | PendingApproval> {
    try {
      // The task may come from the cache: decided again if it was an earlier incarnation of its id.
      return await this.deps.tasks.onCurrent(body.taskId, () => this.decideAndIssue(who, body, only));
    } catch (err) {
      // Refused on the task's state: a denial like the 403s (audited, folded per minute), e.g. an agent still
      // asking for credentials after its task ended.
      if (err instanceof BrokerError && STATE_REFUSALS.has(err.code)) {
        throw await denial(this.deps, who, err, { action: 'credential.deny', taskId: body.taskId, role: body.role });
      }
      throw err;
    }
  }

  private async decideAndIssue(
    who: WorkloadIdentity,
    body: CredentialRequest,
    only: 'aws' | undefined,
  ): Promise<IssuedCredential | PendingApproval> {
    const task = await this.loadTask(who, body);
    if (task.expiresAt <= this.deps.clock.now() || this.closed.get(task.taskId) === task.createdAt) {
      await this.current(task);
      throw conflict('task_not_open', `Task ${task.taskId} is no longer open.`);
    }
    const { grant, role, provider } = await this.resolveGrant(who, task, body.role);
    if (only !== undefined && role.provider !== only) {
      await this.current(task);
      throw await denial(this.deps, who, badRequest('not_an_aws_role', `Role "${body.role}" does not issue AWS credentials.`), {
        action: 'credential.deny',
        taskId: task.taskId,
        role: body.role,
      });
    }
    const scopes = await this.resolveScopes(who, task, body, grant, role);
    const ttl = this.clamp(task, body, grant, role, provider);
    // For a role that needs approval, policy is asked as if approved first: a request policy
    // would refuse anyway gets its 403 now instead of an approval nobody should grant.
    const needsApproval = role.approval === 'required';
    const policies = await authorize(
      this.deps,
      who,
      'issue',
      { type: 'Role', id: body.role },
      { task: taskContext(task), ttlSeconds: ttl.ttlSeconds, scopes, approved: needsApproval },
      { taskId: task.taskId, role: body.role },
      { beforeDenial: () => this.current(task) },
    );
    const decided: Decided = { task, grant, role, provider, scopes, ttl, policies };
    if (needsApproval) {
      // `revocable` is asked (make) of a request about to be issued; one under an approval is asked before the
      // approval is taken too: a provider that cannot say (AWS: STS does not answer the broker's account) then fails
      // it with the approval untouched. Taken first, a process that died during that call left it consumed for good
      // with nothing made (test/redteam/crash-aws-approval-account.test.ts). The answer is cached (per set of keys).
      const beforeTake = async () => {
        await this.revocable(who, task, body, role, provider);
      };
      const found = await this.takeApproval(who, task, body, grant, scopes, ttl.ttlSeconds, beforeTake);
      if ('pending' in found) return found.pending;
      decided.approval = found.approved;
      // No longer than the approver was shown (`issuedTtlSeconds`, the clamp when it was asked): clamped again on
      // the configuration of now, a role's maximum raised since (a config rollout, another instance already on it)
      // gave an approval shown as 300 s a credential of an hour. Not below the upstream's minimum, which the value
      // shown already holds unless the role was moved to another provider since.
      const shown = found.approved.issuedTtlSeconds;
      if (shown !== undefined && shown < ttl.ttlSeconds)
        decided.ttl = { ttlSeconds: Math.max(shown, provider.minTtlSeconds), boundBy: 'approval' };
    }
    return this.issue(who, body, decided);
  }

  /**
   * Whether the credential about to be made is revocable (`provider.revocable`). A provider that cannot say (AWS:
   * STS does not answer the broker's account) fails the request before any lease exists, so no lease's end records
   * its `credential.fail`: recorded here instead, the same record without a `leaseId` (the reason is the error's
   * code, never its message). Folded per actor, code, task and minute like a repeated denial (AuditLog.denial):
   * a caller retrying against a failing STS cannot grow the log.
   */
  private async revocable(
    who: WorkloadIdentity,
    task: TaskSnapshot,
    body: CredentialRequest,
    role: RoleConfig,
    provider: Provider,
  ): Promise<boolean> {
    try {
      return await provider.revocable(role as never);
    } catch (err) {
      await this.deps.audit.denial(
        {
          action: 'credential.fail',
          actor: who.id,
          decision: 'error',
          taskId: task.taskId,
          role: body.role,
          reason: err instanceof BrokerError ? err.code : 'internal_error',
        },
        // The caller is the task's agent (loadTask): its failures keep the task's key, as its denials do.
        { ownTask: true },
      );
      throw err;
    }
  }

  /**
   * Before refusing on what the cache says: throws StaleTask unless the cached
   * snapshot is still the task under its id (one fresh read, on refusals only).
   */
  private async current(task: TaskSnapshot): Promise<void> {
    if (!(await this.deps.tasks.isCurrent(task))) throw new StaleTask();
  }

  private async loadTask(who: WorkloadIdentity, body: CredentialRequest): Promise<TaskSnapshot> {
    // The cached immutable part: whether the task is still open is decided when the lease is recorded.
    // Cached only for the task's agent: another caller naming task ids does not fill the cache.
    const task = await this.deps.tasks.fixed(body.taskId, (t) => t.agent === who.id);
    if (!task) throw notFound('task_not_found', `No task ${body.taskId}.`);
    if (who.id !== task.agent)
      return this.deny(who, task, body.role, 'not_task_agent', "Only the task's agent may request its credentials.");
    return task;
  }

  private async resolveGrant(
    who: WorkloadIdentity,
    task: TaskSnapshot,
    roleName: string,
  ): Promise<{ grant: Grant; role: RoleConfig; provider: Provider }> {
    const grant = task.grants.find((g) => g.role === roleName);
    if (!grant) return this.deny(who, task, roleName, 'role_not_granted', `Role "${roleName}" is not granted to this task.`);
    const role = roleOf(this.deps.config.roles, roleName);
    if (!role) return this.deny(who, task, roleName, 'role_not_granted', `Role "${roleName}" is no longer configured.`);
    return { grant, role, provider: this.deps.providers.forRole(role) };
  }

  /** Scopes are literal: omitted = all of the grant's; an explicit list (even `[]`) is exactly that list. */
  private async resolveScopes(
    who: WorkloadIdentity,
    task: TaskSnapshot,
    body: CredentialRequest,
    grant: Grant,
    role: RoleConfig,
  ): Promise<string[]> {
    const scopes = body.scopes ?? grant.scopes;
    const extra = scopes.filter((s) => !grant.scopes.includes(s));
    if (extra.length > 0)
      return this.deny(who, task, body.role, 'scope_not_granted', `Scopes not granted to this task: ${extra.join(', ')}.`);
    // The grant was checked against the role when the task opened; an operator may have narrowed the role since
    // (a config rollout): what the role no longer allows is not issued, as its TTL bound already follows the role.
    const allowed = descriptorOf(role.provider)?.allowedScopes(role as never);
    const dropped = allowed ? scopes.filter((s) => !allowed.includes(s)) : [];
    if (dropped.length > 0)
      return this.deny(
        who,
        task,
        body.role,
        'scope_not_granted',
        `Scopes role "${body.role}" no longer allows (its configuration was narrowed since the task opened): ${dropped.join(', ')}.`,
      );
    if (scopes.length === 0 && descriptorOf(role.provider)?.needsScope(role as never)) {
      await this.current(task);
      throw badRequest(
        'scopes_empty',
        `A ${role.provider} credential for role "${body.role}" needs at least one scope; none was requested or granted.`,
      );
    }
    return scopes;
  }

  /**
   * Gives an approval back (nothing was handed out under it) and appends the record of a pending twin it withdrew.
   * Best effort: the caller is answering with the failure that made it give back, and recovery appends a record
   * this process leaves in the outbox.
   */
  private async giveBack(approval: ApprovalRecord): Promise<void> {
    const back = await this.deps.approvals.giveBack(approval).catch(() => false as const);
    const withdrawn = back === false ? undefined : back.withdrawn;
    if (withdrawn) {
      const { member, at } = withdrawn;
      await this.deps.audit.settleOutbox(this.deps.keys.bucketOfTask(approval.taskId), [member], at).catch(() => {});
    }
  }

  /** The effective TTL; the time left on the task is measured on Redis's clock. */
  private clamp(task: TaskSnapshot, body: CredentialRequest, grant: Grant, role: RoleConfig, provider: Provider): ClampedTtl {
    return clampTtl({
      requested: body.ttlSeconds,
      grantMax: grant.maxTtlSeconds,
      roleMax: role.maxTtlSeconds,
      taskLeftSeconds: (task.expiresAt - this.deps.clock.now()) / 1000,
      upstreamMin: provider.minTtlSeconds,
    });
  }

  /** `d.approval`, if any, is consumed for this request already (takeApproval); given back if nothing is handed out. */
  private async issue(who: WorkloadIdentity, body: CredentialRequest, d: Decided): Promise<IssuedCredential> {
    const { task, role, provider, scopes, ttl } = d;
    let out: { fixed: LeaseFixed; result: IssueResult };
    try {
      out = await this.make(who, body, d);
    } catch (err) {
      // Nothing was handed out under the approval: it still covers the same request (one approval, one credential),
      // unless its approver was quarantined meanwhile: its word no longer stands (as after approverStillStands).
      const taken = err instanceof BrokerError && err.code === 'approval_expired';
      if (d.approval && !taken) await this.giveBack(d.approval);
      throw err;
    }
    const { fixed, result } = out;
    // An upstream credential's approver was checked again before it was made (issueUpstream); the broker's own token
    // is made with its lease, so its approver is checked again now, before it leaves.
    if (fixed.approvedBy !== undefined && !provider.upstream) await this.approverStillStands(fixed, d.approval!);
    this.deps.metrics.issued.inc({ provider: role.provider, role: body.role });
    return {
      leaseId: fixed.leaseId,
      taskId: task.taskId,
      role: body.role,
      provider: role.provider,
      expiresAt: new Date(result.expiresAt).toISOString(),
      ttlSeconds: ttl.ttlSeconds,
      revocable: fixed.revocable,
      scopes,
      credentials: result.credentials,
    };
  }

  /** The lease recorded and the credential made, not yet handed out (`issue`). */
  private async make(who: WorkloadIdentity, body: CredentialRequest, d: Decided): Promise<{ fixed: LeaseFixed; result: IssueResult }> {
    const { task, role, provider, scopes, ttl } = d;
    // Asked only of a credential about to be made (what it is issued as), not of a request that ends in a 202 or a
    // refusal. A provider that cannot say (AWS: STS does not answer the broker's account) fails the request before
    // anything is recorded. Under an approval it was asked before the approval was taken (decideAndIssue) and is
    // answered from the provider's cache here; should it fail now (the keys switched since), the approval is given
    // back (`issue`), as after a refused AssumeRole.
    const revocable = await this.revocable(who, task, body, role, provider);
    const bucket = this.deps.keys.bucketOfTask(task.taskId);
    const fixed: LeaseFixed = {
      leaseId: Keys.newRandomId(bucket),
      taskId: task.taskId,
      role: body.role,
      provider: role.provider,
      agent: who.id,
      scopes,
      revocable,
      ttlSeconds: ttl.ttlSeconds,
      // Indexed by lease-create.lua, so that quarantining its approver finds it (AdminService.endApproved).
      ...(d.approval?.decidedBy !== undefined ? { approvalId: d.approval.approvalId, approvedBy: d.approval.decidedBy } : {}),
    };
    const req: IssueRequest = {
      leaseId: fixed.leaseId,
      roleName: body.role,
      role,
      task,
      agent: who.id,
      scopes,
      ttlSeconds: ttl.ttlSeconds,
    };
    const record: OutboxEvent = {
      action: 'credential.issue',
      actor: who.id,
      decision: 'allow',
      taskId: task.taskId,
      role: body.role,
      leaseId: fixed.leaseId,
      policies: d.policies,
      detail: { ttlSeconds: ttl.ttlSeconds, ttlBoundBy: ttl.boundBy, scopes, ...(d.approval ? { approvalId: d.approval.approvalId } : {}) },
    };
    // The record goes to the bucket's audit outbox with the state change that makes the credential the
    // caller's (the lease recorded `active`, or the upstream's answer recorded), in that script: a process
    // that dies before appending it loses nothing (recovery appends it, once).
    const member = outboxMember(record);
    const result = provider.upstream
      ? await this.issueUpstream(who, fixed, provider, req, member)
      : await this.issueLocal(who, fixed, provider, req, record, member);
    return { fixed, result };
  }

  /**
   * Nothing upstream (the broker's own JWT): the lease is recorded while the token is signed; the lease
   * script puts the issue record in the bucket's audit outbox, and the append naming it is sent right
   * behind that script (written only if the lease is), so the two cost one round trip; the token leaves
   * only once all three are done. A refused lease leaves the signature unused and the record unwritten.
   * A signature that fails after the lease was recorded (none is expected: the key is the broker's own)
   * ends the lease `failed`, recorded after the issue record.
   */
  private async issueLocal(
    who: WorkloadIdentity,
    fixed: LeaseFixed,
    provider: Provider,
    req: IssueRequest,
    record: AuditEvent,
    member: string,
  ): Promise<IssueResult> {
    const started = provider.start?.(req) ?? made(await provider.issue(req));
    // Awaited below once the lease is recorded; a refusal or a Redis error before that drops it.
    started.done.catch(() => {});
    const creating = this.deps.leases.create(fixed, {
      status: 'active',
      expiresAt: started.expiresAt,
      handle: started.handle,
      maxLeases: this.deps.config.tasks.maxLeases,
      maxLeasesTotal: this.deps.config.tasks.maxLeasesTotal,
      taskCreatedAt: req.task.createdAt,
      member,
    });
    const audited = this.deps.audit.appendMember(record, member);
    audited.catch(() => {});
    // Not written though the lease may be: Redis ran the record first (a Cluster redirect can reorder them),
    // or it was refused. Appended again only while the script's member is there: never twice.
    const reappend = async (at: number) => {
      if (!(await audited)) await this.deps.audit.appendOutbox(this.deps.keys.bucketOfTask(fixed.taskId), [member], at);
    };
    let created: Awaited<typeof creating>;
    try {
      created = await creating;
    } catch (err) {
      // No answer (a command timeout while Redis stalled), yet the script may have run, and the issue
      // record behind it. Nothing is handed out: a lease that exists ends `failed`, recorded as such
      // after its issue record (which recovery appends if it cannot be now).
      await reappend(this.deps.clock.now()).catch(() => {});
      await this.failed(fixed, err).catch(() => {});
      throw err;
    }
    // Refused: the issue record behind the script will not be written; it must not take other callers' records with it.
    if (created.kind !== 'ok') this.deps.audit.withdraw(this.deps.keys.bucketOfTask(fixed.taskId), member);
    await this.recorded(who, fixed, created.kind, req.task.createdAt);
    const at = created.kind === 'ok' ? created.now : this.deps.clock.now();
    let result: IssueResult;
    try {
      result = await started.done;
    } catch (err) {
      await reappend(at).catch(() => {});
      await this.failed(fixed, err);
      throw err;
    }
    // The lease and its record are in Redis: the credential is the caller's even if this append fails
    // (AuditLog.settleOutbox: recovery appends the record from the outbox).
    await reappend(at).catch((err: Error) =>
      this.deps.logger.warn(
        { leaseId: fixed.leaseId, err: err.message },
        'audit append failed after issuance; recovery appends its record',
      ),
    );
    return result;
  }

  /**
   * Record first, then act: the lease exists as `issuing`, with what revoke
   * needs as far as it is known beforehand, before the upstream creates
   * anything. A crash in between leaves a record the sweeper finds once its
   * orphan window has passed; a task that ends meanwhile makes activation
   * hand the new credential to revocation, never to the caller.
   */
  private async issueUpstream(
    who: WorkloadIdentity,
    fixed: LeaseFixed,
    provider: Provider,
    req: IssueRequest,
    member: string,
  ): Promise<IssueResult> {
    const configured = this.deps.config.revocation.orphanMs;
    const intent = provider.intent?.(req, configured === undefined ? {} : { orphanMs: configured }) ?? { handle: {}, orphanMs: 60_000 };
    const created = await this.deps.leases.create(fixed, {
      status: 'issuing',
      expiresAt: this.deps.clock.now() + req.ttlSeconds * 1000 + intent.orphanMs,
      handle: intent.handle,
      orphanMs: configured ?? intent.orphanMs,
      maxLeases: this.deps.config.tasks.maxLeases,
      maxLeasesTotal: this.deps.config.tasks.maxLeasesTotal,
      taskCreatedAt: req.task.createdAt,
    });
    await this.recorded(who, fixed, created.kind, req.task.createdAt);
    if (fixed.approvedBy !== undefined) await this.approverStandsBeforeIssue(fixed);
    // The intent must outlive a failover: revoke reads what it needs from it (AWS: the session name).
    const fence = this.deps.keys.replicaFenceOfTask(fixed.taskId);
    await this.deps.replicas.after([fence]);
    let result: IssueResult;
    try {
      result = await provider.issue({ ...req, intent: intent.handle });
    } catch (err) {
      // No answer is not a refusal: what the call made may exist. With a handle revoke can act on (the
      // AWS session name), the lease stays `issuing` for the worker, which gives it up at its orphan
      // deadline, revokes what the intent names and ends it `failed`. Without one (Vault: its credential
      // dies within its short issue TTL unless confirmed), it ends `failed` now.
      if (outcomeUnknown(err) && Object.keys(intent.handle).length > 0) await this.unknownOutcome(fixed, err);
      else await this.failed(fixed, err);
      throw err;
    }
    // The issue record goes to the outbox with the answer, only when the credential is the caller's (`ok`).
    const activated = await this.deps.leases.activate(
      fixed,
      { handle: { ...intent.handle, ...result.handle }, expiresAt: result.expiresAt },
      member,
    );
    if (activated.kind === 'revoke') {
      // The task ended (or an end was asked for) while the upstream call was in flight: revoke what was made.
      await this.deps.queue.endLease(fixed, activated.reason, this.deps.clock.now());
      // Its approver's quarantine found it `issuing` (AdminService.endApproved): the task is open, the approval taken back.
      if (activated.reason === 'revoked_by_admin' && (await this.approverQuarantined(fixed))) throw approvalTakenBack(fixed);
      // A DELETE of the lease itself (by its agent or a reader of its task) leaves the task open: say so.
      const what = activated.reason === 'revoked_by_caller' ? `Lease ${fixed.leaseId} was revoked` : `Task ${fixed.taskId} ended`;
      throw conflict('task_not_open', `${what} while the credential was being issued; it is being revoked.`);
    }
    if (activated.kind === 'gone') {
      await this.revokeInHand(fixed, provider, req, { ...intent.handle, ...result.handle }, result.expiresAt);
      throw upstreamFailed('upstream_error', 'The issuance took too long and was given up; what the upstream made is revoked.');
    }
    // Before the credential is extended (Vault) and handed out: a failover must not bring back the
    // handle-less `issuing` record, which revoke could not cut off.
    await this.deps.replicas.after([fence]);
    try {
      await provider.confirm?.(req, result);
    } catch (err) {
      // Not extended: hand out nothing, revoke what exists; its issue record is withdrawn with the request
      // (unless recovery appended it already: then the revocation's record follows it).
      await this.deps.leases.requestEnd(fixed.leaseId, 'revoked_by_caller', member);
      await this.deps.queue.endLease(fixed, 'revoked_by_caller', this.deps.clock.now());
      throw err instanceof BrokerError
        ? err
        : upstreamFailed('upstream_error', 'The upstream did not confirm the credential.', { cause: err });
    }
    await this.deps.audit.settleOutbox(this.deps.keys.bucketOfTask(fixed.taskId), [member], activated.at);
    return result;
  }

  /**
   * The lease was given up (its orphan deadline passed) or is gone from Redis (lost in a failover or
   * a wipe) while the upstream call ran: no record will ever lead revocation to what was just made,
   * and only this process holds its handle. Cut it off now, once; a failure is logged (a Vault
   * credential still dies within its short issue TTL; an AWS session lives to its own, unheld).
   */
  private async revokeInHand(fixed: LeaseFixed, provider: Provider, req: IssueRequest, handle: LeaseRecord['handle'], expiresAt: number) {
    const lease: LeaseRecord = { ...fixed, status: 'revoking', issuedAt: this.deps.clock.now(), expiresAt, handle };
    try {
      await provider.revoke(lease, req.role, { reason: 'issuance_interrupted' });
    } catch (err) {
      // A failed revocation attempt like the worker's (its lease's end is counted there): nobody retries this one.
      this.deps.metrics.revocations.inc({ result: 'failed', reason: 'issuance_interrupted', provider: fixed.provider });
      this.deps.logger.warn(
        { leaseId: fixed.leaseId, provider: fixed.provider, err: (err as Error).message },
        'could not revoke a credential whose lease was given up during issuance',
      );
    }
  }

  /** Maps the lease-create outcome to the caller's answer. */
  private async recorded(who: WorkloadIdentity, fixed: LeaseFixed, kind: 'ok' | CreateRefusal, taskCreatedAt: number): Promise<void> {
    if (kind === 'ok') return;
    if (kind === 'no_task') throw notFound('task_not_found', `No task ${fixed.taskId}.`);
    if (kind === 'stale') throw new StaleTask();
    if (kind === 'task_closed') {
      // Only lease-create's own answer on the task's status closes the incarnation for later requests: a
      // task_not_open thrown later (lease-activate's `revoke`) may be this lease's own end, asked for while
      // the upstream call ran, under a task still open.
      this.closed.set(fixed.taskId, taskCreatedAt);
      throw conflict('task_not_open', `Task ${fixed.taskId} is no longer open.`);
    }
    const { maxLeases, maxLeasesTotal } = this.deps.config.tasks;
    await deny(
      this.deps,
      who,
      'limit_exceeded',
      kind === 'limit'
        ? `A task may hold at most ${maxLeases} live leases (tasks.maxLeases).`
        : `A task may have at most ${maxLeasesTotal} leases over its life, ended ones included (tasks.maxLeasesTotal).`,
      {
        action: 'credential.deny',
        taskId: fixed.taskId,
        role: fixed.role,
      },
    );
  }

  /** The upstream call's outcome is unknown: the error is recorded; the lease is left to the worker. */
  private async unknownOutcome(fixed: LeaseFixed, err: unknown): Promise<void> {
    const code = err instanceof BrokerError ? err.code : 'upstream_error';
    await this.deps.leases.mark(fixed.leaseId, { lastError: code }).catch(() => {});
  }

  /** The upstream refused: nothing was handed out; the lease ends `failed`. */
  private async failed(fixed: LeaseFixed, err: unknown): Promise<void> {
    const code = err instanceof BrokerError ? err.code : 'upstream_error';
    // Its record goes to the audit outbox with the ending (lease-update.lua). The worker may have given the
    // issuance up and ended it first (recorded there): only the call that ends it records it, once.
    const { recorded } = await this.deps.leases.end(
      fixed.leaseId,
      'failed',
      { lastError: code },
      {
        action: 'credential.fail',
        actor: fixed.agent,
        decision: 'error',
        taskId: fixed.taskId,
        role: fixed.role,
        leaseId: fixed.leaseId,
        reason: code,
      },
    );
    if (recorded) await this.deps.audit.appendOutbox(this.deps.keys.bucketOfId(fixed.leaseId)!, [recorded.member], recorded.at);
  }

  /**
   * A quarantine of the approver written while this credential was being issued (the approval was checked on
   * this instance's list, a few seconds old at most): the admin's scan of the leases issued under its approvals
   * (AdminService.endApproved) may have run before this lease was indexed. Read again from Redis now that the
   * lease is (one of the two reads sees the other's write): a quarantined approver's lease is revoked, as the
   * scan would have, and nothing is handed out.
   */
  private async approverStillStands(fixed: LeaseFixed, approval: ApprovalRecord): Promise<void> {
    let quarantined: boolean;
    try {
      quarantined = await this.approverQuarantined(fixed);
    } catch (err) {
      // Whether its approver still stands cannot be told (Redis did not answer): nothing is handed out (deny by
      // default). Before, the error went to the caller with the lease left `active` until its TTL and the approval
      // used. Now the token, which never left this process, has its lease revoked as one not handed out (as after
      // a failed confirm); once that is recorded the approval is given back: nothing was handed out under it, and
      // the same request, asked again, is checked again (a quarantined approver's approval is then voided or taken
      // back). While the lease cannot be revoked the approval stays used: one approval, one live credential.
      const ended = await this.endUnhanded(fixed).catch(() => false);
      if (ended) await this.giveBack(approval);
      else this.deps.logger.warn({ leaseId: fixed.leaseId }, 'could not revoke a credential not handed out; it ends at its TTL');
      throw err;
    }
    if (!quarantined) return;
    const lease = await this.deps.leases.get(fixed.leaseId);
    if (lease && !LeaseStore.isEnded(lease.status)) await endOneLease(this.deps, lease, 'revoked_by_admin', this.deps.clock.now());
    throw approvalTakenBack(fixed);
  }

  /** Revokes a lease whose credential was made but not handed out; true once that is recorded (or there is none). */
  private async endUnhanded(fixed: LeaseFixed): Promise<boolean> {
    const lease = await this.deps.leases.get(fixed.leaseId);
    if (lease && !LeaseStore.isEnded(lease.status)) await endOneLease(this.deps, lease, 'revoked_by_caller', this.deps.clock.now());
    return true;
  }

  /**
   * An upstream credential's approver, read again from Redis once its lease is indexed and before the upstream
   * makes anything (the reasoning of approverStillStands; a quarantine written after this read finds the lease
   * `issuing` and its activation hands the credential to revocation). Read here rather than after the credential
   * is made: a read that fails (Redis did not answer) then leaves nothing to revoke. The lease ends `failed` (or,
   * if that cannot be recorded either, the sweeper gives it up at its orphan deadline), the error goes to the
   * caller, and the approval is given back (issue): nothing was made under it, and asking again checks again.
   */
  private async approverStandsBeforeIssue(fixed: LeaseFixed): Promise<void> {
    let quarantined: boolean;
    try {
      quarantined = await this.approverQuarantined(fixed);
    } catch (err) {
      await this.failed(fixed, unavailable('not_ready', 'The quarantine list could not be read.')).catch(() => {});
      throw err;
    }
    if (!quarantined) return;
    const taken = approvalTakenBack(fixed);
    await this.failed(fixed, taken).catch(() => {});
    throw taken;
  }

  /** Whether the lease was issued under an approval whose approver is quarantined now (the list read again from Redis). */
  private async approverQuarantined(fixed: LeaseFixed): Promise<boolean> {
    if (fixed.approvedBy === undefined) return false;
    await this.deps.quarantine.reload();
    return this.deps.quarantine.match(fixed.approvedBy) !== undefined;
  }

  /**
   * The approval of this request, consumed for it (one approval, one credential), or the pending one it waits on.
   * A request that found the approval approved and then lost it to the same request (consumed between its lookup
   * and its own consume, or read only once consumed) looks again: the request that took it cleared the request
   * index, so this one gets a new pending approval (or, if it was given back meanwhile, the approval itself).
   * That is what the same request a moment later gets; before, the loser of that race answered 409
   * (`approval_consumed` or `approval_expired`) instead, by the luck of timing. The lookups are bounded: a
   * request that keeps losing (the approval given back and taken again each time) answers 409 `approval_consumed`.
   * `beforeTake`: asked of an approved one before it is consumed; what it throws fails the request, nothing taken.
   */
  private async takeApproval(
    who: WorkloadIdentity,
    task: TaskSnapshot,
    body: CredentialRequest,
    grant: Grant,
    scopes: string[],
    issuedTtlSeconds: number,
    beforeTake: () => Promise<void>,
  ): Promise<{ pending: PendingApproval } | { approved: ApprovalRecord }> {
    for (let attempt = 1; ; attempt++) {
      const found = await this.approval(who, task, body, grant, scopes, issuedTtlSeconds);
      if ('pending' in found) return found;
      if ('approved' in found) {
        await beforeTake();
        if (await this.deps.approvals.consume(found.approved)) return found;
      }
      if (attempt >= APPROVAL_LOOKUPS) throw conflict('approval_consumed', 'That approval was already used; request again.');
    }
  }

  /**
   * The approval of exactly this request: role, scopes and `ttlSeconds` as
   * requested (omitted values taken as the grant's). Another TTL or scope set
   * needs its own approval. `used`: it was consumed between the index lookup and the read (takeApproval looks again).
   * `issuedTtlSeconds`: the effective TTL now (clampTtl), what the approver is shown as the most a credential issued
   * under it lives (the task's time left only shortens it, the upstream's minimum is in it already).
   */
  private async approval(
    who: WorkloadIdentity,
    task: TaskSnapshot,
    body: CredentialRequest,
    grant: Grant,
    scopes: string[],
    issuedTtlSeconds: number,
    voided = false,
  ): Promise<{ pending: PendingApproval } | { approved: ApprovalRecord } | { used: true }> {
    const res = await this.deps.approvals.findOrCreate({
      taskId: task.taskId,
      role: body.role,
      agent: who.id,
      openedBy: task.openedBy,
      // Whoever reads a sub-task reads its approvals: the parties to the tasks above, fixed when one is created (and
      // read only then, not on every repeat of the request). A root task has none: no second step to ask them.
      ...(task.parentTaskId ? { readers: () => ancestorParties(this.deps, task) } : {}),
      purpose: task.purpose,
      scopes,
      ttlSeconds: body.ttlSeconds ?? grant.maxTtlSeconds,
      issuedTtlSeconds,
      maxPending: this.deps.config.tasks.maxPendingApprovals,
      taskCreatedAt: task.createdAt,
      // Put in the bucket's audit outbox when the approval is created (approval-request.lua): a process that
      // dies before appending it loses nothing.
      audit: (approvalId) => ({
        action: 'credential.pending',
        actor: who.id,
        decision: 'ok',
        taskId: task.taskId,
        role: body.role,
        detail: { approvalId, ttlSeconds: body.ttlSeconds ?? grant.maxTtlSeconds, issuedTtlSeconds, scopes },
      }),
    });
    if (res.kind === 'stale') throw new StaleTask();
    if (res.kind === 'task_closed') throw conflict('task_not_open', `Task ${task.taskId} is no longer open.`);
    if (res.kind === 'limit') {
      return this.deny(
        who,
        task,
        body.role,
        'limit_exceeded',
        `A task may have at most ${this.deps.config.tasks.maxPendingApprovals} pending approvals (tasks.maxPendingApprovals).`,
      );
    }
    if (!('record' in res)) throw conflict('task_not_open', `Task ${task.taskId} is no longer open.`);
    const record = res.record;
    if (res.kind === 'created' && res.recorded) {
      await this.deps.audit.settleOutbox(this.deps.keys.bucketOfTask(task.taskId), [res.recorded.member], res.recorded.at);
    }
    if (record.status === 'pending') return { pending: { approvalId: record.approvalId, status: 'pending' } };
    if (record.status === 'approved') {
      const by = record.decidedBy;
      const why = by === undefined ? undefined : approverGone(this.deps, by);
      if (by === undefined || why === undefined) return { approved: record };
      // Its approver was quarantined since (or is no longer one): its word no longer stands, as a quarantined
      // orchestrator's tasks end. Voided, and the same request asks again: a new pending approval for another approver.
      if (voided)
        throw conflict('approval_expired', 'The approval for this request was taken back.', { extra: { approvalId: record.approvalId } });
      await voidApproval(this.deps, record, why);
      return this.approval(who, task, body, grant, scopes, issuedTtlSeconds, true);
    }
    // Voided (its approver gone) between the index lookup and the read, by a read, a list or this request's twin:
    // the void cleared the index, so asking again is the new pending approval, as if this request had voided it.
    if (record.status === 'expired' && !voided && record.decidedBy !== undefined && approverGone(this.deps, record.decidedBy))
      return this.approval(who, task, body, grant, scopes, issuedTtlSeconds, true);
    // Consumed since the lookup named it: by the same request, which cleared the index as it took it.
    if (record.status === 'consumed') return { used: true };
    if (record.status === 'rejected') {
      return this.deny(who, task, body.role, 'approval_rejected', 'The approval for this request was rejected.', {
        approvalId: record.approvalId,
      });
    }
    throw conflict('approval_expired', `The approval for this request is ${record.status}.`, { extra: { approvalId: record.approvalId } });
  }

  /** A refusal decided on `task` (possibly cached): made only once `task` is known to be current. */
  private async deny(
    who: WorkloadIdentity,
    task: TaskSnapshot,
    role: string,
    code: 'not_task_agent' | 'role_not_granted' | 'scope_not_granted' | 'approval_rejected' | 'limit_exceeded',
    detail: string,
    extra?: Record<string, string>,
  ): Promise<never> {
    await this.current(task);
    return deny(this.deps, who, code, detail, {
      action: 'credential.deny',
      taskId: task.taskId,
      role,
      ...(extra ? { detail: extra } : {}),
    });
  }
}
