import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { AGENT, ORCH, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * A task id whose task was purged (its retention passed) may be opened again, by any orchestrator.
 * Found from outside: the earlier task's audit index outlives its task record (it is kept for the
 * audit's own retention), so the new task's orchestrator read the earlier task's records (another
 * orchestrator's, agent's and tenant's) through GET /v1/audit?taskId= and the evidence endpoint.
 */
let t: TestBroker;
const OTHER = '/orchestrator/other';
beforeAll(async () => {
  t = await startTestBroker('task-id-reuse');
});
afterAll(async () => {
  await t?.close();
});

test("a task opened under a purged task's id shows only its own audit records", async () => {
  const taskId = 'reuse-4711';
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'triage ticket 4711 for acme',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api' }],
  });
  expect(open.status).toBe(201);
  const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
  expect(cred.status).toBe(201);
  expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
  // Its retention passes: the task record expires (what PEXPIRE does at the end of tasks.retentionSeconds).
  expect(await t.broker.deps.redis.del(t.broker.deps.keys.task(taskId))).toBe(1);

  const reopened = await call(t.url, 'POST', '/v1/tasks', t.as(OTHER), {
    taskId,
    agent: 'spiffe://dev.local/agent/other',
    tenant: 'globex',
    purpose: 'mine',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(reopened.status).toBe(201);
  const audit = await call(t.url, 'GET', `/v1/audit?taskId=${taskId}`, t.as(OTHER));
  const evidence = await call(t.url, 'GET', `/v1/tasks/${taskId}/evidence`, t.as(OTHER));
  expect([audit.status, evidence.status]).toEqual([200, 200]);
  const summary = (items: { action: string; actor: string }[]) => items.map((r) => `${r.action} ${r.actor}`);
  const own = [`task.open spiffe://dev.local${OTHER}`];
  // Before: task.open, credential.issue, task.complete and lease.revoke of the earlier task came first.
  expect(summary(audit.body.items)).toEqual(own);
  expect(summary(evidence.body.audit.items)).toEqual(own);

  // A lease of the earlier task that outlived it (e.g. a revocation still retrying): issued well before
  // the task now under the id was created, it is not that task's, and that task's orchestrator is no party to it.
  const deps = t.broker.deps;
  const issuedAt = Number(await deps.redis.hget(deps.keys.lease(cred.body.leaseId), 'issuedAt'));
  await deps.redis.hset(deps.keys.lease(cred.body.leaseId), 'issuedAt', issuedAt - 120_000);
  expect((await call(t.url, 'GET', `/v1/leases/${cred.body.leaseId}`, t.as(OTHER))).status).toBe(403);
  expect((await call(t.url, 'GET', `/v1/leases/${cred.body.leaseId}`, t.as(AGENT))).status).toBe(200);
});

test("an agent's refused sub-task is in the parent's evidence, before and after that sub-task opens", async () => {
  await openAgentTask(t, 'reuse-root', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const sub = (scopes: string[]) =>
    call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: 'reuse-root',
      taskId: 'x',
      agent: `spiffe://dev.local${AGENT}`,
      ttlSeconds: 60,
      grants: [{ role: 'tickets-api', scopes }],
    });
  const widen = await sub(['tickets:read', 'tickets:write']);
  expect([widen.status, widen.body.code]).toEqual([403, 'delegation_widens']);
  const refusals = async () =>
    ((await call(t.url, 'GET', '/v1/tasks/reuse-root/evidence', t.as(ORCH))).body.audit.items as Record<string, any>[])
      .filter((r) => r.action === 'access.deny')
      .map((r) => ({ reason: r.reason, taskId: r.taskId, subtask: r.detail?.subtask }));
  const expected = [{ reason: 'delegation_widens', taskId: 'reuse-root', subtask: 'reuse-root~x' }];
  // Before: recorded under the sub-task's id, which is in no tree until it opens, and whose index its open dropped.
  expect(await refusals()).toEqual(expected);
  expect((await sub(['tickets:read'])).status).toBe(201);
  expect(await refusals()).toEqual(expected);
});

test("a sub-task refused by policy is recorded under its parent too, in the parent's evidence", async () => {
  await openAgentTask(t, 'reuse-pd', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const sub = (parent: string, name: string) =>
    call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: parent,
      taskId: name,
      agent: `spiffe://dev.local${AGENT}`,
      ttlSeconds: 500 - 100 * parent.split('~').length, // each within its parent's deadline
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    });
  let parent = 'reuse-pd';
  let refused: { status: number; body: any } | undefined;
  for (const name of ['a', 'b', 'c', 'd']) {
    const r = await sub(parent, name);
    if (r.status !== 201) {
      refused = r;
      break;
    }
    parent = r.body.taskId;
  }
  // The shipped policy lets agents delegate to depth 2, under the configured limit of 3.
  expect({ status: refused?.status, code: refused?.body.code }).toEqual({ status: 403, code: 'policy_denied' });
  const ev = await call(t.url, 'GET', '/v1/tasks/reuse-pd/evidence', t.as(ORCH)); // the tree's evidence
  const denials = (ev.body.audit.items as Record<string, any>[]).filter((r) => r.action === 'access.deny');
  // Before: recorded under the sub-task's id, which is in no tree.
  expect(denials.map((r) => ({ reason: r.reason, taskId: r.taskId, subtask: r.detail?.subtask }))).toEqual([
    { reason: 'policy_denied', taskId: parent, subtask: `${parent}~${['a', 'b', 'c', 'd'][parent.split('~').length - 1]}` },
  ]);
});
