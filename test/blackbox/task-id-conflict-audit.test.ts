import { ADMIN, AGENT, ORCH, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Black-box finding: opening a task under an id that holds another request (409 `task_id_conflict`) left no audit
// record. Every denial is a record, whatever the route (contract section 3 and 7): an orchestrator trying an id that
// another orchestrator's task holds, or an agent reusing a sub-task name with other grants, was refused unseen,
// while refusals of the same request on other grounds (policy, a quarantined agent, an ended parent) were recorded.
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('bb-conflict', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080' } } });
});
afterAll(async () => {
  await t.close();
});

const AGENT_ID = `spiffe://dev.local${AGENT}`;
const OTHER_ORCH = '/orchestrator/other';
const denials = async (taskId: string) =>
  ((await call(t.url, 'GET', `/v1/audit?taskId=${encodeURIComponent(taskId)}`, t.as(ADMIN))).body.items as Record<string, any>[])
    .filter((r) => r.action === 'access.deny')
    .map((r) => ({ actor: r.actor, reason: r.reason, ...(r.detail?.subtask ? { subtask: r.detail.subtask } : {}) }));

test('opening a task under an id another request holds is a recorded denial (found by black-box red team)', async () => {
  await openAgentTask(t, 'bb-conflict-1', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const taken = await call(t.url, 'POST', '/v1/tasks', t.as(OTHER_ORCH), {
    taskId: 'bb-conflict-1',
    agent: AGENT_ID,
    tenant: 'acme',
    purpose: 'test',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read', 'tickets:write'] }],
  });
  expect([taken.status, taken.body.code]).toEqual([409, 'task_id_conflict']);
  // Before: no record at all.
  expect(await denials('bb-conflict-1')).toEqual([{ actor: `spiffe://dev.local${OTHER_ORCH}`, reason: 'task_id_conflict' }]);
  // The same request repeated is no denial: 200 with the task, nothing recorded.
  await openAgentTask(t, 'bb-conflict-2', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const again = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'bb-conflict-2',
    agent: AGENT_ID,
    tenant: 'acme',
    purpose: 'test',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(again.status).toBe(200);
  expect(await denials('bb-conflict-2')).toEqual([]);
});

test('a sub-task name reused with other grants is a denial recorded under the parent (found by black-box red team)', async () => {
  await openAgentTask(t, 'bb-conflict-3', [{ role: 'tickets-api', scopes: ['tickets:read', 'tickets:write'] }]);
  const sub = (scopes: string[]) =>
    call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: 'bb-conflict-3',
      taskId: 's',
      agent: AGENT_ID,
      ttlSeconds: 60,
      grants: [{ role: 'tickets-api', scopes }],
    });
  expect((await sub(['tickets:read'])).status).toBe(201);
  const other = await sub(['tickets:write']);
  expect([other.status, other.body.code]).toEqual([409, 'task_id_conflict']);
  // Before: no record.
  expect(await denials('bb-conflict-3')).toEqual([{ actor: AGENT_ID, reason: 'task_id_conflict', subtask: 'bb-conflict-3~s' }]);
});
