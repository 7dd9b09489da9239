import type { AuditAction, AuditEvent } from './audit/record.ts';
import type { Deps } from './deps.ts';
import { BrokerError, badRequest, type CodeWithStatus, forbidden, unavailable } from './errors.ts';
import { REFUSED_CHARACTERS, type RefusedText } from './http/schemas.ts';
import type { WorkloadIdentity } from './identity/types.ts';
import { authorizeNarrowing } from './policy/narrowing.ts';
import type { PolicyAction, PolicyRequest, PolicyTaskContext } from './policy/types.ts';
import { nfc, nfcValues } from './tasks/nfc.ts';
import { rootTaskId, type TaskFixed } from './tasks/types.ts';

/**
 * The task as Cedar sees it (`context.task`). Its text in NFC, as the API takes it: a task stored before
 * that is seen as one opened now would be (src/tasks/nfc.ts).
 */
export function taskContext(t: TaskFixed): PolicyTaskContext {
  const added = t.delegatedLabels ?? [];
  const labels = nfcValues(t.labels);
  let orchestratorLabels: Record<string, string> | undefined;
  if (added.length > 0) {
    orchestratorLabels = Object.create(null) as Record<string, string>;
    for (const [k, v] of Object.entries(labels)) if (!added.includes(k)) orchestratorLabels[k] = v;
  }
  return {
    id: t.taskId,
    tenant: nfc(t.tenant),
    purpose: nfc(t.purpose),
    agent: t.agent,
    labels,
    roles: t.grants.map((g) => g.role),
    depth: t.depth,
    rootId: rootTaskId(t.taskId),
    ...(t.parentTaskId ? { parentId: t.parentTaskId } : {}),
    ...(orchestratorLabels ? { orchestratorLabels } : {}),
  };
}

/** Where a denial is recorded. */
export interface DenialRecord {
  action: AuditAction;
  taskId?: string | undefined;
  role?: string | undefined;
  leaseId?: string | undefined;
  detail?: AuditEvent['detail'];
}

/**
 * Asks policy; denies with 403 `policy_denied` unless a permit matched and no
 * forbid did. Runs after the task-ceiling checks, so policy can only narrow.
 * The denial tells the caller the class of reason, never the policy text; the
 * deciding policy ids go to the audit record.
 */
export async function authorize(
  deps: Deps,
  who: WorkloadIdentity,
  action: PolicyAction,
  resource: PolicyRequest['resource'],
  context: PolicyRequest['context'],
  audit: { taskId?: string; role?: string; leaseId?: string; detail?: AuditEvent['detail'] },
  opts: { beforeDenial?: () => Promise<void> } = {},
): Promise<string[]> {
  // Only what grants waits for the policy set to agree; ending a task or revoking (safety) goes ahead.
  if ((action === 'issue' || action === 'openTask') && deps.policyBehind?.())
    throw unavailable(
      'not_ready',
      "This instance's policy set is behind the last policy reload; retry shortly (another instance may answer).",
    );
  const decision = authorizeNarrowing(deps.policy, {
    // Claims in NFC like the task's text they are compared with (`principal.claims.tenant == context.task.tenant`).
    principal: { id: who.id, trust: who.trust, kind: who.kind, claims: nfcValues(who.claims) },
    action,
    resource,
    context,
  });
  if (!decision.allowed) {
    // E.g. the caller checks that a cached task is still current: a refusal must not rest on stale data.
    await opts.beforeDenial?.();
  }
  deps.metrics.policyDecisions.inc({ action, decision: decision.allowed ? 'allow' : 'deny' });
  if (!decision.allowed) {
    deps.metrics.denied.inc({ code: 'policy_denied' });
    await deps.audit.denial(
      {
        action: action === 'issue' ? 'credential.deny' : 'access.deny',
        actor: who.id,
        decision: 'deny',
        reason: decision.errors.length ? 'policy_error' : 'policy_denied',
        policies: decision.policies,
        ...audit,
        detail: { ...audit.detail, policyAction: action, ...(decision.delegatedLabels ? { delegatedLabels: true } : {}) },
      },
      { ownTask: await ownsTask(deps, who, audit.taskId) },
    );
    throw forbidden('policy_denied', `Denied by policy: ${action} on ${resource.type} "${resource.id}".`, { extra: { reason: 'policy' } });
  }
  return decision.policies;
}

/** Every denial (task ceiling, party checks, bounds) is counted, audited and answered the same way. */
export async function deny(
  deps: Deps,
  who: WorkloadIdentity,
  code: CodeWithStatus<403> | CodeWithStatus<429>,
  detail: string,
  audit: DenialRecord,
): Promise<never> {
  throw await denial(deps, who, new BrokerError(code, detail), audit);
}

/**
 * 400 `invalid_request` naming the field src/http/schemas.ts fieldWithControls refused and saying what its rule
 * refuses, audited as a denial with `detail.field`: unlike other malformed bodies, such text in what audit
 * records, lists and the console show is an attempt to forge what a reader sees.
 */
export async function refuseControls(deps: Deps, who: WorkloadIdentity, refused: RefusedText, audit: DenialRecord): Promise<never> {
  const { field, rule } = refused;
  const err = badRequest('invalid_request', `${field}: may not hold ${REFUSED_CHARACTERS[rule]}`, { extra: { field } });
  throw await denial(deps, who, err, { ...audit, detail: { ...audit.detail, field } });
}

/** Records `err` as a denial of `who` (metrics + audit) and returns it for throwing. */
export async function denial(deps: Deps, who: WorkloadIdentity, err: BrokerError, audit: DenialRecord): Promise<BrokerError> {
  deps.metrics.denied.inc({ code: err.code });
  const { taskId, role, leaseId, ...rest } = audit;
  await deps.audit.denial(
    {
      actor: who.id,
      decision: 'deny',
      reason: err.code,
      ...rest,
      ...(taskId ? { taskId } : {}),
      ...(role ? { role } : {}),
      ...(leaseId ? { leaseId } : {}),
    },
    { ownTask: await ownsTask(deps, who, taskId) },
  );
  return err;
}

/**
 * Whether `who` is the agent or the orchestrator of task `taskId`: its denials about that task keep the
 * task past the per-caller fold bound (src/audit/denial-folds.ts), so an agent cannot push its attempts on
 * its own task out of that task's evidence by first being denied on three others. The task's immutable part
 * comes from the task cache (the route that denies has just read it); a failed read counts as not a party
 * (the record is then folded as before, never lost).
 */
async function ownsTask(deps: Deps, who: WorkloadIdentity, taskId: string | undefined): Promise<boolean> {
  if (!taskId) return false;
  try {
    const party = (t: { agent: string; openedBy: string }) => t.agent === who.id || t.openedBy === who.id;
    const task = await deps.tasks.fixed(taskId, party);
    return task !== undefined && party(task);
  } catch {
    return false;
  }
}
