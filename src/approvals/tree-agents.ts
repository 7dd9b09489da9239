import type { Deps } from '../deps.ts';
import { READS_IN_FLIGHT } from '../redis/in-rounds.ts';
import { rootTaskId } from '../tasks/types.ts';

/**
 * Whether `identity` is the agent of a task of `taskId`'s tree (its root, the root's sub-tasks, theirs...): an
 * approver that is may not decide a request made anywhere in that tree. The delegators of the request's task
 * (its ancestors' agents) were refused already; this adds the requester's own delegates and its siblings'. A
 * requester that opens a sub-task for an approver identity writes that approver's instructions: approving the
 * requester's request, or a fellow sub-agent's, is then the requester approving itself. Reads the tree's ids
 * (one round trip per level) and their small head fields, READS_IN_FLIGHT at a time, only when an approver
 * decides (a tree has at most `tasks.maxSubtasks` + 1 tasks).
 */
export async function agentInTree(deps: Pick<Deps, 'tasks'>, identity: string, taskId: string): Promise<boolean> {
  const ids = await deps.tasks.subtree(rootTaskId(taskId));
  for (let i = 0; i < ids.length; i += READS_IN_FLIGHT) {
    const heads = await deps.tasks.headsOf(ids.slice(i, i + READS_IN_FLIGHT));
    if (heads.some((h) => h?.agent === identity)) return true;
  }
  return false;
}
