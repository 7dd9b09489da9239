import { keepFresh, outboxIntent } from '../audit/outbox-intent.ts';
import { outboxMember } from '../audit/outbox-member.ts';
import type { OutboxEvent } from '../audit/record.ts';
import { denial, deny, refuseControls } from '../authz.ts';
import { fieldWithControls } from '../http/schemas.ts';
import type { Deps } from '../deps.ts';
import { badRequest, notFound, unavailable } from '../errors.ts';
import { IdentityPatterns } from '../identity/patterns.ts';
import { spiffeProblem } from '../identity/spiffe-id.ts';
import type { QuarantineEntry } from '../identity/quarantine.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { SealStatus } from '../audit/seal-status.ts';
import type { AuditChain } from '../redis/keys.ts';
import type { RotationService } from '../ops/rotation.ts';
import { endLeaseIds } from '../revocation/ending.ts';
import type { LeaseStatus } from '../leases/types.ts';
import { legacyApprovedIn } from './legacy-approved.ts';
import type { TaskService } from '../tasks/task-service.ts';
import { nfc } from '../tasks/nfc.ts';

/** The audit export as the admin service needs it (src/audit/export.ts). */
export interface AuditArchive {
  exportNow(chain?: AuditChain): Promise<unknown>;
  sealStatus(): Promise<{ maxAgeMs: number; chains: SealStatus[] } | undefined>;
}

/** One chain in `GET /v1/admin/audit/seals` (docs/openapi.yaml, AuditSeals). */
export interface PublicSealStatus {
  chain: AuditChain;
  headSeq: number;
  sealedSeq: number | null;
  sealedAt: string | null;
  invalidSeal: boolean;
  unsealed: number;
  /** Seconds without a seal; null for a chain with no record, or when unknown (no valid seal, no record in Redis). */
  ageSeconds: number | null;
  stale: boolean;
}

/** Exactly one selector of the kill switch. */
/** Tasks the kill switch ends at once (each a few round trips). */
const KILL_CONCURRENCY = 64;

export type RevokeSelector = { agent: string } | { tenant: string } | { taskId: string };

/**
 * The operators' kill switch and quarantine (contract section 3, "Finding
 * things and stopping things"). Both are admin-only and audited with the
 * admin as actor; a refusal is audited too.
 */
export class AdminService {
  private readonly deps: Deps;
  private readonly tasks: TaskService;
  private readonly rotation: RotationService;
  private readonly archive: AuditArchive | undefined;

  /** `archive`: the audit export, which must hold a quarantine change before it is answered. */
  constructor(deps: Deps, tasks: TaskService, rotation: RotationService, archive?: AuditArchive) {
    this.deps = deps;
    this.tasks = tasks;
    this.rotation = rotation;
    this.archive = archive;
  }

  /**
   * Makes the ops chain's records durable in the audit export: that is what
   * restores the quarantine list after Redis lost its data.
   */
  private async exportOps(what: string): Promise<void> {
    if (!this.archive) return;
    try {
      await this.archive.exportNow('ops');
    } catch (err) {
      this.deps.logger.error({ err: (err as Error).message }, 'audit export failed after a quarantine change');
      throw unavailable(
        'not_ready',
        `The ${what} is in force, but could not be written to the audit export yet, so it would not survive a Redis data loss. Retry to confirm it.`,
      );
    }
  }

  /**
   * Where sealing stands, per chain (admins): what `jit audit verify` needs, with no KEK, to refuse to
   * call the log intact while records stay unsealed for longer than `audit.sealMaxAgeSeconds`. Read from
   * Redis with the seal MACs checked here, so a forged fresh seal does not count.
   */
  async auditSeals(who: WorkloadIdentity): Promise<{ maxSealAgeSeconds: number; chains: PublicSealStatus[] }> {
    await this.requireAdmin(who, 'audit.seals');
    const got = await this.archive?.sealStatus();
    if (!got) throw unavailable('not_ready', 'This instance has no seal key, so it cannot check the audit seals.');
    return {
      maxSealAgeSeconds: got.maxAgeMs / 1000,
      chains: got.chains.map((s) => ({
        chain: s.chain,
        headSeq: s.headSeq,
        sealedSeq: s.sealed?.seq ?? null,
        sealedAt: s.sealed?.time ?? null,
        invalidSeal: s.invalidSeal,
        unsealed: s.unsealed,
        ageSeconds: s.ageMs === undefined || !Number.isFinite(s.ageMs) ? null : Math.floor(s.ageMs / 1000),
        stale: s.stale,
      })),
    };
  }

  /** Refuses (403 not_admin, audited) unless `who` is an admin. */
  async requireAdmin(who: WorkloadIdentity, what: string): Promise<void> {
    if (!this.deps.patterns.admins.matches(who.id)) {
      await deny(this.deps, who, 'not_admin', 'Only an admin may do this.', { action: 'access.deny', detail: { what } });
    }
  }

  /**
   * Ends every open task that matches (status `completed`, reason
   * `revoked_by_admin`, sub-tasks included) and revokes their leases with the
   * same reason: the worker cuts off what lives upstream (for AWS by the
   * agent's SourceIdentity, one statement per agent).
   */
  async revoke(who: WorkloadIdentity, sel: RevokeSelector): Promise<{ tasks: number; leases: number }> {
    await this.requireAdmin(who, 'admin.revoke');
    // Its selector is recorded and shown (the kill switch's record, the console).
    const refused = fieldWithControls([
      ['agent', 'agent' in sel ? sel.agent : undefined, 'name'],
      ['tenant', 'tenant' in sel ? sel.tenant : undefined, 'name'],
      ['taskId', 'taskId' in sel ? sel.taskId : undefined, 'name'],
    ]);
    if (refused !== undefined) await refuseControls(this.deps, who, refused, { action: 'access.deny' });
    if ('agent' in sel) refuseUnmatchable(sel.agent);
    const record = { action: 'admin.revoke' as const, actor: who.id, decision: 'ok' as const, reason: 'revoked_by_admin' };
    // The kill switch ends its tasks in many scripts (one per task tree, each putting its task.revoke records
    // in the outbox), so its own record cannot ride in one of them: it goes to the ops outbox before the
    // first ending, saying `interrupted`, and is kept there while the endings run. A process that dies
    // part-way leaves that record for recovery; one that finishes puts the outcome in its place in the outbox
    // (one step) and appends it, so a failed append or a death right after still leaves the outcome, not
    // `interrupted`, for recovery (OutboxIntent.finish).
    const intent = await outboxIntent(this.deps, 'ops', { ...record, detail: { ...sel, interrupted: true } });
    let result: { tasks: number; leases: number };
    try {
      result = await this.endMatching(sel);
      // The kill switch's answer must survive a failover: the tasks stay ended.
      await this.deps.replicas.after(this.deps.keys.replicaFences());
    } finally {
      intent.stop();
    }
    await intent.finish({ ...record, detail: { ...sel, tasks: result.tasks, leases: result.leases } });
    return result;
  }

  async quarantine(
    who: WorkloadIdentity,
    pattern: string,
    reason: string,
  ): Promise<QuarantineEntry & { tasks: number; leases: number; approvedLeases: number }> {
    await this.requireAdmin(who, 'quarantine.add');
    // Both are recorded and shown (the quarantine list, its audit record, the console).
    const refused = fieldWithControls([
      ['agent', pattern, 'name'],
      ['reason', reason, 'text'],
    ]);
    if (refused !== undefined) await refuseControls(this.deps, who, refused, { action: 'access.deny' });
    refuseUnmatchable(pattern);
    // A refused decision, audited like every other denial (an admin locking itself out is worth a record).
    if (new IdentityPatterns([pattern]).matches(who.id))
      throw await denial(this.deps, who, badRequest('quarantine_self', 'That pattern matches your own identity.'), {
        action: 'quarantine.add',
        detail: { pattern },
      });
    const entry: QuarantineEntry = { pattern, reason, by: who.id, at: new Date(this.deps.clock.now()).toISOString() };
    // The record goes to the ops chain's audit outbox in the step that puts the quarantine in force
    // (quarantine-add.lua): a process that dies in between can leave neither without the other, and the
    // record is what restores quarantines after a Redis data loss (the export below holds it before the answer).
    const member = outboxMember({ action: 'quarantine.add', actor: who.id, decision: 'ok', reason, detail: { pattern, at: entry.at } });
    const at = await this.deps.quarantine.add(entry, member);
    // Its tasks as an agent, and as an orchestrator: the grants a compromised identity made are not trusted either.
    // Ended before the record is appended: the quarantine is in force from the script on, so a failed append
    // must not leave its tasks open and their leases live (the record waits in the outbox for recovery). A
    // process that dies before they are all ended leaves the record in the outbox too, and recovery ends them
    // before it appends it (recoveredQuarantine); the record is kept fresh meanwhile, so recovery leaves it
    // to this process while it lives, however long the endings take.
    const fresh = keepFresh(this.deps, 'ops', member);
    // And the credentials issued on its word as an approver: a compromised approver's approvals are not trusted
    // either (those not used yet are voided as they are found: approver-gone.ts).
    let ended: { tasks: number; leases: number; approvedLeases: number };
    try {
      await this.rotation.announce({ type: 'quarantine' });
      ended = await this.endQuarantine(pattern);
      await this.deps.replicas.after(this.deps.keys.replicaFences());
    } finally {
      fresh.stop();
    }
    await this.deps.audit.appendOutbox('ops', [member], at!);
    // Last: the tasks are ended even when the export is down (it answers 503 then, the quarantine in force).
    await this.exportOps('quarantine');
    return { ...entry, ...ended };
  }

  async unquarantine(who: WorkloadIdentity, pattern: string): Promise<{ pattern: string; lifted: true }> {
    await this.requireAdmin(who, 'quarantine.remove');
    if (!this.deps.quarantine.list().some((e) => e.pattern === pattern)) {
      await this.deps.quarantine.reload();
      if (!this.deps.quarantine.list().some((e) => e.pattern === pattern))
        throw notFound('quarantine_not_found', `No quarantine for ${pattern}.`);
    }
    // While it still stands, what it ends is ended once more: a task opened for (or by) the identity on an
    // instance whose list had not caught up is ended by that instance's re-read of the list, but one whose
    // process died in between stayed open, refused while the quarantine stood and usable once lifted. Any task
    // of a quarantined identity open now was opened during the quarantine: a grant nobody was to have.
    const ended = await this.endQuarantine(pattern);
    if (ended.tasks > 0 || ended.approvedLeases > 0)
      this.deps.logger.warn(
        { pattern, ...ended },
        'lifting a quarantine: ended tasks and leases it had not ended (a process died mid-open?)',
      );
    await this.deps.audit.append({ action: 'quarantine.remove', actor: who.id, decision: 'ok', detail: { pattern } });
    await this.deps.quarantine.remove(pattern);
    await this.rotation.announce({ type: 'quarantine' });
    await this.exportOps('lifting of the quarantine');
    return { pattern, lifted: true };
  }

  async quarantines(who: WorkloadIdentity): Promise<QuarantineEntry[]> {
    await this.requireAdmin(who, 'quarantine.list');
    await this.deps.quarantine.reload();
    return this.deps.quarantine.list();
  }

  /**
   * Ends what a quarantine of `pattern` ends (its tasks as an agent and as an orchestrator, the leases issued
   * under its approvals), for a quarantine told again to a Redis that went back in time (ops/reapply.ts).
   */
  async endQuarantined(pattern: string): Promise<{ tasks: number; leases: number }> {
    const ended = await this.endQuarantine(pattern);
    return { tasks: ended.tasks, leases: ended.leases + ended.approvedLeases };
  }

  /** What a quarantine of `pattern` ends, wherever it is told (the quarantine, its recovery, its reapply). */
  private async endQuarantine(pattern: string, signal?: AbortSignal): Promise<{ tasks: number; leases: number; approvedLeases: number }> {
    const ended = await this.endMatching({ agent: pattern }, { openedBy: true, ...(signal ? { signal } : {}) });
    return { ...ended, approvedLeases: await this.endApproved(pattern, signal) };
  }

  /**
   * For outbox recovery (src/audit/outbox.ts, OutboxDeps.before), before it appends a `quarantine.add` record a
   * process left: ends what that quarantine ends. Its process ends the tasks before it appends the record, so
   * a record left in the outbox may mean it died before ending them all (the quarantine in force, the tasks
   * open, their leases live until their TTL). Only while that quarantine is still in force: one lifted since
   * must not end tasks opened after the lift. Ending an ended task does nothing, so a quarantine whose process
   * ended everything (and failed at the append) costs a scan of the open tasks, no more. Stops (throws) once
   * `signal` is aborted: recovery lost its lock, and another instance may be running the same endings.
   */
  async recoveredQuarantine(event: OutboxEvent, signal?: AbortSignal): Promise<void> {
    const pattern = event.detail?.pattern;
    if (event.action !== 'quarantine.add' || typeof pattern !== 'string') return;
    if (!(await this.deps.redis.hexists(this.deps.keys.quarantine(), pattern))) return;
    const ended = await this.endQuarantine(pattern, signal);
    await this.deps.replicas.after(this.deps.keys.replicaFences());
    if (ended.tasks > 0 || ended.approvedLeases > 0)
      this.deps.logger.warn(
        { pattern, ...ended },
        "outbox recovery: ended a quarantined identity's tasks and approved leases its quarantine had left live",
      );
  }

  /**
   * Revokes every live lease issued under an approval that an identity matching `pattern` approved (reason
   * `revoked_by_admin`, the contract's, its task left open): a quarantined approver's word is not trusted, as a quarantined orchestrator's grants
   * are not. Found in each bucket's index of leases issued under an approval (Keys.approvedLeases, written by
   * lease-create.lua). Ended as the kill switch ends a task's leases (leases-end.lua: nothing upstream ends at
   * once, its lease.revoke record in the outbox in that step; an upstream one goes `revoking` and to the
   * worker, which records its end); one still `issuing` is marked, and its activation hands it to revocation.
   * Idempotent: an ended lease is left alone, a revoking one keeps its first reason. Returns how many it ended
   * or handed over. Only for a quarantine: an approver taken off `approvers` in the config is no compromise.
   */
  private async endApproved(pattern: string, signal?: AbortSignal): Promise<number> {
    const p = new IdentityPatterns([pattern]);
    let n = 0;
    for (let b = 0; b < this.deps.keys.buckets; b++) {
      for await (const page of this.deps.leases.approvedIn(b, this.deps.clock.now())) {
        signal?.throwIfAborted();
        n += await this.endApprovedPage(
          b,
          page.filter((l) => p.matches(l.approvedBy)),
        );
      }
      // Those the index does not hold: issued before it existed, or by the previous release during a rolling upgrade.
      for await (const page of legacyApprovedIn(this.deps, b, p, this.deps.clock.now())) {
        signal?.throwIfAborted();
        n += await this.endApprovedPage(b, page);
      }
    }
    return n;
  }

  /** Ends one page of endApproved's leases of bucket `b` (see there); returns how many it ended or handed over. */
  private async endApprovedPage(b: number, hit: { leaseId: string; status: LeaseStatus }[]): Promise<number> {
    let n = 0;
    const now = this.deps.clock.now();
    const active = hit.filter((l) => l.status === 'active').map((l) => l.leaseId);
    if (active.length > 0) n += await endLeaseIds(this.deps, b, active, 'revoked_by_admin', now);
    for (const l of hit.filter((h) => h.status === 'issuing')) {
      const res = await this.deps.leases.requestEnd(l.leaseId, 'revoked_by_admin');
      // Activated meanwhile: `revoking` now, for the worker.
      if (res.kind === 'revoking') await this.deps.queue.endLease(l, res.reason, now);
      if (res.kind === 'revoking' || res.kind === 'deferred') n += 1;
    }
    return n;
  }

  /**
   * For outbox recovery (src/audit/outbox.ts, OutboxDeps.settle), for an intent a process left: the outcome of
   * a kill switch (`admin.revoke`) whose process died after its endings but before its outcome took the intent's
   * place, when state shows it: no task matching its selector is open. Recorded with `detail.recovered: true`
   * and without the counts (unknown: its `task.revoke` records name what it ended). Undefined (the intent stands:
   * `interrupted`) while one is open, and for the other intents, whose state cannot tell (docs/audit.md).
   */
  async recoveredOutcome(event: OutboxEvent, signal?: AbortSignal): Promise<OutboxEvent | undefined> {
    if (event.action !== 'admin.revoke' || event.detail?.interrupted !== true) return undefined;
    const { agent, tenant, taskId } = event.detail;
    const sel: RevokeSelector | undefined =
      typeof agent === 'string' ? { agent } : typeof tenant === 'string' ? { tenant } : typeof taskId === 'string' ? { taskId } : undefined;
    if (sel === undefined || (await this.anyOpen(sel, signal))) return undefined;
    return { action: 'admin.revoke', actor: event.actor, decision: 'ok', reason: 'revoked_by_admin', detail: { ...sel, recovered: true } };
  }

  /** Whether a task `sel` matches (as the kill switch matches them) is open. */
  private async anyOpen(sel: RevokeSelector, signal?: AbortSignal): Promise<boolean> {
    if ('taskId' in sel) return (await this.deps.tasks.get(sel.taskId))?.status === 'open';
    const match = matcher(sel, false);
    for (let b = 0; b < this.deps.keys.buckets; b++) {
      for await (const page of this.deps.tasks.openIn(b, 500, false)) {
        signal?.throwIfAborted();
        if (page.some((t) => match(t) !== undefined)) return true;
      }
    }
    return false;
  }

  /** Ends every open task matching `sel` with its subtree; returns the tasks ended and their live leases. */
  private async endMatching(
    sel: RevokeSelector,
    opts: { openedBy?: boolean; signal?: AbortSignal } = {},
  ): Promise<{ tasks: number; leases: number }> {
    // Each task found, with whether its agent is the one being stopped ('agent': the contract's kill switch,
    // an AWS deny by SourceIdentity) or only the orchestrator that opened it ('task': its agent is not suspect).
    const found = new Map<string, 'agent' | 'task'>();
    if ('taskId' in sel) {
      found.set(sel.taskId, 'agent');
    } else {
      const match = matcher(sel, opts.openedBy === true);
      for (let b = 0; b < this.deps.keys.buckets; b++) {
        for await (const page of this.deps.tasks.openIn(b, 500, opts.openedBy)) {
          opts.signal?.throwIfAborted();
          for (const t of page) {
            const how = match(t);
            if (how) found.set(t.taskId, how);
          }
        }
      }
    }
    const ids = [...found.keys()];
    let tasks = 0;
    let leases = 0;
    // Parents first, so a matching sub-task is ended with its parent's subtree rather than on its own:
    // one wave per depth (sub-task ids are `<parent>~<name>`), the tasks of a wave ended concurrently
    // (a kill switch for an agent with many tasks answers in a few round trips, not one per task).
    const waves = new Map<number, string[]>();
    for (const id of ids) {
      const depth = id.split('~').length;
      const wave = waves.get(depth);
      if (wave) wave.push(id);
      else waves.set(depth, [id]);
    }
    for (const depth of [...waves.keys()].sort((a, b) => a - b)) {
      const wave = waves.get(depth)!;
      for (let i = 0; i < wave.length; i += KILL_CONCURRENCY) {
        opts.signal?.throwIfAborted();
        for (const c of await Promise.all(
          wave.slice(i, i + KILL_CONCURRENCY).map((id) => this.endOne(id, found.get(id) === 'task' ? 'task' : undefined)),
        )) {
          tasks += c.tasks;
          leases += c.leases;
        }
      }
    }
    return { tasks, leases };
  }

  /** Ends one task with its open subtree for the kill switch; counts what it ended (nothing if it was not open). */
  private async endOne(id: string, adminScope?: 'task'): Promise<{ tasks: number; leases: number }> {
    // One task.revoke record per task it ends, put in the audit outbox with the ending (task-end.lua), so
    // an admin process that dies right after loses none of them.
    const record = { action: 'task.revoke' as const, actor: 'broker', decision: 'ok' as const, reason: 'revoked_by_admin' };
    const res = await this.tasks.end(id, 'completed', 'revoked_by_admin', adminScope, { task: { ...record, taskId: id }, subtask: record });
    if (res.kind !== 'ended') return { tasks: 0, leases: 0 };
    await this.deps.audit.settleOutbox(this.deps.keys.bucketOfTask(id), res.records, res.endedAt);
    return { tasks: res.taskIds.length, leases: res.liveLeases };
  }
}

/**
 * How an open task matches an agent or tenant selector: 'agent' when its agent is the one being stopped (the
 * contract's kill switch, an AWS deny by SourceIdentity), 'task' when only the orchestrator that opened it is
 * (`openedBy`: a quarantine; its agent is not suspect).
 */
function matcher(
  sel: { agent: string } | { tenant: string },
  openedBy: boolean,
): (t: { agent: string; tenant: string; openedBy: string }) => 'agent' | 'task' | undefined {
  if (!('agent' in sel)) {
    // NFC on both sides: a task stored before tenants were taken in NFC is still the tenant's (src/tasks/nfc.ts).
    const tenant = nfc(sel.tenant);
    return (t) => (nfc(t.tenant) === tenant ? 'agent' : undefined);
  }
  const p = new IdentityPatterns([sel.agent]);
  return (t) => {
    if (p.matches(t.agent)) return 'agent';
    return openedBy && p.matches(t.openedBy) ? 'task' : undefined;
  };
}

/**
 * 400 for a kill-switch or quarantine pattern that no caller can ever match
 * (a non-canonical SPIFFE ID: `SPIFFE://...`, a trailing slash, ...): taken,
 * it would stop nothing while the admin believes the agent stopped.
 */
function refuseUnmatchable(pattern: string): void {
  const problem = spiffeProblem(pattern);
  if (problem) throw badRequest('invalid_request', `agent: ${problem}`, { extra: { field: 'agent' } });
}
