import { decodeJwt } from 'jose';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;
const A = `spiffe://dev.local${AGENT}`;
const B = 'spiffe://dev.local/agent/researcher';
const C = 'spiffe://dev.local/agent/summarizer';
beforeAll(async () => {
  t = await startTestBroker('delegation', { config: { tasks: { maxTtlSeconds: 86_400, maxDelegationDepth: 2, maxGrants: 20 } } });
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'parent',
    agent: A,
    tenant: 'acme',
    purpose: 'root',
    ttlSeconds: 600,
    grants: [
      { role: 'tickets-api', scopes: ['tickets:read', 'tickets:write'], maxTtlSeconds: 300 },
      { role: 'demo-api', maxTtlSeconds: 120 },
    ],
  });
});
afterAll(async () => {
  await t.close();
});

const sub = (over: Record<string, unknown>) => ({
  parentTaskId: 'parent',
  agent: B,
  ttlSeconds: 300,
  grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 60 }],
  ...over,
});

test.each([
  ['a wider scope', { grants: [{ role: 'tickets-api', scopes: ['tickets:admin'] }] }, 403],
  ['a scope the parent lacks', { grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 301 }] }, 403],
  ['a role the parent lacks', { grants: [{ role: 'prod-deploy' }] }, 403],
  ['a deadline past the parent', { ttlSeconds: 3600 }, 403],
  ['another tenant', { tenant: 'other' }, 403],
])('a sub-task cannot widen: %s', async (_n, over, status) => {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), sub(over));
  expect(r.status).toBe(status);
});

test("only the parent task's agent may delegate", async () => {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as('/agent/intruder'), sub({}));
  expect(r.status).toBe(403);
  expect(r.body.code).toBe('not_parent_agent');
});

test('act claims nest, depth is limited, and completing the parent revokes the whole tree', async () => {
  const s1 = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), sub({ taskId: 'child' }));
  expect(s1.status).toBe(201);
  expect(s1.body).toMatchObject({ taskId: 'parent~child', parentTaskId: 'parent', depth: 1, tenant: 'acme', purpose: 'root' });
  const s2 = await call(
    t.url,
    'POST',
    '/v1/tasks',
    t.as('/agent/researcher'),
    sub({ taskId: 'grandchild', parentTaskId: 'parent~child', agent: C, ttlSeconds: 200 }),
  );
  expect(s2.status).toBe(201);
  const s3 = await call(
    t.url,
    'POST',
    '/v1/tasks',
    t.as('/agent/summarizer'),
    sub({ taskId: 'too-deep', parentTaskId: 'parent~child~grandchild', agent: A, ttlSeconds: 100 }),
  );
  expect(s3.status).toBe(403);
  expect(s3.body.code).toBe('delegation_too_deep');

  const cred = await call(t.url, 'POST', '/v1/credentials', t.as('/agent/summarizer'), {
    taskId: 'parent~child~grandchild',
    role: 'tickets-api',
  });
  expect(cred.status).toBe(201);
  const claims = decodeJwt(cred.body.credentials.access_token);
  expect(claims.sub).toBe(C);
  expect(claims.act).toEqual({ sub: B, act: { sub: A } });
  expect(cred.body.ttlSeconds).toBe(60);

  const done = await call(t.url, 'POST', '/v1/tasks/parent/complete', t.as(ORCH));
  expect(done.status).toBe(202);
  const gc = await waitFor(async () => {
    const r = await call(t.url, 'GET', '/v1/tasks/parent~child~grandchild', t.as('/agent/summarizer'));
    return r.body.status === 'completed' && r.body.leases[0]?.status === 'revoked' && r.body;
  });
  expect(gc.leases[0].reason).toBe('task_completed');
  expect((await call(t.url, 'GET', '/v1/tasks/parent~child', t.as(AGENT))).body.status).toBe('completed');
});

test("whoever reads a task reads its sub-tasks: the root's orchestrator opens each of them, a stranger and a sub-task's agent still may not read above", async () => {
  const root = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'read-tree',
    agent: A,
    tenant: 'acme',
    purpose: 'root',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api', maxTtlSeconds: 120 }],
  });
  expect(root.status).toBe(201);
  const child = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'read-tree',
    taskId: 'c',
    agent: B,
    ttlSeconds: 300,
    grants: [{ role: 'demo-api' }],
  });
  const grand = await call(t.url, 'POST', '/v1/tasks', t.as('/agent/researcher'), {
    parentTaskId: 'read-tree~c',
    taskId: 'g',
    agent: C,
    ttlSeconds: 200,
    grants: [{ role: 'demo-api' }],
  });
  expect([child.status, grand.status]).toEqual([201, 201]);

  // The root's orchestrator (it completes them with the root) and the root's agent read both, evidence included.
  for (const who of [ORCH, AGENT]) {
    for (const id of ['read-tree~c', 'read-tree~c~g']) {
      const r = await call(t.url, 'GET', `/v1/tasks/${id}`, t.as(who));
      expect({ who, id, status: r.status, taskId: r.body.taskId }).toEqual({ who, id, status: 200, taskId: id });
      expect((await call(t.url, 'GET', `/v1/tasks/${id}/evidence`, t.as(who))).status).toBe(200);
    }
  }
  // Reading goes down the tree, never up or sideways.
  const up = await call(t.url, 'GET', '/v1/tasks/read-tree', t.as('/agent/summarizer'));
  expect({ status: up.status, code: up.body.code }).toEqual({ status: 403, code: 'not_task_party' });
  const stranger = await call(t.url, 'GET', '/v1/tasks/read-tree~c~g', t.as('/orchestrator/other'));
  expect({ status: stranger.status, code: stranger.body.code }).toEqual({ status: 403, code: 'not_task_party' });
});

test("whoever reads a sub-task reads and may revoke its leases: the root's orchestrator stops one sub-agent's credential without ending the tree", async () => {
  const root = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'lease-tree',
    agent: A,
    tenant: 'acme',
    purpose: 'root',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api', maxTtlSeconds: 120 }],
  });
  expect(root.status).toBe(201);
  const child = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'lease-tree',
    taskId: 'c',
    agent: B,
    ttlSeconds: 300,
    grants: [{ role: 'demo-api' }],
  });
  expect(child.status).toBe(201);
  const issue = () => call(t.url, 'POST', '/v1/credentials', t.as('/agent/researcher'), { taskId: 'lease-tree~c', role: 'demo-api' });
  const [one, two] = [await issue(), await issue()];
  expect([one.status, two.status]).toEqual([201, 201]);

  // Reading goes down the tree: the root's orchestrator and agent read the sub-task's lease, as they see it in its tree.
  for (const who of [ORCH, AGENT]) {
    const r = await call(t.url, 'GET', `/v1/leases/${one.body.leaseId}`, t.as(who));
    expect({ who, status: r.status, leaseId: r.body.leaseId }).toEqual({ who, status: 200, leaseId: one.body.leaseId });
  }
  // Never up or sideways: a stranger still may not.
  const stranger = await call(t.url, 'GET', `/v1/leases/${one.body.leaseId}`, t.as('/orchestrator/other'));
  expect({ status: stranger.status, code: stranger.body.code }).toEqual({ status: 403, code: 'not_lease_party' });
  const strangerDelete = await call(t.url, 'DELETE', `/v1/leases/${one.body.leaseId}`, t.as('/orchestrator/other'));
  expect({ status: strangerDelete.status, code: strangerDelete.body.code }).toEqual({ status: 403, code: 'not_lease_party' });

  // The root's orchestrator revokes one lease as a party (not as an admin); the task and the other lease stay.
  const del = await call(t.url, 'DELETE', `/v1/leases/${one.body.leaseId}`, t.as(ORCH));
  expect(del.status).toBe(202);
  await waitFor(async () => (await call(t.url, 'GET', `/v1/leases/${one.body.leaseId}`, t.as(ORCH))).body.status === 'revoked');
  const ended = await call(t.url, 'GET', `/v1/leases/${one.body.leaseId}`, t.as(ORCH));
  expect(ended.body.reason).toBe('revoked_by_caller');
  expect((await call(t.url, 'GET', `/v1/leases/${two.body.leaseId}`, t.as(ORCH))).body.status).toBe('active');
  expect((await call(t.url, 'GET', '/v1/tasks/lease-tree~c', t.as(ORCH))).body.status).toBe('open');
});

test("a root id opened again after its task left Redis gives its new orchestrator no read of the old task's sub-tasks", async () => {
  const open = (who: string) =>
    call(t.url, 'POST', '/v1/tasks', t.as(who), {
      taskId: 'read-again',
      agent: A,
      tenant: 'acme',
      purpose: 'root',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api', maxTtlSeconds: 120 }],
    });
  expect((await open(ORCH)).status).toBe(201);
  const child = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'read-again',
    taskId: 'c',
    agent: B,
    ttlSeconds: 300,
    grants: [{ role: 'demo-api' }],
  });
  expect(child.status).toBe(201);
  // The root's record leaves Redis (as retention purges an ended task's) and another orchestrator takes the id.
  await t.broker.deps.redis.del(t.broker.deps.keys.task('read-again'));
  await new Promise((r) => setTimeout(r, 5));
  expect((await open('/orchestrator/later')).status).toBe(201);
  const r = await call(t.url, 'GET', '/v1/tasks/read-again~c', t.as('/orchestrator/later'));
  expect({ status: r.status, code: r.body.code }).toEqual({ status: 403, code: 'not_task_party' });
});
