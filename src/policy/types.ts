/** Cedar actions of the contract (section 6). */
export type PolicyAction = 'openTask' | 'completeTask' | 'issue' | 'revoke' | 'rotate';

/** The task as policy sees it (`context.task`). */
export interface PolicyTaskContext {
  id: string;
  tenant: string;
  purpose: string;
  agent: string;
  labels: Record<string, string>;
  /** Names of the granted roles. */
  roles: string[];
  /** Present for a sub-task: the parent task id. */
  parentId?: string;
  /**
   * The root task of its delegation chain (its own id for a root task): the one id a sub-task cannot
   * change, so a rule about a task (an incident's forbid) reaches every sub-task an agent opens under it.
   */
  rootId: string;
  /** Delegation depth: 0 for a root task. */
  depth: number;
  /**
   * Not seen by Cedar. Present when delegation added labels (a sub-task): the
   * labels the root task's orchestrator set. A request is permitted only if
   * policy permits it with `labels` and with these (src/policy/narrowing.ts).
   */
  orchestratorLabels?: Record<string, string>;
}

/** One authorization question, in contract terms. */
export interface PolicyRequest {
  principal: { id: string; trust: string; kind: 'spiffe' | 'oidc'; claims: Record<string, string> };
  action: PolicyAction;
  resource: { type: 'Role' | 'Task' | 'Broker'; id: string };
  context: {
    task?: PolicyTaskContext;
    ttlSeconds?: number;
    scopes?: string[];
    /** For `issue` of a role with `approval: required`: whether an approver has approved. */
    approved?: boolean;
    /** For `rotate`: what is rotated (`signing-key` or a provider name). */
    target?: string;
  };
}

export interface PolicyDecision {
  allowed: boolean;
  /** Ids of the policies that determined the decision (Cedar's diagnostics.reason). */
  policies: string[];
  /**
   * Evaluation errors Cedar reported, as `<policy id>: <message>`. Errors never
   * permit: a permit that errors does not apply, a forbid that errors denies.
   */
  errors: string[];
}

/** Evaluates every request against the loaded policy set. Deny by default. */
export interface PolicyEngine {
  authorize(req: PolicyRequest): PolicyDecision;
  /** Re-reads the policy directory; throws (keeping the old set) if the new set is invalid. */
  reload(): Promise<{ policies: number; version: string }>;
  /** Hash of the policy set in force, so instances can show which set they run. */
  readonly version: string;
  close(): Promise<void>;
}
