import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { AGENT, ORCH, auditRecords, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Every denial is audited (contract section 7: a credential issued or denied, with the reason), not only
 * the 403s of policy and grants. Found from outside: an agent still asking for credentials after its
 * task was completed got 409 task_not_open and left no record.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('refusals-audited');
});
afterAll(async () => {
  await t?.close();
});

const denials = async (taskId: string) =>
  (await auditRecords(t.broker.deps.redis, t.broker.deps.keys))
    .filter((a) => a.taskId === taskId && a.action === 'credential.deny')
    .map((a) => ({ actor: a.actor, decision: a.decision, reason: a.reason, role: a.role, count: a.count }));

test('a credential request on a completed task is a denial: audited with its reason, repeats folded', async () => {
  await openAgentTask(t, 'ra-1', [{ role: 'demo-api' }]);
  expect((await call(t.url, 'POST', '/v1/tasks/ra-1/complete', t.as(ORCH))).status).toBe(202);
  for (let i = 0; i < 3; i++) {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ra-1', role: 'demo-api' });
    expect({ status: r.status, code: r.body.code }).toEqual({ status: 409, code: 'task_not_open' });
  }
  await t.broker.deps.audit.flushFolds(true);
  const actor = `spiffe://dev.local${AGENT}`;
  expect(await denials('ra-1')).toEqual([
    { actor, decision: 'deny', reason: 'task_not_open', role: 'demo-api', count: undefined },
    { actor, decision: 'deny', reason: 'task_not_open', role: 'demo-api', count: 2 },
  ]);
});

test("an agent's refused task opens without a task id fold into at most two records a minute (found in review)", async () => {
  // Each refused open got a generated task id, and with denials folded per task every one was a new record.
  const agentId = `spiffe://dev.local${AGENT}`;
  for (let i = 0; i < 40; i++) {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      agent: agentId,
      tenant: 'acme',
      purpose: 'flood',
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    expect(r.status).toBe(403);
  }
  await t.broker.deps.audit.flushFolds(true);
  const records = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (a) => a.actor === agentId && a.reason === 'not_orchestrator',
  );
  expect(records.length).toBeLessThanOrEqual(4); // two per minute, and the loop may straddle a minute
  expect(records.reduce((sum, a) => sum + (a.count ?? 1), 0)).toBe(40);
  expect(records.every((a) => a.taskId === undefined)).toBe(true);
});

test("a folded record names every role the minute's denials named (found by red team)", async () => {
  // The fold's key has no role: after one harmless denial, the roles an agent probed next were nowhere.
  await openAgentTask(t, 'ra-roles', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  for (const role of ['demo-api', 'prod-deploy', 'demo-api', 'no-such-role']) {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ra-roles', role });
    expect(r.status).toBeGreaterThanOrEqual(400);
  }
  await t.broker.deps.audit.flushFolds(true);
  const records = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (a) => a.taskId === 'ra-roles' && a.action === 'credential.deny',
  );
  const named = new Set(records.flatMap((a) => [a.role, ...(((a.detail?.roles as string[] | undefined) ?? []) as string[])]));
  expect([...named].filter((r) => r !== undefined).sort()).toEqual(expect.arrayContaining(['demo-api', 'prod-deploy']));
});
