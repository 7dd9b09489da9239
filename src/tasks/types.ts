/** One grant in a task: a role the agent may use, with a scope and TTL ceiling. */
export interface Grant {
  role: string;
  scopes: string[];
  maxTtlSeconds: number;
}

export type TaskStatus = 'open' | 'completed' | 'expired';

/** The broker's record of a task (stored as JSON in Redis). */
export interface TaskRecord {
  taskId: string;
  agent: string;
  tenant: string;
  purpose: string;
  grants: Grant[];
  labels: Record<string, string>;
  status: TaskStatus;
  /** Identity that opened the task (an orchestrator, or the parent's agent for a sub-task). */
  openedBy: string;
  createdAt: number;
  expiresAt: number;
  endedAt?: number;
  parentTaskId?: string;
  /** 0 for a root task, parent depth + 1 for a sub-task. */
  depth: number;
  /** Delegation chain, outermost (most recent) delegator first: agents who delegated down to this task. */
  delegators: string[];
  /** Hash of the canonical open request, so a repeat with a different body answers 409. */
  requestHash: string;
}

/** The part of a task that never changes after it is opened (safe to cache). */
export type TaskFixed = Omit<TaskRecord, 'status' | 'endedAt'>;
