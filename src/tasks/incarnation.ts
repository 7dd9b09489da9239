import type { TaskRecord } from './types.ts';

/**
 * common.lua's EARLIER_TASK_MARGIN_MS: how long before a task's creation a lease must be to be an
 * earlier task's (a task id is free again once its task was purged; TypeScript decides here what the
 * scripts decide in Lua, and a test keeps the two equal).
 */
export const EARLIER_TASK_MARGIN_MS = 30_000;

/**
 * The task now under a lease's task id, if it is the lease's own: a lease issued more than the margin
 * before that task was created belongs to an earlier task of the same id, which is gone.
 */
export function taskOfLease<T extends Pick<TaskRecord, 'createdAt'>>(lease: { issuedAt: number }, current: T | undefined): T | undefined {
  return current && lease.issuedAt < current.createdAt - EARLIER_TASK_MARGIN_MS ? undefined : current;
}
