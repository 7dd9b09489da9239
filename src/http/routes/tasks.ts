import { Router } from 'express';
import { badRequest } from '../../errors.ts';
import { z } from 'zod';
import type { Services } from '../services.ts';
import { identityOf, validBody, validParam } from '../middleware.ts';
import { openTaskSchema, taskRefSchema } from '../schemas.ts';
import { publicLease, publicTask } from '../../tasks/task-service.ts';
import { EMBEDDED_LEASE_BYTES, EMBEDDED_LEASES } from '../../lists/task-leases.ts';

/** POST /v1/tasks, GET /v1/tasks/:taskId (with its first leases, ~0.5 MB at most), POST /v1/tasks/:taskId/complete. */
export function taskRoutes(s: Services): Router {
  const r = Router();
  r.post('/v1/tasks', async (req, res) => {
    // `~` is reserved for the sub-task ids the broker makes: no caller can take an id another will use.
    const sent = (req.body as { taskId?: unknown } | undefined)?.taskId;
    if (typeof sent === 'string' && sent.includes('~'))
      throw badRequest('invalid_task_id', 'taskId may not contain "~" (reserved for sub-task ids).');
    const body = validBody(openTaskSchema, req.body);
    const { created, task } = await s.tasks.open(identityOf(res), body);
    res.status(created ? 201 : 200).json(publicTask(task));
  });
  r.get('/v1/tasks/:taskId', async (req, res) => {
    const taskId = validParam(taskRefSchema, req.params.taskId, 'taskId');
    const who = identityOf(res);
    const task = await s.tasks.readable(who, taskId);
    const leases = await s.taskLeases.page(who.id, [taskId], false, EMBEDDED_LEASES, undefined, EMBEDDED_LEASE_BYTES);
    res.json({ ...publicTask(task), leases: leases.items.map((l) => publicLease(l, task.status)), leasesNextCursor: leases.nextCursor });
  });
  r.post('/v1/tasks/:taskId/complete', async (req, res) => {
    const taskId = validParam(taskRefSchema, req.params.taskId, 'taskId');
    validBody(emptyBody, req.body);
    res.status(202).json(await s.tasks.complete(identityOf(res), taskId));
  });
  return r;
}

/** Complete takes no body; an empty object is accepted for clients that always send one. */
const emptyBody = z.strictObject({});
