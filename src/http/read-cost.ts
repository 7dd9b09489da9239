import type { RequestHandler } from 'express';
import type { Deps } from '../deps.ts';
import { identityOf, spendBudget } from './middleware.ts';
import { paging } from './schemas.ts';
import { listPoints } from '../lists/page-bytes.ts';

/**
 * What an evidence page costs of its caller's rate limit, in requests. One evidence call reads the task's
 * tree, its leases and a merge of every tree task's audit index, and cost the broker ~35-40 ms of CPU (a
 * credential request: about 1 ms): at the 50 requests a second one identity may make, one agent kept a
 * core busy with evidence alone. A page's work is bounded to that (src/lists/audit-query.ts EVIDENCE_BYTES: ~2 MB in
 * all of its tree, leases and records), whatever the task's shape: its parts stopped at ~2 MB each, and a task of the
 * largest shape the API accepts made a page ~4-6 MB and ~100-190 ms for the same 10 points.
 */
export const EVIDENCE_POINTS = 10;
/**
 * A list page costs one request per LIST_POINTS_PER (100) records it may hold (`?limit=`, up to LIST_LIMIT_MAX: 5),
 * and holds ~0.5 MB of records per point (src/lists/page-bytes.ts pageBytes), whatever their size.
 */
export { LIST_POINTS_PER } from '../lists/page-bytes.ts';

const EVIDENCE = /\/v1\/tasks\/[^/]+\/evidence\/?$/i;
/** Every list page (each reads its `?limit=` with `paging`): the one table of what is weighted as a list. */
const LISTS = /\/v1\/(?:tasks|approvals|audit|tasks\/[^/]+\/leases|admin\/quarantine)\/?$/i;

/**
 * What a read costs of its caller's budget (server.rateLimit), in requests: {@link EVIDENCE_POINTS} for an
 * evidence page, `ceil(limit / 100)` for a list page (which holds ~0.5 MB of records a point), else 1 (what authentication already spent; a limit the
 * route refuses with 400 too; a task read, whose leases stop at ~0.5 MB for it: src/lists/task-leases.ts
 * EMBEDDED_LEASE_BYTES). `path` is
 * the whole path (the console mounts the same routes under /console/api).
 */
export function readCost(method: string, path: string, limit: unknown): number {
  if (method !== 'GET' && method !== 'HEAD') return 1;
  if (EVIDENCE.test(path)) return EVIDENCE_POINTS;
  if (!LISTS.test(path)) return 1;
  // Read as the route reads it (one schema): a limit the route refuses (400: over LIST_LIMIT_MAX, not a whole
  // number, repeated) costs nothing more than authentication's point, as the 400 costs the broker nothing more.
  const n = paging.limit.safeParse(limit);
  return n.success ? listPoints(n.data) : 1;
}

/**
 * Charges expensive reads the rest of their cost (authentication spent 1) before they run: an agent may
 * make as many cheap calls as before, and fewer of the reads that cost the broker most. Over the budget:
 * 429 `rate_limited` with Retry-After, an audited denial (`detail.points`). HEAD costs as GET does (Express
 * runs the GET route for it).
 */
export function chargeReads(deps: Pick<Deps, 'limits' | 'audit' | 'logger'>): RequestHandler {
  return async (req, res, next) => {
    // A cost over the whole budget (`burst`) is cut to it, authentication's point included: cut to `burst` on top
    // of that point, a read costing more than `burst` could never be answered, whatever the caller waited.
    const cost = Math.min(readCost(req.method, `${req.baseUrl}${req.path}`, req.query.limit), deps.limits?.maxCost('identity') ?? 1);
    if (cost > 1) await spendBudget(deps, identityOf(res), 'identity', cost - 1);
    next();
  };
}
