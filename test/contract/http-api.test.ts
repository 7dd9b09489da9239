/**
 * Contract section 3 (HTTP API): behaviours checked against the contract's
 * text where the broker deviated from it.
 */
import { ADMIN, AGENT, call, ORCH, startTestBroker, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('contract-http');
});
afterAll(async () => {
  await t.close();
});

const agentId = `spiffe://dev.local${AGENT}`;
let seq = 0;
async function openTask(over: Record<string, unknown> = {}): Promise<string> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: `c-${++seq}-${Date.now()}`,
    agent: agentId,
    tenant: 'acme',
    purpose: 'contract',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 300 }],
    ...over,
  });
  expect(r.status).toBe(201);
  return r.body.taskId;
}

async function form(path: string, headers: Record<string, string>, fields: Record<string, string>) {
  const res = await fetch(`${t.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(fields).toString(),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('quarantine: every /v1 call of a matching identity answers 403 identity_quarantined (only /v1/token answers 400)', () => {
  const rs = '/agent/quarantined-rs';
  beforeAll(async () => {
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `spiffe://dev.local${rs}`, reason: 'contract' });
    expect(q.status).toBe(201);
  });
  afterAll(async () => {
    await call(t.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(`spiffe://dev.local${rs}`)}`, t.as(ADMIN));
  });

  test('POST /v1/introspect by a quarantined identity: 403 identity_quarantined', async () => {
    const taskId = await openTask();
    const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
    const r = await form('/v1/introspect', t.as(rs), { token: cred.body.credentials.access_token });
    expect(r.status).toBe(403);
    expect(r.body).toMatchObject({ code: 'identity_quarantined' });
    expect(r.body.active).toBeUndefined();
  });

  test('POST /v1/token by a quarantined identity stays 400 unauthorized_client', async () => {
    const r = await form(
      '/v1/token',
      {},
      {
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        subject_token: t.issuer.svid(rs),
        subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
        audience: 'tickets-api',
        task_id: 'any-task',
      },
    );
    expect(r).toMatchObject({ status: 400, body: { error: 'unauthorized_client' } });
  });
});

describe('delegation: a sub-task is refused (403) only for wider roles or scopes, a later deadline, or too much depth', () => {
  // OPEN DEVIATION (src/tasks, being changed by another branch; not fixed here): a sub-task grant that
  // omits maxTtlSeconds gets the role's ceiling (900 s), which is then "wider" than the parent grant's
  // 300 s, so a sub-task whose roles and scopes are a subset answers 403 delegation_widens. The
  // contract lists no TTL condition; an omitted ceiling should be the parent grant's. Flip to `test`
  // once src/tasks/task-service.ts defaults it so.
  test("a sub-task grant without maxTtlSeconds takes the parent grant's ceiling: 201", async () => {
    const parent = await openTask();
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: parent,
      taskId: 'helper',
      agent: 'spiffe://dev.local/agent/helper',
      ttlSeconds: 60,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    });
    expect(r.status).toBe(201);
    expect(r.body.grants).toEqual([{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 300 }]);
  });
});

describe('GET /v1/admin/quarantine is a list like the others: ?limit= (1-500, default 50), ?cursor=, nextCursor', () => {
  const patterns = ['spiffe://dev.local/agent/page-a/*', 'spiffe://dev.local/agent/page-b/*', 'spiffe://dev.local/agent/page-c/*'];
  beforeAll(async () => {
    for (const agent of patterns)
      expect((await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent, reason: 'paging' })).status).toBe(201);
  });
  afterAll(async () => {
    for (const p of patterns) await call(t.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(p)}`, t.as(ADMIN));
  });

  test('pages of ?limit=2 follow nextCursor to the end and see every quarantine once', async () => {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const q: string = `/v1/admin/quarantine?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const r = await call(t.url, 'GET', q, t.as(ADMIN));
      expect(r.status).toBe(200);
      expect(r.body.items.length).toBeLessThanOrEqual(2);
      seen.push(...r.body.items.map((i: { pattern: string }) => i.pattern));
      cursor = r.body.nextCursor;
      pages += 1;
    } while (cursor && pages < 10);
    expect(pages).toBeGreaterThanOrEqual(2);
    expect(seen.filter((p) => patterns.includes(p)).sort()).toEqual(patterns);
    expect(new Set(seen).size).toBe(seen.length);
  });

  test('?limit=501 and a forged cursor answer 400', async () => {
    expect(await call(t.url, 'GET', '/v1/admin/quarantine?limit=501', t.as(ADMIN))).toMatchObject({ status: 400 });
    expect(await call(t.url, 'GET', '/v1/admin/quarantine?cursor=forged', t.as(ADMIN))).toMatchObject({
      status: 400,
      body: { code: 'invalid_cursor' },
    });
  });
});
