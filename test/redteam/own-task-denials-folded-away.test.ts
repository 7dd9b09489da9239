import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: an agent hid its attempts to widen its own task from that task's evidence. Denials fold per
 * (actor, code, task, minute), and past three tasks a minute one caller's further denials (of one code) fold
 * together under no task (`detail.manyTasks`), so that naming a new task id each time cannot grow the log.
 * The agent of task `v` opened three sub-tasks for itself (as any parent agent may), was denied once on each,
 * and then every attempt on `v` itself (scopes `v`'s grant lacks) landed in a record without a task: neither
 * `GET /v1/tasks/v/evidence` nor `GET /v1/audit?taskId=v` showed any of them to `v`'s orchestrator. Denials
 * about a task the caller is a party of now keep their task; a stranger's still fold (test/audit/audit.test.ts).
 */
let t: TestBroker;
const A = `spiffe://dev.local${AGENT}`;
beforeAll(async () => {
  t = await startTestBroker('rt-own-denials', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
  });
});
afterAll(async () => t?.close());

test("an agent's denials on its own task stay in that task's evidence after decoy denials on three other tasks", async () => {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'v',
    agent: A,
    tenant: 'acme',
    purpose: 'triage',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(open.status).toBe(201);
  const widen = (taskId: string) =>
    call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api', scopes: ['tickets:write'] });
  for (const s of ['a', 'b', 'c']) {
    const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: 'v',
      taskId: s,
      agent: A,
      ttlSeconds: 60,
      grants: [{ role: 'tickets-api' }],
    });
    expect(sub.status).toBe(201);
    expect((await widen(`v~${s}`)).body.code).toBe('scope_not_granted');
  }
  for (let i = 0; i < 5; i++) expect((await widen('v')).body.code).toBe('scope_not_granted');
  await t.broker.deps.audit.flushFolds(true);

  const denialsOnV = (items: { taskId?: string; action: string; reason?: string; count?: number }[]) =>
    items.filter((r) => r.taskId === 'v' && r.action === 'credential.deny' && r.reason === 'scope_not_granted');
  const audit = await call(t.url, 'GET', '/v1/audit?taskId=v&limit=500', t.as(ORCH));
  expect(audit.status).toBe(200);
  // Before: none (all five in one record under no task, `detail.manyTasks`).
  const mine = denialsOnV(audit.body.items);
  expect(mine.reduce((n, r) => n + (r.count ?? 1), 0)).toBe(5);
  const evidence = await call(t.url, 'GET', '/v1/tasks/v/evidence?limit=500', t.as(ORCH));
  expect(denialsOnV(evidence.body.audit.items).reduce((n, r) => n + (r.count ?? 1), 0)).toBe(5);
});
