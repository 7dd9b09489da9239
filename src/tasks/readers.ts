import type { Deps } from '../deps.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import { ancestorTaskIds, type TaskFixed, type TaskRecord } from './types.ts';

/** Whether `who` is a party to `task`: its orchestrator, its agent, or an admin. */
export function isTaskParty(deps: Pick<Deps, 'patterns'>, who: WorkloadIdentity, task: Pick<TaskFixed, 'openedBy' | 'agent'>): boolean {
  return who.id === task.openedBy || who.id === task.agent || deps.patterns.admins.matches(who.id);
}

/**
 * Whether `who` is a party to one of `task`'s ancestors, and so may read the task and its leases: whoever reads a
 * task sees its sub-tasks and their leases in its tree and its evidence, and the root orchestrator completes them
 * with the root. Only an ancestor opened no later than the task counts: an ancestor id opened again after its first
 * task left Redis is another task, and its orchestrator is no party to the old sub-task.
 */
export async function readsAnAncestor(deps: Pick<Deps, 'patterns' | 'tasks'>, who: WorkloadIdentity, task: TaskRecord): Promise<boolean> {
  if (!task.parentTaskId) return false;
  const party = (t: Pick<TaskFixed, 'openedBy' | 'agent'>) => isTaskParty(deps, who, t);
  const ancestors = await deps.tasks.recordsOf(ancestorTaskIds(task.taskId), party);
  return ancestors.some((a) => a.createdAt <= task.createdAt && party(a));
}

/**
 * The parties to `task`'s ancestors (their orchestrators and agents, as {@link readsAnAncestor} counts them), other
 * than `task`'s own agent and opener: who else may read the task, and so what it asks approvers for. Empty for a
 * root task. An ancestor no longer in Redis adds no one.
 */
export async function ancestorParties(
  deps: Pick<Deps, 'tasks'>,
  task: Pick<TaskFixed, 'taskId' | 'agent' | 'openedBy' | 'parentTaskId'> & { createdAt: number },
): Promise<string[]> {
  if (!task.parentTaskId) return [];
  const ancestors = await deps.tasks.recordsOf(ancestorTaskIds(task.taskId));
  const own = new Set([task.agent, task.openedBy]);
  const parties = ancestors.filter((a) => a.createdAt <= task.createdAt).flatMap((a) => [a.openedBy, a.agent]);
  return [...new Set(parties)].filter((id) => !own.has(id));
}
