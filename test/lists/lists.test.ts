import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/** Contract section 3, "Finding things": paginated, authorization-filtered lists, the audit query and evidence. */
let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;
const OTHER_ORCH = '/orchestrator/other';
const OTHER_AGENT = '/agent/other';

beforeAll(async () => {
  t = await startTestBroker('lists');
  // 7 tasks by the main orchestrator for AGENT, 3 by another orchestrator for another agent.
  for (let i = 0; i < 7; i++) await openTask(`t-list-${i}`, ORCH, agentId, i % 2 === 0 ? 'acme' : 'globex');
  for (let i = 0; i < 3; i++) await openTask(`t-other-${i}`, OTHER_ORCH, `spiffe://dev.local${OTHER_AGENT}`, 'acme');
  await call(t.url, 'POST', '/v1/tasks/t-list-0/complete', t.as(ORCH));
});
afterAll(async () => {
  await t.close();
});

async function openTask(taskId: string, orch: string, agent: string, tenant: string) {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(orch), {
    taskId,
    agent,
    tenant,
    purpose: 'list',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }, { role: 'prod-deploy' }],
  });
  expect(r.status).toBe(201);
}

const list = (who: string, q: string) => call(t.url, 'GET', `/v1/tasks${q}`, t.as(who));

/** Every page of a list, following nextCursor. */
async function all(who: string, path: string, q: string): Promise<any[]> {
  const items: any[] = [];
  let cursor: string | null = null;
  for (let i = 0; i < 50; i++) {
    const sep = q ? '&' : '?';
    const r = await call(t.url, 'GET', `${path}${q}${cursor ? `${sep}cursor=${encodeURIComponent(cursor)}` : ''}`, t.as(who));
    expect(r.status).toBe(200);
    items.push(...r.body.items);
    cursor = r.body.nextCursor;
    if (!cursor) return items;
  }
  throw new Error('no last page');
}

describe('GET /v1/tasks', () => {
  test('admins see every task, newest first, in pages that add up without gaps or repeats', async () => {
    const items = await all(ADMIN, '/v1/tasks', '?limit=3');
    const ids = items.map((x) => x.taskId);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.filter((id) => id.startsWith('t-list-') || id.startsWith('t-other-'))).toHaveLength(10);
    const times = items.map((x) => Date.parse(x.createdAt));
    expect([...times].sort((a, b) => b - a)).toEqual(times);
  });

  test('orchestrators see the tasks they opened; agents their own; filters narrow', async () => {
    const orch = await all(ORCH, '/v1/tasks', '');
    expect(orch.map((x) => x.taskId).sort()).toEqual(Array.from({ length: 7 }, (_, i) => `t-list-${i}`).sort());
    const other = await all(OTHER_AGENT, '/v1/tasks', '');
    expect(other.map((x) => x.taskId).sort()).toEqual(['t-other-0', 't-other-1', 't-other-2']);
    expect((await all(ORCH, '/v1/tasks', '?status=completed')).map((x) => x.taskId)).toEqual(['t-list-0']);
    expect((await all(ADMIN, '/v1/tasks', '?tenant=globex')).map((x) => x.taskId).sort()).toEqual(['t-list-1', 't-list-3', 't-list-5']);
    expect(
      await all(
        ADMIN,
        '/v1/tasks',
        `?agent=${encodeURIComponent('spiffe://dev.local/agent/*')}&orchestrator=${encodeURIComponent(`spiffe://dev.local${OTHER_ORCH}`)}`,
      ),
    ).toHaveLength(3);
    // A stranger sees nothing, not an error.
    expect((await list('/agent/stranger', '')).body).toEqual({ items: [], nextCursor: null });
  });

  test('cursors are bound to the caller and the filters; limit over 500 is a 400', async () => {
    const first = await list(ADMIN, '?limit=2');
    const cursor = encodeURIComponent(first.body.nextCursor);
    expect((await list(ADMIN, `?limit=2&cursor=${cursor}`)).status).toBe(200);
    expect((await list(ORCH, `?limit=2&cursor=${cursor}`)).body.code).toBe('invalid_cursor');
    expect((await list(ADMIN, `?limit=2&status=open&cursor=${cursor}`)).body.code).toBe('invalid_cursor');
    expect((await list(ADMIN, '?limit=2&cursor=garbage.x')).body.code).toBe('invalid_cursor');
    expect((await list(ADMIN, '?limit=501')).status).toBe(400);
    expect((await list(ADMIN, '?limit=500')).status).toBe(200);
    expect((await list(ADMIN, '?colour=red')).body.code).toBe('unknown_field');
  });
});

describe('GET /v1/approvals', () => {
  test('approvers see every pending approval; agents and orchestrators those of their tasks', async () => {
    const a = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-list-1', role: 'prod-deploy', ttlSeconds: 60 });
    const b = await call(t.url, 'POST', '/v1/credentials', t.as(OTHER_AGENT), { taskId: 't-other-1', role: 'prod-deploy' });
    expect([a.status, b.status]).toEqual([202, 202]);
    const approver = await all(ADMIN, '/v1/approvals', '?status=pending');
    const mine = approver.find((x) => x.approvalId === a.body.approvalId);
    expect(mine).toEqual({
      approvalId: a.body.approvalId,
      taskId: 't-list-1',
      role: 'prod-deploy',
      scopes: [],
      ttlSeconds: 60,
      issuedTtlSeconds: 60, // what approving gives (the role allows 60 s)
      agent: agentId,
      purpose: 'list',
      status: 'pending',
      requestedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT.*Z$/),
      expiresAt: expect.stringMatching(/Z$/),
    });
    expect(approver.map((x) => x.approvalId)).toContain(b.body.approvalId);
    expect((await all(ORCH, '/v1/approvals', '?status=pending')).map((x) => x.approvalId)).toEqual([a.body.approvalId]);
    expect((await all(OTHER_AGENT, '/v1/approvals', '')).map((x) => x.approvalId)).toEqual([b.body.approvalId]);
    await call(t.url, 'POST', `/v1/approvals/${a.body.approvalId}`, t.as(ADMIN), { decision: 'reject', reason: 'no' });
    expect((await all(ORCH, '/v1/approvals', '?status=pending')).map((x) => x.approvalId)).toEqual([]);
    expect((await all(ORCH, '/v1/approvals', '?status=rejected')).map((x) => x.approvalId)).toEqual([a.body.approvalId]);
  });
});

describe('GET /v1/audit and evidence', () => {
  test('a non-admin needs taskId, and may read only its tasks; admins query everything, oldest first', async () => {
    expect((await call(t.url, 'GET', '/v1/audit', t.as(ORCH))).body.code).toBe('audit_task_required');
    const mine = await all(ORCH, '/v1/audit', '?taskId=t-list-0&limit=2');
    expect(mine.map((r) => r.action)).toEqual(['task.open', 'task.complete']);
    expect(mine[0]).toMatchObject({
      seq: expect.any(Number),
      hash: expect.stringMatching(/^[0-9a-f]{64}$/),
      actor: `spiffe://dev.local${ORCH}`,
    });
    expect((await call(t.url, 'GET', '/v1/audit?taskId=t-list-0', t.as('/agent/stranger'))).status).toBe(403);
    const everything = await all(ADMIN, '/v1/audit', '?action=task.open&limit=4');
    expect(everything.length).toBeGreaterThanOrEqual(10);
    const times = everything.map((r) => Date.parse(r.time));
    expect([...times].sort((x, y) => x - y)).toEqual(times);
    const since = everything[5].time;
    const later = await all(ADMIN, '/v1/audit', `?action=task.open&since=${encodeURIComponent(since)}`);
    expect(later.length).toBeLessThan(everything.length);
  });

  test('evidence: the task, its tree, its leases and its records, with the chain check', async () => {
    const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-list-2', role: 'demo-api' });
    const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: 't-list-2',
      taskId: 'helper',
      agent: 'spiffe://dev.local/agent/helper',
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    await call(t.url, 'POST', '/v1/credentials', t.as('/agent/helper'), { taskId: sub.body.taskId, role: 'demo-api' });
    const e = await call(t.url, 'GET', '/v1/tasks/t-list-2/evidence', t.as(ORCH));
    expect(e.status).toBe(200);
    expect(e.body.task.taskId).toBe('t-list-2');
    expect(e.body.tree.map((x: any) => x.taskId)).toEqual(['t-list-2', 't-list-2~helper']);
    expect(e.body.tree[1]).toMatchObject({ parentTaskId: 't-list-2', delegators: [agentId] });
    expect(e.body.leases.map((l: any) => l.leaseId)).toContain(c.body.leaseId);
    expect(e.body.leases).toHaveLength(2);
    expect(e.body.audit.items.map((r: any) => r.action)).toEqual(['task.open', 'credential.issue', 'task.open', 'credential.issue']);
    expect(e.body.chain).toBe('intact');

    // Someone with Redis access edits one of the task's records: the evidence says so.
    const { redis, keys } = t.broker.deps;
    const stream = keys.auditStream(keys.bucketOfTask('t-list-2'));
    const target = e.body.audit.items[1].streamId;
    const entries = await redis.xrange(stream, '-', '+');
    const rebuilt = redis.multi().del(stream);
    for (const [id, fields] of entries) {
      const r = JSON.parse(fields[1]!);
      if (id === target) r.decision = 'deny';
      rebuilt.xadd(stream, id, 'r', JSON.stringify(r));
    }
    await rebuilt.exec();
    expect((await call(t.url, 'GET', '/v1/tasks/t-list-2/evidence', t.as(ORCH))).body.chain).toBe('broken');
  });
});
