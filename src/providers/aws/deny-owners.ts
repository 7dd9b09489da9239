import { isOwner, type TaskOwners } from './deny-fold.ts';
import type { DenyModel } from './deny-policy.ts';

/**
 * Who each ended task's `task` tag in a role's deny list belongs to, so the
 * tag can be counted to its agent and folded (deny-fold.ts). A tag does not
 * say it (it is the task id, or a hash of it), but the session whose
 * revocation writes it does: its name carries the agent and task keys.
 *
 * Kept in Redis next to the ledger (deny-list.ts)
 * (`<prefix>:aws:deny:<roleArn>:owners`: JSON, a list of
 * `[tag, "<agent key>-<task key>"]`), read and written under the role's lock, for as
 * long as the latest tag in the list lives. Losing it loses no deny: the
 * tags stay in IAM, they are only no longer foldable (a list of them can
 * then still overflow into the role-wide cut-off, as before owners were kept).
 *
 * Only earlier versions wrote tags with a known owner: an ended task is now
 * denied by the wildcard on its session names, which says its owner itself
 * (deny-fold.ts). The owners already stored are read and kept until their
 * tags are pruned; nothing new is added.
 */

/** The owners stored for a role; anything that does not parse counts as nothing known. */
export function parseOwners(text: string | null | undefined): TaskOwners {
  const owners: TaskOwners = new Map();
  if (!text) return owners;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return owners;
  }
  if (!Array.isArray(raw)) return owners;
  for (const pair of raw) {
    if (!Array.isArray(pair) || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') continue;
    const [tag, v] = pair as [string, string];
    const [agentKey = '', taskKey = ''] = v.split('-');
    const o = { agentKey, taskKey };
    if (isOwner(o)) owners.set(tag, o);
  }
  return owners;
}

/**
 * What to store after a write: the owners of the tags still in the model,
 * and how long to keep them (until the latest of those tags is pruned); no
 * text when none is left.
 */
export function ownersToStore(owners: TaskOwners, m: DenyModel, now: number, skewMs: number): { text?: string; ttlMs: number } {
  const out: [string, string][] = [];
  let end = 0;
  for (const [tag, until] of m.tasks) {
    const o = owners.get(tag);
    if (!o) continue;
    out.push([tag, `${o.agentKey}-${o.taskKey}`]);
    end = Math.max(end, until);
  }
  if (end === 0) return { ttlMs: 0 };
  return { text: JSON.stringify(out), ttlMs: Math.max(1000, end + skewMs - now) };
}
