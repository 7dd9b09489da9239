/** One grant in a task: a role the agent may use, with a scope and TTL ceiling. */
export interface Grant {
  role: string;
  /** Exactly the scopes granted (literal: `[]` grants none). */
  scopes: string[];
  maxTtlSeconds: number;
}

export type TaskStatus = 'open' | 'completed' | 'expired';

/** The root task of a task's delegation chain: sub-task ids are `<parent>~<name>`, and no name holds a `~`. */
export function rootTaskId(taskId: string): string {
  const tilde = taskId.indexOf('~');
  return tilde === -1 ? taskId : taskId.slice(0, tilde);
}

/** The ids of a task's ancestors, root first (none for a root task): `a~b~c` has `a` and `a~b`. */
export function ancestorTaskIds(taskId: string): string[] {
  const parts = taskId.split('~');
  return parts.slice(1).map((_, i) => parts.slice(0, i + 1).join('~'));
}

/** Why a task ended; its leases are revoked with the same reason. */
export const TASK_END_REASONS = ['task_completed', 'task_expired', 'revoked_by_admin'] as const;
export type TaskEndReason = (typeof TASK_END_REASONS)[number];

/** The part of a task that never changes after it is opened (safe to cache). */
export interface TaskFixed {
  taskId: string;
  agent: string;
  tenant: string;
  purpose: string;
  grants: Grant[];
  labels: Record<string, string>;
  /**
   * Sub-tasks only: keys of `labels` that delegation added (set by an agent, not by the root task's
   * orchestrator), sorted. Policy must permit a request both with all labels and without these.
   * Absent on root tasks (and on sub-tasks stored before this field existed).
   */
  delegatedLabels?: string[];
  /** Identity that opened the task (an orchestrator, or the parent's agent for a sub-task). */
  openedBy: string;
  parentTaskId?: string;
  /** 0 for a root task, parent depth + 1 for a sub-task. */
  depth: number;
  /** Delegation chain, outermost (most recent) delegator first: agents who delegated down to this task. */
  delegators: string[];
  /** Hash of the canonical open request, so a repeat with a different body answers 409. */
  requestHash: string;
  /** Requested lifetime; the deadline is decided on Redis's clock when the task is stored. */
  ttlSeconds: number;
}

/** The immutable part with the task's times, which never change either (what the issuance path caches). */
export interface TaskSnapshot extends TaskFixed {
  createdAt: number;
  expiresAt: number;
}

/** The broker's record of a task. */
export interface TaskRecord extends TaskFixed {
  status: TaskStatus;
  /** Epoch ms, on Redis's clock. */
  createdAt: number;
  expiresAt: number;
  endedAt?: number;
  reason?: TaskEndReason | string;
  /** Leases not yet ended. */
  liveLeases: number;
}
