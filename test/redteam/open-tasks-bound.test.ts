import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN, auditRecords, call, startTestBroker, testConfig, type TestBroker, waitFor } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Red team: resource exhaustion by an orchestrator with a valid identity (contract section 3, "Growth is
 * bounded"). Sub-tasks, leases and approvals are bounded per task, but nothing bounded how many top-level tasks
 * one orchestrator holds open: measured on a redis-server of its own, a root task with the largest body the
 * schema takes (20 grants of 100 scopes, 32 labels, a 1,024-char purpose) costs Redis ~34 KB, and the default
 * rate limit (50/s) let one orchestrator add ~1.7 MB a second, for tasks living up to a day (plus retention).
 * `tasks.maxOpenTasks` bounds the open top-level tasks of one opener: 429 `limit_exceeded`, audited.
 */
const AGENT = '/agent/ot-agent';
const OTHER_ORCH = '/orchestrator/other';
const id = (p: string) => `spiffe://dev.local${p}`;
let t: TestBroker;

beforeAll(async () => {
  const policies = mkdtempSync(join(tmpdir(), 'rt-open-tasks-policies-'));
  writeFileSync(join(policies, 'all.cedar'), 'permit (principal, action, resource);\n');
  t = await startTestBroker('rt-open-tasks', { config: { policies, tasks: { maxOpenTasks: 3 } } });
});
afterAll(async () => {
  await t.close();
});

const open = (who: string, body: Record<string, unknown>) =>
  call(t.url, 'POST', '/v1/tasks', t.as(who), {
    agent: id(AGENT),
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
    ...body,
  });

test('the default bound is 10,000 open top-level tasks per opener', () => {
  expect(testConfig(new TestIssuer(), 'x').tasks.maxOpenTasks).toBe(10_000);
});

test('an orchestrator at tasks.maxOpenTasks is refused (429, audited) until one of its tasks ends', async () => {
  const orch = '/orchestrator/ot-a';
  for (const n of [1, 2, 3]) expect((await open(orch, { taskId: `ot-a-${n}` })).status).toBe(201);

  const over = await open(orch, { taskId: 'ot-a-4' });
  expect({ status: over.status, code: over.body.code }).toEqual({ status: 429, code: 'limit_exceeded' });
  expect(over.body.detail).toContain('tasks.maxOpenTasks');
  expect(over.headers.get('retry-after')).toMatch(/^\d+$/);
  // A generated id is refused the same way, and nothing was stored for either.
  expect((await open(orch, {})).status).toBe(429);
  expect(await t.broker.deps.tasks.get('ot-a-4')).toBeUndefined();
  const denied = await waitFor(async () =>
    (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).find(
      (r) => r.action === 'access.deny' && r.reason === 'limit_exceeded' && r.actor === id(orch) && r.taskId === 'ot-a-4',
    ),
  );
  expect(denied.decision).toBe('deny');

  // Another orchestrator has its own bound.
  expect((await open(OTHER_ORCH, { taskId: 'ot-other-1' })).status).toBe(201);
  // The same request repeated for a task it holds answers as before (200), at the bound.
  expect((await open(orch, { taskId: 'ot-a-1' })).status).toBe(200);
  // Sub-tasks are bounded per tree (tasks.maxSubtasks), not here: the agent may still delegate.
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'ot-a-1',
    taskId: 'child',
    agent: id('/agent/ot-helper'),
    ttlSeconds: 60,
    grants: [{ role: 'demo-api' }],
  });
  expect(sub.status).toBe(201);

  // Completing a task frees its place; repeating the open of a completed task still answers 200, and takes none.
  expect((await call(t.url, 'POST', '/v1/tasks/ot-a-1/complete', t.as(orch))).status).toBe(202);
  expect((await open(orch, { taskId: 'ot-a-1' })).status).toBe(200);
  expect((await open(orch, { taskId: 'ot-a-5' })).status).toBe(201);
  expect((await open(orch, { taskId: 'ot-a-6' })).status).toBe(429);

  // The kill switch ends them too.
  const revoked = await call(t.url, 'POST', '/v1/admin/revoke', t.as(ADMIN), { taskId: 'ot-a-2' });
  expect(revoked.status).toBe(202);
  expect((await open(orch, { taskId: 'ot-a-6' })).status).toBe(201);
});

test('a task that expires frees its place', async () => {
  const orch = '/orchestrator/ot-b';
  for (const n of [1, 2]) expect((await open(orch, { taskId: `ot-b-${n}` })).status).toBe(201);
  expect((await open(orch, { taskId: 'ot-b-short', ttlSeconds: 1 })).status).toBe(201);
  expect((await open(orch, { taskId: 'ot-b-3' })).status).toBe(429);
  await new Promise((r) => setTimeout(r, 1200));
  expect((await open(orch, { taskId: 'ot-b-3' })).status).toBe(201);
});
