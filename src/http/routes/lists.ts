import { Router } from 'express';
import { z } from 'zod';
import { publicApproval } from '../../approvals/approval-service.ts';
import type { Services } from '../services.ts';
import { publicLease, publicTask } from '../../tasks/task-service.ts';
import { identityOf, validParam, validQuery } from '../middleware.ts';
import { nfcText, paging, taskRefSchema } from '../schemas.ts';

const identity = z.string().min(3).max(2048);
/**
 * An RFC 3339 date-time with `Z` or an offset (what docs/openapi.yaml's `format: date-time` says), not
 * whatever Date.parse accepts: that includes years down to -271821, which no stream id can hold.
 */
const isoTime = z
  .string()
  .max(64)
  .pipe(z.iso.datetime({ offset: true, message: 'must be an RFC 3339 date-time, e.g. 2026-01-01T00:00:00Z' }))
  .transform((s) => Date.parse(s));

const taskQuery = z.strictObject({
  ...paging,
  status: z.enum(['open', 'completed', 'expired']).optional(),
  agent: identity.optional(),
  tenant: nfcText(128).optional(),
  orchestrator: identity.optional(),
});
const approvalQuery = z.strictObject({ ...paging, status: z.enum(['pending', 'approved', 'rejected', 'consumed', 'expired']).optional() });
const auditQuery = z.strictObject({
  ...paging,
  taskId: taskRefSchema.optional(),
  actor: identity.optional(),
  action: z.string().min(1).max(64).optional(),
  since: isoTime.optional(),
  until: isoTime.optional(),
});
/** `cursor` pages the audit records, `treeCursor` (the previous answer's `treeNextCursor`) the sub-task tree. */
const evidenceQuery = z.strictObject({ ...paging, treeCursor: paging.cursor });
const taskLeasesQuery = z.strictObject({ ...paging, tree: z.enum(['true', 'false']).default('false') });

/** The lists and the evidence of contract section 3 ("Finding things and stopping things"). */
export function listRoutes(s: Services): Router {
  const r = Router();
  r.get('/v1/tasks', async (req, res) => {
    const q = validQuery(taskQuery, req.query);
    const page = await s.lists.tasksFor(identityOf(res), q);
    res.json({ items: page.items.map((t) => publicTask(t)), nextCursor: page.nextCursor });
  });
  r.get('/v1/approvals', async (req, res) => {
    const q = validQuery(approvalQuery, req.query);
    const page = await s.lists.approvalsFor(identityOf(res), q);
    res.json({ items: page.items.map(publicApproval), nextCursor: page.nextCursor });
  });
  r.get('/v1/audit', async (req, res) => {
    const q = validQuery(auditQuery, req.query);
    res.json(await s.audit.query(identityOf(res), q));
  });
  r.get('/v1/tasks/:taskId/evidence', async (req, res) => {
    const taskId = validParam(taskRefSchema, req.params.taskId, 'taskId');
    const q = validQuery(evidenceQuery, req.query);
    const e = await s.audit.evidence(identityOf(res), taskId, q);
    res.json({
      task: publicTask(e.task),
      tree: e.tree.items.map((t) => publicTask(t)),
      treeNextCursor: e.tree.nextCursor,
      leases: e.leases.items.map((l) => publicLease(l, e.leaseTaskStatus.get(l.taskId))),
      leasesNextCursor: e.leases.nextCursor,
      audit: e.audit,
      chain: e.chain,
    });
  });
  r.get('/v1/tasks/:taskId/leases', async (req, res) => {
    const taskId = validParam(taskRefSchema, req.params.taskId, 'taskId');
    const q = validQuery(taskLeasesQuery, req.query);
    const who = identityOf(res);
    const task = await s.tasks.readable(who, taskId);
    // The tree's ids, and then the status of the tasks the page's leases belong to: not every record of the
    // tree whole on every page (51 of ~36 KB each for a page of one lease).
    const tree = q.tree === 'true' ? await s.tasks.subtreeIds(task.taskId) : [task.taskId];
    const page = await s.taskLeases.page(who.id, tree, q.tree === 'true', q.limit, q.cursor);
    const statusOf = await s.tasks.statusesOf(page.items.map((l) => l.taskId));
    res.json({ items: page.items.map((l) => publicLease(l, statusOf.get(l.taskId))), nextCursor: page.nextCursor });
  });
  return r;
}
