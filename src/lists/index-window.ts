/**
 * How long list-index entries stay in Redis (the layout is in src/redis/keys.ts).
 *
 * A task's record lives until `tasks.retentionSeconds` after it ends, and it
 * ends by its deadline (plus the sweeper's lag); an approval's record until its
 * task's deadline plus the same retention. Its index entries must stay that
 * long and need not stay longer.
 */

/** The ceiling of `tasks.maxTtlSeconds` (src/config/schema.ts) in ms: no task outlives its creation by more. */
export const TASK_TTL_CEILING_MS = 7 * 86_400_000;

/** Slack for the sweeper's lag: an overdue task ends, and its retention starts, a little after its deadline. */
const SWEEP_SLACK_MS = 3_600_000;

export interface IndexWindow {
  /** How long after a task's deadline its index entries (and the index keys) must stay. */
  afterDeadlineMs: number;
  /**
   * How long after its creation an entry may stay: no record can exist after that, so a write trims
   * older entries. Taken from the config schema's ceiling rather than the configured `maxTtlSeconds`,
   * so instances with different configs never trim a live task's entry.
   */
  horizonMs: number;
}

/** The window for a given `tasks.retentionSeconds` (in ms). */
export function indexWindow(retentionMs: number): IndexWindow {
  const afterDeadlineMs = retentionMs + SWEEP_SLACK_MS;
  return { afterDeadlineMs, horizonMs: TASK_TTL_CEILING_MS + afterDeadlineMs };
}
